"""``tmpdiff``: parses the command, runs it, and ends the process. User mistakes print one line on stderr and
exit 2; no traceback. The CLI is a front end like ``tmpdiff.ui``: it alone reaches for the ``tmpdiff.cache`` store,
and only when a command needs it, so importing the engine never loads a database library."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tmpdiff.cli.outcome import check_outputs
from tmpdiff.cli.parser import build_parser
from tmpdiff.frontends.processes import check_processes, refusal_exit, run_over_gpus
from tmpdiff.frontends.refusals import EXIT_USAGE, refused, say, tell_plan
from tmpdiff.pipelines.registry import MODELS

__all__ = ["leave", "main", "run"]


def run() -> None:
    """The ``tmpdiff`` command: :func:`main`, then a quick exit."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # the reader left early (`tmpdiff models | head -1`): nothing to tell, as Python's
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # docs advise; exit 1 as Python does
        code = 1
    leave(code)


def leave(code: int) -> None:
    """Ends the process the way the interpreter would (threads joined, ``atexit`` handlers run, output flushed)
    but without tearing down every module and object one by one: after a compiled model that teardown took
    1.3 s of a 12 s command on the CPU, time the user waits for and nothing needs."""
    import atexit
    import threading

    shutdown = getattr(threading, "_shutdown", None)  # joins non-daemon threads, as interpreter exit does
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.formatwarning = lambda message, *_args, **_kwargs: f"warning: {message}\n"  # one line each
    parser = build_parser()
    args = parser.parse_args(argv)  # --help and argument mistakes end here, before any heavy import
    started = time.perf_counter()
    phases: dict[str, float] = {}  # where the command's seconds went (generate --verbose)
    age = _process_age()
    if age is not None:
        phases["start"] = age  # the interpreter and this module
    if args.command in ("cache", "models"):  # moving evaluations, listing the registry: no torch, no pipeline
        return _in_one_line(lambda: _without_torch(args))
    from tmpdiff.engine.runner import default_device
    from tmpdiff.pipelines.registry import quiet_libraries

    if args.command in ("generate", "search", "sweep"):
        from tmpdiff.studies import study  # noqa: F401  (the engine's other heavy imports, counted here)
    phases["imports"] = time.perf_counter() - started  # torch, diffusers and the engine: paid once a process

    quiet_libraries()
    return _in_one_line(lambda: _command(args, _checked_device(args.device) or default_device(), argv,
                                             phases))


def _without_torch(args: argparse.Namespace) -> int:
    _checked_device(args.device)  # a mistaken --device is one, whatever the command
    if args.command == "cache":
        from tmpdiff.cli.cache_commands import cache_command

        return cache_command(args)
    return _list_models()


def _list_models() -> int:
    for spec in MODELS.values():
        print(f"{spec.name:<13} {spec.family:<7} {spec.dtype:<5} {spec.steps:>3} steps {spec.size:>5}px  "
              f"{spec.source}")
    return 0


def _in_one_line(command: Callable[[], int]) -> int:
    """Runs a command; a user's mistake (a ``ValueError``) or a file it cannot read or write (an ``OSError``)
    is one line on stderr and the usage exit code."""
    try:
        return command()
    except ValueError as exc:
        return refused(exc)
    except BrokenPipeError:  # not a file mistake: the reader of our output left (see run())
        raise
    except OSError as exc:  # a file or folder the command reads or writes: its path and why, in one line
        where = f": {exc.filename}" if exc.filename else ""
        say(f"error: {exc.strerror or exc}{where}")
        return refusal_exit(EXIT_USAGE)




def _command(args: argparse.Namespace, device: str, argv: list[str] | None, phases: dict[str, float]) -> int:
    """The command, with the engine's set-up (each variant built, each placement plan) said on stderr."""
    from tmpdiff.engine.runner import telling_builds_to, telling_plans_to
    from tmpdiff.frontends.words import describe_build

    def say_build(precision: str, mode: Any, expected: float | None) -> None:
        print(describe_build(precision, mode, expected), file=sys.stderr, flush=True)

    with telling_builds_to(say_build), telling_plans_to(tell_plan):
        return _run_command(args, device, argv, phases)


def _run_command(args: argparse.Namespace, device: str, argv: list[str] | None, phases: dict[str, float]) -> int:
    from tmpdiff.frontends.words import precision_table

    check_outputs(args)
    if args.command == "precisions":
        for row in precision_table(device):
            print(f"{row['name']:<7} {row['status']:<12} {row['description']}  [{row['reason']}]")
    elif args.command == "search":
        from tmpdiff.cli.study_commands import search

        return search(args, device)
    elif args.command == "sweep":
        from tmpdiff.cli.study_commands import sweep

        return sweep(args, device)
    elif args.command == "warmup":
        from tmpdiff.cli.image_commands import warmup

        return warmup(args, device)
    else:
        check_processes(args.parallel)
        if args.parallel > 1 and "RANK" not in os.environ:  # the same command in N processes, one a GPU
            return run_over_gpus(args.parallel, device, "tmpdiff", argv)
        from tmpdiff.cli.image_commands import generate

        return generate(args, device, phases)
    return 0


def _process_age() -> float | None:
    """Seconds since this process started (Linux), or None where the system does not say."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(uptime - ticks / os.sysconf("SC_CLK_TCK"), 0.0)




def _checked_device(device: str | None) -> str | None:
    import re

    if device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    return device

