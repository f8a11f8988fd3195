"""A search on a real model: measure costs, run baselines, bisect, check additivity, report.

Every full evaluation goes through the ``Evaluator`` (and so through the cache when one is given),
so an interrupted search resumes for free.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .cancel import cancellable
from .evaluate import Evaluator
from .latency import CostTable
from .precisions import PRECISIONS, Status, precision_status
from .replay import ReplayStore
from .runner import Engine, RunSettings
from .schedule import Schedule
from .search import (
    Point,
    SearchOutcome,
    additivity_check,
    bisection_search,
    boundary_ks,
    boundary_schedules,
    evaluation_bound,
    exhaustive_search,
    pareto_front,
    planned_search,
    speedup_search,
    uniform_schedules,
)

__all__ = ["SearchRequest", "parse_seeds", "run_search"]

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class SearchRequest:
    """What to search; validated up front."""

    model: str
    prompts: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    steps: int | None = None
    size: int | None = None
    guidance: float | None = None
    ladder: tuple[str, ...] | None = None
    target_ssim: float | None = None
    target_speedup: float | None = None
    validation_seeds: tuple[int, ...] = (1000,)
    additivity_samples: int = 6
    probe_stride: int = 3  # single-step probes on every 3rd step, the rest interpolated (see additivity_check)
    exhaustive: bool = False
    baselines: bool = True
    replay: bool = True  # replay denoiser outputs of schedule prefixes already run (exact)
    batch_size: int = 1  # calibration images per pipeline call (throughput; fewer, larger denoiser calls)

    def __post_init__(self) -> None:
        if (self.target_ssim is None) == (self.target_speedup is None):
            raise ValueError("give exactly one objective: --target-ssim Q or --target-speedup X")
        if self.target_ssim is not None and not 0 < self.target_ssim <= 1:
            raise ValueError(f"--target-ssim must be in (0, 1], got {self.target_ssim}")
        if self.target_speedup is not None and self.target_speedup < 1:
            raise ValueError(f"--target-speedup must be at least 1, got {self.target_speedup}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be 1 or more, got {self.batch_size}")
        if self.additivity_samples < 0:
            raise ValueError(f"--additivity-samples must be 0 or more, got {self.additivity_samples}")
        if self.probe_stride < 1:
            raise ValueError(f"--probe-stride must be 1 or more, got {self.probe_stride}")
        if not self.prompts or not self.seeds:
            raise ValueError("the search needs at least one prompt and one seed")
        if set(self.seeds) & set(self.validation_seeds):
            raise ValueError(f"validation seeds {self.validation_seeds} must differ from search seeds {self.seeds}")
        for prompt in self.prompts:
            self.settings(prompt, self.seeds[0])
        if self.ladder is not None:
            for name in self.ladder:
                if name not in PRECISIONS:
                    raise ValueError(f"unknown precision {name!r} in the ladder: choose from {', '.join(PRECISIONS)}")

    def settings(self, prompt: str, seed: int) -> RunSettings:
        return RunSettings(model=self.model, prompt=prompt, seed=seed, steps=self.steps, size=self.size,
                           guidance=self.guidance)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "prompts": list(self.prompts), "seeds": list(self.seeds), "steps": self.steps,
                "size": self.size, "guidance": self.guidance, "ladder": list(self.ladder or []),
                "target_ssim": self.target_ssim, "target_speedup": self.target_speedup, "replay": self.replay,
                "probe_stride": self.probe_stride, "batch_size": self.batch_size}


def parse_seeds(text: str, name: str = "seeds") -> tuple[int, ...]:
    """``"0,1"`` → ``(0, 1)``; a ``ValueError`` naming ``name`` and the text otherwise."""
    try:
        values = tuple(int(x) for x in str(text).split(","))
    except ValueError:
        raise ValueError(f"{name} takes comma-separated whole numbers, got {text!r}") from None
    if any(v < 0 for v in values):
        raise ValueError(f"{name} takes numbers of 0 or more, got {text!r}")
    return values


class ModelOracle:
    """Mean SSIM over the calibration settings; cost from the measured table."""

    def __init__(self, evaluator: Evaluator, settings: list[RunSettings], table: CostTable, reference: str,
                 on_evaluation: Callable[[Schedule], None]) -> None:
        self.evaluator, self.settings, self.table, self.reference = evaluator, settings, table, reference
        self.on_evaluation = on_evaluation
        self.quality: dict[Schedule, tuple[float, float]] = {}

    def degradation(self, schedule: Schedule) -> float:
        if schedule not in self.quality:
            values = [e.record.ssim or 0.0 for e in self.evaluator.evaluate_all(self.settings, schedule)]
            self.quality[schedule] = (statistics.fmean(values), statistics.pstdev(values))
            self.on_evaluation(schedule)
        return 1 - self.quality[schedule][0]

    def cost(self, schedule: Schedule) -> float:
        return self.table.predict(schedule)

    def point(self, schedule: Schedule) -> Point:
        self.degradation(schedule)
        reference = self.table.predict(Schedule.uniform(self.reference, len(schedule)))
        return Point(str(schedule), self.quality[schedule][0], reference / self.cost(schedule))


class PhaseMeter:
    """Denoiser calls (made, replayed, skipped) and wall seconds of each phase of a search."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.calls: dict[str, dict[str, int]] = {}
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        before, start = dict(self.engine.calls), time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            counts = self.calls.setdefault(name, dict.fromkeys(before, 0))
            for kind, value in self.engine.calls.items():
                counts[kind] += value - before[kind]

    def report(self) -> dict[str, Any]:
        total = {kind: sum(c[kind] for c in self.calls.values()) for kind in self.engine.calls}
        return {"denoiser_calls": {**self.calls, "total": total},
                "phase_seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


def run_search(evaluator: Evaluator, request: SearchRequest, progress: Progress | None = None,
               should_stop: Callable[[], bool] | None = None,
               on_evaluation: Callable[[RunSettings, Schedule], None] | None = None,
               on_point: Callable[[Point], None] | None = None) -> dict[str, Any]:
    """Run the whole study and return the report (the CLI writes it as JSON). ``on_point`` hears of every
    evaluated schedule's (mean SSIM, predicted speed-up) as it lands, for a live plot."""
    previous = evaluator.replay, evaluator.batch_size
    evaluator.replay = ReplayStore() if request.replay else None
    evaluator.batch_size = request.batch_size
    try:
        with cancellable(should_stop):  # every phase stops at its next denoising step once should_stop() holds
            return _run_search(evaluator, request, progress, should_stop, on_evaluation, on_point)
    finally:
        evaluator.replay, evaluator.batch_size = previous


def _run_search(evaluator: Evaluator, request: SearchRequest, progress: Progress | None,
                should_stop: Callable[[], bool] | None,
                on_evaluation: Callable[[RunSettings, Schedule], None] | None,
                on_point: Callable[[Point], None] | None = None) -> dict[str, Any]:
    meter = PhaseMeter(evaluator.engine)
    base = request.settings(request.prompts[0], request.seeds[0])
    steps, reference = base.resolved_steps, base.spec.dtype
    calibration = [request.settings(p, s) for p in request.prompts for s in request.seeds]
    engine = evaluator.engine
    table = evaluator.costs.get(request.model)
    needed = set(_candidates(request, engine.device)) | {reference}
    stale = table is not None and not table.target and (table.steps != steps or not needed <= set(table.step_seconds))
    if table is None or stale:  # a table for another device (--costs) is used as it is
        with meter.phase("costs"):
            table = evaluator.measure_costs(base, sorted(needed))
        evaluator.costs[request.model] = table
        costs_source = evaluator.costs_measured_where
    elif table.target:
        costs_source = f"the given cost table of {table.device_name or table.device}"
    else:
        costs_source = "a cost table measured earlier for this device, model and step count (cache or this session)"
    ladder_notes: list[str] = []
    if request.ladder:
        ladder, ladder_notes = checked_ladder(list(request.ladder), table, reference)
    else:
        ladder = _default_ladder(table, reference)
    planned = _planned(steps, len(ladder), request)
    done = 0

    def evaluated(schedule: Schedule) -> None:
        nonlocal done
        done += 1
        if on_evaluation:
            for settings in calibration:
                on_evaluation(settings, schedule)
        if progress:
            progress(done, max(planned, done), str(schedule))
        if on_point:
            on_point(oracle.point(schedule))

    oracle = ModelOracle(evaluator, calibration, table, reference, evaluated)
    with meter.phase("baselines"):
        baselines = [oracle.point(s) for s in uniform_schedules(steps, ladder)]
        if request.baselines:
            baselines += [oracle.point(s) for s in boundary_schedules(steps, ladder)]
    before_search = len(oracle.quality)
    reference_cost = table.predict(Schedule.uniform(reference, steps))
    with meter.phase("search"):
        if request.target_ssim is not None:
            outcome = bisection_search(steps, ladder, oracle, 1 - request.target_ssim, should_stop=should_stop)
        else:
            target_cost = reference_cost / float(request.target_speedup or 1)
            outcome = speedup_search(steps, ladder, oracle, target_cost, should_stop=should_stop)
    search_evaluations = len(oracle.quality) - before_search
    found = oracle.point(outcome.schedule)
    report: dict[str, Any] = {
        "model": request.model, "device": table.device, "steps": steps, "ladder": ladder,
        "objective": {"target_ssim": request.target_ssim, "target_speedup": request.target_speedup},
        "ladder_notes": ladder_notes,
        "schedule": found.schedule, "ssim": found.quality, "ssim_std": oracle.quality[outcome.schedule][1],
        "speedup": found.speedup, "speedup_is_predicted": True,
        "evaluations": outcome.evaluations, "new_evaluations_in_search": search_evaluations,
        "evaluation_bound": evaluation_bound(steps, len(ladder)) * (7 if request.target_speedup else 1),
        "baselines": [p.to_dict() for p in baselines],
        "costs": table.to_dict(), "costs_source": costs_source,
        "simulated_in_ladder": [n for n in ladder if n in table.simulated],
    }
    report["best_baseline_at_speedup"] = _best_uniform_margin(baselines, found)
    if request.additivity_samples:
        with meter.phase("additivity"):
            check = additivity_check(steps, ladder, oracle, samples=request.additivity_samples,
                                     stride=request.probe_stride)
        report["additivity"] = {"r2": check.r2, "predicted": check.predicted, "measured": check.measured,
                                "schedules": check.schedules, "probe_stride": request.probe_stride}
        if request.target_ssim is not None:
            with meter.phase("planner"):
                report["strategies"] = _compare_strategies(oracle, outcome, steps, ladder, table, check.single_step,
                                                           1 - request.target_ssim)
    if request.exhaustive:
        with meter.phase("exhaustive"):
            best = exhaustive_search(steps, ladder, oracle, outcome.degradation if request.target_speedup
                                     else 1 - float(request.target_ssim), limit=4096)
        report["exhaustive"] = {"schedule": str(best.schedule), "ssim": 1 - best.degradation,
                                "speedup": reference_cost / best.cost, "evaluations": best.evaluations,
                                "bisection_cost_gap_pct": 100 * (outcome.cost - best.cost) / best.cost}
    with meter.phase("validation"):
        report["validation"] = _validate(evaluator, request, outcome.schedule)
    all_points = [oracle.point(s) for s in list(oracle.quality)]
    report["pareto"] = [p.to_dict() for p in pareto_front(all_points)]
    report.update(meter.report())
    report["replay"] = evaluator.replay.stats() if evaluator.replay is not None else None
    report["batch_size"] = evaluator.batch_size  # smaller than asked when memory ran out
    return report


def _compare_strategies(oracle: ModelOracle, bisected: SearchOutcome, steps: int, ladder: list[str],
                        table: CostTable, single: dict[tuple[int, str], float], budget: float) -> dict[str, Any]:
    """The bisection's result beside the additive planner's, which plans from the single-step probes the
    additivity check already paid for and verifies its plans (the bisection stays the default)."""
    planned = planned_search(steps, ladder, oracle, budget, single, table.step_seconds)

    def summary(outcome: SearchOutcome, evaluations: int) -> dict[str, Any]:
        point = oracle.point(outcome.schedule)
        return {"schedule": point.schedule, "ssim": point.quality, "speedup": point.speedup,
                "evaluations": evaluations}

    return {"bisection": summary(bisected, bisected.evaluations),
            "planner": {**summary(planned, planned.evaluations), "probes": len(single)}}


def _candidates(request: SearchRequest, device: str) -> list[str]:
    if request.ladder:
        return list(request.ladder)
    return [n for n in PRECISIONS if precision_status(n, device).status is Status.REAL]


def checked_ladder(ladder: list[str], table: CostTable, reference: str) -> tuple[list[str], list[str]]:
    """A user's ladder against the measured step costs: the reference first; every real rung measured
    no cheaper than the reference dropped (it could only give dominated schedules), the others most
    expensive first; simulated rungs (no speed claim) after them in the user's order; ``skip`` last.
    Returns the ladder and one note per change, for the report and the app."""
    base = table.step_seconds[reference]
    notes, real, simulated = [], [], []
    for name in dict.fromkeys(ladder):
        if name in (reference, "skip"):
            continue
        if name not in table.step_seconds:
            notes.append(f"{name} dropped from the ladder: " + (f"the cost table for {table.device_name} has no "
                         "cost for it" if table.target else "unavailable on this device"))
        elif name in table.simulated:
            simulated.append(name)
        elif table.step_seconds[name] >= base:
            where = table.device_name if table.target else "this device"
            notes.append(f"{name} dropped from the ladder: measured {1000 * table.step_seconds[name]:.1f} ms a "
                         f"step, not cheaper than the reference {reference} ({1000 * base:.1f} ms) on {where}")
        else:
            real.append(name)
    real.sort(key=lambda n: -table.step_seconds[n])
    checked = [reference, *real, *simulated, *(["skip"] if "skip" in ladder else [])]
    given = [n for n in ladder if n == reference or n in checked]
    if given != checked and not notes:
        notes.append(f"ladder re-ordered by measured step cost: {', '.join(checked)}")
    if ladder[0] != reference:
        notes.append(f"the reference precision {reference} leads the ladder")
    if len(checked) < 2:
        raise ValueError(f"no rung of the ladder {','.join(ladder)} is cheaper than the reference {reference} "
                         "on this device: add a cheaper precision or 'skip'")
    return checked, notes


def _default_ladder(table: CostTable, reference: str) -> list[str]:
    """The reference, then every real precision measured cheaper than it, most expensive first."""
    base = table.step_seconds[reference]
    cheaper = [n for n in table.ladder() if n != reference and table.step_seconds[n] < base]
    return [reference, *cheaper]


def _planned(steps: int, rungs: int, request: SearchRequest) -> int:
    baselines = rungs + (len(boundary_ks(steps)) * (rungs - 1) if request.baselines else 0)
    search = evaluation_bound(steps, rungs) * (7 if request.target_speedup else 1)
    probes = (steps // request.probe_stride + 1) * (rungs - 1)
    additivity = (probes + request.additivity_samples) if request.additivity_samples else 0
    return baselines + search // 3 + additivity  # the bound is rarely reached; progress stays honest by capping


def _best_uniform_margin(baselines: list[Point], found: Point) -> dict[str, Any] | None:
    """The best uniform or boundary baseline at least as fast as the found schedule, and the SSIM margin."""
    rivals = [p for p in baselines if p.speedup >= found.speedup - 1e-9 and p.schedule != found.schedule]
    if not rivals:
        return None
    best = max(rivals, key=lambda p: p.quality)
    return {"schedule": best.schedule, "ssim": best.quality, "speedup": best.speedup,
            "ssim_margin": found.quality - best.quality}


def _validate(evaluator: Evaluator, request: SearchRequest, schedule: Schedule) -> dict[str, Any]:
    """The found schedule on seeds the search never saw."""
    unseen = [request.settings(p, s) for p in request.prompts for s in request.validation_seeds]
    values = [e.record.ssim or 0.0 for e in evaluator.evaluate_all(unseen, schedule)]
    mean = statistics.fmean(values)
    result: dict[str, Any] = {"seeds": list(request.validation_seeds), "ssim": mean}
    if request.target_ssim is not None:
        result["meets_target"] = mean >= request.target_ssim
    return result
