"""fp8 attention for the steps whose precision asks for it (the ``fp8a8`` rung).

A variant built with fp8 attention carries a marker; while it runs, a ``TorchFunctionMode`` takes its
``F.scaled_dot_product_attention`` calls (every model in the registry attends through it, diffusers'
default attention backend included) and runs them with q, k and v in fp8 (e4m3), each scaled per
(batch, head) by its own absolute maximum. Being per variant, the choice switches per step with no
recompilation: each variant is compiled once with its attention traced in.

- **Real** on Hopper with FlashAttention-3's forward (the ``fa3-fwd`` wheel:
  ``pip install "tmpdiff[fp8-attention]"``), called through a custom op so ``torch.compile`` keeps the
  kernel whole while Inductor fuses the scaling into the kernels before it.
- **Simulated** elsewhere (the CPU): q, k and v rounded to e4m3 with the same scales, then the ordinary
  attention. The kernel also rounds the softmax probabilities to fp8; the simulation does not, so it shows
  a lower bound of the error (``benchmarks/attention_fp8.py`` measures both on a GPU).

Calls the kernel cannot take (a mask, dropout, grouped heads, a head size over 256; fp32 on a GPU) run the
ordinary attention in both modes.
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["FP8_MAX", "attention_context", "fp8_attention", "fp8_attention_available", "mark",
           "simulate_fp8_attention"]

FP8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448
MAX_HEAD_SIZE = 256
_MARK = "_tmpdiff_attention"  # attribute on a variant: "fp8" (real kernel) or "fp8-simulated"
INSTALL_HINT = 'pip install "tmpdiff[fp8-attention]" (the fa3-fwd wheel: FlashAttention-3, Hopper GPUs)'


@functools.cache
def fp8_attention_available(device_index: int = 0) -> tuple[bool, str]:
    """Whether the real fp8 kernel runs here, and if not, why (one line a user can act on)."""
    if not torch.cuda.is_available():
        return False, "needs a CUDA GPU"
    if torch.cuda.get_device_capability(device_index) != (9, 0):
        return False, "FlashAttention-3's fp8 kernel needs a Hopper GPU (compute capability 9.0)"
    try:
        import fa3_fwd_interface  # noqa: F401
    except Exception as exc:  # an ImportError, or a wheel built for another torch: not here either way
        return False, f"no fp8 attention kernel ({type(exc).__name__}): {INSTALL_HINT}"
    return True, "FlashAttention-3 fp8 forward"


def mark(variant: nn.Module, simulated: bool) -> None:
    """Makes ``variant`` attend in fp8 whenever it runs under :func:`attention_context`."""
    setattr(variant, _MARK, "fp8-simulated" if simulated else "fp8")


def attention_context(variant: nn.Module) -> AbstractContextManager[Any]:
    """The attention a variant's calls run with: fp8 for a marked variant, unchanged otherwise."""
    kind = getattr(variant, _MARK, None)
    return _Fp8Attention(simulated=kind == "fp8-simulated") if kind else nullcontext()


def _per_head_scale(x: torch.Tensor) -> torch.Tensor:
    """(batch, heads, 1, 1) scales that map each head's absolute maximum to e4m3's largest value."""
    return (x.abs().amax(dim=(-2, -1), keepdim=True).float() / FP8_MAX).clamp(min=1e-12)


def _to_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = _per_head_scale(x)
    return (x.float() / scale).to(torch.float8_e4m3fn), scale


def simulate_fp8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """Attention on q/k/v rounded to e4m3 with per-(batch, head) scales; inputs (batch, heads, tokens, size)."""
    q, k, v = ((x8.float() * scale).to(x.dtype) for x, (x8, scale) in ((x, _to_fp8(x)) for x in (q, k, v)))
    return F.scaled_dot_product_attention(q, k, v, **kwargs)


