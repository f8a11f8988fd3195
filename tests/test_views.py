"""What the app shows, checked without a browser: cards, the timeline, comparisons, warnings, the diff map."""

import numpy as np
import pytest
from PIL import Image

from tmpdiff.measure.latency import CostTable
from tmpdiff.measure.metrics import difference_map
from tmpdiff.ui import views

SCHEDULE = "fp32*2,int8wo*4,skip*2"
COSTS = CostTable(device="cpu", compiled=False, steps=8, step_seconds={"fp32": 0.03, "int8wo": 0.02, "skip": 0.0})


def evaluation(schedule=SCHEDULE, ssim=0.93, psnr=31.2, lpips=None, seconds=0.5, simulated=(), frames=None,
               reference_seconds=0.8, lpips_note=None):
    """An evaluation as the engine hands it back (its key from a real setting); ``reference_seconds``: the
    reference timed beside it (None: timed alone, the reference's seconds from another moment)."""
    from tmpdiff.engine.runner import Engine
    from tmpdiff.engine.settings import RunSettings
    from tmpdiff.measure.evaluator import Evaluation, Evaluator
    from tmpdiff.measure.metrics import Quality
    from tmpdiff.measure.records import EvalRecord
    from tmpdiff.steps.schedule import Schedule

    settings = RunSettings(model="shapes-dit", steps=8)
    key = Evaluator(Engine("cpu")).key(settings, Schedule.coerce(schedule))
    note = lpips_note if lpips_note is not None else "LPIPS unavailable: AlexNet weights not found"
    record = EvalRecord(key=key, png=b"", ssim=ssim, psnr=psnr, lpips=lpips, lpips_note=note if lpips is None else "",
                        measured_seconds=seconds, predicted_seconds=None, simulated=list(simulated),
                        reference_seconds=reference_seconds)
    scores = None if frames is None else (lambda: Quality(ssim, psnr, lpips, frame_ssim=tuple(frames)))
    return Evaluation(record, Image.new("RGB", (8, 8)), 0.8, False, score_frames=scores)


def comparison(**fields):
    from tmpdiff.engine.settings import RunSettings
    from tmpdiff.steps.schedule import Schedule
    from tmpdiff.studies.comparison import Comparison, CostPolicy

    settings = RunSettings(model="shapes-dit", steps=8)
    return Comparison.of(settings, Schedule.parse(SCHEDULE), evaluation(settings.reference_schedule(), 1.0),
                         evaluation(**fields), CostPolicy(COSTS))


def report(**changes):
    """A search's report, as a search returns it."""
    import dataclasses

    from tmpdiff.studies.algorithms import Point
    from tmpdiff.studies.report import Margin, Objective, SearchReport, Validation

    found = Point("fp32*2,skip*6", 0.91, 3.2)
    base = SearchReport(
        model="shapes-dit", device="cpu", steps=8, ladder=("fp32", "int8wo", "skip"),
        objective=Objective(target_ssim=0.9), found=found, ssim_std=0.0, evaluations=0, new_evaluations_in_search=0,
        evaluation_bound=100, baselines=(), costs=COSTS, validation=Validation((1000,), 0.95, True),
        pareto=(found,), best_baseline_at_speedup=Margin("fp32*2,int8wo*6", 0.88, 3.3, 0.03))
    return dataclasses.replace(base, **changes)


def test_cards_show_each_number_and_say_why_lpips_is_missing():
    from tmpdiff.measure.cost_tables import Prediction

    text = views.cards(comparison())
    for needle in ("1.60x", "on this device; reference timed beside it", "0.930", "31.2 dB", "0.50 s",
                   "reference 0.80 s, timed beside it"):
        assert needle in text
    assert "title='LPIPS unavailable: AlexNet weights not found. LPIPS needs torchvision" in text  # in a tooltip
    assert "not computed here" in text
    offline = views.cards(comparison(lpips_note="LPIPS unavailable: could not fetch its AlexNet weights (URLError: "
                                                "<urlopen error [Errno -3]>)"))
    card = offline[offline.index("LPIPS</div>"):]
    card = card[:card.index("</div></div>")]
    assert "could not be downloaded here (offline?)" in card and "URLError" not in card  # plain words on the card
    simulated = views.cards(comparison(simulated=("int8wo",)))
    assert "no claim" in simulated and "1.60x" not in simulated
    target = views.cards(comparison(), Prediction("NVIDIA H100", 0.4, 1.25, "predicted"))
    assert "speed-up (predicted on NVIDIA H100)" in target and "1.25x" in target


