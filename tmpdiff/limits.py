"""Every input limit, in one place: what one request may ask of the engine.

The engine checks them where a value enters (``RunSettings``, ``Schedule.parse``, ``SearchRequest``), so the
CLI, the app and the API refuse the same things with the same message. They are generous for real use
and bound what one request can cost: a schedule of a hundred million steps is refused while it is parsed,
not after it has filled memory.
"""

from __future__ import annotations

import math

from tmpdiff.errors import FieldError

__all__ = ["APP_SEARCH_WORK", "MAX_GUIDANCE", "MAX_PROMPT_CHARS", "MAX_SEED", "MAX_SEEDS", "MAX_SIZE", "MAX_SPEEDUP",
           "MAX_STEPS", "MIN_SIZE", "finite"]

MAX_STEPS = 1000  # denoising steps (and so schedule entries); samplers use 1 to a few hundred
MAX_PROMPT_CHARS = 2000  # text encoders truncate at 77 to 512 tokens anyway
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit value
MAX_SEEDS = 1000  # seeds in one list (calibration or validation)
MIN_SIZE, MAX_SIZE = 8, 4096  # image height and width in pixels
MAX_GUIDANCE = 100.0
MAX_SPEEDUP = 1000.0  # a search's speed-up target
# A search in the web app: calibration prompts x seeds x steps (denoiser calls per evaluated schedule).
# Larger searches run from the command line (`tmpdiff search`), which has no such limit.
APP_SEARCH_WORK = 512


def finite(value: object, name: str) -> float:
    """``value`` as a float; a ``FieldError`` for ``name`` on NaN, infinities and non-numbers."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise FieldError(name, value, f"{{{name}}} must be a number, got {{value}}") from None
    if not math.isfinite(number):
        raise FieldError(name, value, f"{{{name}}} must be a finite number, got {{value}}")
    return number
