"""Calibration prompts: the bundled set, or a user file (one per line, or PartiPrompts-style TSV)."""

from __future__ import annotations

import csv
from pathlib import Path

from tmpdiff.errors import FieldError, literal

__all__ = ["BUNDLED_PROMPTS", "calibration_prompts", "read_prompt_file"]

# Written for tmpdiff: varied subjects, styles, lighting, text and counting, so that a schedule
# is not tuned to one kind of image.
BUNDLED_PROMPTS = (
    "a red fox sitting in fresh snow at dawn, telephoto photograph",
    "an isometric illustration of a tiny bakery with a striped awning",
    "a bowl of ramen on a wooden table, steam rising, top-down food photo",
    "a lighthouse on a cliff during a thunderstorm, dramatic oil painting",
    "a neon sign that reads OPEN 24 HOURS above a rainy street at night",
    "three yellow rubber ducks floating in a blue bathtub",
    "a portrait of an elderly fisherman with a knitted cap, soft window light",
    "a watercolor map of an imaginary island with mountains and rivers",
    "a vintage bicycle leaning against a brick wall covered in ivy",
    "a close-up of a hummingbird drinking from a purple flower, shallow depth of field",
    "a cozy reading nook with a window seat, cushions and a stack of books",
    "a futuristic train crossing a glass bridge over a canyon, concept art",
    "a chessboard mid-game with dramatic side lighting, black and white photo",
    "a child's crayon drawing of a house, a sun and a dog",
    "a macro photo of frost crystals on a green leaf",
    "a busy market stall selling oranges, lemons and limes in the afternoon sun",
)


def read_prompt_file(path: str | Path) -> list[str]:
    """Plain text (one prompt per line, blank lines and ``#`` comments ignored) or a TSV whose
    header has a ``Prompt`` column (PartiPrompts)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FieldError("prompt_file", str(path), f"cannot read the {{prompt_file}} {{value}}: {literal(str(exc))}") \
            from None
    lines = text.splitlines()
    if lines and "\t" in lines[0] and "prompt" in [c.strip().lower() for c in lines[0].split("\t")]:
        rows = csv.DictReader(lines, delimiter="\t")
        column = next(c for c in rows.fieldnames or [] if c.strip().lower() == "prompt")
        prompts = [row[column].strip() for row in rows if row.get(column, "").strip()]
    else:
        prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise FieldError("prompt_file", str(path), "the {prompt_file} {value} holds no prompts")
    return prompts


def calibration_prompts(labels: tuple[str, ...], count: int, file: str | Path | None = None) -> list[str]:
    """``count`` prompts spread over the available ones (class names for class-conditional models)."""
    if count <= 0:
        raise FieldError("prompts", count, "the number of calibration {prompts} must be positive, got {value}")
    pool = read_prompt_file(file) if file else list(labels or BUNDLED_PROMPTS)
    stride = max(len(pool) // count, 1)
    return pool[::stride][:count]
