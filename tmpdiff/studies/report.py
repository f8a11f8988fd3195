"""The search report: one typed result that the CLI, the app and the Ray driver all read.

``SearchReport.to_dict()`` is the JSON a search writes (the flat layout of the first reports, plus a
``version``); ``SearchReport.from_dict`` reads that and the reports written before the version existed.
Derived numbers (the found schedule's speed-up, the best baseline at its speed) are computed once, by the
search, and read from here by every front end.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tmpdiff.errors import literal, worded
from tmpdiff.measure.latency import CostTable
from tmpdiff.memory.meter import bytes_of
from tmpdiff.steps.schedule import Schedule
from tmpdiff.studies.algorithms import Point
from tmpdiff.studies.request import SearchRequest

__all__ = ["Additivity", "Exhaustive", "Margin", "Objective", "SearchReport", "Strategy", "Validation"]

REPORT_VERSION = 2  # 1: the unversioned reports written before the typed report


@dataclass(frozen=True)
class Objective:
    target_ssim: float | None = None
    target_speedup: float | None = None


@dataclass(frozen=True)
class Margin:
    """The best baseline at least as fast as the found schedule, and how much SSIM the search won over it."""

    schedule: str
    ssim: float
    speedup: float
    ssim_margin: float


@dataclass(frozen=True)
class Additivity:
    """Degradations predicted from single-step probes against measured ones (R² of the fit)."""

    r2: float
    predicted: tuple[float, ...]
    measured: tuple[float, ...]
    schedules: tuple[str, ...]
    probe_stride: int

    def to_dict(self) -> dict[str, Any]:
        return {"r2": self.r2, "predicted": list(self.predicted), "measured": list(self.measured),
                "schedules": list(self.schedules), "probe_stride": self.probe_stride}


@dataclass(frozen=True)
class Strategy:
    schedule: str
    ssim: float
    speedup: float
    evaluations: int
    probes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {"schedule": self.schedule, "ssim": self.ssim, "speedup": self.speedup, "evaluations": self.evaluations}
        return data if self.probes is None else {**data, "probes": self.probes}


@dataclass(frozen=True)
class Exhaustive:
    schedule: str
    ssim: float
    speedup: float
    evaluations: int
    bisection_cost_gap_pct: float


@dataclass(frozen=True)
class Validation:
    """The found schedule on seeds the search never saw."""

    seeds: tuple[int, ...]
    ssim: float
    meets_target: bool | None = None  # None for a speed-up objective (no floor to meet)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"seeds": list(self.seeds), "ssim": self.ssim}
        return data if self.meets_target is None else {**data, "meets_target": self.meets_target}


@dataclass(frozen=True)
class SearchReport:
    """Everything a search found and what it cost. Speed-ups are predicted from ``costs``."""

    model: str
    device: str
    steps: int
    ladder: tuple[str, ...]
    objective: Objective
    found: Point
    ssim_std: float
    evaluations: int
    new_evaluations_in_search: int
    evaluation_bound: int
    baselines: tuple[Point, ...]
    costs: CostTable
    validation: Validation
    pareto: tuple[Point, ...]
    costs_source: str = ""
    ladder_notes: tuple[str, ...] = ()
    simulated_in_ladder: tuple[str, ...] = ()
    best_baseline_at_speedup: Margin | None = None
    additivity: Additivity | None = None
    strategies: dict[str, Strategy] | None = None
    exhaustive: Exhaustive | None = None
    denoiser_calls: dict[str, dict[str, int]] = field(default_factory=dict)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    replay: dict[str, Any] | None = None
    batch_size: int = 1
    skipped: tuple[str, ...] = ()  # phases left out, each with how to ask for it (``errors.worded`` templates)
    not_run: tuple[str, ...] = ()  # schedules whose images did not fit the memory budget (never chosen)
    request: SearchRequest | None = None  # what was searched (prompts, seeds, ...); None in reports written before it
    version: int = REPORT_VERSION

    @property
    def schedule(self) -> str:
        return self.found.schedule

    @property
    def ssim(self) -> float:
        return self.found.quality

    @property
    def speedup(self) -> float:
        return self.found.speedup

    def rivals(self) -> list[tuple[str, Point]]:
        """The baselines to set beside the found schedule, each with a title that says what it is: first the best
        one that meets the same objective (the fastest at or above the SSIM floor; the closest at or above the
        speed-up target), then, where it differs, the best one at least as fast as the found schedule. Empty when
        no baseline but the reference (always shown) and the found schedule was evaluated."""
        others = [p for p in self.baselines if p.schedule not in (self.schedule, self.reference_schedule)]
        found: list[tuple[str, Point]] = []
        floor, target = self.objective.target_ssim, self.objective.target_speedup
        meeting = [p for p in others if (floor is None or p.quality >= floor)
                   and (target is None or p.speedup >= target - 1e-9)]
        if meeting and floor is not None:
            found.append((f"Best baseline meeting the floor: the fastest with SSIM ≥ {floor:g}",
                          max(meeting, key=lambda p: (p.speedup, p.quality))))
        elif meeting and target is not None:
            found.append((f"Best baseline meeting the target: the closest at ≥ {target:g}x",
                          max(meeting, key=lambda p: (p.quality, p.speedup))))
        margin = self.best_baseline_at_speedup
        if margin is not None and all(p.schedule != margin.schedule for _, p in found):
            missed = floor is not None and margin.ssim < floor
            note = (f" (below the {floor:g} floor: no baseline but the reference meets it)" if missed and not meeting
                    else f" (below the {floor:g} floor)" if missed else "")
            found.append((f"Best baseline as fast or faster{note}", Point(margin.schedule, margin.ssim,
                                                                           margin.speedup)))
        if not found and others:
            found.append(("Fastest baseline (none meets the objective)", max(others, key=lambda p: p.speedup)))
        return found

    @property
    def reference_schedule(self) -> str:
        return str(Schedule.uniform(self.ladder[0], self.steps))

    def summary(self) -> dict[str, Any]:
        """What a search-run log keeps of it."""
        return {"schedule": self.schedule, "ssim": self.ssim, "speedup": self.speedup, "evaluations": self.evaluations}

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "version": self.version, "model": self.model, "device": self.device, "steps": self.steps,
            "ladder": list(self.ladder), "objective": asdict(self.objective),
            "ladder_notes": list(self.ladder_notes),
            "schedule": self.schedule, "ssim": self.ssim, "ssim_std": self.ssim_std, "speedup": self.speedup,
            "speedup_is_predicted": True, "evaluations": self.evaluations,
            "new_evaluations_in_search": self.new_evaluations_in_search, "evaluation_bound": self.evaluation_bound,
            "baselines": [p.to_dict() for p in self.baselines], "costs": self.costs.to_dict(),
            "costs_source": self.costs_source, "simulated_in_ladder": list(self.simulated_in_ladder),
            "best_baseline_at_speedup": None if self.best_baseline_at_speedup is None
            else asdict(self.best_baseline_at_speedup),
        }
        if self.additivity is not None:
            data["additivity"] = self.additivity.to_dict()
        if self.strategies is not None:
            data["strategies"] = {name: s.to_dict() for name, s in self.strategies.items()}
        if self.exhaustive is not None:
            data["exhaustive"] = asdict(self.exhaustive)
        data.update({"validation": self.validation.to_dict(), "pareto": [p.to_dict() for p in self.pareto],
                     "denoiser_calls": self.denoiser_calls, "phase_seconds": self.phase_seconds,
                     "replay": self.replay, "batch_size": self.batch_size,
                     "skipped": [worded(s) for s in self.skipped], "not_run": list(self.not_run)})
        if self.request is not None:
            data["request"] = self.request.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchReport:
        """A report from its JSON, this version's or an unversioned one written before it."""
        version = data.get("version", 1)
        if version not in (1, REPORT_VERSION):
            raise ValueError(f"search report version {version!r} is newer than this tmpdiff reads "
                             f"({REPORT_VERSION}): upgrade tmpdiff")
        costs = dict(data["costs"])
        costs.setdefault("version", 1)
        margin, additivity, exhaustive = (data.get(k) for k in ("best_baseline_at_speedup", "additivity",
                                                                 "exhaustive"))
        validation = data["validation"]
        return cls(
            model=data["model"], device=data["device"], steps=int(data["steps"]), ladder=tuple(data["ladder"]),
            objective=Objective(**data.get("objective", {})),
            found=Point(data["schedule"], float(data["ssim"]), float(data["speedup"])),
            ssim_std=float(data.get("ssim_std", 0.0)), evaluations=int(data["evaluations"]),
            new_evaluations_in_search=int(data.get("new_evaluations_in_search", data["evaluations"])),
            evaluation_bound=int(data["evaluation_bound"]), baselines=_points(data.get("baselines", [])),
            costs=CostTable.from_dict(costs), costs_source=data.get("costs_source", ""),
            validation=Validation(tuple(validation.get("seeds", ())), float(validation["ssim"]),
                                  validation.get("meets_target")),
            pareto=_points(data.get("pareto", [])), ladder_notes=tuple(data.get("ladder_notes", ())),
            simulated_in_ladder=tuple(data.get("simulated_in_ladder", ())),
            best_baseline_at_speedup=Margin(**margin) if margin else None,
            additivity=None if additivity is None else Additivity(
                float(additivity["r2"]), tuple(additivity["predicted"]), tuple(additivity["measured"]),
                tuple(additivity["schedules"]), int(additivity.get("probe_stride", 1))),
            strategies={name: Strategy(**s) for name, s in data["strategies"].items()} if data.get("strategies")
            else None,
            exhaustive=Exhaustive(**exhaustive) if exhaustive else None,
            denoiser_calls=data.get("denoiser_calls", {}), phase_seconds=data.get("phase_seconds", {}),
            replay=data.get("replay"), batch_size=int(data.get("batch_size", 1)),
            skipped=tuple(literal(s) for s in data.get("skipped", ())), request=_request(data.get("request")),
            not_run=tuple(data.get("not_run", ())),
        )


def _request(data: dict[str, Any] | None) -> SearchRequest | None:
    """The request a report recorded, or None where it recorded none (or one this tmpdiff cannot take)."""
    if not data:
        return None
    try:
        return SearchRequest.from_dict(data)
    except (ValueError, TypeError):
        return None


def _points(rows: list[dict[str, Any]]) -> tuple[Point, ...]:
    return tuple(Point(r["schedule"], float(r["ssim"]), float(r["speedup"]),
                       bytes_of(r.get("peak_gib"))) for r in rows)
