"""The VAE's decoding timed apart from the rest of a pipeline call."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["timing_vae_decode"]


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

