"""Resident precision variants of one denoiser, built once and kept across pipeline calls.

A torchao variant is a copy of the denoiser that *shares* every parameter with the original
(``copy.deepcopy`` with a pre-filled memo) and then has its Linear weights swapped by
``quantize_``; so only the quantized weights cost memory, and the original is never touched.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from .precisions import Kind, Precision, Status, get_precision, precision_status

__all__ = ["MIN_ROWS", "VariantBank", "bank_for", "module_bytes"]

# torchao's dynamic-activation kernels need at least this many rows per matmul; smaller
# inputs (timestep and modulation embeddings at batch 1) stay in the reference precision.
MIN_ROWS = 16
MIN_FEATURES = 16


@dataclass
class VariantBank:
    """The variants of one denoiser, keyed by (precision, compiled)."""

    reference: nn.Module
    variants: dict[tuple[str, bool], nn.Module] = field(default_factory=dict)
    linear_rows: dict[str, int] | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)
    device: torch.device | None = None

    @property
    def reference_dtype(self) -> torch.dtype:
        return next(self.reference.parameters()).dtype

    def needs_rows(self, name: str) -> bool:
        return get_precision(name).dynamic_activation and self.linear_rows is None

    def get(self, name: str, compiled: bool) -> nn.Module | None:
        self._drop_if_moved()
        return self.variants.get((name, compiled))

    def build(self, name: str, compiled: bool) -> nn.Module:
        """Build (or return) the variant; the caller holds no hook on the reference during this."""
        self._drop_if_moved()
        key = (name, compiled)
        if key not in self.variants:
            if compiled:
                # Compile a copy that shares the eager variant's (quantized) weights: no second copy.
                eager = self.variants.get((name, False)) or self._make(get_precision(name))
                variant = _copy(eager, share=True)
                _compile_regionally(variant)
            else:
                variant = self._make(get_precision(name))
            self.variants[key] = variant
        return self.variants[key]

    def memory_bytes(self) -> dict[str, int]:
        """Extra bytes each resident variant holds beyond the reference weights (and, for a
        compiled variant, beyond its eager twin, whose weights it shares)."""
        reference = {id(t) for t in _tensors(self.reference)}
        sizes = {}
        for (name, compiled), variant in self.variants.items():
            eager = self.variants.get((name, False)) if compiled else None
            shared = reference | ({id(t) for t in _tensors(eager)} if eager is not None else set())
            key = f"{name}{'+compiled' if compiled else ''}"
            sizes[key] = sum(_tensor_bytes(t) for t in _tensors(variant) if id(t) not in shared)
        return sizes

    def _make(self, precision: Precision) -> nn.Module:
        device = next(self.reference.parameters()).device
        status = precision_status(precision.name, device)
        if status.status is Status.UNAVAILABLE:
            raise ValueError(f"precision {precision.name!r} is unavailable on {device}: {status.reason}")
        if precision.kind is Kind.DTYPE:
            if precision.dtype == self.reference_dtype:
                return _copy(self.reference, share=True)
            # A cast rewrites parameters in place, so this copy must not share them.
            return _copy(self.reference, share=False).to(precision.dtype)
        from torchao.quantization import quantize_

        make_config = precision.config if status.status is Status.REAL else precision.simulate
        assert make_config is not None  # a usable TORCHAO precision has one of the two
        variant = _copy(self.reference, share=True)
        quantize_(variant, make_config(self.reference_dtype), filter_fn=self._layer_filter(precision))
        return variant.eval()

    def _layer_filter(self, precision: Precision) -> Callable[[nn.Module, str], bool]:
        rows = self.linear_rows or {}

        def takes(module: nn.Module, name: str) -> bool:
            if not isinstance(module, nn.Linear):
                return False
            if module.in_features % MIN_FEATURES or module.out_features % MIN_FEATURES:
                return False
            if precision.group_size and module.in_features % precision.group_size:
                return False
            return not (precision.dynamic_activation and rows.get(name, MIN_ROWS) < MIN_ROWS)

        return takes

    def _drop_if_moved(self) -> None:
        device = next(self.reference.parameters()).device
        if self.device != device:
            self.variants.clear()
            self.device = device


_BANKS: weakref.WeakKeyDictionary[nn.Module, VariantBank] = weakref.WeakKeyDictionary()
_BANKS_LOCK = threading.Lock()


def bank_for(module: nn.Module) -> VariantBank:
    """The one bank of ``module``'s variants for this process."""
    with _BANKS_LOCK:
        if module not in _BANKS:
            _BANKS[module] = VariantBank(module)
        return _BANKS[module]


@contextmanager
def record_linear_rows(module: nn.Module) -> Iterator[dict[str, int]]:
    """Records, during the block, how many rows each Linear layer's input has."""
    rows: dict[str, int] = {}
    handles = []
    for name, layer in module.named_modules():
        if isinstance(layer, nn.Linear):

            def hook(mod: nn.Module, args: tuple, name: str = name) -> None:
                x = args[0]
                rows[name] = min(rows.get(name, 1 << 62), x.numel() // max(x.shape[-1], 1))

            handles.append(layer.register_forward_pre_hook(hook))
    try:
        yield rows
    finally:
        for handle in handles:
            handle.remove()


def module_bytes(module: nn.Module) -> int:
    return sum(_tensor_bytes(t) for t in _tensors(module))


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    unique = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return list(unique.values())


def _tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes of a tensor, looking inside torchao's tensor subclasses."""
    if hasattr(tensor, "__tensor_flatten__") and type(tensor) not in (torch.Tensor, nn.Parameter):
        names, _ = tensor.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(tensor, n)) for n in names)
    return tensor.numel() * tensor.element_size()


@contextmanager
def _without_instance_forward(module: nn.Module) -> Iterator[None]:
    """Hides a hook-installed ``forward`` and hook registry while the module is copied."""
    saved = {k: module.__dict__.pop(k) for k in ("forward", "_diffusers_hook") if k in module.__dict__}
    try:
        yield
    finally:
        module.__dict__.update(saved)


def _copy(module: nn.Module, share: bool) -> nn.Module:
    """A copy of the module tree; with ``share`` its parameters and buffers are the original objects."""
    memo = {id(t): t for t in _tensors(module)} if share else {}
    with _without_instance_forward(module):
        return copy.deepcopy(module, memo)


def _compile_regionally(module: nn.Module) -> None:
    """Compile the repeated blocks where the model declares them, else the whole module."""
    if getattr(module, "_repeated_blocks", None):
        module.compile_repeated_blocks(fullgraph=True)
    else:
        module.compile()
