"""Where a variant's build seconds go: each span timed by the bank, the compiler's share read from PyTorch's own
compile-time metrics (``torch._dynamo.utils.compilation_time_metrics``) and Inductor's FX-graph cache counters.

Those metrics are process-wide: a build made while another thread compiles counts the other's seconds too (the
app builds one variant at a time, under the bank's lock). A name PyTorch no longer records reads as 0.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["COMPILER_SPANS", "BuildProfile", "Phases"]

# Our name for each span -> the metric PyTorch records it under.
COMPILER_SPANS = {
    "dynamo_trace": "bytecode_tracing",  # Dynamo turning the forward's bytecode into a graph
    "guards": "build_guards",  # the checks that decide when the graph can be reused
    "backend": "OutputGraph.call_user_compiler",  # AOTAutograd and Inductor, or loading their cached code
}
_DYNAMO_TOTAL = "_compile.compile_inner"  # all of the above and Dynamo's own bookkeeping

Phases = dict[str, float]


@dataclass
class BuildProfile:
    """One build's phases (seconds by name) and how many graphs Inductor compiled afresh in it."""

    phases: Phases = field(default_factory=dict)
    inductor_compilations: int = 0

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Adds the block's wall seconds to the phase ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - start

    @contextmanager
    def compiling(self, first_call: str = "first_run") -> Iterator[None]:
        """Times the block (a variant's first call) and splits it: the compiler's spans under their names, the rest
        under ``first_call`` (running the call itself, cached code loaded); counts Inductor's FX-graph cache misses."""
        before, misses = _metric_totals(), _inductor_misses()
        start = time.perf_counter()
        try:
            yield
        finally:
            wall = time.perf_counter() - start
            after = _metric_totals()
            spent = {name: after[metric] - before[metric] for name, metric in COMPILER_SPANS.items()}
            self.phases.update({name: seconds for name, seconds in spent.items() if seconds > 0})
            dynamo = after[_DYNAMO_TOTAL] - before[_DYNAMO_TOTAL]
            self.phases[first_call] = max(wall - dynamo, 0.0)
            if dynamo > sum(spent.values()):
                self.phases["dynamo_other"] = dynamo - sum(spent.values())
            self.inductor_compilations += _inductor_misses() - misses


def _metric_totals() -> dict[str, float]:
    from torch._dynamo.utils import compilation_time_metrics

    wanted = (*COMPILER_SPANS.values(), _DYNAMO_TOTAL)
    return {name: sum(compilation_time_metrics.get(name, ())) for name in wanted}


def _inductor_misses() -> int:
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["fxgraph_cache_miss"])
