"""An independent judge of the default model's images: dominant colour and shape mask.

It knows nothing of the model or the generator: it thresholds saturation to find the shape,
names its colour by the nearest hue, and its shape by how much of its bounding box it fills
(square ~1.0, circle ~0.79, triangle ~0.5).
"""

from __future__ import annotations

import numpy as np

HUES = {"red": 0.0, "yellow": 55.0, "green": 125.0, "blue": 225.0}


def classify(image: np.ndarray) -> str | None:
    """``image`` is (H, W, 3) floats in [0, 1]; returns e.g. ``"red circle"`` or None if no shape."""
    mask = _shape_mask(image)
    if mask.sum() < 40:
        return None
    return f"{_colour(image[mask])} {_shape(mask)}"


def _shape_mask(image: np.ndarray) -> np.ndarray:
    saturation = image.max(-1) - image.min(-1)
    return saturation > 0.3


def _colour(pixels: np.ndarray) -> str:
    r, g, b = pixels.mean(0)
    hue = _hue(r, g, b)
    return min(HUES, key=lambda name: min(abs(hue - HUES[name]), 360 - abs(hue - HUES[name])))


def _hue(r: float, g: float, b: float) -> float:
    top, low = max(r, g, b), min(r, g, b)
    if top == low:
        return 0.0
    if top == r:
        hue = 60 * ((g - b) / (top - low) % 6)
    elif top == g:
        hue = 60 * ((b - r) / (top - low) + 2)
    else:
        hue = 60 * ((r - g) / (top - low) + 4)
    return hue % 360


def _shape(mask: np.ndarray) -> str:
    rows, cols = np.nonzero(mask)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    fill = mask.sum() / (height * width)
    if fill > 0.88:
        return "square"
    if fill > 0.64:
        return "circle"
    return "triangle"
