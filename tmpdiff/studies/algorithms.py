"""Schedule search: TMPDiff-style adaptive bisection with a linear number of evaluations.

Hypothesis (TMPDiff): quantization errors add up across steps, so a schedule's degradation
(1 - mean SSIM against the reference) is close to the sum of its steps' degradations.

Procedure, for a quality floor (degradation budget ``B = 1 - floor``) and a ladder of precisions
ordered from the reference down to the cheapest rung:

1. Start from the all-reference schedule.
2. For each cheaper rung in turn, bisect the step range ``[0, T)``: propose lowering every step
   of the segment that is still above this rung to this rung and evaluate the full schedule.
   Keep the proposal when its *added* degradation fits the segment's share of the budget left
   at the start of the rung (``left * len(segment) / T``) and the whole schedule still meets the
   floor. Otherwise split the segment in halves and try each (late half first: late steps are
   the least sensitive). Single steps that do not fit stay where they are.
3. Repeat the rung sweep once more (``passes=2``) so budget left over by the shares is used.

Each rung's sweep visits at most ``2T - 1`` segments, so the search makes at most
``passes * (2T - 1) * (rungs - 1)`` evaluations: linear in steps x rungs, against
``rungs ** T`` for an exhaustive search. A speed-up target is met by bisecting the budget
itself (at most ``BUDGET_ITERATIONS`` floor searches), a constant factor more.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tmpdiff.memory.meter import gib
from tmpdiff.steps.cancel import Cancelled
from tmpdiff.steps.precisions import may_lead
from tmpdiff.steps.schedule import Schedule

__all__ = [
    "Oracle", "Point", "SearchOutcome", "additive_plan", "additivity_check", "bisection_search", "boundary_ks",
    "boundary_schedules", "evaluation_bound", "exhaustive_search", "pareto_front", "planned_search", "speedup_search",
    "uniform_schedules",
]

PASSES = 2
BUDGET_ITERATIONS = 7


class Oracle(Protocol):
    """Evaluates full schedules: degradation measured, cost predicted from measured step costs."""

    def degradation(self, schedule: Schedule) -> float: ...

    def cost(self, schedule: Schedule) -> float: ...


@dataclass(frozen=True)
class Point:
    schedule: str
    quality: float  # 1 - degradation (mean SSIM for the real oracle)
    speedup: float
    peak_bytes: int | None = None  # the largest peak memory of its images (the real oracle), when measured

    def to_dict(self) -> dict[str, float | str]:
        data: dict[str, float | str] = {"schedule": self.schedule, "ssim": self.quality, "speedup": self.speedup}
        if self.peak_bytes is not None:
            data["peak_gib"] = gib(self.peak_bytes, digits=3)
        return data


@dataclass
class SearchOutcome:
    schedule: Schedule
    degradation: float
    cost: float
    evaluations: int
    trace: list[str] = field(default_factory=list)


def evaluation_bound(steps: int, rungs: int, passes: int = PASSES) -> int:
    """The most full evaluations one floor search makes."""
    return passes * (2 * steps - 1) * max(rungs - 1, 0) + 1


class _Counter:
    """Counts distinct schedules the algorithm asked about (repeats are free: memoised)."""

    def __init__(self, oracle: Oracle, on_evaluation: Callable[[Schedule, float], None] | None) -> None:
        self.oracle, self.on_evaluation = oracle, on_evaluation
        self.seen: dict[Schedule, float] = {}

    def __call__(self, schedule: Schedule) -> float:
        if schedule not in self.seen:
            self.seen[schedule] = self.oracle.degradation(schedule)
            if self.on_evaluation:
                self.on_evaluation(schedule, self.seen[schedule])
        return self.seen[schedule]


def bisection_search(
    steps: int,
    ladder: Sequence[str],
    oracle: Oracle,
    budget: float,
    passes: int = PASSES,
    on_evaluation: Callable[[Schedule, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SearchOutcome:
    """The cheapest schedule found whose degradation stays within ``budget``."""
    _check_ladder(ladder)
    if budget < 0:
        raise ValueError(f"the degradation budget must be 0 or more, got {budget}")
    measure = _Counter(oracle, on_evaluation)
    rank = {name: i for i, name in enumerate(ladder)}
    current = Schedule.uniform(ladder[0], steps)
    current_loss = measure(current)
    trace: list[str] = []
    for _ in range(passes):
        for rung in ladder[1:]:
            current, current_loss = _sweep(current, current_loss, rank, rung, measure, budget, trace, should_stop)
    # Any feasible schedule met on the way that is cheaper still (non-additive effects) wins.
    feasible = [(oracle.cost(s), loss, s) for s, loss in measure.seen.items() if loss <= budget + 1e-12]
    cost, current_loss, current = min(feasible, key=lambda item: (item[0], item[1]))
    return SearchOutcome(current, current_loss, cost, len(measure.seen), trace)


def _sweep(schedule: Schedule, loss: float, rank: dict[str, int], rung: str, measure: _Counter, budget: float,
           trace: list[str], should_stop: Callable[[], bool] | None) -> tuple[Schedule, float]:
    """One rung's bisection over the whole step range; returns the schedule it ends on."""
    steps = len(schedule)
    left = max(budget - loss, 0.0)
    pending = [(0, steps)]
    while pending:
        if should_stop and should_stop():
            raise Cancelled("search stopped")
        lo, hi = pending.pop()
        indices = [i for i in range(lo, hi) if rank[schedule[i]] < rank[rung] and (i > 0 or may_lead(rung))]
        if not indices:
            continue
        candidate = schedule.replace(indices, rung)
        candidate_loss = measure(candidate)
        if candidate_loss - loss <= left * (hi - lo) / steps + 1e-12 and candidate_loss <= budget + 1e-12:
            schedule, loss = candidate, candidate_loss
            trace.append(f"{rung}[{lo}:{hi}]")
        elif hi - lo > 1:
            mid = (lo + hi) // 2
            pending.extend([(lo, mid), (mid, hi)])  # the late half is popped first
    return schedule, loss


