"""A search on a real model: measure costs, run baselines, bisect, check additivity, report.

Every full evaluation goes through the ``Evaluator`` (and so through the cache when one is given),
so an interrupted search resumes for free.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from tmpdiff.engine.runner import Engine
from tmpdiff.engine.settings import RunSettings
from tmpdiff.errors import FieldError
from tmpdiff.measure.evaluator import Evaluator
from tmpdiff.measure.latency import CostTable
from tmpdiff.memory.budget import OutOfMemory
from tmpdiff.steps.cancel import cancellable
from tmpdiff.steps.precisions import PRECISIONS, Status, computes, precision_status
from tmpdiff.steps.replay import ReplayStore
from tmpdiff.steps.schedule import Schedule
from tmpdiff.studies.algorithms import (
    BUDGET_ITERATIONS,
    Point,
    SearchOutcome,
    UnreachableTarget,
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
from tmpdiff.studies.report import Additivity, Exhaustive, Margin, Objective, SearchReport, Strategy, Validation
from tmpdiff.studies.request import EXHAUSTIVE_LIMIT, SearchRequest, parse_seeds

__all__ = ["EXHAUSTIVE_LIMIT", "SearchRequest", "parse_seeds", "run_search"]

Progress = Callable[[int, int, str], None]


class ModelOracle:
    """Mean SSIM over the calibration settings; cost from the measured table."""

    def __init__(self, evaluator: Evaluator, settings: list[RunSettings], table: CostTable, reference: str,
                 on_evaluation: Callable[[Schedule], None]) -> None:
        self.evaluator, self.settings, self.table, self.reference = evaluator, settings, table, reference
        self.on_evaluation = on_evaluation
        self.quality: dict[Schedule, tuple[float, float]] = {}
        self.peaks: dict[Schedule, int | None] = {}
        self.not_run: dict[Schedule, str] = {}  # schedules whose images did not fit the memory budget, and why

    def degradation(self, schedule: Schedule) -> float:
        if schedule not in self.quality:
            try:
                made = self.evaluator.evaluate_all(self.settings, schedule)
            except OutOfMemory as exc:
                if schedule == Schedule.uniform(self.reference, len(schedule)):
                    raise  # nothing can be compared without the reference
                self.not_run[schedule] = str(exc)
                self.quality[schedule] = (0.0, 0.0)  # never chosen: as if it had lost everything
                return 1.0
            values = [e.record.ssim or 0.0 for e in made]
            self.quality[schedule] = (statistics.fmean(values), statistics.pstdev(values))
            peaks = [e.record.peak_bytes for e in made if e.record.peak_bytes is not None]
            self.peaks[schedule] = max(peaks) if peaks else None
            self.on_evaluation(schedule)
        return 1 - self.quality[schedule][0]

    def cost(self, schedule: Schedule) -> float:
        return self.table.predict(schedule)

    def point(self, schedule: Schedule) -> Point:
        self.degradation(schedule)
        reference = self.table.predict(Schedule.uniform(self.reference, len(schedule)))
        return Point(str(schedule), self.quality[schedule][0], reference / self.cost(schedule),
                     self.peaks.get(schedule))


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
               on_point: Callable[[Point], None] | None = None) -> SearchReport:
    """Run the whole study and return the report (the CLI writes its ``to_dict()`` as JSON). ``on_point``
    hears of every evaluated schedule's (mean SSIM, predicted speed-up) as it lands, for a live plot."""
    if request.exhaustive and not request.ladder:  # refused before any work, not after the costs are measured
        request.exhaustive_count(_candidates(request, evaluator.engine.device))
    own = evaluator.with_options(ReplayStore() if request.replay else None, request.batch_size)
    base = request.settings(request.prompts[0], request.seeds[0])
    # Every phase stops at its next denoising step once should_stop() holds. A given ladder: one placement from
    # the step costs on (else from the ladder the costs chose).
    with cancellable(should_stop), evaluator.engine.one_plan(search_placement(base, request.ladder)):
        return _run_search(own, request, progress, should_stop, on_evaluation, on_point)


