"""The typed search report: a JSON round trip, and reports written before it existed still read."""

import json
from pathlib import Path

import pytest

from tmpdiff.engine.runner import Engine
from tmpdiff.measure.evaluator import Evaluator
from tmpdiff.measure.latency import CostTable
from tmpdiff.studies.procedure import run_search
from tmpdiff.studies.report import REPORT_VERSION, SearchReport
from tmpdiff.studies.request import SearchRequest

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def test_a_search_report_round_trips_through_json():
    evaluator = Evaluator(Engine("cpu"))
    evaluator.costs["shapes-dit"] = CostTable(device="cpu", compiled=False, steps=4, fixed_seconds=0.01,
                                              step_seconds={"fp32": 0.03, "skip": 0.0001})
    request = SearchRequest(model="shapes-dit", prompts=("red circle",), seeds=(0,), steps=4, ladder=("fp32", "skip"),
                            target_ssim=0.8, validation_seeds=(1000,), additivity_samples=2)
    report = run_search(evaluator, request)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["version"] == REPORT_VERSION
    again = SearchReport.from_dict(data)
    assert again.to_dict() == data
    assert again.schedule == report.schedule and again.validation == report.validation
    assert again.additivity == report.additivity and again.strategies == report.strategies
    assert "exhaustive search (ask with exhaustive; small step counts only)" in data["skipped"]


@pytest.mark.parametrize("name", ["search_flux_h100_warm.json", "search_flux_h100.json"])
def test_a_report_written_before_the_typed_report_still_reads(name):
    data = json.loads((RESULTS / name).read_text())
    assert "version" not in data
    report = SearchReport.from_dict(data)
    assert report.schedule == data["schedule"] and report.speedup == data["speedup"]
    assert [p.schedule for p in report.pareto] == [p["schedule"] for p in data["pareto"]]
    assert report.costs.step_seconds == data["costs"]["step_seconds"]
    assert report.validation.ssim == data["validation"]["ssim"]
    new = report.to_dict()
    assert {k: new[k] for k in data if k != "costs"} == {k: v for k, v in data.items() if k != "costs"}


def test_a_report_from_a_newer_tmpdiff_is_refused_with_a_clear_message():
    data = json.loads((RESULTS / "search_flux_h100_warm.json").read_text())
    with pytest.raises(ValueError, match="newer than this tmpdiff reads"):
        SearchReport.from_dict({**data, "version": REPORT_VERSION + 1})