def test_a_measured_and_a_predicted_speedup_stand_side_by_side_each_saying_which_it_is():
    text = views.cards(comparison())
    measured, predicted = text.index("speed-up (measured)"), text.index("speed-up (predicted)")
    assert measured < predicted < text.index("SSIM")
    expected = (2 * 0.03 + 4 * 0.03 + 2 * 0.03) / (2 * 0.03 + 4 * 0.02 + 2 * 0.0)  # the table's reference / schedule
    assert f"{expected:.2f}x" in text and "from step costs measured here" in text
    alone = views.cards(comparison(reference_seconds=None))  # a search's image: the reference of another moment
    assert "reference timed at another moment" in alone
    from tmpdiff.studies.comparison import CostPolicy

    unmeasured = views.speedup_cards(dataclasses_replace(comparison(), costs=CostPolicy(CostTable(
        device="cpu", compiled=False, steps=8, step_seconds={"fp32": 0.03, "skip": 0.0}))))
    assert "n/a" in unmeasured[1] and "no step cost measured here for int8wo" in unmeasured[1]


def dataclasses_replace(value, **changes):
    import dataclasses

    return dataclasses.replace(value, **changes)


def test_timeline_has_a_bar_per_measured_step_and_marks_the_others_not_measured_never_0_ms():
    table = CostTable(device="cpu", compiled=False, steps=8,
                      step_seconds={"fp32": 0.03, "int8wo": 0.02, "skip": 0.001})
    figure = views.timeline(SCHEDULE, table)
    bars = {trace.name: list(trace.y) for trace in figure.data}
    assert sum(len(y) for y in bars.values()) == 8
    assert bars == {"fp32": [30.0, 30.0], "int8wo": [20.0] * 4, "skip": [1.0, 1.0]}
    assert [t.marker.color for t in figure.data] == [views.COLOURS[n] for n in ("fp32", "int8wo", "skip")]
    assert "predicted per step" in figure.layout.title.text
    partial = views.timeline(SCHEDULE, CostTable(device="cpu", compiled=False, steps=8,
                                                 step_seconds={"fp32": 0.03, "skip": 0.001}))
    kinds = {t.name: (t.type, list(t.x)) for t in partial.data}
    assert kinds["int8wo: not measured"] == ("scatter", [2, 3, 4, 5]) and kinds["fp32"][0] == "bar"
    assert "not measured: int8wo" in partial.layout.title.text
    assert all(y > 0 for t in partial.data if t.type == "bar" for y in t.y)
    nothing = views.timeline("fp32*3", None)
    assert "no step costs" in nothing.layout.title.text and [t.type for t in nothing.data] == ["scatter"]


def test_comparison_shows_the_found_schedule_its_best_rival_and_the_reference():
    from tmpdiff.studies.study import SearchResult

    text = views.compare_cards(SearchResult(report()))
    assert text.index("Found") < text.index("Best baseline") < text.index("Reference")
    assert "fp32*2,int8wo*6" in text and "fp32*8" in text and "speed-up (predicted)" in text
    assert "below the 0.9 floor" in text  # the rival at the same speed misses the floor, and says so


def test_the_baseline_beside_the_found_schedule_is_the_fastest_that_meets_the_floor():
    from tmpdiff.studies.algorithms import Point

    baselines = (Point("fp32*8", 1.0, 1.0), Point("fp32*6,skip*2", 0.95, 1.3), Point("fp32*4,skip*4", 0.92, 1.9),
                 Point("fp32*2,skip*6", 0.7, 3.9))
    titles = report(baselines=baselines).rivals()
    assert [p.schedule for _, p in titles] == ["fp32*4,skip*4", "fp32*2,int8wo*6"]
    assert titles[0][0].startswith("Best baseline meeting the floor") and "below the 0.9 floor" in titles[1][0]
    from tmpdiff.studies.report import Objective

    speed = report(baselines=baselines, objective=Objective(target_speedup=1.5),
                   best_baseline_at_speedup=None).rivals()
    assert [p.schedule for _, p in speed] == ["fp32*4,skip*4"] and "meeting the target" in speed[0][0]
    assert report(baselines=(Point("fp32*8", 1.0, 1.0),), best_baseline_at_speedup=None).rivals() == []


def test_a_failed_validation_is_a_visible_warning():
    from tmpdiff.studies.report import Validation

    assert views.validation_warning(report()) == ""
    text = views.validation_warning(report(validation=Validation((1000, 1001), 0.83, False)))
    assert "missed the floor" in text and "0.830" in text and "below 0.9" in text


def test_the_search_says_what_it_cost_in_calls_and_seconds_per_phase():
    assert views.search_cost(report()) == ""  # a report without counts says nothing
    text = views.search_cost(report(evaluations=41, phase_seconds={"costs": 3.14, "baselines": 5.0},
                                    denoiser_calls={"total": {"denoiser": 910, "replayed": 1090, "skipped": 1782}}))
    assert "41 schedules" in text and "910 denoiser calls made, 1090 replayed, 1782 saved by skip" in text
    assert "costs 3.1 s, baselines 5.0 s" in text


def test_search_plot_marks_the_found_point_and_the_floor():
    figure = views.search_plot(report())
    assert [t.name for t in figure.data] == ["Pareto front", "baselines", "found"]
    assert figure.data[2].text == ("fp32*2,skip*6",)
    assert views.pareto_rows(report()) == [["fp32*2,skip*6", 0.91, 3.2]]


