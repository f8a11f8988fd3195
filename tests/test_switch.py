"""apply_schedule against the stock diffusers pipelines, one tiny build of every family."""

import copy

import numpy as np
import pytest
import torch
from conftest import TINY
from torchao.quantization import Int8WeightOnlyConfig, quantize_

from tmpdiff import apply_schedule, get_model
from tmpdiff.switching.switch import denoiser_of
from tmpdiff.variants.bank import MIN_FEATURES

STEPS = 4


def run(pipe, name, seed=0):
    kwargs = get_model(name).call_kwargs("a photo of a red cat", steps=STEPS, seed=seed)
    with torch.no_grad():
        return pipe(**kwargs, output_type="np").images[0]


def quantized_linears(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.Linear)
            and type(m.weight).__name__ not in ("Parameter", "Tensor")]


@pytest.mark.parametrize("name", TINY)
def test_reference_schedule_is_exactly_the_stock_pipeline(pipes, name):
    pipe = pipes(name)
    stock = run(pipe, name)
    with apply_schedule(pipe, f"fp32*{STEPS}") as handle:
        ours = run(pipe, name)
    assert np.array_equal(stock, ours)
    assert handle.steps_run == ["fp32"] * STEPS
    assert len(handle.step_seconds) == STEPS and all(s >= 0 for s in handle.step_seconds)


@pytest.mark.parametrize("name", TINY)
def test_uniform_int8wo_matches_quantize_by_hand(pipes, name):
    pipe = pipes(name)
    with apply_schedule(pipe, f"int8wo*{STEPS}") as handle:
        ours = run(pipe, name)
    variant = handle.variants["int8wo"]
    assert quantized_linears(variant), "torchao quantized nothing"
    assert not quantized_linears(denoiser_of(pipe)), "the reference weights were touched"

    by_hand = copy.deepcopy(pipe)
    module = denoiser_of(by_hand)
    quantize_(module, Int8WeightOnlyConfig(), filter_fn=lambda m, _: isinstance(m, torch.nn.Linear)
              and m.in_features % MIN_FEATURES == 0 and m.out_features % MIN_FEATURES == 0)
    expected = run(by_hand, name)
    assert np.abs(ours - expected).max() < 1e-4
    assert not np.array_equal(ours, run(pipe, name)), "int8 gave the fp32 image: nothing was quantized"


@pytest.mark.parametrize("name", TINY)
def test_mixed_schedule_runs_each_precision_at_its_steps(pipes, name):
    pipe = pipes(name)
    entered: list[str] = []
    with apply_schedule(pipe, "fp32,int8,skip,int8wo") as handle:
        # Build the variants by a first run, then watch which variant's forward each call enters.
        run(pipe, name)
        hooks = [
            module.register_forward_pre_hook(lambda *_, n=n: entered.append(n))
            for n, module in handle.variants.items() if n != "fp32"
        ]
        hooks.append(denoiser_of(pipe).register_forward_pre_hook(lambda *_: entered.append("call")))
        run(pipe, name)
        for h in hooks:
            h.remove()
    assert handle.steps_run[-STEPS:] == ["fp32", "int8", "skip", "int8wo"]
    assert entered == ["call", "call", "int8", "call", "call", "int8wo"]
    assert handle.calls_per_step[-STEPS:][2] == 0


def test_pipeline_is_left_as_it_was_even_after_an_error(pipes):
    pipe = pipes("tiny-sd15")
    module = denoiser_of(pipe)
    before = (set(vars(module)), set(vars(pipe.scheduler)), module.forward.__func__)
    with pytest.raises(RuntimeError, match="boom"), apply_schedule(pipe, f"int8*{STEPS}"):
        raise RuntimeError("boom")
    with pytest.raises(ValueError, match="ran more denoising steps than the schedule's 2"), \
            apply_schedule(pipe, "fp32*2"):
        run(pipe, "tiny-sd15")
    after = (set(vars(module)), set(vars(pipe.scheduler)), module.forward.__func__)
    assert before == after
    assert np.array_equal(run(pipe, "tiny-sd15"), run(pipes("tiny-sd15"), "tiny-sd15"))


