"""An app whose images are split over several processes (``tmpdiff-app --parallel N``): the first process serves
the page and tells the others each load and call, in order; they follow until it says stop."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from tmpdiff.steps.schedule import Schedule

if TYPE_CHECKING:
    from tmpdiff.engine.runner import Engine
    from tmpdiff.pipelines.context_parallel import CallMirror

__all__ = ["follow", "release_followers", "told_to_followers"]


def follow(engine: Engine) -> None:
    """In the other processes of a split app: loads and calls as the first process says, until it says
    stop. A load or call that fails or is cancelled here failed or was cancelled there too (same inputs,
    same agreed stop), and the first process tells its user: the next message is awaited."""
    from tmpdiff.pipelines.context_parallel import decode_call_kwargs, leave_process_group
    from tmpdiff.steps.cancel import Cancelled

    mirror = engine.mirror
    if mirror is None or mirror.leads:
        raise RuntimeError("only the other processes of a split app follow")
    while "stop" not in (message := mirror.next_message()):
        try:
            if "load" in message:
                engine.pipeline(message["load"])
            else:
                engine.call_now(engine.loaded(message["call"]), decode_call_kwargs(message["kwargs"]),
                                Schedule.parse(message["schedule"]), counted_as=message["counted_as"])
        except Cancelled:
            pass
        except ValueError:
            pass  # a user's mistake: the first process tells the user
        except Exception as exc:  # noqa: BLE001 (kept serving: the first process reports its own failure)
            print(f"warning: process {mirror.rank}: {type(exc).__name__}: {exc}", file=sys.stderr)
    leave_process_group()


def release_followers(engine: Engine) -> None:
    """In the first process of a split app, as it ends: the others return from :func:`follow`; then this
    process leaves the group (as each follower does when it returns)."""
    mirror = engine.mirror
    if mirror is not None and mirror.leads:
        from tmpdiff.pipelines.context_parallel import leave_process_group

        with mirror.lock:
            mirror.announce({"stop": True})
        leave_process_group()


@contextmanager
def told_to_followers(mirror: CallMirror | None, message: dict[str, Any]) -> Iterator[None]:
    """In the first process of a split app: the other processes are told ``message`` and the block runs
    before anything else is told (they act on messages in order)."""
    if mirror is None or not mirror.leads:
        yield
        return
    with mirror.lock:
        mirror.announce(message)
        yield
