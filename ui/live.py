"""A search run in a worker thread, so the page can show its points as they land and stop it."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tmpdiff.engine.runner import telling_builds_to, telling_loads_to, telling_plans_to
from tmpdiff.engine.turns import TurnLock
from tmpdiff.frontends.refusals import tell_plan
from tmpdiff.frontends.words import describe_build, describe_load
from tmpdiff.steps.cancel import Cancelled
from tmpdiff.studies.algorithms import Point
from tmpdiff.studies.report import SearchReport
from tmpdiff.studies.request import SearchRequest
from tmpdiff.studies.study import Study

__all__ = ["LiveSearch", "Update", "saying_set_up"]


@contextmanager
def saying_set_up(say: Callable[[str], None]) -> Iterator[None]:
    """Within the block, in this thread only, ``say`` hears in words each model's weights loading and each variant
    being built (compiled, or loaded from the compile cache): another user's never reach it. A placement plan under
    a memory budget goes to the server's log (stderr), one line each, as the command line says it."""
    with telling_builds_to(lambda precision, mode, expected: say(describe_build(precision, mode, expected))), \
            telling_loads_to(lambda model: say(describe_load(model))), \
            telling_plans_to(tell_plan):
        yield


@dataclass
class Update:
    """What the page shows now: the progress line and every point evaluated so far."""

    fraction: float = 0.0
    message: str = ""
    points: list[Point] = field(default_factory=list)


class LiveSearch:
    """Runs ``Study.search`` in a thread; ``updates()`` yields at most every ``interval`` seconds.

    The search stops at its next denoising step when ``stop()`` is called, and also when nobody has
    taken an update for ``abandon_after`` seconds (the page went away without closing the iterator)."""

    def __init__(self, study: Study, request: SearchRequest, interval: float = 1.0,
                 abandon_after: float = 5.0, turns: TurnLock | None = None) -> None:
        self.study, self.request, self.interval, self.abandon_after = study, request, interval, abandon_after
        self.turns = turns  # searches that run one at a time wait here, in the order asked
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self._handed_at: float | None = None  # when the last update went out (None: a consumer is waiting)
        self._outcome: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._work, daemon=True)

    def updates(self) -> Iterator[Update]:
        self._thread.start()
        start, points, update, last = time.perf_counter(), [], Update(), 0.0
        while True:
            self._handed_at = None
            try:
                # interval 0: an update per event, never a busy loop of empty ticks
                kind, value = self._events.get(timeout=self.interval if self.interval > 0 else None)
            except queue.Empty:
                kind, value = "tick", None
            if kind == "done":
                return
            if kind == "point":
                points.append(value)
            elif kind == "progress":
                done, planned, what = value
                update.fraction = done / planned
                update.message = f"evaluation {done}/{planned}: {what}{_eta(start, done, planned)}"
            elif kind == "build":
                update.message = value
            if time.perf_counter() - last >= self.interval or kind == "build":
                last = self._handed_at = time.perf_counter()
                yield Update(update.fraction, update.message, list(points))

    def stop(self, wait: float | None = None) -> None:
        """Asks the search to stop at its next denoising step; with ``wait``, waits that long for it."""
        self._stop.set()
        if wait is not None and self._thread.is_alive():
            self._thread.join(wait)

    def should_stop(self) -> bool:
        handed = self._handed_at
        abandoned = handed is not None and time.perf_counter() - handed > self.abandon_after
        return self._stop.is_set() or abandoned

    def result(self) -> SearchReport:
        """The report; a user mistake found during the run comes back as the ValueError it was."""
        self._thread.join()
        if "error" in self._outcome:
            raise self._outcome["error"]
        if "report" not in self._outcome:
            raise RuntimeError("the search's thread ended without a report or an error")
        return self._outcome["report"]

    @contextmanager
    def _turn(self) -> Iterator[None]:
        if self.turns is None:
            yield
            return
        if self.turns.taken:  # said only when there is a search ahead
            self._events.put(("build", "waiting for the search ahead of this one to finish"))
        with self.turns:
            yield

    def _work(self) -> None:
        try:
            with saying_set_up(lambda text: self._events.put(("build", text))), self._turn():
                if self.should_stop():  # stopped or left while it waited for its turn
                    raise Cancelled("the search was stopped before it started")
                self._outcome["report"] = self.study.search(
                    self.request, should_stop=self.should_stop,
                    progress=lambda done, planned, what: self._events.put(("progress", (done, planned, what))),
                    on_point=lambda point: self._events.put(("point", point)))
        except BaseException as exc:  # handed to the page's thread by result(), whatever it is
            self._outcome["error"] = exc
        finally:
            self._events.put(("done", None))


def _eta(start: float, done: int, planned: int) -> str:
    if done < 2:
        return ""
    left = (time.perf_counter() - start) / done * (planned - done)
    return f" (about {left:.0f} s left)" if left >= 1 else ""
