"""The residual rung (``fp8r``): 16-bit-quality steps from 8-bit bytes.

A Linear layer's weight ``W`` is held as its fp8 copy (e4m3, one scale a row, the quantization the ``fp8`` rung
uses) plus the fp8 copy of what that misses, ``R = W - dequant(fp8(W))``, quantized the same way. Each call
rebuilds ``dequant(fp8(W)) + dequant(fp8(R))`` in the model's dtype and runs the layer in 16 bits (or 32): the
rebuilt weight is closer to ``W`` than bf16 is to the fp32 it was rounded from (on Gaussian 3072x3072 matrices:
0.07 % relative error against bf16's 0.17 %), at one byte a parameter for each half. Where the ``fp8`` variant
is built with real torchao kernels, its fp8 data and scales are the first half (shared, not copied), so a GPU
holding the ``fp8`` variant needs only the residual to run 16-bit-quality steps.

Activations are not quantized: the layer computes in the model's dtype, so any layer may take it (no row or
feature minimum, unlike the dynamic-activation rungs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional

__all__ = ["E4M3_MAX", "ResidualLinear", "fp8_rows", "make_residual", "reconstruction_error"]

E4M3_MAX = 448.0  # the largest finite float8_e4m3fn
TINY = 1e-12  # a row of zeros keeps a scale that is not zero


def fp8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` (out x in) as e4m3 values and one float32 scale a row: ``values * scale`` approximates it."""
    wide = weight.detach().float()
    scale = (wide.abs().amax(dim=-1, keepdim=True) / E4M3_MAX).clamp(min=TINY)
    return (wide / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), scale


class ResidualLinear(nn.Module):
    """A Linear layer whose weight is rebuilt from an fp8 copy and an fp8 residual at each call."""

    values: torch.Tensor
    scale: torch.Tensor
    residual: torch.Tensor
    residual_scale: torch.Tensor

    def __init__(self, values: torch.Tensor, scale: torch.Tensor, residual: torch.Tensor,
                 residual_scale: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features, self.out_features = values.shape[1], values.shape[0]
        self.register_buffer("values", values)
        self.register_buffer("scale", scale)
        self.register_buffer("residual", residual)
        self.register_buffer("residual_scale", residual_scale)
        self.bias = bias if bias is None or isinstance(bias, nn.Parameter) else nn.Parameter(bias, False)
        self.dtype = dtype

    def rebuilt_weight(self) -> torch.Tensor:
        return (self.values.float() * self.scale + self.residual.float() * self.residual_scale).to(self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.linear(x, self.rebuilt_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 + fp8 residual"


def make_residual(variant: nn.Module, takes: Callable[[nn.Module, str], bool],
                  fp8_of: Callable[[str], tuple[torch.Tensor, torch.Tensor] | None] | None = None) -> int:
    """Replaces every Linear layer of ``variant`` that ``takes`` accepts by a ``ResidualLinear``, in place; the
    fp8 half comes from ``fp8_of(name)`` (the ``fp8`` variant's data and scales) where it gives one, else it is
    computed here. Returns how many layers it replaced."""
    replaced = 0
    for name, module in list(variant.named_modules()):
        if not isinstance(module, nn.Linear) or not takes(module, name):
            continue
        shared = fp8_of(name) if fp8_of is not None else None
        # Made where the fp8 half lives (a variant built under a budget may sit on the GPU, its reference on the host).
        weight = module.weight.detach().to(shared[0].device) if shared is not None else module.weight.detach()
        values, scale = shared if shared is not None else fp8_rows(weight)
        missed = weight.float() - values.float() * scale
        residual, residual_scale = fp8_rows(missed)
        parent_name, _, child = name.rpartition(".")
        parent = variant.get_submodule(parent_name) if parent_name else variant
        bias = module.bias if module.bias is None or module.bias.device == values.device else nn.Parameter(
            module.bias.detach().to(values.device), requires_grad=False)
        setattr(parent, child, ResidualLinear(values, scale, residual, residual_scale, bias, weight.dtype))
        replaced += 1
    return replaced


def reconstruction_error(weight: torch.Tensor) -> dict[str, float]:
    """Relative Frobenius errors against ``weight``: its fp8 copy alone, fp8 plus the fp8 residual, and bf16 (the
    rounding a 16-bit step pays), for the numerics tests and the README."""
    wide = weight.detach().float()
    norm = wide.norm().item() or 1.0
    values, scale = fp8_rows(wide)
    first = values.float() * scale
    residual, residual_scale = fp8_rows(wide - first)
    both = first + residual.float() * residual_scale
    return {"fp8": (wide - first).norm().item() / norm, "fp8r": (wide - both).norm().item() / norm,
            "bf16": (wide - wide.to(torch.bfloat16).float()).norm().item() / norm}
