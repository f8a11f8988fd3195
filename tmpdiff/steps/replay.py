"""Exact replay of denoiser outputs shared by schedule prefixes.

For one setting (model, prompt, seed, size, steps, guidance, device), the denoiser's inputs at step
``i`` are decided by the schedule's first ``i`` entries, and its output by the first ``i + 1``. So two
schedules that agree on a prefix make exactly the same denoiser calls over it. The step router asks
this store before calling the denoiser: a hit returns a copy of the recorded output (bit-identical
images), a miss records the new output. Kept in the denoiser's memory, least recently used first out,
within a byte budget.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["DEFAULT_BUDGET", "ReplayKey", "ReplayStore"]

DEFAULT_BUDGET = 1 << 30  # bytes
ReplayKey = tuple[str, tuple[str, ...], int]  # (setting digest, schedule prefix through this step, call index)


@dataclass
class _Entry:
    output: Any
    nbytes: int
    seconds: float  # the step time measured when the output was computed (for honest latency)


@dataclass
class ReplayStore:
    """Denoiser outputs by :data:`ReplayKey`, LRU within ``budget_bytes``."""

    budget_bytes: int = DEFAULT_BUDGET
    hits: int = 0
    misses: int = 0
    _entries: OrderedDict[ReplayKey, _Entry] = field(default_factory=OrderedDict)
    _bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.budget_bytes < 0:
            raise ValueError(f"the replay budget must be 0 bytes or more, got {self.budget_bytes}")

    def get(self, key: ReplayKey) -> tuple[Any, float] | None:
        """A copy of the recorded output and its measured step seconds, or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return _copy(entry.output), entry.seconds

    def put(self, key: ReplayKey, output: Any, seconds: float = 0.0) -> None:
        nbytes = _nbytes(output)
        if nbytes > self.budget_bytes:
            return
        with self._lock:
            if key in self._entries:
                self._bytes -= self._entries.pop(key).nbytes
            self._entries[key] = _Entry(_copy(output), nbytes, seconds)
            self._bytes += nbytes
            while self._bytes > self.budget_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes

    def set_seconds(self, keys: list[ReplayKey], seconds: float) -> None:
        """Records the measured time of the step whose calls are ``keys`` (split evenly between them)."""
        with self._lock:
            for key in keys:
                if key in self._entries:
                    self._entries[key].seconds = seconds / len(keys)

    def stats(self) -> dict[str, int]:
        return {"entries": len(self._entries), "bytes": self._bytes, "budget_bytes": self.budget_bytes,
                "hits": self.hits, "misses": self.misses}

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


def _copy(value: Any) -> Any:
    """A detached copy of every tensor in a (nested) output; the structure is rebuilt as it was."""
    leaves, spec = torch.utils._pytree.tree_flatten(value)
    return torch.utils._pytree.tree_unflatten(
        [leaf.detach().clone() if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves], spec)


def _nbytes(value: Any) -> int:
    leaves, _ = torch.utils._pytree.tree_flatten(value)
    return sum(leaf.numel() * leaf.element_size() for leaf in leaves if isinstance(leaf, torch.Tensor))
