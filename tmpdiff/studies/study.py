"""Comparisons, searches and sweeps owned from start to finish, the same way for every front end (CLI, app, Ray
driver).

``Study.open`` is where a front end gets its study: one evaluator on its engine and store, with the one cost-table
policy (predict from tables measured earlier or given; only a search or sweep measures). ``Study.compare`` is one
schedule's image beside its reference (``generate``, the app's ``/generate``). ``Study.search`` opens the search-run
log, reuses a stored cost table for the same model, step count, size
and device (or plans with a given table for another device), links every evaluation to the run, stores the
costs it measured and closes the log: finished with its result, or cancelled with what it had done.
``Study.sweep`` logs a grid of evaluations the same way. Front ends parse their inputs, call it, and render
what it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tmpdiff.engine.runner import Engine
from tmpdiff.engine.settings import RunSettings
from tmpdiff.engine.turns import in_background
from tmpdiff.errors import FieldError
from tmpdiff.measure.evaluator import Evaluation, Evaluator
from tmpdiff.measure.latency import CostTable
from tmpdiff.measure.records import EvalKey, EvaluationStore, stable_hash
from tmpdiff.steps.cancel import Cancelled, raise_if_stopped_here
from tmpdiff.steps.replay import ReplayStore
from tmpdiff.steps.schedule import Schedule
from tmpdiff.studies.algorithms import Point
from tmpdiff.studies.comparison import Comparison, CostPolicy
from tmpdiff.studies.procedure import Progress, run_search
from tmpdiff.studies.report import SearchReport
from tmpdiff.studies.request import SearchRequest
from tmpdiff.studies.sweep import SweepItem, run_sweep, summarize

__all__ = ["SearchLog", "SearchResult", "Study"]


class SearchLog(Protocol):
    """Where search runs and cost tables are kept (``cache.Cache`` implements it)."""

    def start_search(self, model: str, request: dict[str, Any]) -> int: ...

    def link_search(self, run_id: int, key: EvalKey) -> None: ...

    def finish_search(self, run_id: int, result: dict[str, Any]) -> None: ...

    def get_costs(self, model_hash: str, settings_hash: str, device_hash: str) -> dict[str, Any] | None: ...

    def put_costs(self, model_hash: str, settings_hash: str, device_hash: str, table: dict[str, Any]) -> None: ...


IMAGE_REPLAY_BYTES = 256 << 20  # denoiser outputs kept for replay across a study's images (in the model's memory)
Phase = Callable[[str, float], None]  # what is being made ("reference image", ...), and how far along (0-1)


@dataclass(frozen=True)
class SearchResult:
    """A search's report and the images it shows: the found schedule, its rival baseline and the reference on the
    search's first calibration setting (the search evaluated them all: read from the cache, never recomputed)."""

    report: SearchReport
    images: tuple[tuple[str, Evaluation], ...] = ()

    def image(self, schedule: str) -> Evaluation | None:
        return dict(self.images).get(schedule)


class Store(EvaluationStore, SearchLog, Protocol):
    """The cache store a study reads and writes (``tmpdiff.cache.Cache``)."""


