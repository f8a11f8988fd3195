"""Ahead-of-time compiled variants: one AOTInductor package per repeated block class, shared by every block.

Regional, like ``compile_repeated_blocks``: each repeated block class (FLUX's double and single
blocks, SD3's joint blocks, ...) is exported once with ``torch.export`` and compiled once with
AOTInductor into a ``.pt2`` package. The block's weights are *inputs* of the exported function
(``torch.func.functional_call``), not constants baked into the package: one loaded package serves
every instance of the class, each call passing that block's own weights (no copy), and the package
stays small. A later process loads the packages and never calls ``torch.compile``.

torchao's quantized weights are tensor subclasses; ``torchao.utils.unwrap_tensor_subclass``
re-expresses them as plain tensors (a parametrization that rebuilds the subclass in the forward),
so the exported function takes plain tensors.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tmpdiff.errors import TmpdiffWarning

__all__ = ["AotError", "AotWarning", "BlockCall", "apply_package_", "capture_block_calls", "compile_block",
           "loading_works", "repeated_blocks"]


class AotError(RuntimeError):
    """A block that could not be exported or AoT-compiled; the caller falls back to torch.compile."""


class AotWarning(TmpdiffWarning):
    """An ahead-of-time variant was asked for and torch.compile stands in for it."""


BlockCall = tuple[tuple[Any, ...], dict[str, Any]]


# Run in a child process: compile one Linear layer into a package, load it, check its output.
_LOAD_CHECK = """
import sys, torch
from torch._inductor import aoti_compile_and_package, aoti_load_package
device, package = sys.argv[1], sys.argv[2]
layer = torch.nn.Linear(16, 16, device=device)
x = torch.randn(4, 16, device=device)
with torch.no_grad():
    aoti_compile_and_package(torch.export.export(layer, (x,)), package_path=package)
    assert torch.allclose(aoti_load_package(package)(x), layer(x), atol=1e-4), "the package computes wrong values"
print("AOTI OK")
"""
_VERDICTS: dict[str, tuple[bool, str]] = {}


def loading_works(device: torch.device, folder: Path | None = None) -> tuple[bool, str]:
    """Whether AOTInductor packages can be built and loaded here, and if not, why.

    Checked once per torch build and device, in a child process, and remembered in ``folder``: on some
    set-ups (seen: torch 2.11 + CUDA 13.0 on an H100) loading any package, even of one Linear layer,
    kills the process with a segmentation fault, which no ``try`` can catch.
    """
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else ()
    setup = f"{torch.__version__}|{torch.version.cuda}|{device.type}|{capability}"
    digest = hashlib.sha256(setup.encode()).hexdigest()[:16]
    verdict_file = folder / f"aoti-check-{digest}.json" if folder is not None else None
    if digest not in _VERDICTS and verdict_file is not None and verdict_file.exists():
        try:
            saved = json.loads(verdict_file.read_text())
            _VERDICTS[digest] = (bool(saved["works"]), str(saved["why"]))
        except (ValueError, KeyError, TypeError):
            pass  # unreadable: checked again below
    if digest not in _VERDICTS:
        _VERDICTS[digest] = _check_loading(device)
        if verdict_file is not None:
            verdict_file.parent.mkdir(parents=True, exist_ok=True)
            works, why = _VERDICTS[digest]
            verdict_file.write_text(json.dumps({"works": works, "why": why, "setup": setup}) + "\n")
    return _VERDICTS[digest]


def _check_loading(device: torch.device) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory(prefix="tmpdiff-aoti-check-") as folder:
        try:
            done = subprocess.run([sys.executable, "-c", _LOAD_CHECK, str(device), str(Path(folder) / "check.pt2")],
                                  capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            return False, "AOTInductor's test package took over 10 minutes to build and load"
    if done.returncode == 0 and "AOTI OK" in done.stdout:
        return True, ""
    if done.returncode < 0:
        return False, f"loading a one-layer AOTInductor package crashed the process (signal {-done.returncode})"
    last = (done.stderr.strip().splitlines() or ["no message"])[-1][:300]
    return False, f"AOTInductor could not build or load a one-layer package ({last})"


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
    """Exports ``block`` as a function of (its weights, the recorded call) and AoT-compiles it into ``package``."""
    from torch._inductor import aoti_compile_and_package

    unwrap_subclass_weights_(block)
    args, kwargs = call
    try:
        exported = torch.export.export(_Functional(block), (_weights(block), *args), kwargs, strict=False)
        package.parent.mkdir(parents=True, exist_ok=True)
        aoti_compile_and_package(exported, package_path=str(package))
    except Exception as exc:  # export and AOTInductor fail in many ways; all mean "no AoT for this block"
        raise AotError(f"{type(block).__name__}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc


def apply_package_(blocks: list[nn.Module], package: Path) -> None:
    """Every block in ``blocks`` runs the one loaded AoT package on its own weights from now on."""
    from torch._inductor import aoti_load_package

    runner = aoti_load_package(str(package))
    for block in blocks:
        unwrap_subclass_weights_(block)
        block.forward = _calling(runner, _weights(block))


class _Functional(nn.Module):
    """``block`` as a pure function of its weights: the block is held, not registered, so its
    parameters are not state of the exported program."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.__dict__["block"] = block

    def forward(self, weights: dict[str, torch.Tensor], *args: Any, **kwargs: Any) -> Any:
        block: nn.Module = self.__dict__["block"]
        return torch.func.functional_call(block, weights, args, kwargs)


def _weights(block: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the block by name, in a fixed order (the package's input order)."""
    return {**{k: v.detach() for k, v in block.named_parameters()}, **dict(block.named_buffers())}


def unwrap_subclass_weights_(block: nn.Module) -> None:
    """Plain-tensor parametrizations for torchao's quantized weights (a no-op for plain weights)."""
    if any(_is_subclass(p) for p in block.parameters()):
        from torchao.utils import unwrap_tensor_subclass

        unwrap_tensor_subclass(block)


def _is_subclass(tensor: torch.Tensor) -> bool:
    return type(tensor) not in (torch.Tensor, nn.Parameter)


def _calling(runner: Any, weights: dict[str, torch.Tensor]) -> Callable[..., Any]:
    def forward(*args: Any, **kwargs: Any) -> Any:
        args, kwargs = _contiguous((args, kwargs), clone=False)
        return runner(weights, *args, **kwargs)

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
