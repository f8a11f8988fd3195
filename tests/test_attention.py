"""The fp8 attention rung (``fp8a8``): simulated numerics on the CPU, real FlashAttention-3 on Hopper."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tmpdiff import Status, apply_schedule, get_model, precision_status
from tmpdiff.steps import attention

STEPS = 4


def relative_rms(out, ref):
    return float((out - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt())


def test_simulated_fp8_attention_is_close_but_not_exact():
    q, k, v = (torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(i)) for i in range(3))
    ref = F.scaled_dot_product_attention(q, k, v)
    error = relative_rms(attention.simulate_fp8_attention(q, k, v), ref)
    assert 0.001 < error < 0.1  # e4m3 keeps 3 mantissa bits: a few per cent, never zero


def test_each_head_is_scaled_to_the_fp8_range_on_its_own():
    x = torch.randn(1, 2, 16, 8)
    x[:, 1] *= 1000  # one head a thousand times larger: a shared scale would flush the other to zero
    x8, scale = attention._to_fp8(x)
    assert scale.shape == (1, 2, 1, 1)
    assert x8.float().abs().amax(dim=(-2, -1)).flatten().tolist() == [attention.FP8_MAX] * 2
    back = x8.float() * scale
    assert relative_rms(back[:, 0], x[:, 0]) < 0.05


class _Attends(nn.Module):
    def forward(self, q, k, v, mask=None):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def test_only_a_marked_variant_attends_in_fp8_and_a_masked_call_is_left_alone():
    q, k, v = (torch.randn(1, 2, 32, 16) for _ in range(3))
    plain, marked = _Attends(), _Attends()
    attention.mark(marked, simulated=True)
    with attention.attention_context(plain):
        assert torch.equal(plain(q, k, v), F.scaled_dot_product_attention(q, k, v))
    mask = torch.ones(32, 32, dtype=torch.bool).tril()
    expected = attention.simulate_fp8_attention(q, k, v), F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with attention.attention_context(marked):
        fp8, masked = marked(q, k, v), marked(q, k, v, mask)
    assert torch.equal(fp8, expected[0])
    assert torch.equal(masked, expected[1])


def test_fp8a8_is_simulated_on_the_cpu_with_the_reason():
    status = precision_status("fp8a8", "cpu")
    assert status.status is Status.SIMULATED
    assert "attention simulated" in status.reason


def _image(pipe, name):
    kwargs = get_model(name).call_kwargs("a photo of a red cat", steps=STEPS, seed=0)
    with torch.no_grad():
        return pipe(**kwargs, output_type="np").images[0]


def test_fp8a8_steps_and_only_they_attend_in_fp8(pipes, monkeypatch):
    name = "tiny-flux"
    pipe = pipes(name)
    calls = []
    original = attention.simulate_fp8_attention
    monkeypatch.setattr(attention, "simulate_fp8_attention", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    with apply_schedule(pipe, "fp32,fp8*2,fp32"):
        linears_only = _image(pipe, name)
    assert calls == []
    with apply_schedule(pipe, "fp32,fp8a8*2,fp32") as handle:
        both = _image(pipe, name)
    assert handle.steps_run == ["fp32", "fp8a8", "fp8a8", "fp32"]
    blocks = sum(1 for m in handle.variants["fp8a8"].modules() if type(m).__name__.endswith("Attention"))
    assert blocks and len(calls) == 2 * blocks  # every attention of both fp8a8 steps, nothing else
    difference = np.abs(both - linears_only)
    assert 0 < difference.mean() < 0.05


def test_fp8a8_unavailable_on_a_hopper_without_the_kernel_says_how_to_install(monkeypatch):
    from tmpdiff.steps import precisions

    monkeypatch.setattr(attention, "fp8_attention_available", lambda index=0: (False, attention.INSTALL_HINT))
    linears = precisions.Availability("fp8a8", Status.REAL, "torchao kernels on cuda")
    status = precisions._with_attention(precisions.get_precision("fp8a8"), linears, "cuda")
    assert status.status is Status.UNAVAILABLE
    assert "fa3-fwd" in status.reason and "pip install" in status.reason
