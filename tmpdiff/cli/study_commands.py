"""``tmpdiff search`` (a schedule for a quality or speed target) and ``tmpdiff sweep`` (a grid of evaluations)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tmpdiff.cli.image_commands import engine_for, target_costs
from tmpdiff.cli.outcome import EXIT_INTERRUPTED, kept_or_said
from tmpdiff.errors import worded
from tmpdiff.frontends.flags import open_cache
from tmpdiff.frontends.refusals import flag_of
from tmpdiff.studies.request import DEFAULT_SSIM_FLOOR

if TYPE_CHECKING:
    from tmpdiff.cache import Cache
    from tmpdiff.measure.evaluator import Evaluator
    from tmpdiff.measure.latency import CostTable
    from tmpdiff.studies.report import SearchReport
    from tmpdiff.studies.request import SearchRequest

__all__ = ["search", "sweep"]


def search(args: argparse.Namespace, device: str) -> int:
    from tqdm import tqdm

    from tmpdiff.studies.study import Study

    if not args.json.parent.exists():
        raise ValueError(f"--json folder {str(args.json.parent)!r} does not exist")
    request = _search_request(args)
    target = target_costs(args)
    store = open_cache(args.db, not args.no_cache, args.cache_dir)
    study = Study(_search_evaluator(args, device, store), store, target)
    bar = tqdm(total=1, unit="eval", desc="search", file=sys.stderr)

    def progress(done: int, planned: int, what: str) -> None:
        bar.total = planned
        bar.n = done
        bar.set_postfix_str(what[:40])
        bar.refresh()

    try:
        report = study.search(request, progress=progress)
    except KeyboardInterrupt:
        return _interrupted(bar, "search")
    finally:
        bar.close()  # a refusal's line then starts a line of its own, not the bar's
    args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    _tell(report, request, _written_plots(report, args.json), target)
    return kept_or_said(study.evaluator)


def _search_request(args: argparse.Namespace) -> SearchRequest:
    """The command's flags as a search request, checked before any work."""
    from tmpdiff.pipelines.registry import get_model
    from tmpdiff.studies.prompts import calibration_prompts
    from tmpdiff.studies.request import SearchRequest, parse_seeds

    spec = get_model(args.model)
    request = SearchRequest(
        model=args.model, prompts=tuple(calibration_prompts(spec.labels, args.num_prompts, args.prompts)),
        seeds=parse_seeds(args.seeds),
        validation_seeds=parse_seeds(args.validation_seeds, "validation_seeds"),
        steps=args.steps, size=args.size, guidance=args.guidance,
        ladder=tuple(args.ladder.split(",")) if args.ladder else None,
        target_ssim=args.target_ssim if args.target_ssim is not None or args.target_speedup else DEFAULT_SSIM_FLOOR,
        target_speedup=args.target_speedup, exhaustive=args.exhaustive, replay=not args.no_replay,
        probe_stride=args.probe_stride, batch_size=args.batch_size, additivity_samples=args.additivity_samples,
    )
    if request.batch_size > 1 and (args.workers is not None or args.ray is not None):
        # Each actor runs one calibration image per call: a batch size would be reported but never used.
        raise ValueError(f"--batch-size {request.batch_size} does not combine with --workers/--ray (each Ray actor "
                         "runs one image per call): drop one of them")
    return request


def _written_plots(report: SearchReport, json_path: Path) -> list[str]:
    try:
        return _write_plots(report, json_path)
    except ImportError:  # a declared dependency, but the report written before must never be lost to its absence
        print("warning: plotly is not installed: no HTML plots written (pip install plotly)", file=sys.stderr)
        return []


