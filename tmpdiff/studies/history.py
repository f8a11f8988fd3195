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
    """One stored evaluation of a setting. ``speedup``: measured, against the reference timed beside it (the
    reference itself: 1); None for simulated precisions (no speed claim) and for an image timed alone (a search's,
    or one stored before such timings were kept), whose seconds and the reference's are of two moments.
    ``predicted_speedup``: from the step costs measured on this device, where they cover the schedule."""

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
    predicted_speedup: float | None = None

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
    reference = settings.reference_schedule()
    key = evaluator.key(settings, reference)
    rows = store.evaluations(model=settings.model, settings_hash=key.settings_hash)
    table = evaluator.known_costs(settings)
    stored = evaluator.costs.get(settings.model)
    if table is None and stored is not None and not stored.target and stored.steps == settings.resolved_steps:
        table = stored

    def predicted(row: StoredEvaluation) -> float | None:
        if table is None or row.simulated or not table.has_speed_claim(Schedule.parse(row.schedule)):
            return None
        try:
            return table.predict(reference) / table.predict(Schedule.parse(row.schedule))
        except ValueError:  # a precision whose cost was never measured here
            return None

    return [_point(row, row.schedule_hash == key.schedule_hash, predicted(row)) for row in rows]


def _point(row: StoredEvaluation, is_reference: bool, predicted_speedup: float | None) -> HistoryPoint:
    beside = row.measured_seconds if is_reference else row.reference_seconds
    measured = beside / row.measured_seconds if beside and row.measured_seconds and not row.simulated else None
    return HistoryPoint(schedule=row.schedule, ssim=row.ssim, psnr=row.psnr, lpips=row.lpips,
                        seconds=row.measured_seconds, speedup=measured, simulated=bool(row.simulated),
                        prompt=row.prompt, seed=row.seed, evaluation_id=row.id, peak_bytes=row.peak_bytes,
                        predicted_speedup=predicted_speedup)