class Study:
    """Comparisons and searches on one evaluator, logged in ``log`` (the cache store) when there is one.

    Args:
        evaluator: runs and scores schedules (in this process, or on Ray actors).
        log: the search-run log and cost-table store; None keeps nothing.
        target_costs: plan for another device with its measured cost table (never re-measured here).
    """

    def __init__(self, evaluator: Evaluator, log: Store | None = None,
                 target_costs: CostTable | None = None) -> None:
        self.evaluator, self.log, self.target_costs = evaluator, log, target_costs

    @classmethod
    def open(cls, engine: Engine, store: Store | None = None, replay_bytes: int = IMAGE_REPLAY_BYTES) -> Study:
        """The study a front end opens on its engine and cache store. Its evaluator replays what a schedule shares
        with its setting's reference (bit-identical images; replayed steps keep the seconds they took) and predicts
        seconds only from cost tables measured earlier (stored by a search, or measured by one in this process):
        a comparison never spends runs measuring costs. A split image (``engine.split`` > 1) is computed in every
        process and kept by the first."""
        computes_only = engine.split > 1  # one process answering from the cache would stall the others' exchanges
        evaluator = Evaluator(engine, None if computes_only else store, measures_costs=False,
                              replay=ReplayStore(replay_bytes))
        return cls(evaluator, store)

    def compare(self, settings: RunSettings, schedule: Schedule | str, given: CostTable | None = None,
                on_phase: Phase | None = None) -> Comparison:
        """``schedule``'s image beside ``settings``' reference, scored, with its difference map and its predicted
        seconds (here from a stored table, and on ``given``'s device). ``on_phase`` hears what is being made."""
        engine = self.evaluator.engine
        schedule = engine.check_schedule(schedule, settings)
        self.load_stored_costs(settings)
        reference, evaluation = self.evaluator.beside_reference(settings, schedule, on_phase)
        if self.evaluator.store is None and self.log is not None and engine.leads:  # a split image: kept once
            for made in [reference] if evaluation is reference else [reference, evaluation]:
                self.evaluator.store_record(made.record, self.log)
        table = self.evaluator.costs.get(settings.model)
        here = self.evaluator.known_costs(settings) or (
            table if table is not None and not table.target and table.steps == settings.resolved_steps else None)
        costs = CostPolicy(here=here, given=given)
        return Comparison.of(settings, schedule, reference, evaluation, costs, engine.split)

    def showcase(self, report: SearchReport) -> SearchResult:
        """The report with its images on the first calibration setting (cache hits: the search evaluated them)."""
        if report.request is None:
            return SearchResult(report)
        settings = report.request.first_settings
        names = dict.fromkeys([report.schedule, *(point.schedule for _, point in report.rivals()),
                               report.reference_schedule])
        return SearchResult(report, tuple((n, self.evaluator.evaluate(settings, Schedule.parse(n))) for n in names))

    def search(self, request: SearchRequest, progress: Progress | None = None,
               should_stop: Callable[[], bool] | None = None,
               on_point: Callable[[Point], None] | None = None) -> SearchReport:
        """The search's report. A cancelled search (``should_stop``, or Ctrl-C) is logged as cancelled with
        the evaluations it finished (all in the cache) and raises ``Cancelled`` / ``KeyboardInterrupt``."""
        cost_key = self.cost_key(request)
        self._load_costs(request.model, cost_key)
        link, finish = self._open_run(request.model, request.to_dict())
        try:
            with in_background():  # a search's images wait behind people's single images (a few at most)
                report = run_search(self.evaluator, request, progress=progress, should_stop=should_stop,
                                    on_evaluation=link, on_point=on_point)
        except (Cancelled, KeyboardInterrupt):
            finish(None)
            raise
        except Exception as exc:
            finish(_failed(exc))
            raise
        if self.log is not None and self.target_costs is None:
            log, table = self.log, self.evaluator.costs[request.model].to_dict()
            self.evaluator.kept(lambda: log.put_costs(*cost_key, table))
        finish(report.summary())
        return report

    def sweep(self, items: list[SweepItem], progress: Progress | None = None, replay: bool = True,
              spec: str | None = None) -> list[dict[str, Any]]:
        """A grid of evaluations (``sweep.load_spec``), logged as a run like a search: linked evaluations, and
        closed with its summary or as cancelled. Rows in the spec's order; ``replay`` serves shared prefixes."""
        from tmpdiff.steps.replay import ReplayStore

        evaluator = self.evaluator.with_options(ReplayStore() if replay else None, batch_size=1)
        models = sorted({item.settings.model for item in items})
        link, finish = self._open_run("+".join(models), {"kind": "sweep", "spec": spec, "items": len(items)})
        try:
            rows = run_sweep(evaluator, items, progress=progress, on_evaluation=link)
        except (Cancelled, KeyboardInterrupt):
            finish(None)
            raise
        except Exception as exc:
            finish({"kind": "sweep", **_failed(exc)})
            raise
        finish({"kind": "sweep", "evaluations": len(rows), "from_cache": sum(r["cached"] for r in rows),
                "schedules": summarize(rows)})
        return rows

    def _open_run(self, model: str, request: dict[str, Any]) -> tuple[Callable[[RunSettings, Schedule], None],
                                                                      Callable[[dict[str, Any] | None], None]]:
        """Starts a run in the log; returns how to link an evaluation to it and how to close it with its result
        (None: cancelled, logged with how many evaluations it had linked)."""
        # Each write to the log is guarded like an image's: a cache that cannot be written costs the log, never
        # the search (``Evaluator.kept`` counts it and warns once).
        log, run_id, kept = self.log, None, self.evaluator.kept
        if log is not None:
            started = kept(lambda: log.start_search(model, request))
            run_id = started if isinstance(started, int) else None
        linked: set[str] = set()

        def link(settings: RunSettings, schedule: Schedule) -> None:
            raise_if_stopped_here()  # an evaluation that ended as the search was cancelled joins no run
            if log is not None and run_id is not None:
                key = self.evaluator.key(settings, schedule)
                linked.add(key.digest)
                kept(lambda: log.link_search(run_id, key))

        def finish(result: dict[str, Any] | None) -> None:
            if log is not None and run_id is not None:
                kept(lambda: log.finish_search(run_id, result if result is not None else
                                               {"cancelled": True, "evaluations_linked": len(linked)}))

        return link, finish

    def cost_key(self, request: SearchRequest) -> tuple[str, str, str]:
        """(model, steps and size, device): what a stored cost table is filed under."""
        return self.settings_cost_key(request.settings(request.prompts[0], request.seeds[0]))

    def load_stored_costs(self, settings: RunSettings) -> bool:
        """Gives the evaluator the cost table stored for this setting's model, step count, size and device (or
        the given target's); says whether there was one."""
        self._load_costs(settings.model, self.settings_cost_key(settings))
        return settings.model in self.evaluator.costs

    def settings_cost_key(self, settings: RunSettings) -> tuple[str, str, str]:
        key = self.evaluator.key(settings, settings.reference_schedule())
        return key.model_hash, stable_hash({"steps": settings.resolved_steps, "size": settings.resolved_size}), \
            key.device_hash

    def _load_costs(self, model: str, cost_key: tuple[str, str, str]) -> None:
        if self.target_costs is not None:
            self.evaluator.costs[model] = self.target_costs  # plan for the deployment device
        elif self.log is not None and (saved := self.log.get_costs(*cost_key)):
            self.evaluator.costs[model] = CostTable.from_dict(saved)


def _failed(exc: Exception) -> dict[str, Any]:
    """A run's closing entry when it ended on an error: what the error said (one line, bounded), so that a log
    never shows a failed search as still running."""
    words = exc.worded() if isinstance(exc, FieldError) else str(exc)
    return {"failed": f"{type(exc).__name__}: {(words.splitlines() or [''])[0][:300]}"}
