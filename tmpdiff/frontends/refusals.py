"""A user's mistake, said in one line in each front end's own words, with the usage exit code."""

from __future__ import annotations

import os
import sys

from tmpdiff.errors import FieldError
from tmpdiff.frontends.processes import refusal_exit

__all__ = ["EXIT_USAGE", "flag_of", "in_cli_words", "refused", "say", "tell_plan"]

EXIT_USAGE = 2


def say(line: str) -> None:
    """One line on stderr, from one process: the first of a ``--parallel`` launch speaks for all of them."""
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr)


def tell_plan(model: str, line: str) -> None:
    """A model's placement plan, one line on stderr (``plan for flux-dev: budget 24.0 GiB: ...``): the command
    line's and the app server's log, from every process (each plans its own GPU)."""
    print(f"plan for {model}: {line}", file=sys.stderr, flush=True)


def refused(exc: ValueError) -> int:
    """A user's mistake, in this command line's words: one line on stderr and the usage exit code (the tmpdiff
    command's and the app's)."""
    say(f"error: {in_cli_words(exc)}")
    return refusal_exit(EXIT_USAGE)


# Fields whose flag is not ``--`` and the field's name with dashes.
FLAGS = {"prompts": "--num-prompts", "prompt_file": "--prompts file"}


def flag_of(field: str) -> str:
    """The command-line flag that sets the engine's field ``field`` (``target_ssim`` → ``--target-ssim``)."""
    return FLAGS.get(field, "--" + field.replace("_", "-"))


def in_cli_words(exc: ValueError) -> str:
    """A refusal as this command line says it: a field error names its flag, any other says what it says."""
    return exc.worded(flag_of) if isinstance(exc, FieldError) else str(exc)
