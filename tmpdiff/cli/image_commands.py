"""``tmpdiff generate`` (one image beside its reference) and ``tmpdiff warmup`` (compile variants ahead)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tmpdiff.cli.entry import PHASES
from tmpdiff.frontends.flags import open_cache
from tmpdiff.pipelines.registry import MODELS

if TYPE_CHECKING:
    from tmpdiff.engine.runner import Engine
    from tmpdiff.engine.settings import RunSettings
    from tmpdiff.measure.latency import CostTable

__all__ = ["engine_for", "generate", "save_result", "target_costs", "warmup"]


def generate(args: argparse.Namespace, device: str) -> int:
    from tmpdiff.engine.settings import RunSettings
    from tmpdiff.measure.evaluator import Evaluator
    from tmpdiff.pipelines.registry import get_model
    from tmpdiff.steps.replay import ReplayStore
    from tmpdiff.studies.study import Study

    video = args.model in MODELS and get_model(args.model).frames > 0
    if args.out.suffix.lower() not in ((".png", ".webp") if video else (".png",)):
        raise ValueError(f"--out must name a .png file{' (an animated PNG) or a .webp file' if video else ''}, "
                         f"got {str(args.out)!r}")
    if not args.out.parent.exists():
        raise ValueError(f"--out folder {str(args.out.parent)!r} does not exist")
    settings = RunSettings(model=args.model, prompt=args.prompt, negative_prompt=args.negative_prompt,
                           seed=args.seed, steps=args.steps, size=args.size, guidance=args.guidance)
    engine = engine_for(args, device)
    schedule = engine.check_schedule(args.schedule or settings.reference_schedule(), settings)
    target = target_costs(args)
    split = _split_over_processes(engine, settings, args.parallel) if args.parallel > 1 else 0
    clock = time.perf_counter()
    store = open_cache(args.db, not args.no_cache, args.cache_dir)
    # One image: predicted seconds only from a cost table a search stored (or --costs), never measured here.
    # Split over processes, each computes both images (no cache hits: one process answering from the cache while
    # another computes would stall the exchanges between them); the first stores them.
    # The schedule replays what it shares with the reference just computed (its first steps, say).
    evaluator = Evaluator(engine, None if split else store, measures_costs=False, replay=ReplayStore())
    Study(evaluator, store).load_stored_costs(settings)
    store_s, clock = time.perf_counter() - clock, time.perf_counter()
    reference = evaluator.reference(settings)  # what evaluate() does first: timed apart for --verbose
    reference_s, clock = time.perf_counter() - clock, time.perf_counter()
    evaluation = evaluator.beside(reference, settings, schedule)
    schedule_s, clock = time.perf_counter() - clock, time.perf_counter()
    if split:
        from tmpdiff.pipelines.context_parallel import is_main_process

        if not is_main_process():
            return 0
        keeper = Evaluator(engine, store)
        keeper.keep(reference)
        keeper.keep(evaluation)
    save_result(evaluation.image, args.out, video)
    line = {"prompt": settings.resolved_prompt, "seed": settings.seed, **evaluation.summary(), "out": str(args.out)}
    if split:
        line["split_over_processes"] = split
    if args.verbose:
        weights = engine.load_seconds.get(settings.model, 0.0)
        PHASES.update({"cache_database": store_s, "weights": weights,
                       "reference_image": max(reference_s - weights, 0.0), "schedule_image": schedule_s,
                       "vae_decode_in_images": evaluation.vae_seconds or 0.0, "write": time.perf_counter() - clock})
        line["phase_seconds"] = {k: round(v, 3) for k, v in PHASES.items()}
    if target is not None:
        from tmpdiff.measure.cost_tables import target_prediction

        line["predicted_on"] = target_prediction(target, settings.reference_schedule(), schedule)
    print(json.dumps(line))
    return 0


def _split_over_processes(engine: Engine, settings: RunSettings, processes: int) -> int:
    """In a process of a ``--parallel`` launch: joins the others and splits the model's denoisers over them;
    returns how many processes the denoisers are split over, as their context-parallel config says."""
    from tmpdiff.pipelines.context_parallel import split_degree

    engine.split_over(processes)
    return split_degree(engine.pipeline(settings.model))


def save_result(image: Any, path: Path, video: bool = False, fps: int = 16) -> None:
    """An image as PNG; a video (a frame sheet) as a lossless animated PNG or WebP that plays in any browser (no
    video encoder is needed, and no frame loses a bit)."""
    if not video:
        image.save(path)
        return
    from tmpdiff.engine.frames import write_animation

    write_animation(image, path, "WEBP" if path.suffix.lower() == ".webp" else "PNG", fps)


def target_costs(args: argparse.Namespace) -> CostTable | None:
    """The ``--costs`` table (checked against the model), or None."""
    from tmpdiff.measure.cost_tables import load_cost_table

    return load_cost_table(args.costs, args.model) if args.costs else None


def engine_for(args: argparse.Namespace, device: str) -> Engine:
    """The engine for a command's compile flags and cache folder, checked up front."""
    from tmpdiff.engine.runner import Engine
    from tmpdiff.frontends.flags import choose_compile
    from tmpdiff.frontends.words import describe_build
    from tmpdiff.variants.compile_cache import cache_root, check_cache_dir

    cache_dir = check_cache_dir(cache_root(args.cache_dir))
    engine = Engine(device=device, compile=choose_compile(args.compile, args.aot), cache_dir=cache_dir)
    engine.on_build = lambda precision, mode, expected: print(describe_build(precision, mode, expected),
                                                              file=sys.stderr, flush=True)
    return engine


def warmup(args: argparse.Namespace, device: str) -> int:
    from torch._dynamo.utils import counters
    from tqdm import tqdm

    from tmpdiff.engine.settings import RunSettings
    from tmpdiff.frontends.words import describe_build
    from tmpdiff.pipelines.registry import get_model

    spec = get_model(args.model)
    names = [n.strip() for n in (args.precisions or spec.dtype).split(",")]
    if any(not n for n in names) or "skip" in names:
        raise ValueError(f"--precisions must name precisions to compile, e.g. 'bf16,fp8', got {args.precisions!r} "
                         "('skip' has nothing to compile)")
    args.compile = True  # warming up means compiling, on the CPU too
    engine = engine_for(args, device)
    settings = RunSettings(model=args.model, size=args.size, steps=2)
    for name in names:
        engine.check_schedule(f"{name}*2", settings)  # every name known and usable here, before any work
    bar = tqdm(names, unit="precision", desc="warmup", file=sys.stderr)
    engine.on_build = lambda precision, mode, expected: bar.set_postfix_str(describe_build(precision, mode, expected))
    rows = []
    for name in bar:
        misses = counters["inductor"]["fxgraph_cache_miss"]
        builds = engine.warm(settings, name)
        rows.append({"precision": name, "mode": engine.mode.value,
                     "seconds": round(sum(b.seconds for b in builds), 2),
                     "from_cache": all(b.from_cache for b in builds) if builds else None,
                     "inductor_compilations": counters["inductor"]["fxgraph_cache_miss"] - misses})
    bar.close()
    print(json.dumps({"model": args.model, "size": settings.resolved_size, "device": device,
                      "cache_dir": str(engine.compile_cache.root), "variants": rows}))
    return 0