def test_too_long_a_schedule_is_reported(pipes):
    with pytest.raises(ValueError, match="ran 4 denoising steps but the schedule has 6"), \
            apply_schedule(pipes("tiny-flux"), "fp32*6"):
        run(pipes("tiny-flux"), "tiny-flux")


def test_variants_are_resident_and_share_unquantized_weights(pipes):
    pipe = pipes("tiny-sdxl")
    with apply_schedule(pipe, f"int8wo*{STEPS}") as first:
        run(pipe, "tiny-sdxl")
    with apply_schedule(pipe, f"int8wo*{STEPS}") as second:
        run(pipe, "tiny-sdxl")
    assert first.variants["int8wo"] is second.variants["int8wo"]
    assert "int8wo" not in second.build_seconds
    reference = dict(denoiser_of(pipe).named_parameters())
    variant = dict(second.variants["int8wo"].named_parameters())
    shared = [n for n, p in variant.items() if p is reference.get(n)]
    assert shared, "unquantized parameters should be shared, not copied"
    extra = second.memory_bytes()["int8wo"]
    full = sum(p.numel() * p.element_size() for p in reference.values())
    assert 0 < extra < full


def test_fp16_variant_runs_in_fp16_and_returns_the_reference_dtype(pipes):
    pipe = pipes("tiny-flux")
    with apply_schedule(pipe, "fp32,fp16*3") as handle:
        image = run(pipe, "tiny-flux")
    assert next(handle.variants["fp16"].parameters()).dtype == torch.float16
    assert np.isfinite(image).all()


def test_nested_blocks_are_refused(pipes):
    pipe = pipes("tiny-pixart")
    with apply_schedule(pipe, "fp32*4"), pytest.raises(ValueError, match="already active"), \
            apply_schedule(pipe, "fp32*4"):
        pass


class _Velocity(torch.nn.Module):
    """A denoiser whose output is linear in the timestep: 2 + t / 500 (whatever the latents)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, t):
        return torch.zeros_like(x) + self.scale * (2.0 + t / 500)


class _Loop:
    """The smallest diffusers-shaped pipeline: a denoiser, a scheduler and the loop every pipeline runs."""

    def __init__(self):
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.transformer, self.scheduler = _Velocity(), FlowMatchEulerDiscreteScheduler(shift=3.0)

    def __call__(self, steps):
        self.scheduler.set_timesteps(steps)
        x, outputs = torch.zeros(1, 4), []
        for t in self.scheduler.timesteps:
            outputs.append(self.transformer(x, t))
            x = self.scheduler.step(outputs[-1], t, x, return_dict=False)[0]
        return outputs


def test_an_extrapolated_step_is_exact_for_a_denoiser_linear_in_the_timestep():
    pipe = _Loop()
    with torch.no_grad(), apply_schedule(pipe, "fp32*2,extrap*2,fp32,extrap") as handle:
        outputs = pipe(6)
    expected = [2.0 + float(t) / 500 for t in pipe.scheduler.timesteps]  # shifted timesteps: not evenly spaced
    assert [round(float(o[0, 0]), 5) for o in outputs] == pytest.approx(expected, abs=1e-5)
    assert handle.steps_run == ["fp32", "fp32", "extrap", "extrap", "fp32", "extrap"]
    assert handle.calls_per_step == [1, 1, 0, 0, 1, 0] and handle.skipped_calls == 3
    with torch.no_grad(), apply_schedule(pipe, "fp32*2,skip*2,fp32,skip"):
        reused = pipe(6)
    assert float(reused[3][0, 0]) == pytest.approx(expected[1]) != pytest.approx(expected[3])  # skip reuses


def test_extrap_after_one_computed_step_reuses_it_and_cannot_lead():
    pipe = _Loop()
    with torch.no_grad(), apply_schedule(pipe, "fp32,extrap*3"):
        outputs = pipe(4)
    assert all(torch.equal(o, outputs[0]) for o in outputs)  # no slope yet: plain reuse
    with pytest.raises(ValueError, match="cannot be the first step"):
        apply_schedule(pipe, "extrap,fp32*3").__enter__()
