"""Exact prefix replay: the same images with fewer denoiser calls, counted honestly."""

import numpy as np
import pytest
import torch
from conftest import TINY, decided

from tmpdiff import apply_schedule, get_model, load_pipeline
from tmpdiff.measure.latency import CostTable
from tmpdiff.steps.replay import ReplayStore
from tmpdiff.switching.switch import denoiser_of

STEPS = 4
REFERENCE = "fp32*4"
SHARED = "fp32*2,int8wo,skip"  # shares two steps with the reference, then a quantized step and a skip


def kwargs_for(name: str, seed: int = 0) -> dict:
    spec = get_model(name)
    kwargs = spec.call_kwargs(spec.example_prompt, steps=STEPS, seed=seed)
    if name == "tiny-flux":  # true CFG: two denoiser calls per step
        kwargs.update(negative_prompt="blurry", true_cfg_scale=2.0)
    return kwargs


def image(pipe, name: str, schedule: str, **replay):
    with torch.no_grad(), apply_schedule(pipe, schedule, **replay) as handle:
        out = pipe(**kwargs_for(name), output_type="np").images[0]
    return out, handle


@pytest.mark.parametrize("name", [*TINY, "shapes-dit"])
def test_replayed_images_are_bit_identical_to_computed_ones(pipes, name):
    pipe = pipes(name)
    fresh, plain = image(pipe, name, SHARED)
    store = ReplayStore()
    image(pipe, name, REFERENCE, replay=store, replay_key="setting")
    replayed, handle = image(pipe, name, SHARED, replay=store, replay_key="setting")
    assert np.array_equal(fresh, replayed)
    calls = plain.calls_per_step[0]  # 2 for true-CFG FLUX, 1 elsewhere
    assert handle.replayed_calls == 2 * calls and handle.denoiser_calls == calls
    assert handle.skipped_calls == calls and plain.skipped_calls == calls
    assert handle.replayed_steps == [True, True, False, False]
    assert handle.steps_run == plain.steps_run == ["fp32", "fp32", "int8wo", "skip"]
    again, handle = image(pipe, name, SHARED, replay=store, replay_key="setting")
    assert np.array_equal(fresh, again) and handle.denoiser_calls == 0  # every computed step is recorded


def test_another_setting_replays_nothing(pipes):
    pipe, store = pipes("tiny-sd15"), ReplayStore()
    image(pipe, "tiny-sd15", REFERENCE, replay=store, replay_key="seed 0")
    _, handle = image(pipe, "tiny-sd15", REFERENCE, replay=store, replay_key="seed 1")
    assert handle.replayed_calls == 0 and handle.denoiser_calls == STEPS


def test_the_call_counter_matches_a_forward_hook_of_our_own():
    pipe = load_pipeline("tiny-pixart")  # a fresh denoiser: its variants copy the hook below
    computed = []
    denoiser_of(pipe).transformer_blocks[0].register_forward_hook(lambda *_: computed.append(1))
    store = ReplayStore()
    totals = 0
    for schedule in (REFERENCE, SHARED, "fp32*3,int8wo", SHARED):
        _, handle = image(pipe, "tiny-pixart", schedule, replay=store, replay_key="setting")
        totals += handle.denoiser_calls
    assert totals == len(computed) == 4 + 1 + 1 + 0  # the reference, then one new step each, then none


def test_replayed_steps_keep_the_time_measured_when_they_were_computed(pipes):
    pipe, store = pipes("tiny-sd15"), ReplayStore()
    _, first = image(pipe, "tiny-sd15", REFERENCE, replay=store, replay_key="setting")
    _, second = image(pipe, "tiny-sd15", REFERENCE, replay=store, replay_key="setting")
    assert all(second.replayed_steps)
    assert second.step_seconds == pytest.approx(first.step_seconds)
    assert second.replay_correction > 0


def test_the_store_stays_within_its_budget():
    store = ReplayStore(budget_bytes=3 * 4 * 10)  # room for three outputs of ten floats
    for i in range(5):
        store.put(("s", ("fp32",) * (i + 1), 0), torch.zeros(10))
    stats = store.stats()
    assert stats["entries"] == 3 and stats["bytes"] <= stats["budget_bytes"]
    assert store.get(("s", ("fp32",), 0)) is None  # the oldest went first
    assert store.get(("s", ("fp32",) * 5, 0)) is not None
    with pytest.raises(ValueError, match="-1"):
        ReplayStore(budget_bytes=-1)


@pytest.mark.slow
def test_a_search_reports_the_same_with_and_without_replay(tmp_path):
    from tmpdiff.cache import Cache
    from tmpdiff.engine.runner import Engine
    from tmpdiff.measure.evaluator import Evaluator
    from tmpdiff.studies.procedure import run_search
    from tmpdiff.studies.request import SearchRequest

    costs = CostTable(device="cpu", compiled=False, steps=6, step_seconds={"fp32": 0.03, "bf16": 0.02, "skip": 0.0},
                      fixed_seconds=0.05)
    reports, stores = [], []
    for replay in (True, False):
        store = Cache(tmp_path / f"{replay}.sqlite")
        evaluator = Evaluator(Engine("cpu"), store)
        evaluator.costs["shapes-dit"] = costs  # the same measured costs for both: only replay differs
        request = SearchRequest(model="shapes-dit", prompts=("red circle",), seeds=(0, 1), steps=6,
                                ladder=("fp32", "bf16", "skip"), target_ssim=0.9, validation_seeds=(1000,),
                                additivity_samples=3, replay=replay)
        reports.append(run_search(evaluator, request).to_dict())
        stores.append(store)
    with_replay, without = reports
    for field in ("schedule", "ssim", "speedup", "evaluations", "baselines", "pareto", "validation", "additivity"):
        assert decided(with_replay[field]) == decided(without[field]), field
    calls, plain = with_replay["denoiser_calls"]["total"], without["denoiser_calls"]["total"]
    assert plain["replayed"] == 0 and calls["replayed"] > 0
    assert calls["denoiser"] + calls["replayed"] == plain["denoiser"]  # every call is accounted for
    assert set(with_replay["denoiser_calls"]) >= {"baselines", "search", "validation", "total"}
    images = [{(r.schedule, r.seed): r.image_sha256 for r in s.evaluations(model="shapes-dit")}
              for s in stores]
    assert images[0] == images[1]  # the cache holds the same images either way


def test_an_apps_images_replay_what_they_share_with_their_reference():
    # The evaluator an app (or `generate`) builds: one replay store for every image. A schedule computes only
    # from where it leaves its setting's reference, and its image is the one computed without replay.
    from tmpdiff.engine.runner import Engine
    from tmpdiff.engine.settings import RunSettings
    from tmpdiff.measure.evaluator import Evaluator

    engine = Engine(device="cpu")
    settings = RunSettings(model="shapes-dit", seed=3, steps=8)
    shared = Evaluator(engine, None, predict=False, replay=ReplayStore())  # no cost-table runs in the counts
    shared.reference(settings)
    before = dict(engine.calls)
    replayed = shared.evaluate(settings, "fp32*6,skip,fp32")
    assert engine.calls["replayed"] - before["replayed"] == 6
    assert engine.calls["denoiser"] - before["denoiser"] == 1
    fresh = Evaluator(engine, None, predict=False).evaluate(settings, "fp32*6,skip,fp32")
    assert np.array_equal(np.asarray(replayed.image), np.asarray(fresh.image))
    assert replayed.summary()["ssim"] == fresh.summary()["ssim"] and replayed.summary()["seconds"] > 0
