"""Image quality against the full-precision reference: SSIM, PSNR and LPIPS.

LPIPS needs torchvision's pretrained AlexNet, which is a download. When the weights are not
in torch's hub cache (or at ``TMPDIFF_LPIPS_WEIGHTS``), LPIPS is reported as unavailable with
the reason; it is never computed with a randomly initialised backbone.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import threading
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from tmpdiff.engine.frames import sheet_frames

__all__ = ["LPIPS_HOW_TO", "LpipsUnavailable", "Quality", "compare", "difference_map", "fetch_alexnet_weights",
           "lpips_status", "psnr", "ssim", "summarize"]

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
ALEXNET_URL = f"https://download.pytorch.org/models/{ALEXNET_FILE}"  # where torchvision fetches it from
LPIPS_ENV = "TMPDIFF_LPIPS_WEIGHTS"
LPIPS_URL_ENV = "TMPDIFF_LPIPS_URL"  # another mirror of the same file; "off" never downloads
DOWNLOAD_TIMEOUT_S = 20
LPIPS_HOW_TO = (
    f"LPIPS needs torchvision's AlexNet weights ({ALEXNET_FILE}, 233 MB): tmpdiff fetches them once from "
    f"{ALEXNET_URL} into torch's hub cache; offline, copy the file to ~/.cache/torch/hub/checkpoints/ or point "
    f"{LPIPS_ENV} at it"
)
_HOW_TO_GET = LPIPS_HOW_TO


class LpipsUnavailable(RuntimeError):
    """LPIPS cannot be computed honestly here; the message says why and how to fix it."""


@dataclass(frozen=True)
class Quality:
    """Scores of an image against its reference; for a video, the means over frames, each frame's SSIM and
    PSNR kept (``frame_ssim``, ``frame_psnr``) so the worst frame is known."""

    ssim: float
    psnr: float
    lpips: float | None
    lpips_note: str = ""
    frame_ssim: tuple[float, ...] = ()
    frame_psnr: tuple[float, ...] = ()

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


_FETCH_FAILED: str | None = None  # why the one download this process tried failed (never tried twice)


def fetch_alexnet_weights(url: str | None = None, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """torchvision's AlexNet weights, downloaded once into torch's hub cache, as torchvision would: the file's
    SHA-256 must begin with the hash its name carries (``alexnet-owt-<hash>.pth``). A ``LpipsUnavailable``
    with a one-line reason when it cannot be fetched."""
    global _FETCH_FAILED
    url = url or os.environ.get(LPIPS_URL_ENV) or ALEXNET_URL
    if url == "off":
        raise LpipsUnavailable("LPIPS unavailable: downloading its AlexNet weights is switched off")
    target = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
    if target.is_file():
        return target
    if _FETCH_FAILED is not None:
        raise LpipsUnavailable(_FETCH_FAILED)
    expected = Path(url).stem.rsplit("-", 1)[-1]
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (a fixed https URL)
            data = response.read()
        if not hashlib.sha256(data).hexdigest().startswith(expected):
            raise ValueError(f"the file from {url} does not match its hash {expected}")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        partial.write_bytes(data)
        partial.replace(target)  # never a half-written file under the final name
    except (OSError, ValueError) as exc:
        _FETCH_FAILED = f"LPIPS unavailable: could not fetch its AlexNet weights ({type(exc).__name__}: " \
                        f"{str(exc).splitlines()[0][:120] if str(exc) else 'no answer'})"
        raise LpipsUnavailable(_FETCH_FAILED) from None
    return target


def lpips_status() -> tuple[bool, str]:
    """(available, reason): the reason is one line; ``LPIPS_HOW_TO`` says how to make it available."""
    override = os.environ.get(LPIPS_ENV)
    if override and not Path(override).is_file():
        return False, f"LPIPS unavailable: {LPIPS_ENV}={override!r} is not a file"
    if _alexnet_weights() is None:
        try:
            fetch_alexnet_weights()
        except LpipsUnavailable as exc:
            return False, str(exc)
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


def compare_video(sheet: Image.Image, reference: Image.Image, frames: int | None = None) -> Quality:
    """Frame by frame: SSIM of every frame (their mean, and each kept), PSNR of every frame and of the whole clip
    (its pooled error: finite unless every frame is identical), LPIPS averaged over frames."""
    scored = [compare(a, b) for a, b in zip(sheet_frames(sheet, frames), sheet_frames(reference, frames),
                                            strict=True)]
    lpips_values = [q.lpips for q in scored if q.lpips is not None]
    return Quality(ssim=statistics.fmean(q.ssim for q in scored), psnr=psnr(sheet, reference),
                   lpips=statistics.fmean(lpips_values) if len(lpips_values) == len(scored) else None,
                   lpips_note=scored[0].lpips_note, frame_ssim=tuple(q.ssim for q in scored),
                   frame_psnr=tuple(q.psnr for q in scored))


def summarize(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        raise ValueError("no values to summarize")
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0
