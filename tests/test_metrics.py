"""Quality metrics on known pairs, the honest LPIPS-unavailable path, and the latency model on CPU."""

import numpy as np
import pytest
import torch

from tmpdiff.engine.runner import Engine
from tmpdiff.engine.settings import RunSettings
from tmpdiff.measure import metrics
from tmpdiff.measure.evaluator import Evaluator


def noisy(base, sigma, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(base.astype(float) + rng.normal(0, sigma, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def picture():
    y, x = np.mgrid[0:64, 0:64]
    return np.stack([x * 4, y * 4, (x + y) * 2], -1).astype(np.uint8)


def test_identical_images_score_perfectly(picture):
    assert metrics.ssim(picture, picture) == pytest.approx(1.0)
    assert metrics.psnr(picture, picture) == float("inf")


def test_more_noise_is_monotonically_worse(picture):
    ssims = [metrics.ssim(noisy(picture, s), picture) for s in (2, 8, 24, 64)]
    psnrs = [metrics.psnr(noisy(picture, s), picture) for s in (2, 8, 24, 64)]
    assert ssims == sorted(ssims, reverse=True) and psnrs == sorted(psnrs, reverse=True)
    assert ssims[-1] < 0.5 < ssims[0]


def test_mismatched_sizes_are_a_clear_error(picture):
    with pytest.raises(ValueError, match="differ in size"):
        metrics.ssim(picture, picture[:32])


def test_lpips_unavailable_offline_says_why_in_one_line_and_never_guesses(picture, monkeypatch, tmp_path):
    from conftest import free_port

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.delenv(metrics.LPIPS_ENV, raising=False)
    monkeypatch.setenv(metrics.LPIPS_URL_ENV, f"http://127.0.0.1:{free_port()}/{metrics.ALEXNET_FILE}")
    monkeypatch.setattr(metrics, "_FETCH_FAILED", None)
    available, reason = metrics.lpips_status()
    assert not available and "could not fetch its AlexNet weights" in reason and "\n" not in reason
    assert metrics.LPIPS_ENV in metrics.LPIPS_HOW_TO  # the how-to, for a tooltip
    quality = metrics.compare(noisy(picture, 8), picture)
    assert quality.lpips is None and quality.lpips_note == reason
    assert 0 < quality.ssim < 1
    calls = []
    monkeypatch.setattr(metrics.urllib.request, "urlopen", lambda *a, **k: calls.append(a))
    assert metrics.lpips_status() == (False, reason) and not calls  # tried once per process, not per image
    monkeypatch.setenv(metrics.LPIPS_ENV, str(tmp_path / "missing.pth"))
    assert "is not a file" in metrics.lpips_status()[1]


def test_lpips_weights_are_fetched_once_and_checked_against_their_hash(picture, monkeypatch, tmp_path):
    import functools
    import hashlib
    import http.server
    import threading

    import torchvision

    torch.manual_seed(0)
    served = tmp_path / "served"
    served.mkdir()
    torch.save(torchvision.models.alexnet().state_dict(), served / "weights.pth")
    digest = hashlib.sha256((served / "weights.pth").read_bytes()).hexdigest()[:8]
    (served / "weights.pth").rename(served / f"alexnet-owt-{digest}.pth")
    (served / "alexnet-owt-00000000.pth").write_bytes(b"not the weights")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.delenv(metrics.LPIPS_ENV, raising=False)
    try:
        monkeypatch.setattr(metrics, "_FETCH_FAILED", None)
        with pytest.raises(metrics.LpipsUnavailable, match="does not match its hash 00000000"):
            metrics.fetch_alexnet_weights(f"{base}/alexnet-owt-00000000.pth")
        assert not (hub / "checkpoints" / metrics.ALEXNET_FILE).exists()  # nothing half-fetched is kept
        monkeypatch.setattr(metrics, "_FETCH_FAILED", None)
        monkeypatch.setenv(metrics.LPIPS_URL_ENV, f"{base}/alexnet-owt-{digest}.pth")
        monkeypatch.setattr(metrics, "_LPIPS_MODEL", None)
        assert metrics.lpips_status() == (True, "LPIPS (AlexNet)")
        assert (hub / "checkpoints" / metrics.ALEXNET_FILE).is_file()
        quality = metrics.compare(noisy(picture, 8), picture)
        assert quality.lpips is not None and quality.lpips > 0 and quality.lpips_note == ""
    finally:
        server.shutdown()
        monkeypatch.setattr(metrics, "_LPIPS_MODEL", None)


def test_lpips_with_backbone_weights_file(picture, monkeypatch, tmp_path):
    """A weights file at TMPDIFF_LPIPS_WEIGHTS is loaded into the backbone (not a random one)."""
    import torchvision

    torch.manual_seed(0)
    state = torchvision.models.alexnet().state_dict()
    path = tmp_path / metrics.ALEXNET_FILE
    torch.save(state, path)
    monkeypatch.setenv(metrics.LPIPS_ENV, str(path))
    monkeypatch.setattr(metrics, "_LPIPS_MODEL", None)
    assert metrics.lpips_distance(picture, picture) == pytest.approx(0.0, abs=1e-6)
    near, far = (metrics.lpips_distance(noisy(picture, s), picture) for s in (4, 64))
    assert 0 < near < far
    model = metrics._lpips_model()
    assert torch.equal(model.net.slice1[0].weight, state["features.0.weight"])
    monkeypatch.setattr(metrics, "_LPIPS_MODEL", None)


def test_summary_statistics():
    assert metrics.summarize([1.0, 3.0]) == (2.0, pytest.approx(2 ** 0.5))
    with pytest.raises(ValueError):
        metrics.summarize([])


# Known per-step costs of a fake device: measure_costs must recover them exactly.
STEP_COST = {"fp32": 0.040, "bf16": 0.025, "int8wo": 0.030, "fp8": 0.020, "skip": 0.001}
FIXED = 0.3


class FakeDevice:
    """Runs a schedule "in" known time; counts runs so that warm-up runs can be checked."""

    def __init__(self):
        self.runs = []

    def __call__(self, schedule):
        self.runs.append(str(schedule))
        # The first step of each run is slower (a one-off warm-up inside the run): the median ignores it.
        steps = [STEP_COST[name] * (3 if i == 0 else 1) for i, name in enumerate(schedule)]
        return FIXED + sum(steps), steps


def test_measured_costs_recover_the_device_and_predict_mixed_schedules():
    from tmpdiff.measure.latency import measure_costs
    from tmpdiff.steps.schedule import Schedule

    device = FakeDevice()
    table = measure_costs(device, "fp32", ["bf16", "int8wo", "fp8", "mxfp8", "skip"], steps=8,
                          device="cpu", compiled=False, warmup_runs=2)
    assert table.step_seconds == pytest.approx(STEP_COST)
    assert "mxfp8" not in table.step_seconds  # unavailable on CPU: never timed, never claimed
    assert table.simulated == ["fp8"]  # fake quantization on CPU: recorded without a speed claim
    # The reference run's fixed cost is its total minus its steps, the slow first step included.
    assert table.fixed_seconds == pytest.approx(FIXED)
    assert len(device.runs) == 3 * 5 and device.runs.count("fp32*8") == 3
    assert device.runs[-1] == "fp32,skip*7"  # skip is timed after a reference step
    mixed = Schedule.parse("fp32*2,skip,bf16*2,int8wo*3")
    assert table.predict(mixed) == pytest.approx(FIXED + 2 * 0.040 + 0.001 + 2 * 0.025 + 3 * 0.030)
    assert table.has_speed_claim(mixed) and not table.has_speed_claim(Schedule.parse("fp32*4,fp8*4"))
    assert table.ladder()[0] == "fp32" and table.ladder()[-1] == "skip" and "fp8" not in table.ladder()


def test_measuring_again_only_adds_what_the_table_lacks():
    from tmpdiff.measure.latency import measure_costs

    device = FakeDevice()
    table = measure_costs(device, "fp32", ["bf16"], steps=4, device="cpu", compiled=False)
    first = len(device.runs)
    table = measure_costs(device, "fp32", ["bf16", "int8wo"], steps=4, device="cpu", compiled=False, table=table)
    assert device.runs[first:] == ["int8wo*4", "int8wo*4"] and set(table.step_seconds) == {"fp32", "bf16", "int8wo"}


def test_the_real_pipeline_reports_step_times_that_the_model_adds_up():
    """On the real engine, the per-step times a run reports fit inside its total (the rest is fixed cost).

    Whether the prediction *matches* measured time is a timing question: ``benchmarks/latency_model.py``.
    """
    evaluator = Evaluator(Engine("cpu"))
    settings = RunSettings(model="shapes-dit", prompt="blue circle", seed=3)
    result = evaluator.engine.generate(settings, "fp32*2,skip,bf16*5")
    assert len(result.step_seconds) == 8 and all(s > 0 for s in result.step_seconds)
    assert sum(result.step_seconds) < result.seconds
    evaluation = evaluator.evaluate(settings, "fp32*2,skip,bf16*5")
    table = evaluator.costs["shapes-dit"]
    expected = table.fixed_seconds + 2 * table.step_seconds["fp32"] + table.step_seconds["skip"] \
        + 5 * table.step_seconds["bf16"]
    assert evaluation.record.predicted_seconds == pytest.approx(expected)


def test_a_runner_that_leaves_builds_out_warms_up_only_the_reference():
    from tmpdiff.measure.latency import measure_costs

    device = FakeDevice()
    table = measure_costs(device, "fp32", ["bf16", "skip"], steps=8, device="cpu", compiled=False,
                          warm_reference_only=True)
    assert device.runs == ["fp32*8", "fp32*8", "bf16*8", "fp32,skip*7"]  # one warm-up, of the reference
    assert table.fixed_seconds == pytest.approx(FIXED) and table.step_seconds["bf16"] == pytest.approx(0.025)