@torch.library.custom_op("tmpdiff::fa3_fp8_attention", mutates_args=())
def _fa3_fp8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_descale: torch.Tensor,
             k_descale: torch.Tensor, v_descale: torch.Tensor, softmax_scale: float, causal: bool) -> torch.Tensor:
    # The C++ op itself, not flash_attn_func: its Python layers (an autograd Function, a second custom op,
    # two tensors made per call) kept the GPU waiting ~35 ms of a ~100 ms FLUX step (H200 profile).
    import fa3_fwd._C  # noqa: F401  (registers torch.ops.fa3_fwd)

    no_tensor = None
    return torch.ops.fa3_fwd.fwd(
        q, k, v, *[no_tensor] * 17,  # new k/v, qv, out, varlen, paging, rotary: none of them
        q_descale, k_descale, v_descale, softmax_scale, causal,
        -1, -1, 0, 0.0, True, None, 1, None, 0,  # no window, no chunking, no softcap; one split; no GQA packing
    )[0]


@_fa3_fp8.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_descale: torch.Tensor, k_descale: torch.Tensor,
      v_descale: torch.Tensor, softmax_scale: float, causal: bool) -> torch.Tensor:
    return q.new_empty(q.shape, dtype=torch.bfloat16)


def fp8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                  is_causal: bool = False) -> torch.Tensor:
    """The real kernel on (batch, tokens, heads, size) inputs, as FlashAttention lays them out."""
    q8: list[torch.Tensor] = []
    k8: list[torch.Tensor] = []
    v8: list[torch.Tensor] = []
    descales: list[torch.Tensor] = []
    for x, out in ((q, q8), (k, k8), (v, v8)):
        x8, s = _to_fp8(x.transpose(1, 2))  # per (batch, head) in SDPA's layout, then back
        out.append(x8.transpose(1, 2).contiguous())
        descales.append(s.flatten(1).contiguous())
    softmax_scale = scale if scale is not None else q.shape[-1] ** -0.5
    return _fa3_fp8(q8[0], k8[0], v8[0], *descales, softmax_scale, is_causal).to(q.dtype)


def _kernel_takes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kwargs: dict[str, Any], simulated: bool) -> bool:
    """Whether FlashAttention-3's fp8 kernel takes this call (the simulation takes the same ones, in any float
    dtype, so that an fp32 model on the CPU shows the cost a bf16 model would pay on the GPU)."""
    if kwargs.get("attn_mask") is not None or kwargs.get("dropout_p", 0.0) or kwargs.get("enable_gqa", False):
        return False
    if not simulated and q.dtype not in (torch.bfloat16, torch.float16):
        return False
    if q.dim() != 4 or not q.is_floating_point() or q.shape[-1] > MAX_HEAD_SIZE:
        return False
    return k.shape == v.shape and k.shape[:2] == q.shape[:2] and k.shape[-1] == q.shape[-1]


# Python wrappers whose ``super()`` call torch.compile cannot trace under a mode before torch 2.12
# (pytorch/pytorch#183850): the torch functions that do the same.
_UNTRACEABLE_WRAPPERS = {torch.Tensor.unflatten: torch.unflatten}
_SDPA_ARGUMENTS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


class _Fp8Attention(TorchFunctionMode):
    """Takes ``F.scaled_dot_product_attention`` calls and runs them in fp8 (real or simulated)."""

    def __init__(self, simulated: bool) -> None:
        super().__init__()
        self.simulated = simulated

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return _UNTRACEABLE_WRAPPERS.get(func, func)(*args, **kwargs)
        call = dict(zip(_SDPA_ARGUMENTS, args, strict=False)) | kwargs  # diffusers passes them by name
        q, k, v = call.pop("query"), call.pop("key"), call.pop("value")
        if not _kernel_takes(q, k, v, call, self.simulated):
            return func(*args, **kwargs)
        if self.simulated:
            return simulate_fp8_attention(q, k, v, **call)
        out = fp8_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=call.get("scale"),
                            is_causal=bool(call.get("is_causal", False)))
        return out.transpose(1, 2)
