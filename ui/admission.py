"""Who may queue work on the app now (no Gradio here: the panels turn a refusal into a message).

Images run without Gradio's own queue limit, so every request is seen the moment it is sent and the engine
takes pipeline calls in turn (``tmpdiff.engine.turns.TurnLock``). Here each browser session may have a few jobs
of a kind waiting or running, and the app as a whole a bounded number; a refused request is told how long to wait,
from how often recent jobs of that kind finished.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager

# Per kind of job: (how many one session may have waiting or running, how many the app holds at once).
# One search runs at a time (the others admitted wait their turn); its pipeline calls let waiting images go first.
LIMITS = {"image": (2, 8), "search": (1, 3)}
UNKNOWN_SECONDS = 5.0  # the wait told before two jobs of a kind have finished


class Busy(ValueError):
    """The app (or this session) has as much of this kind of work as it takes: try again later."""


class Admission:
    """Counts the jobs of each kind, in all and per session, and refuses those beyond the limits."""

    def __init__(self, limits: dict[str, tuple[int, int]] | None = None) -> None:
        self.limits = dict(LIMITS if limits is None else limits)
        self._lock = threading.Lock()
        self._jobs: Counter[tuple[str, str]] = Counter()
        self._total: Counter[str] = Counter()
        self._finished: dict[str, deque[float]] = {}  # when recent jobs of each kind finished

    @contextmanager
    def job(self, kind: str, session: str | None) -> Iterator[None]:
        """One job of ``kind`` (e.g. "image") for ``session`` (None: a caller without a session)."""
        with self._lock:
            self._admit(kind, session)
            self._total[kind] += 1
            if session is not None:
                self._jobs[(kind, session)] += 1
        try:
            yield
        finally:
            with self._lock:
                self._total[kind] -= 1
                if session is not None:
                    self._jobs[(kind, session)] -= 1
                    if not self._jobs[(kind, session)]:
                        del self._jobs[(kind, session)]
                self._finished.setdefault(kind, deque(maxlen=20)).append(time.monotonic())

    def _admit(self, kind: str, session: str | None) -> None:
        per_session, capacity = self.limits[kind]
        mine = self._jobs[(kind, session)] if session is not None else 0
        if mine >= per_session:
            raise Busy(f"you already have {mine} {_plural(kind) if mine > 1 else kind} waiting or running: wait for "
                       f"{'one' if mine > 1 else 'it'} to finish (at most {per_session} per browser session)")
        ahead = self._total[kind]
        if ahead >= capacity:
            raise Busy(f"busy: {ahead} {_plural(kind) if ahead > 1 else kind} {'are' if ahead > 1 else 'is'} ahead "
                       f"of yours; try again in ~{self.wait_seconds(kind):.0f} s")

    def wait_seconds(self, kind: str) -> float:
        """Until a place for ``kind`` is likely free: the recent interval between two jobs finishing."""
        finished = self._finished.get(kind)
        if not finished or len(finished) < 2:
            return UNKNOWN_SECONDS
        return max(1.0, statistics.median(b - a for a, b in zip(finished, list(finished)[1:], strict=False)))


def _plural(kind: str) -> str:
    return kind + ("es" if kind.endswith(("s", "sh", "ch")) else "s")
