"""A setting's history as typed points, built once in the engine for every front end."""

import pytest

from tmpdiff.cache import Cache
from tmpdiff.engine.runner import Engine
from tmpdiff.engine.settings import RunSettings
from tmpdiff.measure.evaluator import Evaluator
from tmpdiff.studies.history import history


def test_history_points_carry_measured_speedups_and_no_claim_for_simulated_precisions(tmp_path):
    store = Cache(tmp_path / "c.sqlite")
    evaluator = Evaluator(Engine("cpu"), store)
    settings = RunSettings(model="shapes-dit", steps=4)
    for schedule in ("fp32*4", "fp32*2,skip*2", "fp32,int4wo*3"):
        evaluator.evaluate(settings, schedule)
    evaluator.evaluate(RunSettings(model="shapes-dit", steps=4, seed=9), "fp32*4")  # another setting: not listed
    points = {p.schedule: p for p in history(evaluator, store, settings)}
    assert set(points) == {"fp32*4", "fp32*2,skip*2", "fp32,int4wo*3"}
    reference = points["fp32*4"]
    assert reference.speedup == pytest.approx(1.0) and reference.uniform and reference.seed == 0
    skipped = points["fp32*2,skip*2"]
    assert skipped.speedup == pytest.approx(reference.seconds / skipped.seconds) and not skipped.uniform
    assert points["fp32,int4wo*3"].simulated and points["fp32,int4wo*3"].speedup is None  # no speed claim
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
