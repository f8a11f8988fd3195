"""What an image costs in memory: the peak of its pipeline call, measured, and where the model's bytes were.

On CUDA the peak is the allocator's (``torch.cuda.max_memory_allocated``, reset before each call), which a budget
(``--gpu-memory``) bounds. Without a GPU it is the process's resident-set peak (Linux ``VmHWM``, reset before each
call through ``/proc/self/clear_refs`` where the system allows; otherwise the process's peak so far, said as such).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

__all__ = ["GIB", "MEMORY_WHERE", "MemoryFigures", "PeakMeter", "bytes_of", "gib", "measuring_peak", "status_bytes"]

GIB = 1 << 30


# Where a peak was measured, in the words a memory card uses.
MEMORY_WHERE = {"gpu": "GPU, this image", "host": "host memory, this image (no GPU)",
                "host-process": "host memory, the process's peak so far"}


@overload
def gib(value: None, digits: int | None = 2) -> None: ...
@overload
def gib(value: int | float, digits: int | None = 2) -> float: ...
def gib(value: int | float | None, digits: int | None = 2) -> float | None:
    """Bytes as GiB, rounded for people (``digits=None``: exact, for a plot's axis; None stays None): the one
    bytes-to-GiB conversion."""
    if value is None:
        return None
    return value / GIB if digits is None else round(value / GIB, digits)


def bytes_of(gib_value: int | float | str | None) -> int | None:
    """GiB (as a record or a file says them) back to bytes; None stays None."""
    return None if gib_value is None else int(float(gib_value) * GIB)


@dataclass(frozen=True)
class MemoryFigures:
    """One image's memory.

    Attributes:
        peak_bytes: the peak of its pipeline call (GPU allocator, or the process's resident set without a GPU).
        where: ``gpu``, ``host`` (the peak since this call began) or ``host-process`` (the process's peak so far:
            the system did not let it be reset).
        resident: bytes on the GPU when the call began, per part (each precision's variant, the encoders, the VAE).
        plan: the placement the call ran under, in one line (empty: everything resident, no budget).
        budget_bytes: the memory budget it was planned for (None: none).
        host_peak_bytes: the process's resident-set peak during the call (host memory, beside a GPU peak; the same
            as ``peak_bytes`` without a GPU; None where the system does not say).
        pinned_bytes: page-locked host memory holding streamed blocks when the call ran (never swapped out).
    """

    peak_bytes: int | None
    where: str = "gpu"
    resident: dict[str, int] = field(default_factory=dict)
    plan: str = ""
    budget_bytes: int | None = None
    host_peak_bytes: int | None = None
    pinned_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"peak_gib": gib(self.peak_bytes), "where": self.where,
                "resident_gib": {name: gib(size) for name, size in self.resident.items()}, "plan": self.plan,
                "budget_gib": gib(self.budget_bytes), "host_peak_gib": gib(self.host_peak_bytes),
                "pinned_gib": gib(self.pinned_bytes)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, peak_bytes: int | None) -> MemoryFigures | None:
        """The figures as the store keeps them (``peak_bytes`` in its own column); None for rows without."""
        if data is None and peak_bytes is None:
            return None
        data = data or {}
        resident = {str(k): bytes_of(v) or 0 for k, v in (data.get("resident_gib") or {}).items()}
        return cls(peak_bytes, str(data.get("where", "gpu")), resident, str(data.get("plan", "")),
                   bytes_of(data.get("budget_gib")), bytes_of(data.get("host_peak_gib")),
                   bytes_of(data.get("pinned_gib")) or 0)


class PeakMeter:
    """The peak memory of a span of work on ``device`` (see the module's docstring for what is measured)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.where = "gpu" if device.startswith("cuda") else "host"

    def start(self) -> None:
        host_since_start = _reset_host_peak()  # the host's peak is measured beside a GPU's too
        if self.where == "gpu":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        elif not host_since_start:
            self.where = "host-process"

    def peak(self) -> int | None:
        if self.where == "gpu":
            import torch

            return int(torch.cuda.max_memory_allocated(self.device))
        return _host_peak()

    def host_peak(self) -> int | None:
        """The process's resident-set peak since ``start`` (since it began, where the system allows no reset)."""
        return _host_peak()


@contextmanager
def measuring_peak(device: str) -> Iterator[PeakMeter]:
    """``with measuring_peak(device) as meter: ...`` then ``meter.peak()``."""
    meter = PeakMeter(device)
    meter.start()
    yield meter


def _reset_host_peak() -> bool:
    """Resets the process's resident-set peak (Linux: writing 5 to ``/proc/self/clear_refs``); whether it could."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def status_bytes(fields: Iterable[str], pid: int | str = "self") -> dict[str, int]:
    """Those of a process's ``/proc/PID/status`` memory fields it has (``RssAnon``, ``VmHWM``...), in bytes; empty
    where the system does not say (no ``/proc``, or the process is gone)."""
    wanted, found = set(fields), {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in wanted:
                found[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return {}
    return found


def _host_peak() -> int | None:
    """The process's resident-set peak in bytes (``VmHWM``; ``ru_maxrss`` where there is no ``/proc``)."""
    peak = status_bytes(["VmHWM"]).get("VmHWM")
    if peak is not None:
        return peak
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except (ImportError, OSError):
        return None
