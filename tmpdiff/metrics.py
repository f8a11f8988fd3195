"""Image quality against the full-precision reference: SSIM, PSNR and LPIPS.

LPIPS needs torchvision's pretrained AlexNet, which is a download. When the weights are not
in torch's hub cache (or at ``TMPDIFF_LPIPS_WEIGHTS``), LPIPS is reported as unavailable with
the reason; it is never computed with a randomly initialised backbone.
"""

from __future__ import annotations

import os
import statistics
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

__all__ = ["Quality", "LpipsUnavailable", "compare", "difference_map", "lpips_status", "psnr", "ssim", "summarize"]

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
LPIPS_ENV = "TMPDIFF_LPIPS_WEIGHTS"
_HOW_TO_GET = (
    f"download torchvision's AlexNet weights ({ALEXNET_FILE}) into torch's hub cache "
    f"(~/.cache/torch/hub/checkpoints) or point {LPIPS_ENV} at the file"
)


class LpipsUnavailable(RuntimeError):
    """LPIPS cannot be computed honestly here; the message says why and how to fix it."""


@dataclass(frozen=True)
class Quality:
    ssim: float
    psnr: float
    lpips: float | None
    lpips_note: str = ""

    def to_dict(self) -> dict[str, float | str | None]:
        return {"ssim": self.ssim, "psnr": self.psnr, "lpips": self.lpips, "lpips_note": self.lpips_note}


def as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8."""
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if array.dtype != np.uint8:
        raise ValueError(f"expected 8-bit RGB images, got dtype {array.dtype}")
    return array


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")


def ssim(image: Image.Image | np.ndarray, reference: Image.Image | np.ndarray) -> float:
    a, b = as_array(image), as_array(reference)
    _check_pair(a, b)
    window = min(7, *a.shape[:2]) | 1  # odd, and no larger than the image
    return float(structural_similarity(a, b, channel_axis=-1, data_range=255, win_size=window))


def psnr(image: Image.Image | np.ndarray, reference: Image.Image | np.ndarray) -> float:
    a, b = as_array(image), as_array(reference)
    _check_pair(a, b)
    if np.array_equal(a, b):
        return float("inf")
    return float(peak_signal_noise_ratio(b, a, data_range=255))


def difference_map(image: Image.Image | np.ndarray, reference: Image.Image | np.ndarray) -> Image.Image:
    """|reference - image| as a heat map: black where they agree, through red and yellow to white where
    they differ most. Scaled to the largest difference (returned black when the images are equal), so
    where they differ shows however small the difference is; the metrics say how much."""
    a, b = as_array(image).astype(np.int16), as_array(reference).astype(np.int16)
    _check_pair(a, b)
    diff = np.abs(a - b).mean(axis=-1)
    level = diff / diff.max() if diff.max() > 0 else diff
    rgb = np.stack([np.clip(3 * level, 0, 1), np.clip(3 * level - 1, 0, 1), np.clip(3 * level - 2, 0, 1)], -1)
    return Image.fromarray((255 * rgb).round().astype(np.uint8))


_LPIPS_MODEL: object | None = None
_LPIPS_LOCK = threading.Lock()


def _alexnet_weights() -> Path | None:
    override = os.environ.get(LPIPS_ENV)
    if override:
        return Path(override) if Path(override).is_file() else None
    path = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
    return path if path.is_file() else None


def lpips_status() -> tuple[bool, str]:
    """(available, reason)."""
    override = os.environ.get(LPIPS_ENV)
    if override and not Path(override).is_file():
        return False, f"{LPIPS_ENV}={override!r} is not a file: {_HOW_TO_GET}"
    if _alexnet_weights() is None:
        return False, f"LPIPS unavailable: AlexNet backbone weights not found offline; {_HOW_TO_GET}"
    return True, "LPIPS (AlexNet)"


def _lpips_model() -> object:
    global _LPIPS_MODEL
    available, reason = lpips_status()
    if not available:
        raise LpipsUnavailable(reason)
    with _LPIPS_LOCK:
        if _LPIPS_MODEL is None:
            import lpips
            import torchvision

            weights = _alexnet_weights()
            assert weights is not None
            model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
            backbone = torchvision.models.alexnet()
            backbone.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            # lpips' alexnet wrapper slices torchvision's `features` into five stages.
            features = backbone.features
            stages = [model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4, model.net.slice5]
            bounds = [(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)]
            for stage, (lo, hi) in zip(stages, bounds, strict=True):
                for i in range(lo, hi):
                    stage._modules[str(i)] = features[i]
            _LPIPS_MODEL = model.eval()
    return _LPIPS_MODEL


def lpips_distance(image: Image.Image | np.ndarray, reference: Image.Image | np.ndarray) -> float:
    """LPIPS (AlexNet); raises ``LpipsUnavailable`` rather than guess."""
    a, b = as_array(image), as_array(reference)
    _check_pair(a, b)
    model = _lpips_model()

    def to_tensor(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).permute(2, 0, 1)[None].float() / 127.5 - 1  # (1, 3, H, W) in [-1, 1]

    with torch.no_grad():
        return float(model(to_tensor(a), to_tensor(b)).item())  # type: ignore[operator]


def compare(image: Image.Image | np.ndarray, reference: Image.Image | np.ndarray) -> Quality:
    """SSIM, PSNR and (when its weights are here) LPIPS of ``image`` against ``reference``."""
    try:
        value: float | None = lpips_distance(image, reference)
        note = ""
    except LpipsUnavailable as exc:
        value, note = None, str(exc)
    return Quality(ssim=ssim(image, reference), psnr=psnr(image, reference), lpips=value, lpips_note=note)


def summarize(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        raise ValueError("no values to summarize")
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0
