"""What every command shares at its ends: its outputs checked before any work, and its exit code (``2`` a user's
mistake, ``3`` results not kept, ``130`` interrupted). The command modules and ``entry`` import it; it imports none
of them, so the package has no import circle."""

from __future__ import annotations

import argparse
from typing import Any

from tmpdiff.frontends.refusals import say

__all__ = ["EXIT_INTERRUPTED", "EXIT_NOT_KEPT", "check_outputs", "kept_or_said"]

EXIT_INTERRUPTED = 130
EXIT_NOT_KEPT = 3  # the command worked, but some of its results could not be kept in the cache it was given


def kept_or_said(evaluator: Any, code: int = 0) -> int:
    """``code``, or when results the user asked to cache could not be kept: one line on stderr (how many, and the
    store's reason) and ``EXIT_NOT_KEPT``."""
    if not evaluator.not_kept:
        return code
    say(f"error: {evaluator.not_kept} result(s) were computed but could not be kept in the cache "
        f"({evaluator.store_error}); check the database and its folder, then run again to store them")
    return EXIT_NOT_KEPT


def check_outputs(args: argparse.Namespace) -> None:
    """Output paths checked before any work, so that no result is computed only to be lost."""
    for flag in ("out", "json", "csv"):
        path = getattr(args, flag, None)
        if path is None:
            continue
        if path.is_dir():
            raise ValueError(f"--{flag} {str(path)!r} is a folder: name a file in it")
        if not path.parent.exists():
            raise ValueError(f"--{flag} folder {str(path.parent)!r} does not exist")
    if getattr(args, "cache_command", None) == "export" and not args.file.parent.exists():
        raise ValueError(f"export folder {str(args.file.parent)!r} does not exist")
