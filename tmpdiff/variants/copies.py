"""Copies of a denoiser that share its tensors (a variant is one, before quantization swaps some weights), and the
bytes a module holds."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["STREAMING_HOOK", "copy_module", "find_blocks", "inner_tensor_names", "module_bytes", "owned_tensors",
           "parallel_like", "strip_streaming_hooks", "tensor_bytes", "tensors_of"]

STREAMING_HOOK = "_tmpdiff_streaming"  # marks the hooks of a block streamed from host memory (memory.streaming)


def strip_streaming_hooks(module: nn.Module) -> None:
    """Removes the streaming hooks a copy of a streamed module carries over (a variant built from the reference):
    they are the original's, and a compiled block should not trace them."""
    for layer in module.modules():
        for hooks in (layer._forward_pre_hooks, layer._forward_hooks):
            for key in [k for k, hook in hooks.items() if getattr(hook, STREAMING_HOOK, False)]:
                del hooks[key]


def find_blocks(module: nn.Module) -> list[nn.Module]:
    """The repeated blocks of ``module``, in the order they are defined: the classes a diffusers model declares as
    repeated, else the elements of its largest ``ModuleList``s (a text encoder's layers, a UNet's stages)."""
    declared = set(getattr(module, "_repeated_blocks", None) or ())
    if declared:
        return [m for m in module.modules() if type(m).__name__ in declared]
    total = sum(p.numel() for p in module.parameters()) or 1
    lists = [m for m in module.modules() if isinstance(m, nn.ModuleList)
             and sum(p.numel() for p in m.parameters()) >= 0.2 * total]
    outer = [m for m in lists if not any(m is not other and _contains(other, m) for other in lists)]
    return [block for blocks in outer for block in blocks]


def _contains(outer: nn.Module, inner: nn.Module) -> bool:
    return any(m is inner for m in outer.modules())


def module_bytes(module: nn.Module) -> int:
    return sum(tensor_bytes(t) for t in tensors_of(module))


def tensors_of(module: nn.Module) -> list[torch.Tensor]:
    unique = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return list(unique.values())


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes of a tensor, looking inside torchao's tensor subclasses."""
    names = inner_tensor_names(tensor)
    if names is not None:
        return sum(tensor_bytes(getattr(tensor, n)) for n in names)
    return tensor.numel() * tensor.element_size()


def inner_tensor_names(tensor: torch.Tensor) -> list[str] | None:
    """The attribute names of a tensor subclass's inner tensors (torchao's quantized weights: their data and
    scales), or None for a plain tensor: the one test of "is this a wrapper tensor" in the project."""
    if type(tensor) in (torch.Tensor, nn.Parameter) or not hasattr(tensor, "__tensor_flatten__"):
        return None
    names, _ = tensor.__tensor_flatten__()
    return list(names)


def owned_tensors(module: nn.Module, skip: set[int] | None = None) -> Iterator[tuple[nn.Module, str, torch.Tensor]]:
    """Each parameter and buffer of ``module`` and its submodules once (a tensor shared between layers, or with
    another variant, is met once), with the module that holds it and its name there; ids in ``skip`` left out.
    The one walk over modules' own tensors: placing, streaming and weighing all go through it."""
    seen = set(skip or ())
    for owner in module.modules():
        for name, tensor in [*owner._parameters.items(), *owner._buffers.items()]:
            if tensor is not None and id(tensor) not in seen:
                seen.add(id(tensor))
                yield owner, name, tensor


@contextmanager
def _without_instance_forward(module: nn.Module) -> Iterator[Any]:
    """Hides hook-installed forwards and hook registries while the module is copied, and yields the module's
    parallel config (None for most). Only the root's hooks are hidden (they are tmpdiff's own), unless the module
    is context-parallel: then every module's hooks (the input split, the output gather) and the attention
    processors' config (which holds process groups) stay behind, and :func:`_copy` makes them again on the copy."""
    parallel = getattr(module, "_parallel_config", None)
    modules = list(module.modules()) if parallel is not None else [module]
    saved: list[tuple[nn.Module, dict[str, Any]]] = [
        (m, {k: m.__dict__.pop(k) for k in ("forward", "_diffusers_hook") if k in m.__dict__}) for m in modules]
    holders: list[Any] = [] if parallel is None else [module, *(p for m in modules if getattr(
        p := getattr(m, "processor", None), "_parallel_config", None) is not None)]
    for holder in holders:
        holder._parallel_config = None
    try:
        yield parallel
    finally:
        for m, attributes in saved:
            m.__dict__.update(attributes)
        for holder in holders:
            holder._parallel_config = parallel


def copy_module(module: nn.Module, share: bool, parallelize: bool = True) -> nn.Module:
    """A copy of the module tree; with ``share`` its parameters and buffers are the original objects. A
    context-parallel module's copy is made context-parallel the same way, on the same process groups (unless
    ``parallelize`` is False: the caller does it once the copy is finished)."""
    memo = {id(t): t for t in tensors_of(module)} if share else {}
    with _without_instance_forward(module) as parallel:
        copied = copy.deepcopy(module, memo)
    strip_streaming_hooks(copied)
    if parallel is not None and parallelize:
        parallel_like(copied, parallel)
    return copied


def parallel_like(module: nn.Module, parallel: Any) -> None:
    if parallel.tensor_parallel_config is not None or parallel.context_parallel_config is None:
        raise ValueError("tmpdiff runs per-step precisions under context parallelism only, not tensor parallelism: "
                         "enable_parallelism(config=ContextParallelConfig(...)) on the denoiser")
    cp = parallel.context_parallel_config
    enable: Any = module.enable_parallelism  # a diffusers ModelMixin's
    enable(config=dataclasses.replace(cp, mesh=cp._mesh))  # the reference's groups, none new
