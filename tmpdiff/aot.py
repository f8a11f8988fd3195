"""Ahead-of-time compiled variants: one AOTInductor package per repeated block class, reused by every block.

Regional, like ``compile_repeated_blocks``: each repeated block class (FLUX's double and single
blocks, SD3's joint blocks, ...) is exported once with ``torch.export`` and compiled once with
AOTInductor into a ``.pt2`` package *without* its weights. Every instance of the class then loads
the package and points it at its own weights (``load_constants(..., user_managed=True)``: no copy).
A later process loads the packages and never calls ``torch.compile``.

torchao's quantized weights are tensor subclasses, which ``torch.export`` does not take as
parameters; ``torchao.utils.unwrap_tensor_subclass`` re-expresses them as plain tensors first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["AotError", "BlockCall", "capture_block_calls", "compile_block", "apply_package_", "repeated_blocks"]

log = logging.getLogger(__name__)


class AotError(RuntimeError):
    """A block that could not be exported or AoT-compiled; the caller falls back to torch.compile."""


BlockCall = tuple[tuple[Any, ...], dict[str, Any]]


def repeated_blocks(module: nn.Module) -> dict[str, list[nn.Module]]:
    """The instances of each repeated block class the model declares, by class name, in order."""
    names = tuple(getattr(module, "_repeated_blocks", None) or ())
    blocks: dict[str, list[nn.Module]] = {}
    for sub in module.modules():
        if type(sub).__name__ in names:
            blocks.setdefault(type(sub).__name__, []).append(sub)
    return blocks


@contextmanager
def capture_block_calls(module: nn.Module) -> Iterator[dict[str, BlockCall]]:
    """Records, during the block, the inputs of the first call of each repeated block class."""
    calls: dict[str, BlockCall] = {}
    handles = []
    for name, instances in repeated_blocks(module).items():

        def hook(mod: nn.Module, args: tuple, kwargs: dict, name: str = name) -> None:
            if name not in calls:
                calls[name] = _contiguous((args, kwargs))

        handles.append(instances[0].register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def compile_block(block: nn.Module, call: BlockCall, package: Path) -> None:
    """Exports ``block`` on the recorded call and AoT-compiles it, weights left out, into ``package``."""
    from torch._inductor import aoti_compile_and_package

    unwrap_subclass_weights_(block)
    args, kwargs = call
    try:
        exported = torch.export.export(block, args, kwargs, strict=False)
        package.parent.mkdir(parents=True, exist_ok=True)
        aoti_compile_and_package(exported, package_path=str(package),
                                 inductor_configs={"aot_inductor.package_constants_in_so": False})
    except Exception as exc:  # export and AOTInductor fail in many ways; all mean "no AoT for this block"
        raise AotError(f"{type(block).__name__}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc


def apply_package_(blocks: list[nn.Module], package: Path) -> None:
    """Every block in ``blocks`` runs the AoT package on its own weights from now on."""
    from torch._inductor import aoti_load_package

    for block in blocks:
        unwrap_subclass_weights_(block)
        runner = aoti_load_package(str(package))
        weights = {**dict(block.named_parameters()), **dict(block.named_buffers())}
        needed = runner.get_constant_fqns()
        missing = [fqn for fqn in needed if fqn not in weights]
        if missing:
            raise AotError(f"{type(block).__name__}: package needs constants the block lacks: {missing[:3]}")
        runner.load_constants({fqn: weights[fqn] for fqn in needed}, check_full_update=True, user_managed=True)
        block.forward = _calling(runner)


def unwrap_subclass_weights_(block: nn.Module) -> None:
    """Plain-tensor parametrizations for torchao's quantized weights (a no-op for plain weights)."""
    if any(_is_subclass(p) for p in block.parameters()):
        from torchao.utils import unwrap_tensor_subclass

        unwrap_tensor_subclass(block)


def _is_subclass(tensor: torch.Tensor) -> bool:
    return type(tensor) not in (torch.Tensor, nn.Parameter)


def _calling(runner: Any) -> Callable[..., Any]:
    def forward(*args: Any, **kwargs: Any) -> Any:
        args, kwargs = _contiguous((args, kwargs), clone=False)
        return runner(*args, **kwargs)

    return forward


def _contiguous(value: Any, clone: bool = True) -> Any:
    """Tensors made contiguous (the package was compiled for contiguous inputs), nested structure kept."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        return value.contiguous().clone() if clone else value.contiguous()
    if isinstance(value, tuple):
        return tuple(_contiguous(v, clone) for v in value)
    if isinstance(value, list):
        return [_contiguous(v, clone) for v in value]
    if isinstance(value, dict):
        return {k: _contiguous(v, clone) for k, v in value.items()}
    return value
