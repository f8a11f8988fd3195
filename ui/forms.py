"""The form's values turned into the engine's value objects, each checked once (a ``FieldError`` otherwise)."""

from __future__ import annotations

import re

from tmpdiff.engine.settings import RunSettings
from tmpdiff.errors import FieldError
from tmpdiff.limits import APP_SEARCH_WORK, finite
from tmpdiff.pipelines.registry import get_model
from tmpdiff.studies.prompts import calibration_prompts
from tmpdiff.studies.request import SearchRequest, parse_seeds

SSIM_FLOOR, SPEEDUP_TARGET = "SSIM floor", "Speed-up target"  # the search tab's objectives, as its radio says them

__all__ = ["run_settings", "search_request", "whole"]


def run_settings(model: str, prompt: str, seed: object, steps: object, size: object, guidance: object) -> RunSettings:
    """The image panel's fields as settings."""
    return RunSettings(model=model, prompt=prompt or None, seed=whole(seed, "seed"), steps=whole(steps, "steps"),
                       size=whole(size, "size"), guidance=finite(guidance, "guidance"))


def search_request(model: str, target_kind: str, target: object, steps: object, ladder: str, num_prompts: object,
                   seeds: str) -> SearchRequest:
    """The search tab's fields as a request."""
    spec = get_model(model)
    prompt_count, step_count = whole(num_prompts, "prompts"), whole(steps, "steps")
    seed_values = parse_seeds(seeds)
    _check_search_work(prompt_count, len(seed_values), step_count)
    floor = target_kind == SSIM_FLOOR
    return SearchRequest(
        model=model, prompts=tuple(calibration_prompts(spec.labels, prompt_count)), seeds=seed_values,
        steps=step_count, ladder=tuple(x.strip() for x in ladder.split(",") if x.strip()) or None,
        target_ssim=finite(target, "target_ssim") if floor else None,
        target_speedup=finite(target, "target_speedup") if not floor else None,
        validation_seeds=(1000,), additivity_samples=0, baselines=True,
    )


INTEGER = re.compile(r"\s*[+-]?\d{1,40}\s*")  # a whole number written out (the seed box, a link's ?seed=)


def whole(value: object, field: str) -> int:
    """A number field's value as a whole number; a ``FieldError`` for NaN, infinities, fractions and empty fields
    (JSON clients can send all of them). An integer, or one written out in digits (a text box, a link), is kept
    exactly: 2**63 - 1 is no float. Longer digit strings are refused without being converted."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and INTEGER.fullmatch(value):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        raise FieldError(field, value, f"{{{field}}} has more digits than any {field} may, got {{value}}")
    number = finite(value, field)
    if not number.is_integer():
        raise FieldError(field, value, f"{{{field}}} must be a whole number, got {{value}}")
    return int(number)


def _check_search_work(prompts: int, seeds: int, steps: int) -> None:
    """The app's bound on one search: calibration images x steps per evaluated schedule."""
    work = prompts * seeds * steps
    if work > APP_SEARCH_WORK:
        raise FieldError("prompts", prompts, f"this search runs {prompts} prompts x {seeds} seeds x {steps} steps = "
                         f"{work} denoiser calls per schedule, over the app's limit of {APP_SEARCH_WORK}: use fewer "
                         "{prompts} or {seeds} here, or run it from the command line (`tmpdiff search`), which has "
                         "no such limit")
