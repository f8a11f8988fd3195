"""The search on synthetic additive models where the right answer is known."""

import random

import pytest

from tmpdiff import Schedule
from tmpdiff.studies.algorithms import (
    Point,
    UnreachableTarget,
    additive_plan,
    additivity_check,
    bisection_search,
    boundary_schedules,
    evaluation_bound,
    exhaustive_search,
    pareto_front,
    planned_search,
    speedup_search,
    uniform_schedules,
)

LADDER = ["bf16", "fp8", "int4wo"]
COST = {"bf16": 1.0, "fp8": 0.75, "int4wo": 0.55, "skip": 0.02}
ERROR = {"bf16": 0.0, "fp8": 0.01, "int4wo": 0.04, "skip": 0.08}


class Additive:
    """degradation = sum over steps of sensitivity(step) x error(precision); early steps matter most."""

    def __init__(self, steps, noise=0.0, seed=0):
        rng = random.Random(seed)
        self.weights = [2.0 * (1 - i / steps) + 0.2 + rng.random() * 0.3 for i in range(steps)]
        self.noise, self.rng, self.calls = noise, rng, 0

    def degradation(self, schedule):
        self.calls += 1
        value = sum(w * ERROR[n] for w, n in zip(self.weights, schedule, strict=True))
        return value * (1 + self.noise * (self.rng.random() - 0.5))

    def cost(self, schedule):
        return sum(COST[n] for n in schedule)


@pytest.mark.parametrize("steps", [4, 6, 8])
@pytest.mark.parametrize("budget", [0.05, 0.15, 0.4])
def test_bisection_meets_the_budget_close_to_the_optimum_in_linear_evaluations(steps, budget):
    oracle = Additive(steps)
    found = bisection_search(steps, LADDER, oracle, budget)
    best = exhaustive_search(steps, LADDER, Additive(steps), budget)
    assert found.degradation <= budget
    assert found.evaluations <= evaluation_bound(steps, len(LADDER))
    assert found.evaluations < best.evaluations
    # Within 10% of the exhaustive optimum's cost.
    assert found.cost <= best.cost * 1.10, (str(found.schedule), str(best.schedule))


def test_evaluations_grow_linearly_with_steps():
    for steps in (8, 16, 32, 50):
        for budget in (0.05, 0.3, 1.0):
            count = bisection_search(steps, LADDER + ["skip"], Additive(steps), budget).evaluations
            assert count <= evaluation_bound(steps, 4) == 2 * (2 * steps - 1) * 3 + 1


def test_speedup_target_is_met_with_best_quality_found():
    steps = 8
    oracle = Additive(steps)
    target = 0.7 * steps  # 1.43x
    found = speedup_search(steps, LADDER, oracle, target)
    assert found.cost <= target
    uniform_fits = [s for s in uniform_schedules(steps, LADDER) if oracle.cost(s) <= target]
    assert all(found.degradation <= oracle.degradation(s) for s in uniform_fits)
    with pytest.raises(UnreachableTarget):
        speedup_search(steps, LADDER, oracle, 0.1)


def test_additivity_is_recovered_on_an_additive_model():
    check = additivity_check(6, LADDER, Additive(6), samples=8)
    assert check.r2 > 0.999
    noisy = additivity_check(6, LADDER, Additive(6, noise=0.8, seed=3), samples=8)
    assert noisy.r2 < check.r2


class Smooth(Additive):
    """An additive model whose sensitivity falls linearly along the trajectory."""

    def __init__(self, steps):
        super().__init__(steps)
        self.weights = [2.0 - 1.5 * i / (steps - 1) for i in range(steps)]


def test_probing_every_other_step_halves_the_probes_and_interpolates_a_smooth_model_exactly():
    ladder = ["bf16", "fp8", "skip"]
    full_oracle, strided_oracle = Smooth(12), Smooth(12)
    full = additivity_check(12, ladder, full_oracle, samples=4)
    strided = additivity_check(12, ladder, strided_oracle, samples=4, stride=2)
    assert full_oracle.calls - 4 == 11 + 12  # every step probed (skip never on step 0)
    assert strided_oracle.calls - 4 <= (full_oracle.calls - 4) // 2 + 2  # every 2nd step, and the last
    assert strided.single_step.keys() == full.single_step.keys()  # every step has a prediction
    for step_rung, value in full.single_step.items():
        assert strided.single_step[step_rung] == pytest.approx(value)
    assert strided.r2 > 0.999


def test_an_uneven_model_is_interpolated_and_the_r2_says_how_well():
    oracle = Additive(12, seed=5)  # random per-step sensitivity: between probes the interpolation misses
    strided = additivity_check(12, LADDER, oracle, samples=8, stride=3)
    exact = additivity_check(12, LADDER, Additive(12, seed=5), samples=8)
    assert strided.single_step != exact.single_step
    assert strided.r2 < exact.r2
    with pytest.raises(ValueError, match="stride 0"):
        additivity_check(12, LADDER, oracle, stride=0)


