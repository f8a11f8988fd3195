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

__all__ = ["Cancelled", "agreeing", "cancellable", "raise_if_cancelled", "raise_if_stopped_here"]

_SHOULD_STOP: ContextVar[Callable[[], bool] | None] = ContextVar("tmpdiff_should_stop", default=None)
# Processes that share each step (one image split over GPUs) decide together: any one's stop is everyone's.
_AGREE: ContextVar[Callable[[bool], bool] | None] = ContextVar("tmpdiff_agree", default=None)


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


@contextmanager
def agreeing(agree: Callable[[bool], bool] | None) -> Iterator[None]:
    """Within the block, every step boundary's decision goes through ``agree`` (this process's wish in, the
    group's decision out), so processes that exchange data every step all stop at the same boundary."""
    token = _AGREE.set(agree)
    try:
        yield
    finally:
        _AGREE.reset(token)


def raise_if_cancelled() -> None:
    should_stop = _SHOULD_STOP.get()
    stop = should_stop is not None and should_stop()
    agree = _AGREE.get()
    if agree is not None:
        stop = agree(stop)
    if stop:
        raise Cancelled("cancelled")


def raise_if_stopped_here() -> None:
    """Between pipeline calls (before an image starts, before its row is written): ``Cancelled`` once this thread's
    work should stop, so that nothing is computed or kept after a cancel. Processes that decide together
    (``agreeing``) decide only at step boundaries, where every one of them asks: here they go on."""
    should_stop = _SHOULD_STOP.get()
    if _AGREE.get() is None and should_stop is not None and should_stop():
        raise Cancelled("cancelled")
