"""CUDA graphs of whole denoiser calls: one per compiled variant and call signature.

A compiled step still launches about a thousand kernels from Python (Dynamo's guards, Inductor's wrappers,
torchao's tensor subclasses); on Hopper an fp8 step's GPU work is short enough that the launching shows.
A graph replays the recorded kernels with one launch. Graphs per block (``mode="reduce-overhead"``) cannot
work here: the blocks of one class share one compiled graph, so each block's replay overwrites the previous
block's output. So the whole call is captured, around the compiled variant:

* on the first call of a signature (the tensors' shapes, strides and dtypes, the other arguments' values), after
  one warm-up call on a side stream, as PyTorch's guide to graphs advises;
* into one memory pool per bank: calls are replayed one at a time on one stream and every output is cloned at
  once, so the graphs of a bank's variants can share their scratch memory;
* only for precisions known to capture (``Precision.graphs``: a failed capture can leave the process's CUDA
  state unusable, so failing is not a way to find out), and at most :data:`MAX_SIGNATURES` signatures a variant
  (a pipeline passing a changing Python number would otherwise capture a graph every step); past that, the
  variant runs as before.

Switching stays free: choosing a precision for a step chooses which graph to replay.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils import _pytree as pytree

__all__ = ["MAX_SIGNATURES", "CallGraphs", "graphs_enabled", "signature", "split_graphs_enabled"]

MAX_SIGNATURES = 4
ENV = "TMPDIFF_CUDA_GRAPHS"


def graphs_enabled(requested: bool | None) -> bool:
    """The caller's choice, else ``$TMPDIFF_CUDA_GRAPHS`` (``0`` turns graphs off), else on."""
    if requested is not None:
        return requested
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def split_graphs_enabled() -> bool:
    """Whether a context-parallel (split) denoiser's calls are graphed too, collectives and all:
    ``$TMPDIFF_CUDA_GRAPHS=all``. Measured on 2x H200 (``benchmarks/results/context_parallel_graphs_h200x2.json``)
    but not yet run through the split CLI and app on GPUs, so it is asked for, not the default."""
    return os.environ.get(ENV, "").strip().lower() == "all"


def signature(args: tuple, kwargs: dict) -> Hashable | None:
    """What a captured call is valid for, or None when an argument cannot be told apart by value (then no graph):
    the argument tree, each tensor's shape, stride, dtype and device, every other argument's value."""
    return _signature(*pytree.tree_flatten((args, kwargs)))


def _signature(leaves: list[Any], spec: pytree.TreeSpec) -> Hashable | None:
    parts: list[Hashable] = [str(spec)]
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            parts.append((tuple(leaf.shape), leaf.stride(), leaf.dtype, leaf.device, leaf.requires_grad))
        elif leaf is None or isinstance(leaf, bool | int | float | str):
            parts.append((type(leaf), leaf))
        else:
            return None
    return tuple(parts)


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]  # the graph reads its tensor arguments from these, in flattened order
    output: Any  # and writes its result here


@dataclass
class CallGraphs:
    """The captured calls of one variant bank, by variant key and signature."""

    captured: dict[tuple[Hashable, Hashable], _Captured] = field(default_factory=dict)
    refused: dict[Hashable, str] = field(default_factory=dict)  # variant key -> why it runs without graphs
    pool: Any = None

    def clear(self) -> None:
        self.captured.clear()
        self.refused.clear()
        self.pool = None

    def captures(self, variant: Hashable) -> int:
        return sum(1 for key, _ in self.captured if key == variant)

    def call(self, variant: Hashable, run: Callable[..., Any], args: tuple, kwargs: dict) -> tuple[Any, float]:
        """``run(*args, **kwargs)`` through a graph: the output, and the seconds spent capturing (to leave out of
        a step's time; 0 once captured). A call with autograd on runs as it is: a replayed output has no history
        to train through."""
        if variant in self.refused or torch.is_grad_enabled():
            return run(*args, **kwargs), 0.0
        leaves, spec = pytree.tree_flatten((args, kwargs))  # once a call: the key, then the inputs to copy in
        key = _signature(leaves, spec)
        if key is None:
            return self._refuse(variant, "an argument that is neither a tensor nor a plain value", run, args, kwargs)
        captured = self.captured.get((variant, key))
        if captured is not None:
            return self._replay(captured, leaves), 0.0
        if self.captures(variant) >= MAX_SIGNATURES:
            return self._refuse(variant, f"called with more than {MAX_SIGNATURES} argument signatures", run, args,
                                kwargs)
        torch.cuda.synchronize()  # the steps before are done: what follows is capturing alone
        start = time.perf_counter()
        try:
            captured = self._capture(run, leaves, spec)
        except Exception as exc:  # anything the call does that a graph cannot hold (a host sync, a CPU tensor)
            torch.cuda.synchronize()
            spent = time.perf_counter() - start
            output, _ = self._refuse(variant, f"its capture failed: {type(exc).__name__}: {exc}".splitlines()[0],
                                     run, args, kwargs)
            return output, spent
        self.captured[(variant, key)] = captured
        torch.cuda.synchronize()
        return self._replay(captured, leaves), time.perf_counter() - start

    def _capture(self, run: Callable[..., Any], leaves: list[Any], spec: pytree.TreeSpec) -> _Captured:
        static = [leaf.clone() if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        static_args, static_kwargs = pytree.tree_unflatten(static, spec)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            run(*static_args, **static_kwargs)  # lazy set-up (workspaces, autotuning) happens outside the capture
        torch.cuda.current_stream().wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # thread_local: another thread's CUDA work (the app serves several people) does not break the capture
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            output = run(*static_args, **static_kwargs)
        return _Captured(graph, [t for t in static if isinstance(t, torch.Tensor)], output)

    @staticmethod
    def _replay(captured: _Captured, leaves: list[Any]) -> Any:
        tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
        for static, given in zip(captured.inputs, tensors, strict=True):
            static.copy_(given)
        captured.graph.replay()
        # The next replay of any graph of the bank may overwrite this output: the caller gets its own copy.
        return pytree.tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, captured.output)

    def _refuse(self, variant: Hashable, why: str, run: Callable[..., Any], args: tuple,
                kwargs: dict) -> tuple[Any, float]:
        self.refused[variant] = why
        warnings.warn(f"{_name(variant)} runs without CUDA graphs: {why}", RuntimeWarning, stacklevel=3)
        return run(*args, **kwargs), 0.0


def _name(variant: Hashable) -> str:
    return str(variant[0]) if isinstance(variant, tuple) and variant else str(variant)