def search_placement(base: RunSettings, ladder: Sequence[str] | None) -> Schedule | None:
    """The schedule a search's parts are placed for under a memory budget, once for all its evaluations: the
    reference and every rung of ``ladder`` that runs the denoiser, read at equal shares of the steps (a search's
    schedules mix them; no one schedule's plan would be fair to the others). None without a ladder."""
    if not ladder:
        return None
    reference = base.spec.dtype
    rungs = [reference, *(n for n in dict.fromkeys(ladder) if computes(n) and n != reference)]
    return Schedule(tuple(rungs[i % len(rungs)] for i in range(max(base.resolved_steps, len(rungs)))))


def _run_search(evaluator: Evaluator, request: SearchRequest, progress: Progress | None,
                should_stop: Callable[[], bool] | None,
                on_evaluation: Callable[[RunSettings, Schedule], None] | None,
                on_point: Callable[[Point], None] | None = None) -> SearchReport:
    """The procedure of the README: costs, ladder, baselines, search, (additivity and planner), (exhaustive),
    validation, Pareto front."""
    meter = PhaseMeter(evaluator.engine)
    base = request.settings(request.prompts[0], request.seeds[0])
    steps, reference = base.resolved_steps, base.spec.dtype
    table, costs_source = _step_costs(evaluator, request, meter)
    ladder, ladder_notes = (checked_ladder(list(request.ladder), table, reference) if request.ladder
                            else (_default_ladder(table, reference), []))
    # a given ladder's placement holds already (run_search); the same schedule, so nothing moves
    with evaluator.engine.one_plan(search_placement(base, request.ladder or ladder)):
        oracle = _oracle(evaluator, request, table, reference, _planned(steps, len(ladder), request), progress,
                         on_evaluation, on_point)
        with meter.phase("baselines"):
            baselines = _baselines(oracle, request, steps, ladder)
        before_search = len(oracle.quality)
        reference_cost = table.predict(Schedule.uniform(reference, steps))
        with meter.phase("search"):
            outcome = _search(oracle, request, steps, ladder, reference_cost, should_stop)
        search_evaluations = len(oracle.quality) - before_search
        additivity, strategies = _additivity_and_planner(oracle, request, meter, outcome, steps, ladder, table)
        exhaustive = None
        if request.exhaustive:
            with meter.phase("exhaustive"):
                exhaustive = _exhaustive(oracle, request, outcome, steps, ladder, reference_cost)
        with meter.phase("validation"):
            validation = _validate(evaluator, request, outcome.schedule)
        found = oracle.point(outcome.schedule)
        calls = meter.report()
        return SearchReport(
            model=request.model, device=table.device, steps=steps, ladder=tuple(ladder),
            objective=Objective(request.target_ssim, request.target_speedup), found=found,
            ssim_std=oracle.quality[outcome.schedule][1], evaluations=outcome.evaluations,
            new_evaluations_in_search=search_evaluations,
            evaluation_bound=evaluation_bound(steps, len(ladder)) * (BUDGET_ITERATIONS if request.target_speedup
                                                                     else 1),
            baselines=tuple(baselines), costs=table, costs_source=costs_source, validation=validation,
            pareto=tuple(pareto_front([oracle.point(s) for s in list(oracle.quality) if s not in oracle.not_run])),
            ladder_notes=tuple(ladder_notes), not_run=tuple(str(s) for s in oracle.not_run),
            simulated_in_ladder=tuple(n for n in ladder if n in table.simulated),
            best_baseline_at_speedup=_best_uniform_margin(baselines, found), additivity=additivity,
            strategies=strategies, exhaustive=exhaustive, denoiser_calls=calls["denoiser_calls"],
            phase_seconds=calls["phase_seconds"],
            replay=evaluator.replay.stats() if evaluator.replay is not None else None,
            batch_size=evaluator.batch_size,  # smaller than asked when memory ran out
            skipped=tuple(_skipped(request)), request=request,
        )


