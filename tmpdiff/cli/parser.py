"""The command line's arguments: one sub-command each for images, searches, sweeps, compiled variants, the
registries and the cache; the flags shared with the app come from ``tmpdiff.frontends.flags``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tmpdiff.frontends.flags import (
    CACHE_DIR_HELP,
    DB_HELP,
    GPU_MEMORY_HELP,
    HOST_MEMORY_HELP,
    add_cache_flags,
    add_compile_flags,
)
from tmpdiff.pipelines.registry import DEFAULT_MODEL
from tmpdiff.studies.request import DEFAULT_SSIM_FLOOR

__all__ = ["build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tmpdiff", description="Temporal mixed precision for diffusion.")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (_generate, _search, _sweep, _warmup, _registries_and_cache):
        add(commands)
    return parser


def _generate(commands: Any) -> None:
    """``generate``: one image beside its reference."""
    gen = commands.add_parser("generate", help="render one image with a per-step precision schedule")
    gen.add_argument("--model", default=DEFAULT_MODEL, help=f"registry name (default {DEFAULT_MODEL}); see `models`")
    gen.add_argument("--prompt", default=None, help="prompt, or class name for class-conditional models")
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--size", type=int, default=None, help="image height and width (default: the model's)")
    gen.add_argument("--guidance", type=float, default=None)
    gen.add_argument("--schedule", default=None,
                     help="e.g. 'bf16*4,fp8*20,bf16*4' (default: every step in the reference precision)")
    add_compile_flags(gen)
    gen.add_argument("--out", required=True, type=Path, help="PNG file to write")
    gen.add_argument("--verbose", action="store_true",
                     help="add where the seconds went to the output line: imports, cache database, weights, "
                          "reference image, schedule image (variant builds included), VAE decoding, writing")
    gen.add_argument("--parallel", type=int, default=1, metavar="N",
                     help="one image split over N CUDA GPUs of this machine (context parallelism; the schedule "
                          "still switches per step): starts N processes through torchrun")
    _add_costs_flag(gen)
    add_cache_flags(gen)



def _search(commands: Any) -> None:
    """``search``: a schedule for a quality or speed target."""
    search = commands.add_parser("search", help="find a per-step schedule for a quality or speed target")
    search.add_argument("--model", default=DEFAULT_MODEL)
    search.add_argument("--steps", type=int, default=None)
    search.add_argument("--size", type=int, default=None)
    search.add_argument("--guidance", type=float, default=None)
    objective = search.add_mutually_exclusive_group()
    objective.add_argument("--target-ssim", type=float, default=None,
                           help=f"quality floor: mean SSIM (default {DEFAULT_SSIM_FLOOR})")
    objective.add_argument("--target-speedup", type=float, default=None, help="speed target, e.g. 1.5")
    search.add_argument("--ladder", default=None, help="e.g. 'fp32,int8wo,skip' (default: measured here)")
    search.add_argument("--prompts", type=Path, default=None, help="text file, one prompt per line, or a TSV")
    search.add_argument("--num-prompts", type=int, default=4, help="calibration prompts to use (default 4)")
    search.add_argument("--seeds", default="0,1", help="comma-separated calibration seeds (default 0,1)")
    search.add_argument("--validation-seeds", default="1000,1001", help="seeds to re-check the result on")
    search.add_argument("--exhaustive", action="store_true", help="also search every schedule (small T only)")
    search.add_argument("--probe-stride", type=int, default=3,
                        help="probe single-step degradations on every Nth step, interpolate between (default 3; "
                             "1 probes every step)")
    search.add_argument("--additivity-samples", type=int, default=0,
                        help="mixed schedules that check whether single-step losses add up, and feed the additive "
                             "planner (default 0: the bisection does not use them; 6 is a good check)")
    search.add_argument("--batch-size", type=int, default=1,
                        help="calibration images per pipeline call (default 1); larger batches make fewer denoiser "
                             "calls, halved automatically when GPU memory runs out")
    search.add_argument("--no-replay", action="store_true",
                        help="compute every step of every evaluation (replay of shared prefixes is exact; "
                             "this is for checking it)")
    add_compile_flags(search)
    search.add_argument("--json", type=Path, required=True, help="report file to write")
    _add_costs_flag(search)
    _add_ray_flags(search)
    add_cache_flags(search)



def _sweep(commands: Any) -> None:
    """``sweep``: a grid of evaluations from a spec file."""
    sweep = commands.add_parser("sweep", help="evaluate models x prompts x seeds x schedules from a spec file")
    sweep.add_argument("spec", type=Path, help="a .toml grid or a .csv list of evaluations (see the README)")
    sweep.add_argument("--csv", type=Path, required=True, help="results file to write, one row per evaluation")
    sweep.add_argument("--no-replay", action="store_true", help="compute every step (replay is exact)")
    add_compile_flags(sweep)
    _add_ray_flags(sweep)
    add_cache_flags(sweep)



def _warmup(commands: Any) -> None:
    """``warmup``: compile variants ahead and keep them."""
    warm = commands.add_parser("warmup", help="compile precision variants once and keep them in the cache folder")
    warm.add_argument("--model", default=DEFAULT_MODEL)
    warm.add_argument("--precisions", default=None, help="comma-separated, e.g. 'bf16,fp8' (default: the reference)")
    warm.add_argument("--size", type=int, default=None, help="image size to compile for (default: the model's)")
    warm.add_argument("--gpu-memory", type=float, default=None, metavar="GIB", help=GPU_MEMORY_HELP)
    warm.add_argument("--host-memory", type=float, default=None, metavar="GIB", help=HOST_MEMORY_HELP)
    warm.add_argument("--aot", action="store_true", default=None,
                      help="ahead-of-time packages instead of torch.compile")
    warm.add_argument("--cache-dir", type=Path, default=None, help=CACHE_DIR_HELP)



def _registries_and_cache(commands: Any) -> None:
    """``precisions``, ``models`` and ``cache export|import``."""
    commands.add_parser("precisions", help="list the precision registry on this device")
    commands.add_parser("models", help="list the model registry")

    cache = commands.add_parser("cache", help="move evaluations between machines")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True)
    for name, text in (("export", "write every evaluation to a JSON file"),
                       ("import", "validate and add the evaluations of an export file")):
        sub = cache_commands.add_parser(name, help=text)
        sub.add_argument("file", type=Path)
        sub.add_argument("--db", default=None, help=DB_HELP)
        sub.add_argument("--cache-dir", type=Path, default=None, help=CACHE_DIR_HELP)
        if name == "import":
            sub.add_argument("--replace", action="store_true",
                             help="overwrite stored evaluations that the file holds differently (refused otherwise)")


def _add_costs_flag(parser: argparse.ArgumentParser) -> None:
    from tmpdiff.measure.cost_tables import shipped_tables

    parser.add_argument("--costs", metavar="FILE|NAME",
                        help="predict latency on another device from its measured step costs: a CostTable JSON "
                             f"file or a shipped table ({', '.join(shipped_tables())})")


def _add_ray_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=None,
                        help="spread the evaluations over N Ray actors (local Ray; one GPU each on CUDA)")
    parser.add_argument("--ray", metavar="ADDRESS", default=None,
                        help="run the actors on the Ray cluster at ADDRESS (e.g. ray://head:10001 or auto)")

