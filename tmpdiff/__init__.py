"""tmpdiff: temporal mixed precision for diffusion models.

Give each denoising step its own numeric precision, run it inside a stock diffusers pipeline,
and measure what it costs and what it loses.

Importing the package is cheap: each name below loads its module (and diffusers, torchao or
transformers behind it) the first time it is used, so ``tmpdiff --help`` and a front end's start
pay only for what they touch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tmpdiff.pipelines.registry import DEFAULT_MODEL, MODELS, ModelSpec, get_model, load_pipeline
    from tmpdiff.steps.precisions import PRECISIONS, Availability, Status, available_precisions, precision_status
    from tmpdiff.steps.schedule import Schedule
    from tmpdiff.switching.switch import ScheduleHandle, apply_schedule

_WHERE = {
    "DEFAULT_MODEL": "pipelines.registry", "MODELS": "pipelines.registry", "ModelSpec": "pipelines.registry",
    "get_model": "pipelines.registry", "load_pipeline": "pipelines.registry", "PRECISIONS": "steps.precisions",
    "Availability": "steps.precisions", "Status": "steps.precisions", "available_precisions": "steps.precisions",
    "precision_status": "steps.precisions", "Schedule": "steps.schedule", "ScheduleHandle": "switching.switch",
    "apply_schedule": "switching.switch",
}

__all__ = [
    "DEFAULT_MODEL", "MODELS", "PRECISIONS", "Availability", "ModelSpec", "Schedule", "ScheduleHandle", "Status",
    "apply_schedule", "available_precisions", "get_model", "load_pipeline", "precision_status",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'tmpdiff' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
