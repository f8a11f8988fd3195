"""Every stored evaluation of one setting, as typed points: what the app's history tab plots and lists."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tmpdiff.engine.settings import RunSettings
from tmpdiff.measure.evaluator import Evaluator
from tmpdiff.measure.records import StoredEvaluation
from tmpdiff.steps.schedule import Schedule

__all__ = ["HistoryPoint", "HistoryStore", "history"]


@dataclass(frozen=True)
class HistoryPoint:
    """One stored evaluation of a setting. ``speedup``: measured against that setting's reference on the same
    device; None for simulated precisions (no speed claim) or when no reference of that device is stored."""

    schedule: str
    ssim: float | None
    psnr: float | None  # None: identical to the reference
    lpips: float | None
    seconds: float
    speedup: float | None
    simulated: bool
    prompt: str | None
    seed: int | None
    evaluation_id: int = 0  # the store's row
    peak_bytes: int | None = None  # the image's peak memory (None: stored before it was measured)

    @property
    def uniform(self) -> bool:
        return len(Schedule.parse(self.schedule).precisions) == 1


class HistoryStore(Protocol):
    def evaluations(self, model: str | None = None, settings_hash: str | None = None,
                    device_hash: str | None = None) -> list[StoredEvaluation]: ...


def history(evaluator: Evaluator, store: HistoryStore | None, settings: RunSettings) -> list[HistoryPoint]:
    """Every stored evaluation of ``settings`` (written by this process or any other on a shared cache), newest
    first, as typed points: the setting's hash and its reference rows are found here, once, for every front
    end."""
    if store is None:
        return []
    key = evaluator.key(settings, settings.reference_schedule())
    rows = store.evaluations(model=settings.model, settings_hash=key.settings_hash)
    references = {r.device_hash: r.measured_seconds for r in rows if r.schedule_hash == key.schedule_hash}
    return [_point(row, references.get(row.device_hash)) for row in rows]


def _point(row: StoredEvaluation, reference_seconds: float | None) -> HistoryPoint:
    claim = not row.simulated and reference_seconds and row.measured_seconds
    return HistoryPoint(schedule=row.schedule, ssim=row.ssim, psnr=row.psnr, lpips=row.lpips,
                        seconds=row.measured_seconds,
                        speedup=reference_seconds / row.measured_seconds if claim and reference_seconds else None,
                        simulated=bool(row.simulated), prompt=row.prompt, seed=row.seed, evaluation_id=row.id,
                        peak_bytes=row.peak_bytes)
