"""What the command line and the app say about the engine's work, in the same words."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tmpdiff.steps.precisions import PRECISIONS, available_precisions

if TYPE_CHECKING:
    from tmpdiff.variants.bank import Mode

__all__ = ["describe_build", "describe_load", "precision_table"]


def describe_build(precision: str, mode: Mode, expected: float | None) -> str:
    """What a front end says while a variant is being built."""
    if mode == "eager":
        return f"preparing {precision} weights"
    what = "compiling" if mode == "compiled" else "compiling ahead of time"
    if expected is None:
        return f"{what} {precision} for this model (first time only; later runs load it from the cache)"
    return f"{what} {precision} for this model (first time only, ~{expected:.0f} s)"


def describe_load(model: str) -> str:
    """What a front end says while a model's weights load (once a process)."""
    from tmpdiff.pipelines.registry import get_model

    spec = get_model(model)
    if spec.is_tiny or spec.is_random:
        return f"building {model}'s random weights (once per start)"
    if spec.is_local:
        return f"loading {model}'s weights (once per start)"
    return f"loading {model}'s weights from the Hugging Face cache (once per start; a first run downloads them)"


def precision_table(device: str) -> list[dict[str, str]]:
    return [{"name": a.name, "status": a.status.value, "description": PRECISIONS[a.name].description,
             "reason": a.reason} for a in available_precisions(device)]
