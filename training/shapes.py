"""The procedural dataset of the default model: one coloured shape on a textured background.

12 classes: {red, green, blue, yellow} x {square, circle, triangle}. Images are 64x64 RGB in
[-1, 1], made on the fly on any device, so training needs no download.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SIZE = 64
COLOURS = {
    "red": (0.86, 0.14, 0.12),
    "green": (0.16, 0.72, 0.22),
    "blue": (0.14, 0.30, 0.90),
    "yellow": (0.92, 0.84, 0.12),
}
SHAPES = ("square", "circle", "triangle")
LABELS = tuple(f"{colour} {shape}" for shape in SHAPES for colour in COLOURS)


def sample(
    batch: int, generator: torch.Generator, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` random images (B, 3, 64, 64) in [-1, 1] and their class ids (B,)."""
    g = generator

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g, device=g.device).to(device)

    labels = (rand(batch) * len(LABELS)).long().clamp_max(len(LABELS) - 1)
    shape_id, colour_id = labels // len(COLOURS), labels % len(COLOURS)
    background = _texture(batch, rand, device)
    # Shape geometry: half-size 10..20 px, centre kept inside the frame.
    half = 10 + 10 * rand(batch)
    cx = half + (SIZE - 2 * half) * rand(batch)
    cy = half + (SIZE - 2 * half) * rand(batch)
    ys, xs = torch.meshgrid(torch.arange(SIZE, device=device) + 0.5, torch.arange(SIZE, device=device) + 0.5,
                            indexing="ij")
    dx = (xs[None] - cx[:, None, None]) / half[:, None, None]  # (B, H, W), -1..1 across the shape
    dy = (ys[None] - cy[:, None, None]) / half[:, None, None]
    square = (dx.abs() <= 1) & (dy.abs() <= 1)
    circle = dx**2 + dy**2 <= 1
    triangle = (dy <= 1) & (dy >= -1) & (dx.abs() <= (dy + 1) / 2)  # apex up, base at the bottom
    masks = torch.stack([square, circle, triangle], 1)[torch.arange(batch, device=device), shape_id]
    palette = torch.tensor(list(COLOURS.values()), device=device)
    colour = (palette[colour_id] + 0.06 * (rand(batch, 3) - 0.5)).clamp(0, 1)
    shade = 1 - 0.12 * (dy + 1) / 2  # a soft vertical gradient so shapes are not flat
    fill = colour[:, :, None, None] * shade[:, None]
    image = torch.where(masks[:, None], fill, background)
    return image * 2 - 1, labels


def _texture(batch: int, rand, device: str | torch.device) -> torch.Tensor:
    """Muted grey-brown cloudy noise with grain: no saturated colours, so shapes stand out."""
    coarse = F.interpolate(rand(batch, 1, 6, 6), size=SIZE, mode="bicubic", align_corners=False)
    base = 0.30 + 0.25 * rand(batch, 1, 1, 1)
    tint = torch.stack([torch.ones(batch, device=device), 0.93 + 0.05 * rand(batch), 0.85 + 0.1 * rand(batch)], 1)
    grain = 0.04 * (rand(batch, 1, SIZE, SIZE) - 0.5)
    grey = (base + 0.18 * (coarse - 0.5) + grain).clamp(0, 1)
    return grey * tint[:, :, None, None]
