"""A GPU memory budget: how many bytes an engine may use (``--gpu-memory GIB``), honoured by the allocator itself,
and the one-line answer an image gets when it does not fit.

Without ``--gpu-memory`` the budget is what the device has for this process (free now, plus what this process's
allocator already holds), less a margin, so a 24 GB card plans for what it has; the same meaning at an engine's start
and when a budget is taken away later. Given one, the process's CUDA allocator is capped to it
(``torch.cuda.set_per_process_memory_fraction``), so a 24 GiB run on a larger GPU is the real thing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tmpdiff.errors import FieldError, literal
from tmpdiff.memory.meter import GIB, gib

__all__ = ["HOST_MARGIN", "MARGIN", "Budget", "OutOfMemory", "available_host_bytes", "resolve_budget",
           "resolve_host_memory"]

HOST_MARGIN = 4 * GIB  # host memory left for the CUDA context, Python and the libraries (default host budget only)
MARGIN = GIB  # left free for the CUDA context, other libraries and the allocator's own slack (default budget only)


@dataclass(frozen=True)
class Budget:
    """The GPU bytes an engine may use (None: no GPU, nothing to plan) and whether the user gave them (then the
    allocator is capped to them, and images and costs are keyed by them)."""

    bytes: int | None = None
    given: bool = False

    @property
    def given_bytes(self) -> int | None:
        """The budget the user set, or None when there is none (the default budget is not a setting)."""
        return self.bytes if self.given else None


class OutOfMemory(FieldError):
    """An image that did not fit in its budget: what was asked, the budget, what to try."""

    def __init__(self, what: str, budget: int | None, plan: str) -> None:
        where = f"the budget of {gib(budget)} GiB" if budget is not None else "this GPU's memory"
        told = literal(f"out of GPU memory making {what} within {where} ({plan or 'no plan'})")
        super().__init__("gpu_memory", gib(budget), told + ": nothing was stored; give more {gpu_memory}, a smaller "
                         "{size} or fewer precisions in the {schedule}")


def resolve_budget(gpu_memory: float | None, device: str) -> Budget:
    """The budget for ``device``; caps the allocator to a given one, and lifts a cap when given none.

    Raises:
        FieldError: of ``gpu_memory`` for a value that is not a positive number of GiB this GPU has, or one given
            for a device without a GPU.
    """
    if not device.startswith("cuda"):
        if gpu_memory is not None:
            raise FieldError("gpu_memory", gpu_memory, "{gpu_memory} budgets a CUDA GPU's memory: on the CPU leave it "
                             "out")
        return Budget()
    import torch

    free, total = torch.cuda.mem_get_info(device)
    if gpu_memory is None:
        torch.cuda.set_per_process_memory_fraction(1.0, cuda_index(device))
        return Budget(max(free + torch.cuda.memory_reserved(device) - MARGIN, 0))
    value = _number(gpu_memory)
    if not math.isfinite(value) or value <= 0 or value * GIB > total:
        raise FieldError("gpu_memory", gpu_memory, f"{{gpu_memory}} takes a number of GiB from more than 0 to this "
                         f"GPU's {total / GIB:.1f}, got {{value}}")
    budget = int(value * GIB)
    torch.cuda.set_per_process_memory_fraction(budget / total, cuda_index(device))
    return Budget(budget, given=True)


def cuda_index(device: str) -> int:
    """The index of a CUDA device named ``cuda`` or ``cuda:N`` (the current one for plain ``cuda``)."""
    import torch

    index = torch.device(device).index
    return torch.cuda.current_device() if index is None else index


def available_host_bytes() -> int | None:
    """Host memory the system can give now (Linux ``MemAvailable``: free memory and page cache it can drop, such as
    memory-mapped weights), less ``HOST_MARGIN``; None where the system does not say."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return max(int(line.split()[1]) * 1024 - HOST_MARGIN, 0)
    except (OSError, ValueError, IndexError):
        pass
    return None


def resolve_host_memory(host_memory: float | None) -> int | None:
    """The host memory budget in bytes for page-locked streamed blocks (``--host-memory GIB``); None: what the
    system has available when each plan is made.

    Raises:
        FieldError: of ``host_memory`` for a value that is not a positive number of GiB.
    """
    if host_memory is None:
        return None
    value = _number(host_memory)
    if not math.isfinite(value) or value <= 0:
        raise FieldError("host_memory", host_memory, "{host_memory} takes a positive number of GiB, got {value}")
    return int(value * GIB)


def _number(value: object) -> float:
    """``value`` as a float (NaN when it is none: the caller's range check then refuses it in words)."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
