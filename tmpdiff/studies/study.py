"""A search or sweep owned from start to finish, the same way for every front end (CLI, app, Ray driver).

``Study.search`` opens the search-run log, reuses a stored cost table for the same model, step count, size
and device (or plans with a given table for another device), links every evaluation to the run, stores the
costs it measured and closes the log: finished with its result, or cancelled with what it had done.
``Study.sweep`` logs a grid of evaluations the same way. Front ends parse their inputs, call it, and render
what it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tmpdiff.engine.settings import RunSettings
from tmpdiff.engine.turns import in_background
from tmpdiff.measure.evaluator import Evaluator
from tmpdiff.measure.latency import CostTable
from tmpdiff.measure.records import EvalKey, stable_hash
from tmpdiff.steps.cancel import Cancelled
from tmpdiff.steps.schedule import Schedule
from tmpdiff.studies.algorithms import Point
from tmpdiff.studies.procedure import Progress, SearchRequest, run_search
from tmpdiff.studies.report import SearchReport
from tmpdiff.studies.sweep import SweepItem, run_sweep, summarize

__all__ = ["HistoryPoint", "SearchLog", "Study", "history"]


class SearchLog(Protocol):
    """Where search runs and cost tables are kept (``cache.Cache`` implements it)."""

    def start_search(self, model: str, request: dict[str, Any]) -> int: ...

    def link_search(self, run_id: int, key: EvalKey) -> None: ...

    def finish_search(self, run_id: int, result: dict[str, Any]) -> None: ...

    def get_costs(self, model_hash: str, settings_hash: str, device_hash: str) -> dict[str, Any] | None: ...

    def put_costs(self, model_hash: str, settings_hash: str, device_hash: str, table: dict[str, Any]) -> None: ...


class Study:
    """Searches on one evaluator, logged in ``log`` (the cache store) when there is one.

    Args:
        evaluator: runs and scores schedules (in this process, or on Ray actors).
        log: the search-run log and cost-table store; None keeps nothing.
        target_costs: plan for another device with its measured cost table (never re-measured here).
    """

    def __init__(self, evaluator: Evaluator, log: SearchLog | None = None,
                 target_costs: CostTable | None = None) -> None:
        self.evaluator, self.log, self.target_costs = evaluator, log, target_costs
        self.run_id: int | None = None

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
        if self.log is not None and self.target_costs is None:
            self.log.put_costs(*cost_key, self.evaluator.costs[request.model].to_dict())
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
        finish({"kind": "sweep", "evaluations": len(rows), "from_cache": sum(r["cached"] for r in rows),
                "schedules": summarize(rows)})
        return rows

    def _open_run(self, model: str, request: dict[str, Any]) -> tuple[Callable[[RunSettings, Schedule], None],
                                                                      Callable[[dict[str, Any] | None], None]]:
        """Starts a run in the log; returns how to link an evaluation to it and how to close it with its result
        (None: cancelled, logged with how many evaluations it had linked)."""
        log, run_id = self.log, None
        if log is not None:
            run_id = self.run_id = log.start_search(model, request)
        linked: set[str] = set()

        def link(settings: RunSettings, schedule: Schedule) -> None:
            if log is not None and run_id is not None:
                key = self.evaluator.key(settings, schedule)
                linked.add(key.digest)
                log.link_search(run_id, key)

        def finish(result: dict[str, Any] | None) -> None:
            if log is not None and run_id is not None:
                log.finish_search(run_id, result if result is not None else
                                  {"cancelled": True, "evaluations_linked": len(linked)})

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


@dataclass(frozen=True)
class HistoryPoint:
    """One stored evaluation of a setting. ``speedup``: measured against that setting's reference on the same
    device; None for simulated precisions (no speed claim) or when no reference of that device is stored."""

    schedule: str
    ssim: float | None
    psnr: float | None
    lpips: float | None
    seconds: float
    speedup: float | None
    simulated: bool
    prompt: str | None
    seed: int | None

    @property
    def uniform(self) -> bool:
        return len(Schedule.parse(self.schedule).precisions) == 1


class HistoryStore(Protocol):
    def evaluations(self, model: str | None = None, settings_hash: str | None = None,
                    device_hash: str | None = None) -> list[dict[str, Any]]: ...


def history(evaluator: Evaluator, store: HistoryStore | None, settings: RunSettings) -> list[HistoryPoint]:
    """Every stored evaluation of ``settings`` (written by this process or any other on a shared cache), newest
    first, as typed points: the setting's hash and its reference rows are found here, once, for every front
    end."""
    if store is None:
        return []
    key = evaluator.key(settings, settings.reference_schedule())
    rows = store.evaluations(model=settings.model, settings_hash=key.settings_hash)
    references = {r["device_hash"]: r["measured_seconds"] for r in rows if r["schedule_hash"] == key.schedule_hash}
    points = []
    for r in rows:
        reference = references.get(r["device_hash"])
        claim = not r["simulated"] and reference and r["measured_seconds"]
        points.append(HistoryPoint(
            schedule=r["schedule"], ssim=r["ssim"], psnr=r["psnr"], lpips=r["lpips"], seconds=r["measured_seconds"],
            speedup=reference / r["measured_seconds"] if claim else None, simulated=bool(r["simulated"]),
            prompt=r["settings"].get("prompt"), seed=r["settings"].get("seed")))
    return points
