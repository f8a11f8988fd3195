"""A search's or a sweep's evaluations spread over Ray actors: one per GPU, or N on the CPU.

Imported only with ``--workers``/``--ray``: nothing else in tmpdiff imports Ray. Each actor loads
the pipeline once and keeps its variants resident; every calibration setting always goes to the same
actor, so that actor's reference image and prefix-replay store serve every schedule of that setting.
Results go through the cache (each actor writes what it computed, so a finished evaluation survives a
crash) and back to the driver, which runs the search itself. A crashed actor is restarted by Ray and
its task retried.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from PIL import Image

from tmpdiff.engine.runner import Engine
from tmpdiff.engine.settings import RunSettings
from tmpdiff.errors import FieldError
from tmpdiff.measure.evaluator import Evaluation, Evaluator
from tmpdiff.measure.latency import CostTable
from tmpdiff.measure.records import EvalRecord, EvaluationStore
from tmpdiff.steps.replay import ReplayStore
from tmpdiff.steps.schedule import Schedule

__all__ = ["DistributedEvaluator", "start_ray"]

StoreFactory = Callable[[], EvaluationStore | None]


class _Worker:
    """One actor: an engine and an evaluator of its own, writing to the shared cache."""

    def __init__(self, device: str, compile_mode: str, cache_dir: str | None, store: StoreFactory,
                 threads: int) -> None:
        import torch

        from tmpdiff.pipelines.registry import quiet_libraries

        quiet_libraries()
        torch.set_num_threads(threads)  # as the driver: CPU reductions, hence images, match it bit for bit
        self.evaluator = Evaluator(Engine(device, compile=compile_mode, cache_dir=cache_dir), store())

    def set_costs(self, model: str, table: dict[str, Any]) -> None:
        """The driver's measured step costs: predictions on every actor come from one table."""
        self.evaluator.costs[model] = CostTable.from_dict(table)

    def measure_costs(self, settings: RunSettings, precisions: list[str]) -> dict[str, Any]:
        table = self.evaluator.measure_costs(settings, precisions)
        self.evaluator.costs[settings.model] = table
        return table.to_dict()

    def evaluate(self, settings: RunSettings, schedule: str, replay: bool) -> tuple[EvalRecord, float, dict]:
        if replay and self.evaluator.replay is None:
            self.evaluator.replay = ReplayStore()
        elif not replay:
            self.evaluator.replay = None
        before = dict(self.evaluator.engine.calls)
        evaluation = self.evaluator.evaluate(settings, schedule)
        calls = {k: v - before[k] for k, v in self.evaluator.engine.calls.items()}
        return evaluation.record, evaluation.reference_seconds, calls

    def pid(self) -> int:
        return os.getpid()


def start_ray(address: str | None, workers: int | None, device: str) -> int:
    """Connects to the cluster at ``address``, else starts a local Ray; returns how many actors to run:
    ``workers``, else one per GPU of the cluster (CUDA) or one (CPU)."""
    import ray

    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            cpus = max(workers or 1, 1) + 1 if device == "cpu" else None  # the actors and the driver
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if device.startswith("cuda"):
        if gpus == 0:
            raise FieldError("device", device, "the Ray cluster has no GPU: run with {device} cpu or join GPU nodes")
        if workers and workers > gpus:
            raise FieldError("workers", workers,
                             f"{{workers}} {{value}} asks for more GPUs than the cluster has ({gpus})")
        return workers or gpus
    return workers or 1


class DistributedEvaluator(Evaluator):
    """An ``Evaluator`` whose ``evaluate_all``/``evaluate_many`` run in parallel on Ray actors."""

    def __init__(self, engine: Engine, store: EvaluationStore | None, store_factory: StoreFactory,
                 workers: int, cache_dir: str | None = None) -> None:
        import ray
        import torch

        super().__init__(engine, store)
        gpus = 1 if engine.device.startswith("cuda") else 0
        remote = ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=3, max_task_retries=3)(_Worker)
        self.actors = [remote.remote(engine.device, engine.mode.value, str(engine.compile_cache.root.parent),
                                     store_factory, torch.get_num_threads()) for _ in range(workers)]
        self._sent_costs: dict[str, str] = {}
        self._owners: dict[str, int] = {}  # setting → the index of the actor that runs all its evaluations

    def measure_costs(self, settings: RunSettings, precisions: list[str]) -> CostTable:
        """Measured on the actor that owns ``settings`` (it keeps the variants it built for them), so the
        driver never loads the pipeline; every other actor is given the same table."""
        import ray

        actor = self._actor_for(settings)
        table = CostTable.from_dict(ray.get(actor.measure_costs.remote(settings, precisions)))
        self.costs[settings.model] = table
        self._tables[(settings.model, settings.resolved_steps, settings.resolved_size)] = table
        self._share_costs([settings])
        return table

    @property
    def costs_measured_where(self) -> str:
        return "measured on a Ray actor"

    def evaluate_all(self, settings: list[RunSettings], schedule: Schedule | str) -> list[Evaluation]:
        results = dict(self.evaluate_many([(item, Schedule.coerce(schedule)) for item in settings]))
        return [results[i] for i in range(len(settings))]

    def evaluate_many(self, pairs: Sequence[tuple[RunSettings, Schedule]]) -> Iterator[tuple[int, Evaluation]]:
        """Every pair on the actor of its setting, all at once; yielded as they finish."""
        import ray

        self._share_costs([item for item, _ in pairs])
        replay = self.replay is not None
        pending = {self._actor_for(item).evaluate.remote(item, str(schedule), replay): i
                   for i, (item, schedule) in enumerate(pairs)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                yield pending.pop(ref), self._received(*ray.get(ref))

    def _received(self, record: EvalRecord, reference_seconds: float, calls: dict[str, int]) -> Evaluation:
        for name, count in calls.items():
            self.engine.calls[name] += count
        image = Image.open(io.BytesIO(record.png)).convert("RGB")
        return Evaluation(record, image, reference_seconds, cached=not any(calls.values()))

    def evaluate(self, settings: RunSettings, schedule: Schedule | str) -> Evaluation:
        return self.evaluate_all([settings], schedule)[0]

    def _actor_for(self, settings: RunSettings) -> Any:
        """The same setting always goes to the same actor (its reference and replay store live there); a new
        setting goes to the actor that owns the fewest, so 8 settings on 2 actors are 4 and 4 (a hash of
        the setting gave 6 and 2 on the GPU machine, and one GPU idled half the sweep)."""
        key = json.dumps(settings.to_dict(), sort_keys=True)
        if key not in self._owners:
            owned = Counter(self._owners.values())
            self._owners[key] = min(range(len(self.actors)), key=lambda i: (owned[i], i))
        return self.actors[self._owners[key]]

    def actor_pids(self) -> list[int]:
        import ray

        return ray.get([a.pid.remote() for a in self.actors])

    def _share_costs(self, settings: list[RunSettings]) -> None:
        import ray

        for model in {s.model for s in settings}:
            table = self.costs.get(model)
            if table is None:
                continue
            payload = json.dumps(table.to_dict(), sort_keys=True)
            if self._sent_costs.get(model) != payload:  # new, or measured further
                ray.get([a.set_costs.remote(model, table.to_dict()) for a in self.actors])
                self._sent_costs[model] = payload