def _tell(report: SearchReport, request: SearchRequest, plots: list[str], target: CostTable | None) -> None:
    """The search's notes on stderr, and its summary as the one JSON line on stdout."""
    summary = {**report.summary(), "evaluation_bound": report.evaluation_bound,
               "denoiser_calls": report.denoiser_calls["total"]}
    if target is not None:
        from tmpdiff.measure.cost_tables import prediction_label

        summary["speedup_label"] = prediction_label(target)
    for note in report.ladder_notes:
        print(f"note: {note}", file=sys.stderr)
    for phase in report.skipped:
        print(f"skipped: {worded(phase, flag_of)}", file=sys.stderr)
    for schedule in report.not_run:
        print(f"not run (out of memory within --gpu-memory; never chosen): {schedule}", file=sys.stderr)
    if report.validation.meets_target is False:
        print(f"warning: on unseen seeds the schedule scored SSIM {report.validation.ssim:.3f}, "
              f"below the {request.target_ssim} floor", file=sys.stderr)
    print(json.dumps({**summary, "plots": plots}))


def sweep(args: argparse.Namespace, device: str) -> int:
    from tqdm import tqdm

    from tmpdiff.studies.study import Study
    from tmpdiff.studies.sweep import load_spec, summarize, write_csv

    if not args.csv.parent.exists():
        raise ValueError(f"--csv folder {str(args.csv.parent)!r} does not exist")
    items = load_spec(args.spec)
    store = open_cache(args.db, not args.no_cache, args.cache_dir)
    study = Study(_search_evaluator(args, device, store), store)
    bar = tqdm(total=len(items), unit="eval", desc="sweep", file=sys.stderr)

    def progress(done: int, planned: int, what: str) -> None:
        bar.set_postfix_str(what[:40], refresh=False)
        bar.update(done - bar.n)

    try:
        rows = study.sweep(items, progress=progress, replay=not args.no_replay, spec=str(args.spec))
    except KeyboardInterrupt:
        return _interrupted(bar, "sweep")
    bar.close()
    write_csv(rows, args.csv)
    calls = study.evaluator.engine.calls
    print(json.dumps({"evaluations": len(rows), "from_cache": sum(r["cached"] for r in rows), "csv": str(args.csv),
                      "denoiser_calls": calls["denoiser"], "schedules": summarize(rows)}))
    return kept_or_said(study.evaluator)


def _interrupted(bar: Any, command: str) -> int:
    """Ctrl-C during a search or sweep: nothing is lost, since every finished evaluation is in the cache."""
    bar.close()
    print(f"error: {command} interrupted; every finished evaluation is cached, run it again to resume",
          file=sys.stderr)
    return EXIT_INTERRUPTED


def _search_evaluator(args: argparse.Namespace, device: str, store: Cache | None) -> Evaluator:
    """The evaluator of a search or sweep: in this process, or spread over Ray actors with --workers/--ray."""
    from tmpdiff.measure.evaluator import Evaluator

    engine = engine_for(args, device)
    if args.workers is None and args.ray is None:
        return Evaluator(engine, store)
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be 1 or more, got {args.workers}")
    from functools import partial

    from tmpdiff.cache import Cache, default_db_path
    from tmpdiff.studies.ray_workers import DistributedEvaluator, StoreFactory, start_ray

    workers = start_ray(args.ray, args.workers, device)
    location = None if store is None else (args.db or str(default_db_path(args.cache_dir)))
    factory: StoreFactory = partial(Cache, location) if location else _no_store
    return DistributedEvaluator(engine, store, factory, workers)


def _no_store() -> None:
    return None


def _write_plots(report: SearchReport, json_path: Path) -> list[str]:
    """Interactive HTML beside the JSON: the Pareto front over every evaluation, and the additivity check
    (degradation predicted from single steps against measured) when the search ran it."""
    from tmpdiff.frontends import plots

    figures = {"pareto": plots.search_pareto(report), "additivity": plots.additivity(report)}
    paths = []
    for name, figure in figures.items():
        if figure is not None:
            paths.append(json_path.with_suffix(f".{name}.html"))
            figure.write_html(paths[-1], include_plotlyjs="cdn")
    return [str(p) for p in paths]

