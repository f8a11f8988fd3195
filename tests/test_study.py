"""A setting's history as typed points, built once in the engine for every front end."""

import pytest

from tmpdiff.cache import Cache
from tmpdiff.engine.runner import Engine
from tmpdiff.engine.settings import RunSettings
from tmpdiff.measure.evaluator import Evaluator
from tmpdiff.steps.schedule import Schedule
from tmpdiff.studies.history import history
from tmpdiff.studies.study import Study


def test_history_points_carry_speedups_measured_beside_the_reference_and_predicted_apart(tmp_path):
    store = Cache(tmp_path / "c.sqlite")
    study = Study(Evaluator(Engine("cpu"), store), store)
    evaluator = study.evaluator
    settings = RunSettings(model="shapes-dit", steps=4)
    for schedule in ("fp32*4", "fp32*2,skip*2", "fp32,int4wo*3"):
        study.compare(settings, schedule)  # each timed beside the reference
    evaluator.evaluate(settings, "fp32*3,skip")  # a search's way: timed alone
    evaluator.evaluate(RunSettings(model="shapes-dit", steps=4, seed=9), "fp32*4")  # another setting: not listed
    points = {p.schedule: p for p in history(evaluator, store, settings)}
    assert set(points) == {"fp32*4", "fp32*2,skip*2", "fp32,int4wo*3", "fp32*3,skip"}
    reference = points["fp32*4"]
    assert reference.speedup == pytest.approx(1.0) and reference.uniform and reference.seed == 0
    skipped = points["fp32*2,skip*2"]
    [row] = [r for r in store.evaluations() if r.schedule == "fp32*2,skip*2"]
    assert row.reference_seconds is not None and row.reference_seconds != reference.seconds  # timed again beside it
    assert skipped.speedup == pytest.approx(row.reference_seconds / skipped.seconds) and not skipped.uniform
    assert points["fp32*3,skip"].speedup is None  # timed alone: no measured speed-up of two moments
    assert points["fp32,int4wo*3"].simulated and points["fp32,int4wo*3"].speedup is None  # no speed claim
    study.evaluator.cost_table(settings, Schedule.parse("fp32*2,skip*2"))  # measured once, as a search does
    predicted = {p.schedule: p.predicted_speedup for p in history(evaluator, store, settings)}
    table = evaluator.known_costs(settings)
    assert predicted["fp32*2,skip*2"] == pytest.approx(table.predict(Schedule.parse("fp32*4")) /
                                                        table.predict(Schedule.parse("fp32*2,skip*2")))
    assert predicted["fp32,int4wo*3"] is None  # simulated: no claim, predicted or measured
    assert history(evaluator, None, settings) == []


def test_a_sweep_is_a_logged_run_with_its_evaluations_linked(tmp_path):
    from tmpdiff.cache import Cache
    from tmpdiff.engine.runner import Engine
    from tmpdiff.measure.evaluator import Evaluator
    from tmpdiff.studies.study import Study
    from tmpdiff.studies.sweep import load_spec

    spec = tmp_path / "s.toml"
    spec.write_text('[[grid]]\nmodels = ["shapes-dit"]\nsteps = 4\nprompts = ["red circle"]\nseeds = [0]\n'
                    'schedules = ["reference", "fp32*2,skip*2"]\n')
    store = Cache(tmp_path / "c.sqlite")
    study = Study(Evaluator(Engine("cpu"), store), store)
    rows = study.sweep(load_spec(spec), spec=str(spec))
    [run] = store.search_runs()
    assert run.request["kind"] == "sweep" and run.finished and run.evaluations == len(rows) == 2
    assert run.result["evaluations"] == 2 and run.result["schedules"]
    assert study.evaluator.replay is None  # the sweep's replay store was its own view's, not the shared evaluator's


def test_a_search_on_a_cache_that_refuses_every_write_finishes_and_says_so_once(tmp_path):
    """Search runs, their links and cost tables are guarded like images: the log is what a read-only cache costs,
    never the search."""
    import sqlite3

    from tmpdiff.errors import CacheWarning
    from tmpdiff.studies.request import SearchRequest

    class ReadOnly(Cache):
        def _refuse(self, *args, **kwargs):
            raise sqlite3.OperationalError("attempt to write a readonly database")

        put = start_search = link_search = finish_search = put_costs = _refuse

    store = ReadOnly(tmp_path / "c.sqlite")
    study = Study(Evaluator(Engine("cpu"), store), store)
    request = SearchRequest(model="shapes-dit", prompts=("red circle",), seeds=(0,), steps=4, ladder=("fp32", "skip"),
                            target_ssim=0.8, validation_seeds=(1000,))
    with pytest.warns(CacheWarning, match="could not be written.*readonly database") as said:
        report = study.search(request)
    assert report.schedule and report.evaluations > 0
    assert len([w for w in said if issubclass(w.category, CacheWarning)]) == 1  # one warning, not one a write
    assert study.evaluator.not_kept > 3 and store.search_runs() == []


def test_a_reference_served_again_is_said_cached_whether_from_memory_or_the_store(tmp_path):
    store = Cache(tmp_path / "c.sqlite")
    settings = RunSettings(model="shapes-dit", steps=4)
    study = Study(Evaluator(Engine("cpu"), store), store)
    assert study.compare(settings, "fp32*4").summary()["cached"] is False  # made now
    assert study.compare(settings, "fp32*4").summary()["cached"] is True  # from this process's memory
    other = Study(Evaluator(Engine("cpu"), store), store)
    assert other.compare(settings, "fp32*4").summary()["cached"] is True  # from the store, as the CLI sees it
