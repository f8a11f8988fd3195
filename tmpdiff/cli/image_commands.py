"""``tmpdiff generate`` (one image beside its reference) and ``tmpdiff warmup`` (compile variants ahead)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tmpdiff.cli.outcome import kept_or_said
from tmpdiff.frontends.flags import open_cache
from tmpdiff.pipelines.registry import MODELS

if TYPE_CHECKING:
    from tmpdiff.engine.runner import Engine
    from tmpdiff.engine.settings import RunSettings
    from tmpdiff.measure.latency import CostTable

__all__ = ["engine_for", "generate", "save_result", "target_costs", "warmup"]


def generate(args: argparse.Namespace, device: str, phases: dict[str, float]) -> int:
    """One image beside its reference; ``phases`` (the process's start and imports so far) gets where the rest of
    the seconds went, printed with ``--verbose``."""
    from tmpdiff.engine.settings import RunSettings
    from tmpdiff.studies.study import Study

    video = _check_out(args)
    settings = RunSettings(model=args.model, prompt=args.prompt, negative_prompt=args.negative_prompt,
                           seed=args.seed, steps=args.steps, size=args.size, guidance=args.guidance)
    engine = engine_for(args, device)
    schedule = engine.check_schedule(args.schedule or settings.reference_schedule(), settings)
    given = target_costs(args)
    if args.parallel > 1:
        _split_over_processes(engine, settings, args.parallel)
    clock = [time.perf_counter()]
    store = open_cache(args.db, not args.no_cache, args.cache_dir)
    phases["cache_database"] = _lap(clock)
    study = Study.open(engine, store)
    comparison = study.compare(settings, schedule, given,
                               on_phase=lambda what, _: phases.update({_phase_name(what): _lap(clock)}))
    phases["schedule_image"] = _lap(clock)
    if not engine.leads:
        return 0
    save_result(comparison.evaluation.image, args.out, video)
    line = {**comparison.summary(), "out": str(args.out)}
    if args.verbose:
        weights = engine.load_seconds(settings.model)
        phases.update({"weights": weights, "reference_image": max(phases.pop("reference_image", 0.0) - weights, 0.0),
                       "vae_decode_in_images": comparison.evaluation.vae_seconds or 0.0, "write": _lap(clock)})
        phases.pop("stored_costs", None)
        line["phase_seconds"] = {k: round(v, 3) for k, v in phases.items()}
        line["set_up"] = engine.set_up.to_dict()  # within the phases: each variant's build, captures, warm-ups
    print(json.dumps(line))
    return kept_or_said(study.evaluator)


def _check_out(args: argparse.Namespace) -> bool:
    """The ``--out`` file checked before any work; whether the model makes videos."""
    from tmpdiff.pipelines.registry import get_model

    video = args.model in MODELS and get_model(args.model).frames > 0
    if args.out.suffix.lower() not in ((".png", ".webp") if video else (".png",)):
        raise ValueError(f"--out must name a .png file{' (an animated PNG) or a .webp file' if video else ''}, "
                         f"got {str(args.out)!r}")
    if not args.out.parent.exists():
        raise ValueError(f"--out folder {str(args.out.parent)!r} does not exist")
    return video


def _lap(clock: list[float]) -> float:
    """Seconds since the last lap (``clock`` holds when it was)."""
    now = time.perf_counter()
    seconds, clock[0] = now - clock[0], now
    return seconds


def _phase_name(what: str) -> str:
    """The ``--verbose`` name of the span that ended when ``what`` began."""
    return "stored_costs" if what.startswith("reference") else "reference_image"


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


def engine_for(args: argparse.Namespace, device: str, compile: bool | str | None = None) -> Engine:
    """The engine for a command's flags (``frontends.flags.open_engine``); what it says of its set-up goes where
    ``entry`` points the engine's listeners (stderr)."""
    from tmpdiff.frontends.flags import open_engine

    return open_engine(args, device, compile)


def warmup(args: argparse.Namespace, device: str) -> int:
    from tqdm import tqdm

    from tmpdiff.engine.runner import telling_builds_to
    from tmpdiff.engine.settings import RunSettings
    from tmpdiff.frontends.words import describe_build
    from tmpdiff.pipelines.registry import get_model
    from tmpdiff.steps.precisions import PRECISIONS, computes

    spec = get_model(args.model)
    names = [n.strip() for n in (args.precisions or spec.dtype).split(",")]
    if any(not n for n in names) or any(n in PRECISIONS and not computes(n) for n in names):
        raise ValueError(f"--precisions must name precisions to compile, e.g. 'bf16,fp8', got {args.precisions!r} "
                         "(skip and extrap call no denoiser: they have nothing to compile)")
    engine = engine_for(args, device, compile="aot" if args.aot else True)  # warming up compiles, on the CPU too
    settings = RunSettings(model=args.model, size=args.size, steps=2)
    for name in names:
        engine.check_schedule(f"{name}*2", settings)  # every name known and usable here, before any work
    bar = tqdm(names, unit="precision", desc="warmup", file=sys.stderr)
    rows = []
    for name in bar:
        with telling_builds_to(lambda precision, mode, expected: bar.set_postfix_str(
                describe_build(precision, mode, expected))):
            builds = engine.warm(settings, name)
        rows.append({"precision": name, "mode": engine.mode.value,
                     "seconds": round(sum(b.seconds for b in builds), 2),
                     "from_cache": all(b.from_cache for b in builds) if builds else None,
                     "inductor_compilations": sum(b.inductor_compilations for b in builds),
                     "builds": [b.to_dict() for b in builds]})
    bar.close()
    print(json.dumps({"model": args.model, "size": settings.resolved_size, "device": device,
                      "cache_dir": str(engine.compile_cache.root), "variants": rows}))
    return 0

