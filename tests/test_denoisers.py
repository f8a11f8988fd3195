"""Pipelines with more than one denoiser (Wan 2.2), or one under another name: every call switched, and no
step reported as run in a precision when nothing ran in it."""

import numpy as np
import pytest
import torch

from tmpdiff import apply_schedule
from tmpdiff.pipelines.tiny import tiny_wan
from tmpdiff.switching.switch import denoisers_of

CALL = {"prompt": "a red cat", "negative_prompt": "", "height": 16, "width": 16, "num_frames": 5,
        "num_inference_steps": 4, "guidance_scale": 3.0, "max_sequence_length": 16, "output_type": "np"}


@pytest.fixture(scope="module")
def wan22():
    return tiny_wan(two_denoisers=True)


def run(pipe, seed=0):
    with torch.no_grad():
        return pipe(**CALL, generator=torch.Generator().manual_seed(seed)).frames


def test_both_denoisers_are_found(wan22):
    assert [name for name, _ in denoisers_of(wan22)] == ["transformer", "transformer_2"]
    assert [name for name, _ in denoisers_of(wan22, "transformer_2")] == ["transformer_2"]
    with pytest.raises(ValueError, match="has no module 'prior'.*transformer_2"):
        denoisers_of(wan22, "prior")


def test_each_step_runs_in_its_precision_on_whichever_denoiser_calls(wan22):
    seen = []  # (denoiser, dtype of the weights that computed the call), from the denoisers' own hooks
    hooks = [getattr(wan22, name).proj_out.register_forward_hook(
        lambda module, *_, name=name: seen.append((name, module.weight.dtype)))
        for name in ("transformer", "transformer_2")]  # copied into every variant built from them
    try:
        with apply_schedule(wan22, "fp32,bf16,fp32,bf16") as handle:
            run(wan22)
    finally:
        for hook in hooks:
            hook.remove()
    per_step = [seen[i:i + 2] for i in range(0, len(seen), 2)]  # classifier-free guidance: 2 calls a step
    assert handle.denoisers == ["transformer", "transformer_2"] and handle.calls_per_step == [2, 2, 2, 2]
    assert {name for name, _ in per_step[-1]} == {"transformer_2"}  # past the boundary
    assert {name for name, _ in per_step[0]} == {"transformer"}
    expected = [torch.float32, torch.bfloat16, torch.float32, torch.bfloat16]
    assert [{dtype for _, dtype in step} for step in per_step] == [{d} for d in expected]


def test_the_all_reference_schedule_reproduces_the_stock_pipeline(wan22):
    stock = run(wan22)
    with apply_schedule(wan22, "fp32*4") as handle:
        switched = run(wan22)
    assert np.array_equal(stock, switched) and handle.steps_run == ["fp32"] * 4


def test_a_step_that_calls_no_switched_denoiser_raises_instead_of_claiming_it_ran(wan22):
    with pytest.raises(ValueError, match=r"step 3 of WanPipeline called none of the denoisers tmpdiff switched "
                                         r"\(transformer\), so its 'bf16' never ran"):
        with apply_schedule(wan22, "fp32*3,bf16", denoiser="transformer"):
            run(wan22)
    assert np.array_equal(run(wan22), run(wan22))  # the pipeline was left as it was found


class WeightUser(torch.nn.Module):
    """Uses a Linear's weight without calling the Linear (as HunyuanDiT's attention pool does with
    ``F.multi_head_attention_forward``): a quantized weight there meets ops torchao does not implement."""

    def __init__(self, inner: torch.nn.Linear) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.matmul(x, self.inner.weight.t()) + self.inner.bias


def quantized(layer: torch.nn.Module) -> bool:
    """A torchao layer: a fake-quantizing module (simulated) or a quantized weight tensor (real kernels)."""
    return type(layer) is not torch.nn.Linear or type(layer.weight) not in (torch.nn.Parameter, torch.Tensor)


def test_a_linear_used_outside_its_forward_stays_unquantized_for_every_torchao_precision():
    from tmpdiff import Status, available_precisions, load_pipeline
    from tmpdiff.steps.precisions import Kind, get_precision
    from tmpdiff.variants.bank import bank_for

    pipe = load_pipeline("shapes-dit")
    pipe.transformer.proj_out_1 = WeightUser(pipe.transformer.proj_out_1)  # 256 -> 512: quantizable shapes
    names = [a.name for a in available_precisions("cpu")
             if a.status is not Status.UNAVAILABLE and get_precision(a.name).kind is Kind.TORCHAO]
    assert {"int8", "int8wo", "fp8wo"} <= set(names)
    for name in names:
        with torch.no_grad(), apply_schedule(pipe, f"fp32,{name}") as handle:
            pipe(class_labels=[0], num_inference_steps=2, generator=torch.Generator().manual_seed(0))
        variant = handle.variants[name]
        assert not quantized(variant.proj_out_1.inner), name
        assert quantized(variant.transformer_blocks[0].ff.net[2]), name  # the rest is, really or simulated
        build = next(b for b in handle.builds if b.precision == name)
        assert "proj_out_1.inner" in build.note and "stay in the reference precision" in build.note
    assert bank_for(pipe.transformer).unswitched_layers() == ["proj_out_1.inner"]


@pytest.mark.parametrize("denoiser", [None, "prior"])
def test_a_denoiser_under_another_name_is_found_or_named(denoiser):
    from tmpdiff.pipelines.tiny import tiny_cascade_prior

    pipe = tiny_cascade_prior()

    def embeddings():
        with torch.no_grad():
            return pipe(prompt="a red cat", num_inference_steps=3, height=128, width=128, output_type="pt",
                        generator=torch.Generator().manual_seed(0)).image_embeddings

    stock = embeddings()
    with apply_schedule(pipe, "fp32*3", denoiser=denoiser) as handle:
        same = embeddings()
    assert handle.denoisers == ["prior"] and torch.equal(stock, same)
    seen = []
    hook = pipe.prior.clip_txt_pooled_mapper.register_forward_hook(lambda m, *_: seen.append(m.weight.dtype))
    try:
        with apply_schedule(pipe, "fp32,bf16,fp32", denoiser=denoiser) as handle:
            embeddings()
    finally:
        hook.remove()
    assert seen == [torch.float32, torch.bfloat16, torch.float32] and handle.steps_run == ["fp32", "bf16", "fp32"]
