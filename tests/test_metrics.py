"""Quality metrics on known pairs, the honest LPIPS-unavailable path, and the latency model on CPU."""

import statistics

import numpy as np
import pytest
import torch

from tmpdiff import metrics
from tmpdiff.evaluate import Evaluator
from tmpdiff.runner import Engine, RunSettings


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


def test_lpips_unavailable_offline_says_why_and_never_guesses(picture, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.delenv(metrics.LPIPS_ENV, raising=False)
    available, reason = metrics.lpips_status()
    assert not available and "AlexNet" in reason and metrics.LPIPS_ENV in reason
    quality = metrics.compare(noisy(picture, 8), picture)
    assert quality.lpips is None and quality.lpips_note == reason
    assert 0 < quality.ssim < 1
    monkeypatch.setenv(metrics.LPIPS_ENV, str(tmp_path / "missing.pth"))
    assert "is not a file" in metrics.lpips_status()[1]


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


def test_predicted_latency_is_within_20_percent_of_measured_on_cpu():
    evaluator = Evaluator(Engine("cpu"))
    settings = RunSettings(model="shapes-dit", prompt="blue circle", seed=3)
    errors = []
    for schedule in ("fp32*2,bf16*6", "fp32*2,skip,fp32*2,skip,fp32*2", "bf16*4,int8wo*4"):
        predicted = evaluator.evaluate(settings, schedule).record.predicted_seconds
        # The median of three end-to-end runs: one run on a shared 2-core machine is noisy.
        measured = statistics.median(evaluator.engine.generate(settings, schedule).seconds for _ in range(3))
        errors.append(abs(predicted - measured) / measured)
    assert max(errors) < 0.2, errors
    table = evaluator.costs["shapes-dit"]
    assert table.step_seconds["skip"] < table.step_seconds["fp32"]
