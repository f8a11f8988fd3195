"""The settings that decide an image (all but the schedule), validated once where they enter, and one image's
result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from tmpdiff.errors import FieldError
from tmpdiff.limits import MAX_GUIDANCE, MAX_PROMPT_CHARS, MAX_SEED, MAX_SIZE, MAX_STEPS, MIN_SIZE, finite
from tmpdiff.memory.meter import MemoryFigures
from tmpdiff.pipelines.registry import DEFAULT_MODEL, ModelSpec, get_model
from tmpdiff.steps.schedule import Schedule

if TYPE_CHECKING:
    import torch

__all__ = ["STORED_FIELDS", "Result", "RunSettings", "batch_call_kwargs"]


STORED_FIELDS = ("model", "prompt", "negative_prompt", "seed", "steps", "size", "guidance")  # what to_dict() keys


@dataclass(frozen=True)
class RunSettings:
    """Everything but the schedule that decides an image; validated up front."""

    model: str = DEFAULT_MODEL
    prompt: str | None = None
    negative_prompt: str = ""
    seed: int = 0
    steps: int | None = None
    size: int | None = None
    guidance: float | None = None

    def __post_init__(self) -> None:
        get_model(self.model)  # an unknown model fails first, naming the choices
        for name in ("steps", "seed", "size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise FieldError(name, value, f"{{{name}}} must be a whole number, got {{value}}")
        if self.steps is not None and not 0 < self.steps <= MAX_STEPS:
            raise FieldError("steps", self.steps, f"{{steps}} must be from 1 to {MAX_STEPS}, got {{value}}")
        if not 0 <= self.seed <= MAX_SEED:
            raise FieldError("seed", self.seed, f"{{seed}} must be from 0 to {MAX_SEED} (2**63 - 1), got {{value}}")
        if self.size is not None and not MIN_SIZE <= self.size <= MAX_SIZE:
            raise FieldError("size", self.size,
                             f"{{size}} must be from {MIN_SIZE} to {MAX_SIZE} pixels, got {{value}}")
        if self.guidance is not None and not 0 <= finite(self.guidance, "guidance") <= MAX_GUIDANCE:
            raise FieldError("guidance", self.guidance,
                             f"{{guidance}} must be from 0 to {MAX_GUIDANCE:g}, got {{value}}")
        for name in ("prompt", "negative_prompt"):
            text = getattr(self, name)
            if text is not None and not isinstance(text, str):
                raise FieldError(name, text, f"{{{name}}} must be text, got {{value}}")
            if len(text or "") > MAX_PROMPT_CHARS:
                raise FieldError(name, text, f"{{{name}}} has {len(text or '')} characters, at most "
                                 f"{MAX_PROMPT_CHARS}: {{value}}")
            # Surrounding whitespace changes no image: stripped here, so " red circle" keys as "red circle".
            object.__setattr__(self, name, None if text is None else text.strip())
        self.spec.call_kwargs(self.resolved_prompt, steps=self.resolved_steps, seed=self.seed, size=self.size,
                              guidance=self.guidance, negative_prompt=self.negative_prompt, seeded=False)

    def call_kwargs(self, device: str | torch.device = "cpu") -> dict[str, Any]:
        """This setting as its pipeline's arguments, with a fresh seeded generator each call."""
        return self.spec.call_kwargs(self.resolved_prompt, steps=self.resolved_steps, seed=self.seed,
                                     size=self.size, guidance=self.guidance, negative_prompt=self.negative_prompt,
                                     device=device)

    @property
    def spec(self) -> ModelSpec:
        return get_model(self.model)

    @property
    def resolved_prompt(self) -> str:
        return self.spec.example_prompt if self.prompt in (None, "") else str(self.prompt)

    @property
    def resolved_steps(self) -> int:
        return self.spec.steps if self.steps is None else self.steps

    @property
    def resolved_size(self) -> int:
        return self.spec.size if self.size is None else self.size

    @property
    def resolved_guidance(self) -> float:
        return self.spec.guidance if self.guidance is None else self.guidance

    @property
    def batch_key(self) -> tuple[str, int, int, float, str]:
        """Everything but prompt and seed: settings with the same key can share one pipeline call."""
        return self.model, self.resolved_steps, self.resolved_size, self.resolved_guidance, self.negative_prompt

    @classmethod
    def of_stored(cls, stored: dict[str, Any]) -> RunSettings:
        """The settings a stored ``to_dict()`` names (its derived ``frames`` left out), checked as any others."""
        return cls(**{name: stored[name] for name in STORED_FIELDS if name in stored})

    def reference_schedule(self) -> Schedule:
        return Schedule.uniform(self.spec.dtype, self.resolved_steps)

    def to_dict(self) -> dict[str, Any]:
        settings = {"model": self.model, "prompt": self.resolved_prompt, "negative_prompt": self.negative_prompt,
                    "seed": self.seed, "steps": self.resolved_steps, "size": self.resolved_size,
                    "guidance": self.resolved_guidance}
        if self.spec.frames:  # a video's frame count is part of its setting (images keep their stored keys)
            settings["frames"] = self.spec.frames
        return settings


@dataclass
class Result:
    image: Image.Image
    schedule: Schedule
    settings: RunSettings
    steps_run: list[str]
    step_seconds: list[float]
    seconds: float
    device: str
    simulated: list[str] = field(default_factory=list)
    vae_seconds: float | None = None
    memory: MemoryFigures | None = None  # its peak, and where the model's bytes were


def batch_call_kwargs(settings: list[RunSettings], device: str | torch.device) -> dict[str, Any]:
    """One pipeline call's arguments for settings that differ only in prompt and seed."""
    if len({s.batch_key for s in settings}) > 1:
        raise ValueError("a batch takes settings that differ only in prompt and seed; got several models, step "
                         "counts, sizes, guidance scales or negative prompts")
    each = [s.call_kwargs(device) for s in settings]
    kwargs = dict(each[0], generator=[k["generator"] for k in each])
    if "class_labels" in kwargs:
        kwargs["class_labels"] = [label for k in each for label in k["class_labels"]]
    else:
        kwargs["prompt"] = [k["prompt"] for k in each]
    return kwargs

