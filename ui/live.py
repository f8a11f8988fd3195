"""A search run in a worker thread, so the page can show its points as they land and stop it."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tmpdiff.evaluate import Evaluator
from tmpdiff.runner import describe_build
from tmpdiff.search import Point
from tmpdiff.search_run import SearchRequest, run_search

__all__ = ["LiveSearch", "Update"]


@dataclass
class Update:
    """What the page shows now: the progress line and every point evaluated so far."""

    fraction: float = 0.0
    message: str = ""
    points: list[Point] = field(default_factory=list)


class LiveSearch:
    """Runs ``run_search`` in a thread; ``updates()`` yields at most every ``interval`` seconds."""

    def __init__(self, evaluator: Evaluator, request: SearchRequest, interval: float = 1.0) -> None:
        self.evaluator, self.request, self.interval = evaluator, request, interval
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self._outcome: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._work, daemon=True)

    def updates(self) -> Iterator[Update]:
        self._thread.start()
        start, points, update, last = time.perf_counter(), [], Update(), 0.0
        while True:
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
                last = time.perf_counter()
                yield Update(update.fraction, update.message, list(points))

    def stop(self) -> None:
        self._stop.set()

    def result(self) -> dict[str, Any]:
        """The report; a user mistake found during the run comes back as the ValueError it was."""
        self._thread.join()
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome["report"]

    def _work(self) -> None:
        engine = self.evaluator.engine
        engine.on_build = lambda precision, mode, expected: self._events.put(
            ("build", describe_build(precision, mode, expected)))
        try:
            self._outcome["report"] = run_search(
                self.evaluator, self.request, should_stop=self._stop.is_set,
                progress=lambda done, planned, what: self._events.put(("progress", (done, planned, what))),
                on_point=lambda point: self._events.put(("point", point)))
        except Exception as exc:  # handed to the page's thread by result()
            self._outcome["error"] = exc
        finally:
            engine.on_build = None
            self._events.put(("done", None))


def _eta(start: float, done: int, planned: int) -> str:
    if done < 2:
        return ""
    left = (time.perf_counter() - start) / done * (planned - done)
    return f" (about {left:.0f} s left)" if left >= 1 else ""
