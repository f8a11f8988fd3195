"""Videos as frame sheets: a video's frames side by side in one lossless PNG, how the engine returns, stores and
compares a video; and the sheet as an animation a browser plays."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

__all__ = ["frame_sheet", "sheet_frames", "write_animation"]


def frame_sheet(frames: Sequence[Image.Image]) -> Image.Image:
    """A video's frames side by side in one image: how a video is stored (one lossless PNG) and compared."""
    width, height = frames[0].size
    sheet = Image.new("RGB", (width * len(frames), height))
    for index, frame in enumerate(frames):
        sheet.paste(frame.convert("RGB"), (index * width, 0))
    return sheet


def sheet_frames(sheet: Image.Image, frames: int | None = None) -> list[Image.Image]:
    """The frames of a frame sheet of ``frames`` frames (default: square frames, as every setting draws)."""
    width, height = sheet.size
    frames = width // height if frames is None else frames
    if frames <= 0 or width % frames:
        raise ValueError(f"a frame sheet {width} pixels wide does not hold {frames} frames")
    step = width // frames
    return [sheet.crop((i * step, 0, (i + 1) * step, height)) for i in range(frames)]


def write_animation(sheet: Image.Image, target: Any, image_format: str = "PNG", fps: int = 16) -> None:
    """A frame sheet as a lossless animated PNG (APNG) or WebP, which any browser plays without a video encoder;
    ``target`` a path or a binary file. Identical consecutive frames may be stored once, for longer."""
    first, *rest = sheet_frames(sheet)
    options = {"lossless": True} if image_format.upper() == "WEBP" else {}
    first.save(target, format=image_format.upper(), save_all=True, append_images=rest, duration=round(1000 / fps),
               loop=0, **options)

