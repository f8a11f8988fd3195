"""Searches spread over local Ray actors: the same report as one process, and no finished evaluation lost."""

import threading
from collections import Counter

import pytest

pytest.importorskip("ray", reason="Ray: pip install ray (requirements-dev.txt has it)")

from conftest import decided  # noqa: E402

from tmpdiff.cache import Cache  # noqa: E402
from tmpdiff.engine.runner import Engine, RunSettings  # noqa: E402
from tmpdiff.measure.evaluator import Evaluator  # noqa: E402
from tmpdiff.measure.latency import CostTable  # noqa: E402
from tmpdiff.steps.schedule import Schedule  # noqa: E402
from tmpdiff.studies.procedure import run_search
from tmpdiff.studies.request import SearchRequest  # noqa: E402

pytestmark = pytest.mark.slow
REQUEST = SearchRequest(model="shapes-dit", prompts=("red circle",), seeds=(0, 1), steps=6, ladder=("fp32", "skip"),
                        target_ssim=0.8, additivity_samples=2, validation_seeds=(1000,))
# One cost table for every run: only where the evaluations run differs.
COSTS = CostTable(device="cpu", compiled=False, steps=6, step_seconds={"fp32": 0.03, "skip": 0.0001},
                  fixed_seconds=0.01)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from tmpdiff.studies.ray_workers import start_ray

    assert start_ray(None, 2, "cpu") == 2
    yield
    ray.shutdown()


def search(evaluator, **kwargs):
    evaluator.costs["shapes-dit"] = COSTS
    report = run_search(evaluator, REQUEST, **kwargs).to_dict()
    return decided({k: report[k] for k in ("schedule", "ssim", "pareto", "baselines", "validation", "additivity")})


def distributed(tmp_path, name):
    from functools import partial

    from tmpdiff.studies.ray_workers import DistributedEvaluator

    db = tmp_path / f"{name}.sqlite"
    return DistributedEvaluator(Engine("cpu"), Cache(db), partial(Cache, db), workers=2), db


def test_two_ray_actors_give_the_same_report_as_one_process(ray_local, tmp_path):
    alone = search(Evaluator(Engine("cpu"), Cache(tmp_path / "alone.sqlite")))
    evaluator, _ = distributed(tmp_path, "ray")
    assert len(set(evaluator.actor_pids())) == 2
    assert search(evaluator) == alone  # schedules and SSIMs, bit for bit


def test_killing_an_actor_mid_search_loses_no_finished_evaluation(ray_local, tmp_path):
    import ray

    alone = search(Evaluator(Engine("cpu")))
    evaluator, db = distributed(tmp_path, "killed")
    finished, killed = [], threading.Event()

    def progress(done, planned, what):
        finished.append(what)
        if done == 4 and not killed.is_set():
            killed.set()
            ray.kill(evaluator.actors[0], no_restart=False)  # Ray restarts it and retries its task

    assert search(evaluator, progress=progress) == alone
    assert killed.is_set()
    stored = {row.schedule for row in Cache(db).evaluations()}
    assert set(finished) <= stored  # every evaluation finished before (and after) the kill is in the cache


def test_a_sweep_on_two_ray_actors_gives_the_rows_of_one_process(ray_local, tmp_path):
    from tmpdiff.studies.sweep import SweepItem, run_sweep

    settings = [RunSettings(model="shapes-dit", prompt=p, seed=s, steps=4) for p in ("red circle", "blue square")
                for s in (0, 1)]
    texts = ("fp32*4", "fp32*2,skip*2", "fp32,bf16*3")
    items = [SweepItem(x, Schedule.parse(text)) for x in settings for text in texts]

    def quality(rows):
        return [{k: r[k] for k in ("prompt", "seed", "schedule", "ssim", "psnr", "evaluation")} for r in rows]

    alone = run_sweep(Evaluator(Engine("cpu")), items)
    evaluator, db = distributed(tmp_path, "sweep")
    done = []
    rows = run_sweep(evaluator, items, progress=lambda n, total, what: done.append(n))
    assert quality(rows) == quality(alone)
    assert done == list(range(1, len(items) + 1))
    assert sorted(Counter(evaluator._owners.values()).values()) == [2, 2]  # 4 settings: 2 on each actor
    stored = {(e.prompt, e.seed, e.schedule) for e in Cache(db).evaluations()}
    assert stored == {(r["prompt"], r["seed"], r["schedule"]) for r in rows}  # every result written by the actors


def test_a_distributed_search_measures_costs_on_an_actor_and_never_loads_the_model_in_the_driver(
        ray_local, tmp_path, monkeypatch):
    evaluator, _ = distributed(tmp_path, "light")

    def no_pipeline(model):
        raise AssertionError(f"the driver loaded {model}")

    monkeypatch.setattr(evaluator.engine, "pipeline", no_pipeline)
    report = run_search(evaluator, REQUEST).to_dict()
    assert report["costs_source"] == "measured on a Ray actor"
    assert set(report["costs"]["step_seconds"]) == {"fp32", "skip"}
    assert report["costs"]["step_seconds"]["skip"] < report["costs"]["step_seconds"]["fp32"]
    assert evaluator.engine.load_seconds(REQUEST.model) == 0.0  # never loaded here


def test_a_search_says_where_its_costs_came_from(tmp_path):
    evaluator = Evaluator(Engine("cpu"))
    evaluator.costs["shapes-dit"] = COSTS
    assert run_search(evaluator, REQUEST).to_dict()["costs_source"].startswith("a cost table measured earlier")
