"""A user's mistake, said in one line in each front end's own words, with the usage exit code."""

from __future__ import annotations

import os
import re
import sys

from tmpdiff.frontends.processes import refusal_exit

__all__ = ["EXIT_USAGE", "FLAGS", "in_cli_words", "refused", "say"]

EXIT_USAGE = 2


def say(line: str) -> None:
    """One line on stderr, from one process: the first of a ``--parallel`` launch speaks for all of them."""
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr)


def refused(exc: ValueError) -> int:
    """A user's mistake, in this command line's words: one line on stderr and the usage exit code (the tmpdiff
    command's and the app's)."""
    say(f"error: {in_cli_words(str(exc))}")
    return refusal_exit(EXIT_USAGE)


# The engine's field names (``name`` or ``name=value``), as this command line spells them.
FLAGS = {"exhaustive=true": "--exhaustive", "replace=true": "--replace", "device='cpu'": "--device cpu",
         "db=": "--db ", "db": "--db",
         "costs=": "--costs ", "costs": "--costs", "workers=": "--workers ",
         "additivity_samples=": "--additivity-samples ",
         "target_ssim": "--target-ssim", "target_speedup": "--target-speedup", "batch_size": "--batch-size",
         "additivity_samples": "--additivity-samples", "probe_stride": "--probe-stride"}


def in_cli_words(message: str) -> str:
    """An engine message with its field names replaced by this command line's flags."""

    # A field name stands alone: never part of a path or file name (``x.db``, ``/srv/costs/``).
    with_values = "|".join(re.escape(name) for name in FLAGS if name.endswith("="))
    bare = "|".join(re.escape(name) for name in FLAGS if not name.endswith("="))
    message = re.sub(rf"(?<![\w./-])({with_values})", lambda m: FLAGS[m.group(1)], message)
    return re.sub(rf"(?<![\w./-])({bare})(?![\w./-])", lambda m: FLAGS[m.group(1)], message)