def test_baselines_and_pareto_front():
    assert [str(s) for s in uniform_schedules(4, ["fp32", "int8", "skip"])] == ["fp32*4", "int8*4", "fp32,skip*3"]
    boundaries = boundary_schedules(8, ["fp32", "int8"])
    assert "fp32*2,int8*6" in {str(s) for s in boundaries}
    points = [Point("a", 0.9, 1.0), Point("b", 0.8, 1.5), Point("c", 0.7, 1.2), Point("d", 0.95, 0.9)]
    assert [p.schedule for p in pareto_front(points)] == ["b", "a", "d"]


@pytest.mark.parametrize(("ladder", "message"), [
    (["bf16"], "at least one cheaper rung"), (["skip", "bf16"], "cannot be it"), (["bf16", "bf16"], "repeats"),
])
def test_bad_ladders_are_refused(ladder, message):
    with pytest.raises(ValueError, match=message):
        bisection_search(4, ladder, Additive(4), 0.1)


def test_skip_never_lands_on_step_zero():
    found = bisection_search(6, ["bf16", "skip"], Additive(6), 10.0)
    assert found.schedule[0] == "bf16" and set(found.schedule.steps[1:]) == {"skip"}
    assert isinstance(found.schedule, Schedule)


def single_step(model, steps, ladder=LADDER):
    reference = Schedule.uniform(ladder[0], steps)
    return {(i, r): model.degradation(reference.replace([i], r)) for i in range(steps) for r in ladder[1:]}


@pytest.mark.parametrize("steps", [6, 8])
def test_additive_plan_is_the_exact_optimum_of_an_additive_model(steps):
    model = Additive(steps)
    single = single_step(model, steps)
    for budget in (0.02, 0.05, 0.12):
        plan = additive_plan(steps, LADDER, single, COST, budget)
        best = exhaustive_search(steps, LADDER, model, budget)
        assert model.degradation(plan) <= budget + 1e-9
        assert model.cost(plan) <= best.cost * 1.02  # quantising the budget may cost a hair, never more


def test_planned_search_corrects_a_sub_additive_model():
    steps, budget = 12, 0.06

    class SubAdditive(Additive):
        def degradation(self, schedule):  # concave: errors add up to less than their sum (R² < 1 on real models)
            return super().degradation(schedule) ** 0.7 * budget ** 0.3

    model = SubAdditive(steps)
    single = single_step(model, steps)
    planned = planned_search(steps, LADDER, model, budget, single, COST)
    first_plan = additive_plan(steps, LADDER, single, COST, budget)
    assert planned.degradation <= budget + 1e-9
    assert planned.cost < model.cost(first_plan)  # the correction bought a cheaper feasible schedule
    assert planned.evaluations <= 6
    bisected = bisection_search(steps, LADDER, model, budget)
    assert planned.cost <= bisected.cost * 1.05


def test_a_users_ladder_is_checked_against_measured_costs():
    from tmpdiff.measure.latency import CostTable
    from tmpdiff.studies.procedure import checked_ladder

    table = CostTable(device="cpu", compiled=False, steps=8, simulated=["int4wo"],
                      step_seconds={"fp32": 0.033, "bf16": 0.111, "int8wo": 0.03, "fp8wo": 0.02, "int4wo": 0.5,
                                    "skip": 0.0005})
    ladder, notes = checked_ladder(["fp32", "bf16", "skip", "fp8wo", "int4wo", "int8wo"], table, "fp32")
    assert ladder == ["fp32", "int8wo", "fp8wo", "int4wo", "skip"]  # bf16 costs 3.4x fp32 here: dominated
    assert any("bf16 dropped" in n and "111.0 ms" in n for n in notes)
    assert checked_ladder(["fp32", "int8wo", "skip"], table, "fp32") == (["fp32", "int8wo", "skip"], [])
    with pytest.raises(ValueError, match="no rung of the ladder fp32,bf16 is cheaper"):
        checked_ladder(["fp32", "bf16"], table, "fp32")


def test_engine_messages_name_fields_and_each_front_end_says_them_in_its_own_words():
    from tmpdiff.frontends.refusals import in_cli_words
    from tmpdiff.studies.request import SearchRequest

    with pytest.raises(ValueError, match=r"^target_ssim must be in \(0, 1\], got 1.5$") as info:
        SearchRequest(model="shapes-dit", prompts=("red circle",), target_ssim=1.5)
    assert info.value.field == "target_ssim" and info.value.value == 1.5
    assert in_cli_words(info.value) == "--target-ssim must be in (0, 1], got 1.5"
    from tmpdiff.ui.panels import field_message, in_form_words

    assert in_form_words(info.value) == "Target (SSIM floor) must be in (0, 1], got 1.5"
    assert "<b>Target (SSIM floor)</b>" in field_message(info.value)  # the field from the error, not from its text
    with pytest.raises(ValueError) as both:
        SearchRequest(model="shapes-dit", prompts=("red circle",))
    assert in_cli_words(both.value) == "give exactly one objective: --target-ssim or --target-speedup"


def test_an_unreachable_speedup_target_with_skip_last_names_the_cheapest_schedule():
    oracle = Additive(6)
    with pytest.raises(UnreachableTarget, match=r"the cheapest, bf16,skip\*5, costs") as info:
        speedup_search(6, ["bf16", "fp8", "skip"], oracle, 0.01)
    assert str(info.value.cheapest) == "bf16,skip*5" and info.value.target_cost == 0.01
