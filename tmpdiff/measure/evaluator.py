"""Evaluate a schedule: its image, its quality against the reference, its measured and predicted latency.

The reference (every step in the model's reference precision, same setting) is computed once per
setting and reused. With a store, every evaluation is looked up before it is computed and saved
after, so nothing is computed twice.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import io
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from PIL import Image

from tmpdiff.engine.runner import Engine
from tmpdiff.engine.settings import Result, RunSettings
from tmpdiff.errors import CacheWarning
from tmpdiff.measure.latency import CostTable, measure_costs, timed_run
from tmpdiff.measure.metrics import Quality, compare, compare_video
from tmpdiff.measure.records import EvalKey, EvalRecord, EvaluationStore, device_fingerprint, stable_hash
from tmpdiff.memory.meter import gib
from tmpdiff.pipelines.registry import config_hash, get_model
from tmpdiff.steps.cancel import raise_if_stopped_here
from tmpdiff.steps.replay import ReplayStore
from tmpdiff.steps.schedule import Schedule
from tmpdiff.variants.bank import Mode

__all__ = ["Evaluation", "Evaluator"]

T = TypeVar("T")
_NOT_KEPT = object()  # what ``Evaluator.kept`` returns for a write the store refused


@dataclass(frozen=True)
class Evaluation:
    """One evaluated schedule, ready for a front end."""

    record: EvalRecord
    image: Image.Image
    reference_seconds: float
    cached: bool
    vae_seconds: float | None = None  # measured apart when the image was computed here
    kept: bool | None = None  # computed here: whether the cache kept it (None: read from it, or no cache)
    # How to score a video's frames (its image is a frame sheet); see ``frames``.
    score_frames: Callable[[], Quality | None] | None = field(default=None, repr=False, compare=False)

    @functools.cached_property
    def frames(self) -> Quality | None:
        """A video's per-frame scores, worked out when first asked: a cache hit read only for its SSIM (as a
        search reads them) never re-scores its frames."""
        return self.score_frames() if self.score_frames is not None else None

    @property
    def schedule(self) -> Schedule:
        return Schedule.parse(self.record.key.schedule)

    @property
    def speedup(self) -> float:
        return self.reference_seconds / self.record.measured_seconds if self.record.measured_seconds else 0.0

    @property
    def has_speed_claim(self) -> bool:
        return not self.record.simulated

    @property
    def is_reference(self) -> bool:
        """Whether this is its setting's reference: every step in its model's reference precision."""
        return set(self.schedule.steps) == {get_model(self.record.key.model).dtype}

    @property
    def timed_beside(self) -> bool:
        """Whether ``reference_seconds`` was timed beside this image (the same process, just before it), or this
        is the reference itself: a measured speed-up of one moment. False for an image timed alone (a search's,
        or one stored before such timings were kept), whose speed-up divides seconds of two moments."""
        return self.record.reference_seconds is not None or self.is_reference

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
            "speedup_timed_beside_reference": self.timed_beside,
            "simulated": r.simulated, "device": r.key.device["device"], "cached": self.cached,
            "peak_gib": gib(r.peak_bytes), "memory": r.memory.to_dict() if r.memory else None,
            **(self._frame_scores() if self.frames else {}),
        }

    def _frame_scores(self) -> dict[str, Any]:
        assert self.frames is not None
        return {"frames": len(self.frames.frame_ssim), "worst_frame_ssim": round(min(self.frames.frame_ssim), 5),
                "worst_frame_psnr": _finite(min(self.frames.frame_psnr)),
                "frame_ssim": [round(v, 5) for v in self.frames.frame_ssim]}


class Evaluator:
    """Runs and scores schedules on one engine, through an optional store."""

    def __init__(self, engine: Engine, store: EvaluationStore | None = None, predict: bool = True,
                 measures_costs: bool = True, replay: ReplayStore | None = None) -> None:
        self.engine = engine
        self.store = store
        self.predict = predict
        # False: predict only from cost tables already known (stored, or given), never spend uniform runs
        # measuring them (a one-image command would pay two runs per precision for a prediction).
        self.measures_costs = measures_costs
        self.costs: dict[str, CostTable] = {}
        self._lock = threading.Lock()
        self._fingerprints: dict[str, str] = {}
        self._references: dict[str, Evaluation] = {}  # by key digest: one reference per setting
        # Prefixes already run are replayed: a search's own store (its view's), or one for every image of an
        # app or a command (a schedule then computes only where it leaves its setting's reference).
        self.replay: ReplayStore | None = replay
        self.batch_size = 1  # settings per pipeline call in evaluate_all (a search's own view)
        self._tables: dict[tuple[str, int, int], CostTable] = {}  # by (model, steps, size): measured once
        # Cache writes that failed, shared with every view (``with_options``): how many, and the last reason (for
        # logs and the command line, not for an app's visitors).
        self._not_kept: dict[str, Any] = {"count": 0, "reason": None}

    def with_options(self, replay: ReplayStore | None, batch_size: int) -> Evaluator:
        """A view of this evaluator for one search: its own replay store and batch size, the same engine,
        store, references and cost tables. Options are per call, never swapped on the shared evaluator
        (another user's image must not see a search's replay store)."""
        view = copy.copy(self)
        view.replay, view.batch_size = replay, batch_size
        return view

    def key(self, settings: RunSettings, schedule: Schedule) -> EvalKey:
        return EvalKey(
            model=settings.model, model_hash=self.model_hash(settings.model), settings=settings.to_dict(),
            schedule=str(schedule), schedule_hash=schedule.hash,
            device=device_fingerprint(self.engine.device, self.engine.mode, self.engine.split,
                                      self.engine.budget.given_bytes),
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
        return self._remembered(digest)

    def _remembered(self, digest: str) -> Evaluation:
        """A reference computed earlier in this process. One the cache could not keep then is offered to it again
        (a disk freed since), so that a later request's ``kept`` speaks of that request's writes."""
        reference = self._references[digest]
        if reference.kept is False:
            reference = dataclasses.replace(reference, kept=self.store_record(reference.record, self.store))
            self._references[digest] = reference
        return reference

    def evaluate(self, settings: RunSettings, schedule: Schedule | str) -> Evaluation:
        """``schedule`` on ``settings``, from this process or the store when it was evaluated before. Past the trust
        boundary: the schedule was checked against the settings and the device where it entered
        (``Engine.check_schedule``)."""
        schedule = Schedule.coerce(schedule)
        cached = self._cached(settings, schedule)
        if cached is not None:
            return cached
        is_reference = schedule == settings.reference_schedule()
        reference = None if is_reference else self.reference(settings)
        table = self.cost_table(settings, schedule) if self.predict else None
        key = self.key(settings, schedule)
        raise_if_stopped_here()  # a cancelled search starts no image
        result = self.engine.generate(settings, schedule, replay=self.replay, replay_key=key.setting_hash)
        return self._finish(key, result, reference, table)

    def beside_reference(self, settings: RunSettings, schedule: Schedule,
                         on_phase: Callable[[str, float], None] | None = None) -> tuple[Evaluation, Evaluation]:
        """The setting's reference and ``schedule``'s evaluation, timed under the same conditions: a schedule
        computed here runs whole (no replay) right after a run of the reference that times it (the reference's
        own first run, when it was made just now), so its measured speed-up divides two seconds of one moment. A
        stored evaluation keeps the reference seconds timed beside it when it was made. ``on_phase`` hears what
        runs."""
        phase = on_phase or (lambda what, fraction: None)
        reference_schedule = settings.reference_schedule()
        known = self.key(settings, reference_schedule).digest in self._references
        phase("reference image (full precision)", 0.1)
        reference = self.reference(settings)
        made_now = not known and not reference.cached  # neither in this process's memory nor in the store
        if schedule == reference_schedule:  # made earlier (this process or the store): a cache hit, either way
            return reference, reference if made_now else dataclasses.replace(reference, cached=True)
        cached = self._cached(settings, schedule)
        if cached is not None:
            return reference, cached
        table = self.cost_table(settings, schedule) if self.predict else None
        raise_if_stopped_here()
        if not made_now:
            phase("timing the reference beside the schedule", 0.3)
        beside = (reference.record.measured_seconds if made_now
                  else self.engine.generate(settings, reference_schedule).seconds)
        raise_if_stopped_here()
        phase(f"schedule {schedule}", 0.6)
        result = self.engine.generate(settings, schedule)  # whole, as the reference was timed
        return reference, self._finish(self.key(settings, schedule), result, reference, table, beside)

    def evaluate_all(self, settings: list[RunSettings], schedule: Schedule | str) -> list[Evaluation]:
        """``schedule`` on every setting: one after another, or with ``batch_size`` > 1 several settings
        that differ only in prompt and seed per pipeline call (their references batched the same way)."""
        if self.batch_size <= 1 or len(settings) < 2:
            return [self.evaluate(s, schedule) for s in settings]
        schedule = Schedule.coerce(schedule)
        found: dict[int, Evaluation | None] = {i: self._cached(s, schedule) for i, s in enumerate(settings)}
        missing = [i for i, e in found.items() if e is None]
        for group in _batches(missing, settings, self.batch_size):
            items = [settings[i] for i in group]
            for i, evaluation in zip(group, self._evaluate_batch(items, schedule), strict=True):
                found[i] = evaluation
        return [e for e in found.values() if e is not None]

    def evaluate_many(self, pairs: Sequence[tuple[RunSettings, Schedule]]) -> Iterator[tuple[int, Evaluation]]:
        """Every (setting, schedule) pair, yielded as ``(index, evaluation)`` as each finishes (in order
        here; a distributed evaluator yields them as its workers finish)."""
        for index, (settings, schedule) in enumerate(pairs):
            yield index, self.evaluate(settings, schedule)

    def measure_costs(self, settings: RunSettings, precisions: list[str]) -> CostTable:
        """Step costs of ``precisions`` (and the reference) measured with uniform runs of ``settings``, here.
        A distributed evaluator measures them on a worker instead, so its driver never loads the model."""
        steps = settings.resolved_steps
        reference = settings.spec.dtype
        table = measure_costs(timed_run(self.engine, settings), reference, sorted(set(precisions) - {reference}),
                              steps=max(steps, 2), device=self.engine.device, compiled=self.compiled,
                              table=self.known_costs(settings), warm_reference_only=True)
        table.budget_gib = gib(self.engine.budget.given_bytes)  # streamed steps cost more
        self._tables[(settings.model, steps, settings.resolved_size)] = table
        return table

    def known_costs(self, settings: RunSettings) -> CostTable | None:
        """The step costs measured earlier in this process for this model, step count and size."""
        return self._tables.get((settings.model, settings.resolved_steps, settings.resolved_size))

    @property
    def costs_measured_where(self) -> str:
        """Where ``measure_costs`` runs, for the search report."""
        return "measured in this process"

    def cost_table(self, settings: RunSettings, schedule: Schedule) -> CostTable | None:
        """The measured step costs of this model, measuring whatever ``schedule`` needs first."""
        steps = settings.resolved_steps
        if steps < 2:
            return None
        with self._lock:
            table = self.costs.get(settings.model)
            if table is not None and table.target:
                return table  # another device's costs: used as they are (predict says what they lack)
            shape = (settings.model, steps, settings.resolved_size)
            if table is not None and table.steps == steps:
                self._tables.setdefault(shape, table)
            table = self._tables.get(shape)  # measured once per model, step count and size, then kept
            missing = set(schedule.precisions) | {settings.spec.dtype}
            if table is None or not missing <= set(table.step_seconds):
                if not self.measures_costs:
                    return None
                table = measure_costs(timed_run(self.engine, settings), settings.spec.dtype, sorted(missing),
                                      steps=steps, device=self.engine.device, compiled=self.compiled, table=table,
                                      warm_reference_only=True)
                table.budget_gib = gib(self.engine.budget.given_bytes)
                self._tables[shape] = table
            self.costs[settings.model] = table
            return table

    def _cached(self, settings: RunSettings, schedule: Schedule) -> Evaluation | None:
        """The evaluation already made: a reference computed in this process, or any in the store."""
        key = self.key(settings, schedule)
        if key.digest in self._references:
            return dataclasses.replace(self._remembered(key.digest), cached=True)
        record = self.store.get(key) if self.store else None
        if record is None:
            return None
        reference_seconds = self._reference_seconds(settings, schedule, record)
        image = Image.open(io.BytesIO(record.png)).convert("RGB")
        scorer = functools.partial(self._stored_frame_scores, settings, image) if settings.spec.frames else None
        return Evaluation(record, image, reference_seconds, True, score_frames=scorer)

    def _stored_frame_scores(self, settings: RunSettings, image: Image.Image) -> Quality | None:
        """A stored video's per-frame scores, from its frames and its reference's (when that is at hand: in this
        process or the store, never computed for this)."""
        key = self.key(settings, settings.reference_schedule())
        reference = self._references.get(key.digest)
        stored = reference.record if reference else (self.store.get(key) if self.store else None)
        if stored is None:
            return None
        return compare_video(image, Image.open(io.BytesIO(stored.png)).convert("RGB"))

    def _finish(self, key: EvalKey, result: Result, reference: Evaluation | None,
                table: CostTable | None, reference_seconds: float | None = None) -> Evaluation:
        """The record of a computed image, stored; the reference remembered as such."""
        against = reference.image if reference else result.image
        video = bool(result.settings.spec.frames)  # frames as produced: a sheet of square frames
        quality = compare_video(result.image, against) if video else compare(result.image, against)
        record = EvalRecord(
            key=key, png=_png(result.image), ssim=quality.ssim, psnr=quality.psnr, lpips=quality.lpips,
            lpips_note=quality.lpips_note, measured_seconds=result.seconds,
            predicted_seconds=table.predict(result.schedule) if table else None,
            steps_run=result.steps_run, simulated=result.simulated,
            peak_bytes=result.memory.peak_bytes if result.memory else None,
            memory=result.memory, reference_seconds=reference_seconds,
        )
        raise_if_stopped_here()  # and keeps nothing that ended after its cancel
        kept = self.store_record(record, self.store) if self.store else None
        if reference_seconds is None:
            reference_seconds = result.seconds if reference is None else reference.record.measured_seconds
        evaluation = Evaluation(record, result.image, reference_seconds, False, result.vae_seconds, kept,
                                score_frames=(lambda: quality) if video else None)
        if reference is None:
            self._references[key.digest] = evaluation
        return evaluation

    def store_record(self, record: EvalRecord, store: EvaluationStore | None) -> bool:
        """Keeps the record in ``store``; says whether it could. A store that cannot be written (a read-only or full
        disk, a database gone away) costs the cache, not the result: the image is still returned, the failure is
        counted (``not_kept``) and told once as a ``CacheWarning``."""
        if store is None:
            return False
        return self.kept(lambda: store.put(record)) is not _NOT_KEPT

    def kept(self, write: Callable[[], T]) -> T | object:
        """``write()``'s result, or ``_NOT_KEPT`` when the store refused it: a cache that cannot be written (a
        read-only or full disk, a database gone away) costs the cache, not the work. The failure is counted
        (``not_kept``) and told once as a ``CacheWarning``."""
        try:
            return write()
        except Exception as exc:  # the store's own errors (SQLite, PostgreSQL, OSError): none may lose the work
            message = f"the cache could not be written ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
            if message != self.store_error:
                warnings.warn(f"{message}: results are shown but not kept; check the database and its folder",
                              CacheWarning, stacklevel=4)
            self._not_kept.update(count=self.not_kept + 1, reason=message)
            return _NOT_KEPT

    @property
    def not_kept(self) -> int:
        """Results computed but not kept in the cache (writes that failed)."""
        return int(self._not_kept["count"])

    @property
    def store_error(self) -> str | None:
        """The last failed cache write's reason."""
        return self._not_kept["reason"]

    def _evaluate_batch(self, settings: list[RunSettings], schedule: Schedule) -> list[Evaluation]:
        """Settings that differ only in prompt and seed, none of them cached, in as few pipeline calls as
        memory allows."""
        reference_schedule = settings[0].reference_schedule()
        references: list[Evaluation | None] = [None] * len(settings)
        if schedule != reference_schedule:
            made = self.evaluate_all(settings, reference_schedule)
            for item, evaluation in zip(settings, made, strict=True):
                self._references[self.key(item, reference_schedule).digest] = evaluation
            references = list(made)
        table = self.cost_table(settings[0], schedule) if self.predict else None
        keys = [self.key(item, schedule) for item in settings]
        raise_if_stopped_here()
        results = self._generate_batch(settings, schedule, keys)
        return [self._finish(k, r, ref, table) for k, r, ref in zip(keys, results, references, strict=True)]

    def _generate_batch(self, settings: list[RunSettings], schedule: Schedule, keys: list[EvalKey]) -> list[Result]:
        """One pipeline call for ``settings``; on running out of GPU memory, halves and retries (and keeps the
        smaller batch size for later calls)."""
        if len(settings) == 1:
            return [self.engine.generate(settings[0], schedule, replay=self.replay, replay_key=keys[0].setting_hash)]
        if len(settings) > self.batch_size:  # the batch size came down since this group was made
            size = self.batch_size
            return [result for start in range(0, len(settings), size)
                    for result in self._generate_batch(settings[start:start + size], schedule,
                                                       keys[start:start + size])]
        try:
            return self.engine.generate_batch(settings, schedule, replay=self.replay,
                                              replay_key=stable_hash([k.setting_hash for k in keys]))
        except torch.OutOfMemoryError:
            half = len(settings) // 2
            self.batch_size = min(self.batch_size, half)
            warnings.warn(f"out of memory with {len(settings)} images per pipeline call; "
                          f"going on with {self.batch_size}", stacklevel=2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return (self._generate_batch(settings[:half], schedule, keys[:half])
                    + self._generate_batch(settings[half:], schedule, keys[half:]))

    def _reference_seconds(self, settings: RunSettings, schedule: Schedule, record: EvalRecord) -> float:
        if schedule == settings.reference_schedule():
            return record.measured_seconds
        if record.reference_seconds is not None:  # timed beside it when it was made
            return record.reference_seconds
        return self.reference(settings).record.measured_seconds

    @property
    def compiled(self) -> bool:
        """Whether variants run compiled (torch.compile or ahead of time): the engine's choice, else on for CUDA."""
        return self.engine.mode is not Mode.EAGER


def _batches(indices: list[int], settings: list[RunSettings], size: int) -> list[list[int]]:
    """``indices`` in groups of at most ``size`` whose settings differ only in prompt and seed."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i in indices:
        groups.setdefault(settings[i].batch_key, []).append(i)
    return [group[start:start + size] for group in groups.values() for start in range(0, len(group), size)]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _finite(value: float) -> float | None:
    """A score for JSON: infinite PSNR (identical frames) is None."""
    return None if value == float("inf") else round(value, 3)
