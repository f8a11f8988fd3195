"""Moving evaluations between machines: ``Cache.export`` writes every evaluation (images included) to one JSON file;
``Cache.import_`` checks a whole file before it writes anything."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path
from typing import Any

from tmpdiff.errors import literal, shown
from tmpdiff.measure.records import EvalKey, EvalRecord
from tmpdiff.pipelines.registry import MODELS
from tmpdiff.steps.schedule import Schedule

from .connection import CacheError

__all__ = ["EXPORT_FORMAT", "EXPORT_VERSION", "finite_or_none", "parse_export", "same_record"]

EXPORT_FORMAT = "tmpdiff-cache-export"


EXPORT_VERSION = 1


def finite_or_none(value: float | None) -> float | None:
    """SQLite stores no infinity: identical images (PSNR = inf) are stored as NULL."""
    return None if value is None or value == float("inf") else value


def parse_export(path: Path) -> list[EvalRecord]:
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CacheError(literal(f"{path} is not a tmpdiff export ({exc})"), field="file") from None
    except RecursionError:
        raise CacheError(literal(f"{path} is not a tmpdiff export (nested too deeply)"), field="file") from None
    if not isinstance(payload, dict) or payload.get("format") != EXPORT_FORMAT:
        raise CacheError(literal(f"{path} is not a tmpdiff export: its 'format' is not {EXPORT_FORMAT!r}"),
                         field="file")
    if payload.get("version") != EXPORT_VERSION:
        raise CacheError(literal(f"{path} is export version {shown(payload.get('version'))}; this tmpdiff reads "
                                 f"{EXPORT_VERSION}"), field="file")
    entries = payload.get("evaluations")
    if not isinstance(entries, list):
        raise CacheError(literal(f"{path}: 'evaluations' must be a list"), field="file")
    return [_parse_entry(entry, i, path) for i, entry in enumerate(entries)]


_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,), "model_hash": (str,), "settings": (dict,), "schedule": (str,), "device": (dict,),
    "ssim": (float, int, type(None)), "psnr": (float, int, type(None)), "lpips": (float, int, type(None)),
    "lpips_note": (str,), "measured_seconds": (float, int), "predicted_seconds": (float, int, type(None)),
    "steps_run": (list,), "simulated": (list,), "png_base64": (str,),
}


def same_record(a: EvalRecord, b: EvalRecord) -> bool:
    return (a.png, a.ssim, a.psnr, a.lpips, a.measured_seconds) == (b.png, b.ssim, finite_or_none(b.psnr), b.lpips,
                                                                     b.measured_seconds)


def _parse_entry(entry: Any, index: int, path: Path) -> EvalRecord:
    where = f"{path} entry {index}"
    if not isinstance(entry, dict):
        raise CacheError(literal(f"{where} is not an object"), field="file")
    for name, types in _TYPES.items():
        if not isinstance(entry.get(name), types) or isinstance(entry.get(name), bool):
            raise CacheError(literal(f"{where}: field {name!r} is missing or of the wrong type"), field="file")
    for name in ("ssim", "psnr", "lpips", "measured_seconds", "predicted_seconds"):
        if isinstance(entry[name], float) and not math.isfinite(entry[name]):
            raise CacheError(literal(f"{where}: field {name!r} is {entry[name]}: only finite numbers (or null) are "
                                     "stored"), field="file")
    if entry["model"] not in MODELS:
        raise CacheError(literal(f"{where}: unknown model {entry['model']!r}"), field="file")
    try:
        schedule = Schedule.parse(entry["schedule"])
        steps = entry["settings"].get("steps")
        if steps is not None and steps != len(schedule):
            raise ValueError(f"schedule {entry['schedule']!r} has {len(schedule)} steps, settings say {steps}")
        png = base64.b64decode(entry["png_base64"], validate=True)
        _check_png(png)
    except ValueError as exc:
        raise CacheError(literal(f"{where}: {exc}"), field="file") from None
    key = EvalKey(model=entry["model"], model_hash=entry["model_hash"], settings=entry["settings"],
                  schedule=str(schedule), schedule_hash=schedule.hash, device=entry["device"])
    peak, memory = entry.get("peak_bytes"), entry.get("memory")
    if not (peak is None or (isinstance(peak, int) and not isinstance(peak, bool) and 0 <= peak < 1 << 50)) or \
            not (memory is None or isinstance(memory, dict)):
        raise CacheError(literal(f"{where}: 'peak_bytes' must be a whole number of bytes and 'memory' an object"),
                         field="file")
    return EvalRecord(key=key, png=png, ssim=entry["ssim"], psnr=entry["psnr"], lpips=entry["lpips"],
                      lpips_note=entry["lpips_note"], measured_seconds=float(entry["measured_seconds"]),
                      predicted_seconds=entry["predicted_seconds"], steps_run=[str(s) for s in entry["steps_run"]],
                      simulated=[str(s) for s in entry["simulated"]], peak_bytes=peak, memory=memory)


def _check_png(png: bytes) -> None:
    from PIL import Image

    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("the image is not a PNG")
    try:
        with Image.open(io.BytesIO(png)) as image:
            image.verify()
    except Exception as exc:  # PIL raises many types for broken files
        raise ValueError(f"the PNG is broken ({exc})") from None

