"""tmpdiff web app: `tmpdiff-app [--model M] [--db PATH] [--host 127.0.0.1] [--port 7860] [--share]`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from tmpdiff.engine.split_app import follow, release_followers
from tmpdiff.frontends.flags import add_cache_flags, add_compile_flags
from tmpdiff.frontends.processes import check_processes, refusal_exit, run_over_gpus
from tmpdiff.frontends.refusals import refused

if TYPE_CHECKING:
    from tmpdiff.engine.runner import Engine



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None, help="model shown first (default: the trained shapes-dit)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="open a public gradio.live link")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_compile_flags(parser)
    parser.add_argument("--analytics", action="store_true",
                        help="let Gradio send its usage analytics (off unless asked for, here or with "
                             "GRADIO_ANALYTICS_ENABLED=True)")
    parser.add_argument("--parallel", type=int, default=1, metavar="N",
                        help="split each image over N CUDA GPUs of this machine (context parallelism; schedules "
                             "still switch per step): starts N processes through torchrun, the first serves the page")
    add_cache_flags(parser)
    return parser.parse_args(argv)


def build(args: argparse.Namespace, engine: Engine | None = None) -> Any:
    """The app's Blocks on ``engine`` (default: one made from ``args``)."""
    from tmpdiff import DEFAULT_MODEL, get_model
    from tmpdiff.frontends.flags import open_cache
    from tmpdiff.studies.study import Study

    from . import build_ui

    engine = engine or make_engine(args)
    store = open_cache(args.db, not args.no_cache, args.cache_dir)
    return build_ui(Study.open(engine, store), get_model(args.model or DEFAULT_MODEL).name)


def make_engine(args: argparse.Namespace) -> Engine:
    """The engine for the app's flags; with ``--parallel N`` inside a launch, split over its processes (every
    process makes this call, the first to serve, the others to follow it)."""
    from tmpdiff.frontends.flags import open_engine
    from tmpdiff.pipelines.registry import quiet_libraries

    quiet_libraries()
    engine = open_engine(args, args.device)
    if args.parallel > 1:
        engine.split_over(args.parallel, mirror=True)
    return engine


def port_in_use(host: str, port: int) -> bool:
    import socket

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_processes(args.parallel)
    except ValueError as exc:
        return refused(exc)
    if args.parallel > 1 and os.environ.get("RANK", "0") != "0":  # a following process: no page, no port
        return _follow(args)
    # Set before Gradio is imported: it reads the switch once.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "True" if args.analytics else \
        os.environ.get("GRADIO_ANALYTICS_ENABLED", "False")
    if port_in_use(args.host, args.port):  # checked before the model loads, not after
        print(f"error: port {args.port} on {args.host} is in use: pass --port N (or set GRADIO_SERVER_PORT)",
              file=sys.stderr)
        return 2
    try:
        if args.parallel > 1 and "RANK" not in os.environ:  # this app in N processes, one a GPU
            from tmpdiff.engine.runner import default_device

            return run_over_gpus(args.parallel, args.device or default_device(), "tmpdiff.ui.serve", argv)
        engine = make_engine(args)
    except ValueError as exc:
        return refused(exc)
    try:
        if engine.split > 1:  # a model that cannot be split says so now, not at the first image
            from tmpdiff import DEFAULT_MODEL, get_model

            engine.pipeline(get_model(args.model or DEFAULT_MODEL).name)
        demo = build(args, engine)
    except ValueError as exc:
        release_followers(engine)
        return refused(exc)
    from . import LAUNCH_OPTIONS, QUEUE_OPTIONS

    try:
        demo.queue(**QUEUE_OPTIONS).launch(server_name=args.host, server_port=args.port, share=args.share,
                                           **LAUNCH_OPTIONS)
    finally:
        release_followers(engine)
    return 0


def _follow(args: argparse.Namespace) -> int:
    """A process of a ``--parallel`` app other than the first: makes the first one's pipeline calls. A mistake
    in the app's flags is the first process's to tell."""
    try:
        engine = make_engine(args)
    except ValueError:
        return refusal_exit(2)
    follow(engine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