def _step_costs(evaluator: Evaluator, request: SearchRequest, meter: PhaseMeter) -> tuple[CostTable, str]:
    """The step costs the search plans with, and where they came from: a table measured earlier for this
    model and step count (or given for another device) is used as it is; otherwise measured now."""
    base = request.settings(request.prompts[0], request.seeds[0])
    steps, reference = base.resolved_steps, base.spec.dtype
    table = evaluator.costs.get(request.model)
    if table is not None and not table.target and table.steps != steps:
        table = evaluator.known_costs(base) or table  # measured earlier for this step count: kept, not re-measured
    needed = set(_candidates(request, evaluator.engine.device)) | {reference}
    stale = table is not None and not table.target and (table.steps != steps or not needed <= set(table.step_seconds))
    if table is not None and table.target:
        return table, f"the given cost table of {table.device_name or table.device}"
    if table is not None and not stale:
        return table, "a cost table measured earlier for this device, model and step count (cache or this session)"
    with meter.phase("costs"):
        table = evaluator.measure_costs(base, sorted(needed))
    evaluator.costs[request.model] = table
    return table, evaluator.costs_measured_where


def _oracle(evaluator: Evaluator, request: SearchRequest, table: CostTable, reference: str, planned: int,
            progress: Progress | None, on_evaluation: Callable[[RunSettings, Schedule], None] | None,
            on_point: Callable[[Point], None] | None) -> ModelOracle:
    """The model oracle over the calibration settings, telling the front end of each evaluation."""
    calibration = [request.settings(p, s) for p in request.prompts for s in request.seeds]
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
    return oracle


def _baselines(oracle: ModelOracle, request: SearchRequest, steps: int, ladder: list[str]) -> list[Point]:
    """Every uniform schedule of the ladder, and (unless switched off) the boundary schedules."""
    schedules = uniform_schedules(steps, ladder) + (boundary_schedules(steps, ladder) if request.baselines else [])
    points = [oracle.point(s) for s in schedules]
    return [p for s, p in zip(schedules, points, strict=True) if s not in oracle.not_run]


def _search(oracle: ModelOracle, request: SearchRequest, steps: int, ladder: list[str], reference_cost: float,
            should_stop: Callable[[], bool] | None) -> SearchOutcome:
    """The bisection for a quality floor, or the floor search for a speed-up target."""
    if request.target_ssim is not None:
        return bisection_search(steps, ladder, oracle, 1 - request.target_ssim, should_stop=should_stop)
    target = float(request.target_speedup or 1)
    try:
        return speedup_search(steps, ladder, oracle, reference_cost / target, should_stop=should_stop)
    except UnreachableTarget as exc:
        best = reference_cost / exc.cheapest_cost
        raise FieldError("target_speedup", request.target_speedup, (
            f"a {target:g}x speed-up ({{target_speedup}}) is out of reach on the ladder {', '.join(ladder)}: its "
            f"fastest schedule, {exc.cheapest}, is predicted at {best:.2f}x: ask for at most {best:.2f}x, or add a "
            "cheaper rung to the ladder")) from None


def _additivity_and_planner(oracle: ModelOracle, request: SearchRequest, meter: PhaseMeter, outcome: SearchOutcome,
                            steps: int, ladder: list[str], table: CostTable
                            ) -> tuple[Additivity | None, dict[str, Strategy] | None]:
    """Diagnostics on request: do single-step losses add up, and what the additive planner would pick."""
    if not request.additivity_samples:
        return None, None
    with meter.phase("additivity"):
        check = additivity_check(steps, ladder, oracle, samples=request.additivity_samples,
                                 stride=request.probe_stride)
    additivity = Additivity(check.r2, tuple(check.predicted), tuple(check.measured), tuple(check.schedules),
                            request.probe_stride)
    if request.target_ssim is None:
        return additivity, None
    with meter.phase("planner"):
        strategies = _compare_strategies(oracle, outcome, steps, ladder, table, check.single_step,
                                         1 - request.target_ssim)
    return additivity, strategies


