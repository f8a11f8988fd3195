"""Calibration images batched into one pipeline call: the stock pipeline's batch, half the denoiser calls,
and a memory guard that falls back to smaller batches."""

import numpy as np
import pytest
import torch

from tmpdiff.engine.runner import Engine
from tmpdiff.engine.settings import RunSettings, batch_call_kwargs
from tmpdiff.measure.evaluator import Evaluator
from tmpdiff.studies.procedure import run_search
from tmpdiff.studies.request import SearchRequest

PROMPTS = {"shapes-dit": ("red circle", "blue square")}


def two_settings(model):
    prompts = PROMPTS.get(model, ("a red cat", "a blue house"))
    return [RunSettings(model=model, prompt=p, seed=s, steps=4) for p, s in zip(prompts, (0, 1), strict=True)]


def pixels(image):
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("model", ["shapes-dit", "tiny-sd15", "tiny-flux", "tiny-sdxl"])
def test_a_batched_reference_is_the_stock_pipelines_batch(model):
    engine = Engine("cpu")
    settings = two_settings(model)
    ours = engine.generate_batch(settings, settings[0].reference_schedule())
    stock = engine.pipeline(model)(**batch_call_kwargs(settings, "cpu")).images  # no hook attached
    for result, image in zip(ours, stock, strict=True):
        assert np.array_equal(pixels(result.image), pixels(image))
        assert result.steps_run == ["fp32"] * 4


@pytest.mark.parametrize(("model", "schedule"), [("shapes-dit", "fp32*2,bf16,skip"),
                                                 ("tiny-sd15", "fp32,int8wo,skip,fp32")])
def test_a_batched_search_step_makes_half_the_denoiser_calls_and_the_same_scores(model, schedule):
    settings = two_settings(model)
    alone = Evaluator(Engine("cpu"), predict=False)
    batched = Evaluator(Engine("cpu"), predict=False)
    batched.batch_size = 2
    for evaluator in (alone, batched):  # variants built first: a run that builds one is timed again
        evaluator.engine.warm(settings[0], schedule.split(",")[1].split("*")[0])
        evaluator.engine.calls.update(denoiser=0, replayed=0, skipped=0)
    one = alone.evaluate_all(settings, schedule)
    two = batched.evaluate_all(settings, schedule)
    assert batched.engine.calls["denoiser"] * 2 == alone.engine.calls["denoiser"]
    assert [e.record.steps_run for e in two] == [e.record.steps_run for e in one]
    for a, b in zip(one, two, strict=True):  # within the pipeline's own batch invariance
        assert abs(a.record.ssim - b.record.ssim) < 0.01
        assert b.record.key == a.record.key


def test_running_out_of_gpu_memory_falls_back_to_smaller_batches(monkeypatch):
    engine = Engine("cpu")
    real = engine.generate_batch
    sizes = []

    def tight_memory(settings, *args, **kwargs):
        sizes.append(len(settings))
        if len(settings) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(settings, *args, **kwargs)

    monkeypatch.setattr(engine, "generate_batch", tight_memory)
    settings = [RunSettings(model="shapes-dit", prompt="red circle", seed=s, steps=4) for s in range(4)]
    evaluator = Evaluator(engine, predict=False)
    evaluator.batch_size = 4
    with pytest.warns(UserWarning, match="out of memory with 4 images per pipeline call; going on with 2"):
        results = evaluator.evaluate_all(settings, "fp32*2,skip*2")
    assert evaluator.batch_size == 2
    assert sizes == [4, 2, 2, 2, 2]  # references: 4 refused, 2 + 2; then the schedule in twos at once
    alone = Evaluator(Engine("cpu"), predict=False).evaluate_all(settings, "fp32*2,skip*2")
    assert [abs(a.record.ssim - b.record.ssim) < 0.01 for a, b in zip(results, alone, strict=True)] == [True] * 4


def test_a_batched_search_reaches_its_floor_with_fewer_denoiser_calls():
    request = {"model": "shapes-dit", "prompts": ("red circle",), "seeds": (0, 1), "steps": 6,
               "ladder": ("fp32", "skip"), "target_ssim": 0.8, "additivity_samples": 2, "validation_seeds": (1000,)}
    alone = run_search(Evaluator(Engine("cpu")), SearchRequest(**request)).to_dict()
    batched = run_search(Evaluator(Engine("cpu")), SearchRequest(**request, batch_size=2)).to_dict()
    assert batched["batch_size"] == 2
    assert batched["denoiser_calls"]["total"]["denoiser"] < alone["denoiser_calls"]["total"]["denoiser"]
    assert batched["ssim"] >= 0.8
    assert batched["schedule"] == alone["schedule"]


def test_a_batch_refuses_settings_that_differ_in_more_than_prompt_and_seed():
    settings = [RunSettings(model="shapes-dit", steps=4), RunSettings(model="shapes-dit", steps=6)]
    with pytest.raises(ValueError, match="differ only in prompt and seed"):
        batch_call_kwargs(settings, "cpu")
