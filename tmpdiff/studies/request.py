"""What a search is asked for, validated once where it enters: the objective, the calibration prompts and seeds,
the ladder and the phases to run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tmpdiff.engine.settings import RunSettings
from tmpdiff.errors import FieldError
from tmpdiff.limits import MAX_SEED, MAX_SEEDS, MAX_SPEEDUP, finite
from tmpdiff.steps.precisions import get_precision, may_lead

__all__ = ["EXHAUSTIVE_LIMIT", "SearchRequest", "parse_seeds"]

EXHAUSTIVE_LIMIT = 4096  # schedules an exhaustive search may evaluate
DEFAULT_SSIM_FLOOR = 0.9  # the quality floor a search aims at when the user names no objective


@dataclass(frozen=True)
class SearchRequest:
    """What to search; validated up front. Messages name the fields (``target_ssim``); each front end puts them
    in its own words (``--target-ssim`` on the command line, the form's labels in the app)."""

    model: str
    prompts: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    steps: int | None = None
    size: int | None = None
    guidance: float | None = None
    ladder: tuple[str, ...] | None = None
    target_ssim: float | None = None
    target_speedup: float | None = None
    validation_seeds: tuple[int, ...] = (1000,)
    additivity_samples: int = 0  # diagnostics the bisection does not use: on request
    probe_stride: int = 3  # single-step probes on every 3rd step, the rest interpolated (see additivity_check)
    exhaustive: bool = False
    baselines: bool = True
    replay: bool = True  # replay denoiser outputs of schedule prefixes already run (exact)
    batch_size: int = 1  # calibration images per pipeline call (throughput; fewer, larger denoiser calls)

    def __post_init__(self) -> None:
        self._check_objective()
        for name, least in (("batch_size", 1), ("additivity_samples", 0), ("probe_stride", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise FieldError(name, value, f"{{{name}}} must be a whole number, {least} or more, got {{value}}")
        if not self.prompts or not self.seeds:
            raise FieldError("prompts", len(self.prompts),
                             "the search needs at least one prompt and one {seeds} value")
        if set(self.seeds) & set(self.validation_seeds):
            raise FieldError("validation_seeds", self.validation_seeds, "{validation_seeds} {value} must differ from "
                             "the search's {seeds}")
        for prompt in self.prompts:
            self.settings(prompt, self.seeds[0])
        for name in self.ladder or ():
            get_precision(name, "ladder")
        if self.exhaustive and self.ladder:
            self.exhaustive_count(self.ladder)

    def _check_objective(self) -> None:
        if (self.target_ssim is None) == (self.target_speedup is None):
            raise FieldError("target_ssim", None, "give exactly one objective: {target_ssim} or {target_speedup}")
        if self.target_ssim is not None and not 0 < finite(self.target_ssim, "target_ssim") <= 1:
            raise FieldError("target_ssim", self.target_ssim, "{target_ssim} must be in (0, 1], got {value}")
        if self.target_speedup is not None and not 1 <= finite(self.target_speedup, "target_speedup") <= MAX_SPEEDUP:
            raise FieldError("target_speedup", self.target_speedup, f"{{target_speedup}} must be from 1 to "
                             f"{MAX_SPEEDUP:g}, got {{value}}")

    def exhaustive_count(self, ladder: Sequence[str]) -> int:
        """How many schedules an exhaustive search over ``ladder`` evaluates; a ``FieldError`` before any work when
        that is over the limit."""
        steps = self.settings(self.prompts[0], self.seeds[0]).resolved_steps
        rungs = list(dict.fromkeys(ladder))
        count = sum(may_lead(n) for n in rungs) * len(rungs) ** (steps - 1)
        if count > EXHAUSTIVE_LIMIT:
            raise FieldError("exhaustive", True, f"an {{exhaustive}} search of {steps} steps over the {len(rungs)} "
                             f"rungs {','.join(rungs)} evaluates {count:.3g} schedules, over the limit of "
                             f"{EXHAUSTIVE_LIMIT}: give a {{ladder}} of fewer rungs, or fewer {{steps}}")
        return count

    def settings(self, prompt: str, seed: int) -> RunSettings:
        return RunSettings(model=self.model, prompt=prompt, seed=seed, steps=self.steps, size=self.size,
                           guidance=self.guidance)

    @property
    def first_settings(self) -> RunSettings:
        """The first calibration image's settings (first prompt, first seed): where a search's images are shown."""
        return self.settings(self.prompts[0], self.seeds[0])

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "prompts": list(self.prompts), "seeds": list(self.seeds), "steps": self.steps,
                "size": self.size, "guidance": self.guidance, "ladder": list(self.ladder or []),
                "target_ssim": self.target_ssim, "target_speedup": self.target_speedup, "replay": self.replay,
                "probe_stride": self.probe_stride, "batch_size": self.batch_size,
                "validation_seeds": list(self.validation_seeds), "additivity_samples": self.additivity_samples,
                "exhaustive": self.exhaustive, "baselines": self.baselines}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchRequest:
        """The request a report recorded (validated again); keys a report written earlier lacks take the defaults."""
        known = {"model", "steps", "size", "guidance", "target_ssim", "target_speedup", "replay", "probe_stride",
                 "batch_size", "additivity_samples", "exhaustive", "baselines"}
        fields: dict[str, Any] = {k: v for k, v in data.items() if k in known}
        for name in ("prompts", "seeds", "validation_seeds"):
            if name in data:
                fields[name] = tuple(data[name])
        fields["ladder"] = tuple(data["ladder"]) if data.get("ladder") else None
        return cls(**fields)


def parse_seeds(text: str, field: str = "seeds") -> tuple[int, ...]:
    """``"0,1"`` → ``(0, 1)``; a ``FieldError`` of ``field`` otherwise."""
    try:
        values = tuple(int(x) for x in str(text).split(","))
    except ValueError:
        raise FieldError(field, text, f"{{{field}}} takes comma-separated whole numbers, got {{value}}") from None
    if any(not 0 <= v <= MAX_SEED for v in values):
        raise FieldError(field, text, f"{{{field}}} takes numbers from 0 to {MAX_SEED} (2**63 - 1), got {{value}}")
    if len(values) > MAX_SEEDS:
        raise FieldError(field, len(values), f"{{{field}}} takes at most {MAX_SEEDS} seeds, got {{value}}")
    return values