def _exhaustive(oracle: ModelOracle, request: SearchRequest, outcome: SearchOutcome, steps: int, ladder: list[str],
                reference_cost: float) -> Exhaustive:
    budget = outcome.degradation if request.target_ssim is None else 1 - request.target_ssim
    best = exhaustive_search(steps, ladder, oracle, budget, limit=EXHAUSTIVE_LIMIT)
    return Exhaustive(str(best.schedule), 1 - best.degradation, reference_cost / best.cost, best.evaluations,
                      100 * (outcome.cost - best.cost) / best.cost)


def _skipped(request: SearchRequest) -> list[str]:
    """The phases this search left out, each with how to ask for it (message templates: ``errors.worded``)."""
    skipped = []
    if not request.additivity_samples:
        skipped.append("additivity check and additive planner (ask with {additivity_samples} 6)")
    if not request.exhaustive:
        skipped.append("exhaustive search (ask with {exhaustive}; small step counts only)")
    return skipped


def _compare_strategies(oracle: ModelOracle, bisected: SearchOutcome, steps: int, ladder: list[str],
                        table: CostTable, single: dict[tuple[int, str], float], budget: float) -> dict[str, Strategy]:
    """The bisection's result beside the additive planner's, which plans from the single-step probes the
    additivity check already paid for and verifies its plans (the bisection stays the default)."""
    planned = planned_search(steps, ladder, oracle, budget, single, table.step_seconds)

    def summary(outcome: SearchOutcome, evaluations: int, probes: int | None = None) -> Strategy:
        point = oracle.point(outcome.schedule)
        return Strategy(point.schedule, point.quality, point.speedup, evaluations, probes)

    return {"bisection": summary(bisected, bisected.evaluations),
            "planner": summary(planned, planned.evaluations, len(single))}


def _candidates(request: SearchRequest, device: str) -> list[str]:
    if request.ladder:
        return list(request.ladder)
    return [n for n in PRECISIONS if precision_status(n, device).status is Status.REAL]


def checked_ladder(ladder: list[str], table: CostTable, reference: str) -> tuple[list[str], list[str]]:
    """A user's ladder against the measured step costs: the reference first; every real rung measured
    no cheaper than the reference dropped (it could only give dominated schedules), the others most
    expensive first; simulated rungs (no speed claim) after them in the user's order; rungs that call no denoiser
    (``skip``, ``extrap``) last, in the user's order.
    Returns the ladder and one note per change, for the report and the app."""
    base = table.step_seconds[reference]
    notes, real, simulated = [], [], []
    for name in dict.fromkeys(ladder):
        if name == reference or not computes(name):
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
    reusing = [name for name in dict.fromkeys(ladder) if name != reference and not computes(name)]
    checked = [reference, *real, *simulated, *reusing]
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
    search = evaluation_bound(steps, rungs) * (BUDGET_ITERATIONS if request.target_speedup else 1)
    probes = (steps // request.probe_stride + 1) * (rungs - 1)
    additivity = (probes + request.additivity_samples) if request.additivity_samples else 0
    return baselines + search // 3 + additivity  # the bound is rarely reached; progress stays honest by capping


def _best_uniform_margin(baselines: list[Point], found: Point) -> Margin | None:
    """The best uniform or boundary baseline at least as fast as the found schedule, and the SSIM margin."""
    rivals = [p for p in baselines if p.speedup >= found.speedup - 1e-9 and p.schedule != found.schedule]
    if not rivals:
        return None
    best = max(rivals, key=lambda p: p.quality)
    return Margin(best.schedule, best.quality, best.speedup, found.quality - best.quality)


def _validate(evaluator: Evaluator, request: SearchRequest, schedule: Schedule) -> Validation:
    """The found schedule on seeds the search never saw."""
    unseen = [request.settings(p, s) for p in request.prompts for s in request.validation_seeds]
    mean = statistics.fmean(e.record.ssim or 0.0 for e in evaluator.evaluate_all(unseen, schedule))
    meets = None if request.target_ssim is None else mean >= request.target_ssim
    return Validation(tuple(request.validation_seeds), mean, meets)