def test_difference_map_is_black_where_images_agree_and_bright_where_they_differ():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[1, 2] = 200
    heat = np.asarray(difference_map(Image.fromarray(b), Image.fromarray(a)))
    assert heat.shape == (4, 4, 3) and heat[1, 2].tolist() == [255, 255, 255] and heat.sum() == 3 * 255
    assert not np.asarray(difference_map(Image.fromarray(a), Image.fromarray(a))).any()
    with pytest.raises(ValueError, match="differ in size"):
        difference_map(Image.fromarray(a), Image.new("RGB", (5, 5)))


def test_a_live_search_streams_its_points_and_hands_back_the_report_or_the_users_mistake(monkeypatch):
    from tmpdiff.engine.runner import Engine
    from tmpdiff.measure.evaluator import Evaluator
    from tmpdiff.studies.request import SearchRequest
    from tmpdiff.studies.study import Study
    from tmpdiff.ui.live import LiveSearch

    evaluator = Evaluator(Engine("cpu"))
    request = SearchRequest(model="shapes-dit", prompts=("red circle",), seeds=(0,), steps=4, ladder=("fp32", "skip"),
                            target_ssim=0.8, additivity_samples=0)
    live = LiveSearch(Study(evaluator), request, interval=0.0)
    updates = list(live.updates())
    report = live.result()
    counts = [len(u.points) for u in updates]
    assert counts == sorted(counts) and counts[-1] == len({p.schedule for p in updates[-1].points}) >= 3
    assert report.schedule in {p.schedule for p in updates[-1].points}
    assert any("evaluation" in u.message for u in updates)

    def mistaken(*args, **kwargs):
        raise ValueError("no rung of the ladder is cheaper than the reference")

    monkeypatch.setattr("tmpdiff.studies.study.run_search", mistaken)
    bad = LiveSearch(Study(evaluator), request)
    list(bad.updates())
    with pytest.raises(ValueError, match="cheaper than the reference"):  # raised in the page's thread
        bad.result()


def test_when_every_baseline_is_slower_the_fastest_that_meets_the_floor_is_shown_and_said_so():
    from tmpdiff.studies.algorithms import Point
    from tmpdiff.studies.study import SearchResult

    slower = report(best_baseline_at_speedup=None, baselines=(
        Point("fp32*8", 1.0, 1.0), Point("fp32*6,int8wo*2", 0.97, 1.1), Point("fp32*4,int8wo*4", 0.95, 1.3)))
    text = views.compare_cards(SearchResult(slower))
    assert "Best baseline meeting the floor: the fastest with SSIM ≥ 0.9" in text and "fp32*4,int8wo*4" in text
    assert text.index("Found") < text.index("Best baseline") < text.index("Reference")
    below = report(best_baseline_at_speedup=None, baselines=(Point("fp32*8", 1.0, 1.0),
                                                              Point("fp32*4,int8wo*4", 0.85, 1.3)))
    assert "Fastest baseline (none meets the objective)" in views.compare_cards(SearchResult(below))


def test_a_videos_cards_say_its_worst_frame_and_show_a_strip_per_frame():
    html = views.cards(comparison(ssim=0.95, frames=[1.0, 0.9, 0.95]))
    assert "mean of 3 frames; worst 0.900" in html
    assert html.count("class='frame") == 3 + 1 and html.count("worst'") == 1  # the strip, then its 3 bars
    assert "frame 1: SSIM 0.9000" in html and views.cards(comparison()).count("frame-strip") == 0


def test_every_precision_of_the_registry_has_its_own_colour():
    from tmpdiff import PRECISIONS

    assert set(PRECISIONS) <= set(views.COLOURS)
    assert len(set(views.COLOURS.values())) == len(views.COLOURS)


def test_the_memory_card_shows_the_hosts_peak_and_pinned_bytes_beside_a_gpu_peak():
    from tmpdiff.memory.meter import GIB, MemoryFigures
    from tmpdiff.ui.views import memory_card

    figures = MemoryFigures(20 * GIB, "gpu", plan="budget 24.0 GiB: bf16 resident", budget_bytes=24 * GIB,
                            host_peak_bytes=31 * GIB, pinned_bytes=12 * GIB)
    card = memory_card(figures.peak_bytes, figures)
    assert "20.00 GiB" in card and "budget 24.0 GiB" in card and "host 31.0 GiB" in card
    assert "12.00 GiB of it pinned for streamed blocks" in card and "bf16 resident" in card
    plain = memory_card(GIB, MemoryFigures(GIB, "host", host_peak_bytes=GIB))
    assert "host memory, this image" in plain and "pinned" not in plain  # without a GPU the peak is the host's
    assert MemoryFigures.from_dict(figures.to_dict(), figures.peak_bytes) == figures  # as the store keeps it
