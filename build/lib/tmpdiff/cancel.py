"""Cancellation that stops work at the next denoising step, in the thread that asked for it.

A front end runs long work (a search) under ``cancellable(should_stop)``; the step hook calls
``raise_if_cancelled()`` at every step boundary, so a cancelled search releases the pipeline within one
step instead of running on after its user has gone. The token lives in a context variable: each
thread has its own, so one user's cancellation never stops another user's image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["Cancelled", "cancellable", "raise_if_cancelled"]

_SHOULD_STOP: ContextVar[Callable[[], bool] | None] = ContextVar("tmpdiff_should_stop", default=None)


class Cancelled(Exception):  # noqa: N818 (what happened, as the front ends say it)
    """The work was cancelled (its user left or pressed stop); everything finished before is kept."""


@contextmanager
def cancellable(should_stop: Callable[[], bool] | None) -> Iterator[None]:
    """Within the block, ``raise_if_cancelled`` raises ``Cancelled`` once ``should_stop()`` is true."""
    token = _SHOULD_STOP.set(should_stop)
    try:
        yield
    finally:
        _SHOULD_STOP.reset(token)


def raise_if_cancelled() -> None:
    should_stop = _SHOULD_STOP.get()
    if should_stop is not None and should_stop():
        raise Cancelled("cancelled")
