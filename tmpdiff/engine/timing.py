"""The VAE's decoding timed apart from the rest of a pipeline call, and a process's set-up seconds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from tmpdiff.variants.bank import BuildInfo

__all__ = ["SetUpSeconds", "timing_vae_decode"]


@dataclass
class SetUpSeconds:
    """Where an engine's seconds went that no timed image counts: each variant's build (its phases inside), the CUDA
    graphs captured, the untimed warm-up calls and the timed calls made again because their first run compiled
    afresh (those two beyond the builds and captures made in them), and placing parts under a memory budget before
    calls (planning, and moving blocks between the GPU and host memory: page-locking them included)."""

    builds: list[BuildInfo] = field(default_factory=list)
    graph_capture: dict[str, float] = field(default_factory=dict)
    warm_up_calls: float = 0.0
    repeated_calls: float = 0.0
    placement: float = 0.0
    plans: int = 0

    def note(self, handle: Any) -> None:
        """The builds and captures of one pipeline call (its schedule's handle)."""
        self.builds.extend(handle.builds)
        for name, seconds in handle.capture_seconds.items():
            self.graph_capture[name] = self.graph_capture.get(name, 0.0) + seconds

    def to_dict(self) -> dict[str, Any]:
        return {"variants": [build.to_dict() for build in self.builds],
                "graph_capture": {name: round(seconds, 3) for name, seconds in self.graph_capture.items()},
                "warm_up_calls": round(self.warm_up_calls, 3), "repeated_calls": round(self.repeated_calls, 3),
                "placement": round(self.placement, 3), "plans": self.plans}


@contextmanager
def timing_vae_decode(pipe: Any, device: str) -> Iterator[dict[str, float]]:
    """Times the pipeline's VAE decoding apart from the rest (restored on exit)."""
    timing = {"seconds": 0.0}
    vae = getattr(pipe, "vae", None)
    if vae is None:
        yield timing
        return
    own = vae.__dict__.get("decode")
    original = vae.decode
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def decode(*args: Any, **kwargs: Any) -> Any:
        sync()
        start = time.perf_counter()
        out = original(*args, **kwargs)
        sync()
        timing["seconds"] += time.perf_counter() - start
        return out

    vae.decode = decode
    try:
        yield timing
    finally:
        if own is None:
            del vae.decode
        else:
            vae.decode = own