class UnreachableTarget(ValueError):
    """No schedule of the ladder costs as little as the target: the cheapest and its cost, for the caller to word
    in its user's terms (a speed-up over the reference)."""

    def __init__(self, cheapest: Schedule, cheapest_cost: float, target_cost: float) -> None:
        self.cheapest, self.cheapest_cost, self.target_cost = cheapest, cheapest_cost, target_cost
        super().__init__(f"no schedule costs {target_cost:.4g} or less: the cheapest, {cheapest}, costs "
                         f"{cheapest_cost:.4g}")


def speedup_search(
    steps: int,
    ladder: Sequence[str],
    oracle: Oracle,
    target_cost: float,
    on_evaluation: Callable[[Schedule, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SearchOutcome:
    """The best-quality schedule found whose predicted cost is at most ``target_cost``."""
    lo, hi = 0.0, 1.0
    best: SearchOutcome | None = None
    seen: dict[Schedule, float] = {}

    def record(schedule: Schedule, loss: float) -> None:
        seen[schedule] = loss
        if on_evaluation:
            on_evaluation(schedule, loss)

    memo = _MemoOracle(oracle, seen)
    for _ in range(BUDGET_ITERATIONS):
        budget = (lo + hi) / 2
        outcome = bisection_search(steps, ladder, memo, budget, on_evaluation=record, should_stop=should_stop)
        if outcome.cost <= target_cost:
            hi = budget
            if best is None or outcome.degradation < best.degradation:
                best = outcome
        else:
            lo = budget
    fitting = [(loss, s) for s, loss in seen.items() if oracle.cost(s) <= target_cost]
    if not fitting:
        cheapest = uniform_schedules(steps, [ladder[0], ladder[-1]])[-1]  # skip keeps the first step computed
        raise UnreachableTarget(cheapest, oracle.cost(cheapest), target_cost)
    loss, schedule = min(fitting, key=lambda item: (item[0], oracle.cost(item[1])))
    return SearchOutcome(schedule, loss, oracle.cost(schedule), len(seen), best.trace if best else [])


class _MemoOracle:
    def __init__(self, oracle: Oracle, seen: dict[Schedule, float]) -> None:
        self.oracle, self.seen = oracle, seen

    def degradation(self, schedule: Schedule) -> float:
        return self.seen[schedule] if schedule in self.seen else self.oracle.degradation(schedule)

    def cost(self, schedule: Schedule) -> float:
        return self.oracle.cost(schedule)


def uniform_schedules(steps: int, ladder: Sequence[str]) -> list[Schedule]:
    return [Schedule.uniform(name, steps) if may_lead(name) else Schedule((ladder[0],) + (name,) * (steps - 1))
            for name in ladder]


def boundary_schedules(steps: int, ladder: Sequence[str]) -> list[Schedule]:
    """'First k steps in the reference, the rest in a lower rung' for a spread of k."""
    return [Schedule((ladder[0],) * k + (low,) * (steps - k)) for low in ladder[1:] for k in boundary_ks(steps)]


def boundary_ks(steps: int) -> list[int]:
    return sorted({1, 2, steps // 4, steps // 2, (3 * steps) // 4} - {0, steps})


def exhaustive_search(steps: int, ladder: Sequence[str], oracle: Oracle, budget: float,
                      limit: int = 60_000) -> SearchOutcome:
    """Every schedule on the ladder (step 0 never skipped): the true optimum, for small T."""
    first = [n for n in ladder if may_lead(n)]
    count = len(first) * len(ladder) ** (steps - 1)
    if count > limit:
        raise ValueError(f"an exhaustive search over {count} schedules exceeds the limit of {limit}: "
                         "use fewer steps or rungs")
    best: tuple[float, float, Schedule] | None = None
    for head in first:
        for tail in itertools.product(ladder, repeat=steps - 1):
            schedule = Schedule((head, *tail))
            loss = oracle.degradation(schedule)
            if loss <= budget + 1e-12:
                item = (oracle.cost(schedule), loss, schedule)
                best = item if best is None or item[:2] < best[:2] else best
    if best is None:
        raise ValueError(f"no schedule meets the degradation budget {budget}")
    return SearchOutcome(best[2], best[1], best[0], count)


@dataclass
class Additivity:
    single_step: dict[tuple[int, str], float]
    predicted: list[float]
    measured: list[float]
    schedules: list[str]

    @property
    def r2(self) -> float:
        mean = sum(self.measured) / len(self.measured)
        total = sum((m - mean) ** 2 for m in self.measured)
        residual = sum((m - p) ** 2 for m, p in zip(self.measured, self.predicted, strict=True))
        return 1 - residual / total if total > 0 else 1.0


def additivity_check(steps: int, ladder: Sequence[str], oracle: Oracle, samples: int = 6,
                     seed: int = 0, stride: int = 1) -> Additivity:
    """Single-step degradations predict random mixed schedules: how well (R^2)?

    With ``stride`` > 1 only every ``stride``-th step (and the last) is probed and the steps between
    are interpolated linearly: a probe of step i recomputes every step after i, so the probes are most
    of a search's denoiser calls, and a step's sensitivity changes smoothly along the trajectory. The
    R^2 on fully measured random schedules then judges the interpolated model, honestly.
    """
    if stride < 1:
        raise ValueError(f"probe stride {stride} must be 1 or more")
    reference = Schedule.uniform(ladder[0], steps)
    single = {}
    for rung in ladder[1:]:
        first = 0 if may_lead(rung) else 1  # skipping the first step leaves nothing to denoise from
        probed = sorted({*range(first, steps, stride), steps - 1})
        measured_at = {i: oracle.degradation(reference.replace([i], rung)) for i in probed}
        single.update({(i, rung): _interpolated(measured_at, i) for i in range(first, steps)})
    rng = random.Random(seed)
    predicted, measured, texts = [], [], []
    for _ in range(samples):
        names = [ladder[0]] + [rng.choice(ladder) for _ in range(steps - 1)]
        schedule = Schedule(tuple(names))
        predicted.append(sum(single.get((i, n), 0.0) for i, n in enumerate(names) if n != ladder[0]))
        measured.append(oracle.degradation(schedule))
        texts.append(str(schedule))
    return Additivity(single, predicted, measured, texts)


def _interpolated(measured_at: dict[int, float], step: int) -> float:
    """The degradation at ``step``: measured, or linear between the nearest probed steps around it."""
    if step in measured_at:
        return measured_at[step]
    below = max(i for i in measured_at if i < step)
    above = min(i for i in measured_at if i > step)
    weight = (step - below) / (above - below)
    return (1 - weight) * measured_at[below] + weight * measured_at[above]


def additive_plan(steps: int, ladder: Sequence[str], single: dict[tuple[int, str], float],
                  step_cost: dict[str, float], budget: float, bins: int = 2000) -> Schedule:
    """The cheapest schedule whose *predicted* degradation (the sum of its steps' single-step
    degradations) fits ``budget``: a multiple-choice knapsack, solved exactly by dynamic programming
    over steps x budget quantised into ``bins`` (each step's degradation rounded up, so the plan
    never exceeds the budget it was given)."""
    if budget <= 0:
        return Schedule.uniform(ladder[0], steps)
    unit = budget / bins
    infinity = float("inf")
    best = [0.0] + [infinity] * bins  # best[b]: least cost of the steps so far using b units
    choices: list[list[tuple[int, str]]] = []  # per step: for each b, (units before, rung chosen)
    for i in range(steps):
        options = [(ladder[0], 0)] + [
            (rung, max(0, -int(-single[(i, rung)] // unit)))  # ceil; a negative probe costs nothing
            for rung in ladder[1:] if (i, rung) in single
        ]
        nxt, back = [infinity] * (bins + 1), [(0, ladder[0])] * (bins + 1)
        for used, cost in enumerate(best):
            if cost == infinity:
                continue
            for rung, units in options:
                total = used + units
                if total <= bins and cost + step_cost[rung] < nxt[total]:
                    nxt[total], back[total] = cost + step_cost[rung], (used, rung)
        best = nxt
        choices.append(back)
    used = min(range(bins + 1), key=lambda b: (best[b], b))
    names = []
    for back in reversed(choices):
        used, rung = back[used]
        names.append(rung)
    return Schedule(tuple(reversed(names)))


def planned_search(steps: int, ladder: Sequence[str], oracle: Oracle, budget: float,
                   single: dict[tuple[int, str], float], step_cost: dict[str, float],
                   rounds: int = 6) -> SearchOutcome:
    """Plan with the additive model, verify the plan, correct the model by what verification measured.

    Real errors add up sub-additively (or super-additively), so the budget handed to the planner is
    rescaled each round by budget / measured degradation of the last plan: a plan that used less of
    the budget than predicted earns a larger planning budget, one that overshot a smaller one. The
    cheapest verified plan within ``budget`` wins; evaluations: the probes plus at most ``rounds``.
    """
    _check_ladder(ladder)
    seen: dict[Schedule, float] = {}
    planning = budget
    for _ in range(rounds):
        plan = additive_plan(steps, ladder, single, step_cost, planning)
        if plan in seen:
            break
        seen[plan] = oracle.degradation(plan)
        predicted = sum(single.get((i, n), 0.0) for i, n in enumerate(plan) if n != ladder[0])
        if seen[plan] <= 0 or predicted <= 0:
            break
        planning = planning * min(budget / seen[plan], 4.0)
    reference = Schedule.uniform(ladder[0], steps)
    feasible = [(oracle.cost(s), loss, s) for s, loss in seen.items() if loss <= budget + 1e-12]
    cost, loss, schedule = min(feasible, default=(oracle.cost(reference), 0.0, reference))
    return SearchOutcome(schedule, loss, cost, len(seen), [f"plan {s}: {v:.4f}" for s, v in seen.items()])


def pareto_front(points: Iterable[Point]) -> list[Point]:
    """Points no other point beats on both quality and speed-up, fastest first."""
    ordered = sorted(points, key=lambda p: (-p.speedup, -p.quality))
    front: list[Point] = []
    for point in ordered:
        if not front or point.quality > front[-1].quality:
            front.append(point)
    return front


def _check_ladder(ladder: Sequence[str]) -> None:
    if len(ladder) < 2:
        raise ValueError(f"a ladder needs the reference and at least one cheaper rung, got {list(ladder)}")
    if not may_lead(ladder[0]):
        raise ValueError(f"the ladder's first rung is the reference precision; {ladder[0]!r} cannot be it")
    if len(set(ladder)) != len(ladder):
        raise ValueError(f"the ladder repeats a precision: {list(ladder)}")
