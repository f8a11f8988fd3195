"""What the command line and the app share of their flags: how they choose the engine's compile mode, and open the
engine and the evaluation cache they ask for."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tmpdiff.cache import Cache
    from tmpdiff.engine.runner import Engine

__all__ = ["CACHE_DIR_HELP", "DB_HELP", "GPU_MEMORY_HELP", "HOST_MEMORY_HELP", "add_cache_flags",
           "add_compile_flags", "choose_compile", "open_cache", "open_engine", "open_store"]


def choose_compile(compile_flag: bool | None, aot: bool | None) -> bool | str | None:
    """The engine's ``compile`` from a front end's ``--compile``/``--no-compile`` and ``--aot``.

    On a ZeroGPU Space, where each call may run in a new process on another GPU, just-in-time
    compilation is off unless asked for; ``--aot`` builds packages once and loads them in every process.
    """
    if aot:
        return "aot"
    if compile_flag is None and os.environ.get("SPACES_ZERO_GPU"):
        return False
    return compile_flag

DB_HELP = ("cache database: a file path (SQLite; default: in the cache folder) or a PostgreSQL URL "
           "(postgresql+psycopg://user@host/db) shared by many machines")


CACHE_DIR_HELP = "tmpdiff cache folder for compiled variants and the default database " \
    "(default: $TMPDIFF_CACHE_DIR or the user cache folder)"


def add_cache_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=None, help=DB_HELP)
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the evaluation cache")
    parser.add_argument("--cache-dir", type=Path, default=None, help=CACHE_DIR_HELP)


def add_compile_flags(parser: argparse.ArgumentParser) -> None:
    """How variants run (``--compile``, ``--aot``) and the memory they may use (``--gpu-memory``)."""
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile each variant (default: on for CUDA, off on ZeroGPU Spaces)")
    parser.add_argument("--aot", action="store_true", default=None,
                        help="ahead-of-time compiled variants: built once, loaded by later processes")
    parser.add_argument("--gpu-memory", type=float, default=None, metavar="GIB", help=GPU_MEMORY_HELP)
    parser.add_argument("--host-memory", type=float, default=None, metavar="GIB", help=HOST_MEMORY_HELP)


HOST_MEMORY_HELP = ("host memory in GiB the blocks streamed under --gpu-memory may hold page-locked; a plan that "
                    "needs more is refused before any work (default: what the system has available, less 4 GiB)")
GPU_MEMORY_HELP = ("GPU memory budget in GiB, honoured by the allocator: what does not fit streams block by block "
                   "from host memory (default: what the GPU has free, less 1 GiB)")


def open_engine(args: argparse.Namespace, device: str | None, compile: bool | str | None = None) -> Engine:
    """The engine for a front end's compile, memory and cache-folder flags, checked up front (``compile``, when
    given, overrides the flags: warming up always compiles)."""
    from tmpdiff.engine.runner import Engine
    from tmpdiff.variants.compile_cache import cache_root, check_cache_dir

    cache_dir = check_cache_dir(cache_root(args.cache_dir))
    mode = compile if compile is not None else choose_compile(args.compile, args.aot)
    engine = Engine(device=device, compile=mode, cache_dir=cache_dir,
                    gpu_memory=getattr(args, "gpu_memory", None), host_memory=getattr(args, "host_memory", None))
    return engine


def open_cache(path: str | None, enabled: bool = True, cache_dir: Path | None = None) -> Cache | None:
    """The cache store, or None with --no-cache."""
    return open_store(path, cache_dir) if enabled else None


def open_store(path: str | None, cache_dir: Path | None = None) -> Cache:
    """The cache store at ``--db`` (default: ``tmpdiff.sqlite`` in the cache folder)."""
    from tmpdiff.cache import Cache, default_db_path

    return Cache(path or default_db_path(cache_dir))

