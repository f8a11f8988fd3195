"""Evaluate a schedule: its image, its quality against the reference, its measured and predicted latency.

The reference (every step in the model's reference precision, same setting) is computed once per
setting and reused. With a store, every evaluation is looked up before it is computed and saved
after, so nothing is computed twice.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from PIL import Image

from .latency import CostTable, measure_costs, timed_run
from .metrics import compare
from .models import config_hash
from .records import EvalKey, EvalRecord, EvaluationStore, device_fingerprint
from .replay import ReplayStore
from .runner import Engine, RunSettings
from .schedule import Schedule
from .variants import Mode

__all__ = ["Evaluation", "Evaluator"]


@dataclass
class Evaluation:
    """One evaluated schedule, ready for a front end."""

    record: EvalRecord
    image: Image.Image
    reference_seconds: float
    cached: bool
    vae_seconds: float | None = None  # measured apart when the image was computed here

    @property
    def schedule(self) -> Schedule:
        return Schedule.parse(self.record.key.schedule)

    @property
    def speedup(self) -> float:
        return self.reference_seconds / self.record.measured_seconds if self.record.measured_seconds else 0.0

    @property
    def has_speed_claim(self) -> bool:
        return not self.record.simulated

    def summary(self) -> dict[str, Any]:
        r = self.record
        return {
            "model": r.key.model, "schedule": r.key.schedule, "steps_run": r.steps_run,
            "ssim": r.ssim, "psnr": None if r.psnr == float("inf") else r.psnr,
            "lpips": r.lpips, "lpips_note": r.lpips_note or None,
            "seconds": round(r.measured_seconds, 4),
            "predicted_seconds": None if r.predicted_seconds is None else round(r.predicted_seconds, 4),
            "reference_seconds": round(self.reference_seconds, 4),
            "vae_decode_seconds": None if self.vae_seconds is None else round(self.vae_seconds, 4),
            "speedup": round(self.speedup, 3) if self.has_speed_claim else None,
            "simulated": r.simulated, "device": r.key.device["device"], "cached": self.cached,
        }


class Evaluator:
    """Runs and scores schedules on one engine, through an optional store."""

    def __init__(self, engine: Engine, store: EvaluationStore | None = None, predict: bool = True) -> None:
        self.engine = engine
        self.store = store
        self.predict = predict
        self.costs: dict[str, CostTable] = {}
        self._lock = threading.Lock()
        self._fingerprints: dict[str, str] = {}
        self._references: dict[str, Evaluation] = {}  # by key digest: one reference per setting
        self.replay: ReplayStore | None = None  # set by a search: prefixes already run are replayed

    def key(self, settings: RunSettings, schedule: Schedule) -> EvalKey:
        return EvalKey(
            model=settings.model, model_hash=self.model_hash(settings.model), settings=settings.to_dict(),
            schedule=str(schedule), schedule_hash=schedule.hash,
            device=device_fingerprint(self.engine.device, self.engine.mode),
        )

    def model_hash(self, model: str) -> str:
        if model not in self._fingerprints:
            self._fingerprints[model] = config_hash(model)
        return self._fingerprints[model]

    def reference(self, settings: RunSettings) -> Evaluation:
        """The all-reference-precision run of this setting, computed once and reused."""
        digest = self.key(settings, settings.reference_schedule()).digest
        if digest not in self._references:
            self._references[digest] = self.evaluate(settings, settings.reference_schedule())
        return self._references[digest]

    def evaluate(self, settings: RunSettings, schedule: Schedule | str) -> Evaluation:
        schedule = self.engine.check_schedule(schedule, settings)
        key = self.key(settings, schedule)
        cached = self.store.get(key) if self.store else None
        if cached is not None:
            reference_seconds = self._reference_seconds(settings, schedule, cached)
            return Evaluation(cached, Image.open(io.BytesIO(cached.png)).convert("RGB"), reference_seconds, True)
        is_reference = schedule == settings.reference_schedule()
        reference = None if is_reference else self.reference(settings)
        table = self.cost_table(settings, schedule) if self.predict else None
        result = self.engine.generate(settings, schedule, replay=self.replay, replay_key=key.setting_hash)
        quality = compare(result.image, reference.image if reference else result.image)
        predicted = table.predict(schedule) if table else None
        record = EvalRecord(
            key=key, png=_png(result.image), ssim=quality.ssim, psnr=quality.psnr, lpips=quality.lpips,
            lpips_note=quality.lpips_note, measured_seconds=result.seconds, predicted_seconds=predicted,
            steps_run=result.steps_run, simulated=result.simulated,
        )
        if self.store:
            self.store.put(record)
        reference_seconds = result.seconds if reference is None else reference.record.measured_seconds
        evaluation = Evaluation(record, result.image, reference_seconds, False, result.vae_seconds)
        if is_reference:
            self._references[key.digest] = evaluation
        return evaluation

    def evaluate_all(self, settings: list[RunSettings], schedule: Schedule | str) -> list[Evaluation]:
        """``schedule`` on every setting (one after another here; a distributed evaluator spreads them)."""
        return [self.evaluate(s, schedule) for s in settings]

    def evaluate_many(self, pairs: list[tuple[RunSettings, Schedule | str]]) -> Iterator[tuple[int, Evaluation]]:
        """Every (setting, schedule) pair, yielded as ``(index, evaluation)`` as each finishes (in order
        here; a distributed evaluator yields them as its workers finish)."""
        for index, (settings, schedule) in enumerate(pairs):
            yield index, self.evaluate(settings, schedule)

    def cost_table(self, settings: RunSettings, schedule: Schedule) -> CostTable | None:
        """The measured step costs of this model, measuring whatever ``schedule`` needs first."""
        steps = settings.resolved_steps
        if steps < 2:
            return None
        with self._lock:
            table = self.costs.get(settings.model)
            if table is not None and table.target:
                return table  # another device's costs: used as they are (predict says what they lack)
            if table is not None and table.steps != steps:
                table = None  # costs were measured for another step count
            missing = set(schedule.precisions) | {settings.spec.dtype}
            if table is None or not missing <= set(table.step_seconds):
                table = measure_costs(timed_run(self.engine, settings), settings.spec.dtype, sorted(missing),
                                      steps=steps, device=self.engine.device, compiled=self.compiled, table=table)
                self.costs[settings.model] = table
            return table

    def _reference_seconds(self, settings: RunSettings, schedule: Schedule, record: EvalRecord) -> float:
        if schedule == settings.reference_schedule():
            return record.measured_seconds
        return self.reference(settings).record.measured_seconds

    @property
    def compiled(self) -> bool:
        """Whether variants run compiled (torch.compile or ahead of time): the engine's choice, else on for CUDA."""
        return self.engine.mode is not Mode.EAGER


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
