"""A prompt's embeddings kept per pipeline, so its text encoders run once per prompt in a search or a sweep.

``keeping_prompts(pipe)`` wraps the pipeline's own ``encode_prompt`` (every diffusers text-to-image and
text-to-video pipeline calls it with the prompt's text and plain options): the first call of a prompt runs the
encoders, later ones get a copy of what it returned. An answer from the kept embeddings is counted at the seconds
the encoding took when it ran, as a replayed denoiser step is, so an image's seconds never look cheaper for being
the second of its prompt.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["PromptCache", "keeping_prompts"]

KEPT_PROMPTS = 64  # prompts' embeddings kept per pipeline (a few MB each for FLUX's T5)


class PromptCache:
    """The embeddings of the pipeline's last ``KEPT_PROMPTS`` prompts, and the seconds hits stood for."""

    def __init__(self, encode: Callable[..., Any], limit: int = KEPT_PROMPTS) -> None:
        self.encode, self.limit = encode, limit
        self.kept: OrderedDict[str, tuple[Any, float]] = OrderedDict()
        self.credited = 0.0  # seconds the hits since the last ``take_credit`` took when they were encoded
        self.hits = self.misses = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = _key(args, kwargs)
        if key is None:  # embeddings given, or an argument that is not plain data: nothing to keep
            return self.encode(*args, **kwargs)
        if key in self.kept:
            self.kept.move_to_end(key)
            output, seconds = self.kept[key]
            self.hits += 1
            self.credited += seconds
            return _copied(output)
        start = time.perf_counter()
        output = self.encode(*args, **kwargs)
        _synchronize(output)
        self.kept[key] = (_copied(output), time.perf_counter() - start)
        self.misses += 1
        while len(self.kept) > self.limit:
            self.kept.popitem(last=False)
        return output

    def take_credit(self) -> float:
        credited, self.credited = self.credited, 0.0
        return credited


def keeping_prompts(pipe: Any) -> PromptCache | None:
    """The pipeline's prompt cache, installed on first use (None for a pipeline without ``encode_prompt``)."""
    cache = pipe.__dict__.get("encode_prompt")
    if isinstance(cache, PromptCache):
        return cache
    encode = getattr(pipe, "encode_prompt", None)
    if encode is None:
        return None
    cache = PromptCache(encode)
    pipe.encode_prompt = cache
    return cache


def _key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The call as a key, or None when it holds a tensor (given embeddings) or anything that is not plain data."""
    values = [*args, *(value for _, value in sorted(kwargs.items()))]
    if any(not _plain(value) for value in values):
        return None
    return repr((args, sorted(kwargs.items())))


def _plain(value: Any) -> bool:
    if isinstance(value, str | int | float | bool | type(None) | torch.device | torch.dtype):
        return True
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    return False


def _copied(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, tuple | list):
        return type(value)(_copied(v) for v in value)
    return value


def _synchronize(output: Any) -> None:
    tensors = [output] if isinstance(output, torch.Tensor) else [v for v in output if isinstance(v, torch.Tensor)] \
        if isinstance(output, tuple | list) else []
    if any(t.is_cuda for t in tensors):
        torch.cuda.synchronize()
