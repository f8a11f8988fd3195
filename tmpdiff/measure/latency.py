"""Measured step costs per precision, and the additive latency model built from them.

A precision's cost is *measured* on the device at hand, never assumed from its bit width
(without ``torch.compile`` torchao's kernels are slower than bf16 on Hopper). The model:

    predicted latency = fixed costs (text encoding, VAE decoding, set-up) + sum of per-step costs

where a step's cost is the median step time of a uniform run in that precision, measured through
the same ``apply_schedule`` path that real runs take. ``skip`` costs one scheduler update.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tmpdiff.steps.precisions import Status, get_precision, precision_status
from tmpdiff.steps.schedule import Schedule

__all__ = ["CostTable", "measure_costs", "timed_run"]

COST_TABLE_VERSION = 1


@dataclass
class CostTable:
    """Seconds per denoising step for each precision, plus the fixed cost of a run.

    ``simulated`` lists precisions whose numbers come from fake quantization: they are
    recorded for completeness but carry no speed claim.
    """

    device: str
    compiled: bool
    steps: int
    step_seconds: dict[str, float] = field(default_factory=dict)
    step_spread: dict[str, float] = field(default_factory=dict)
    fixed_seconds: float = 0.0
    simulated: list[str] = field(default_factory=list)
    architecture: str | None = None  # the denoiser architecture measured (ModelSpec.architecture)
    device_name: str | None = None  # e.g. "NVIDIA H100 80GB HBM3"
    note: str = ""  # what the numbers include, for a table measured elsewhere
    target: bool = False  # loaded for planning on another device: used as is, never re-measured here
    budget_gib: float | None = None  # the GPU memory budget the costs were measured under (streamed steps cost more)

    def predict(self, schedule: Schedule) -> float:
        missing = [n for n in schedule.precisions if n not in self.step_seconds]
        if missing and self.target:
            raise ValueError(f"the cost table for {self.device_name} has no cost for {', '.join(missing)}: it "
                             f"covers {', '.join(self.step_seconds)}")
        if missing:
            raise ValueError(f"no measured cost for {', '.join(missing)}: measure it first")
        return self.fixed_seconds + sum(self.step_seconds[name] for name in schedule)

    def has_speed_claim(self, schedule: Schedule) -> bool:
        return not set(schedule.precisions) & set(self.simulated)

    def ladder(self) -> list[str]:
        """Precisions with a real measured cost, most expensive first."""
        real = [n for n in self.step_seconds if n not in self.simulated]
        return sorted(real, key=lambda n: -self.step_seconds[n])

    def to_dict(self) -> dict[str, Any]:
        return {"version": COST_TABLE_VERSION, "device": self.device, "compiled": self.compiled,
                "steps": self.steps, "step_seconds": self.step_seconds, "step_spread": self.step_spread,
                "fixed_seconds": self.fixed_seconds, "simulated": self.simulated,
                "architecture": self.architecture, "device_name": self.device_name, "note": self.note,
                "budget_gib": self.budget_gib}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CostTable:
        if data.get("version") != COST_TABLE_VERSION:
            raise ValueError(f"cost table version {data.get('version')!r} is not {COST_TABLE_VERSION}")
        return cls(device=str(data["device"]), compiled=bool(data["compiled"]), steps=int(data["steps"]),
                   step_seconds={str(k): float(v) for k, v in data["step_seconds"].items()},
                   step_spread={str(k): float(v) for k, v in data.get("step_spread", {}).items()},
                   fixed_seconds=float(data["fixed_seconds"]), simulated=[str(s) for s in data["simulated"]],
                   architecture=data.get("architecture"), device_name=data.get("device_name"),
                   note=str(data.get("note", "")),
                   budget_gib=None if data.get("budget_gib") is None else float(data["budget_gib"]))


RunFn = Callable[[Schedule], tuple[float, list[float]]]


def timed_run(engine: Any, settings: Any) -> RunFn:
    """A runner for ``measure_costs``: one end-to-end ``Engine.generate`` → (total, step seconds)."""

    def run(schedule: Schedule) -> tuple[float, list[float]]:
        result = engine.generate(settings, schedule)
        return result.seconds, result.step_seconds

    return run


def measure_costs(
    run: RunFn,
    reference: str,
    precisions: list[str],
    steps: int,
    device: str,
    compiled: bool,
    warmup_runs: int = 1,
    progress: Callable[[str], None] | None = None,
    table: CostTable | None = None,
    warm_reference_only: bool = False,
) -> CostTable:
    """Measure every precision's step cost with uniform runs through the real pipeline.

    The first ``warmup_runs`` runs of each schedule build (and compile) variants and are
    discarded; the step cost is the median over the steps of the timed run. Given a ``table``,
    only the precisions it lacks are measured and added to it. ``warm_reference_only``: for a runner that
    already leaves build time out (``Engine.generate``), only the reference's first run, whose fixed seconds
    (text encoders, VAE) pay one-time start-up, is a warm-up; step costs are medians over steps either way.
    """
    if steps < 2:
        raise ValueError(f"measuring costs needs at least 2 steps, got {steps}")
    table = table or CostTable(device=device, compiled=compiled, steps=steps)
    for name in dict.fromkeys([reference, *precisions]):
        if name in table.step_seconds:
            continue
        if progress:
            progress(name)
        status = precision_status(name, device).status
        if status is Status.UNAVAILABLE:
            continue
        computes = get_precision(name).computes
        schedule = (Schedule((reference,) + (name,) * (steps - 1)) if not computes  # after one computed step
                    else Schedule.uniform(name, steps))
        for _ in range(warmup_runs if name == reference or not warm_reference_only else 0):
            run(schedule)
        total, step_seconds = run(schedule)
        measured = step_seconds if computes else step_seconds[1:]
        table.step_seconds[name] = statistics.median(measured)
        table.step_spread[name] = statistics.pstdev(measured)
        if name == reference:
            table.fixed_seconds = max(total - sum(step_seconds), 0.0)
        if status is Status.SIMULATED:
            table.simulated.append(name)
    return table
