"""Video models: a result is a frame sheet, scored frame by frame, written as a playable lossless file."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tmpdiff import get_model, load_pipeline
from tmpdiff.engine.frames import frame_sheet, sheet_frames
from tmpdiff.engine.runner import Engine
from tmpdiff.engine.settings import RunSettings
from tmpdiff.measure.evaluator import Evaluator
from tmpdiff.measure.metrics import compare_video


def flat(value: int, size: int = 16) -> Image.Image:
    return Image.fromarray(np.full((size, size, 3), value, np.uint8))


def test_per_frame_scores_match_values_computed_by_hand():
    reference = frame_sheet([flat(100), flat(100), flat(100)])
    video = frame_sheet([flat(100), flat(110), flat(90)])  # frame 0 exact, frames 1 and 2 off by 10 everywhere
    quality = compare_video(video, reference, 3)
    by_hand = 10 * np.log10(255**2 / 100)  # PSNR of a frame off by 10: MSE 100
    assert quality.frame_psnr[0] == float("inf") and quality.frame_psnr[1] == pytest.approx(by_hand)
    assert quality.psnr == pytest.approx(10 * np.log10(255**2 / (200 / 3)))  # the clip's pooled MSE: 200/3
    assert quality.frame_ssim[0] == 1.0 and min(quality.frame_ssim) < 1.0
    assert quality.ssim == pytest.approx(np.mean(quality.frame_ssim))
    assert [f.size for f in sheet_frames(video, 3)] == [(16, 16)] * 3
    with pytest.raises(ValueError, match="does not hold 5 frames"):
        sheet_frames(video, 5)


@pytest.mark.parametrize("model", ["tiny-wan", "tiny-wan2.2", "tiny-ltx", "tiny-cogvideox"])
def test_the_all_reference_video_is_the_stock_pipelines_bit_for_bit(model):
    pipe = load_pipeline(model)
    with torch.no_grad():
        stock = pipe(**get_model(model).call_kwargs("a photo of a red cat", steps=4, seed=0)).frames[0]
    evaluation = Evaluator(Engine("cpu")).reference(RunSettings(model=model, steps=4))
    assert np.array_equal(np.asarray(frame_sheet(stock)), np.asarray(evaluation.image))
    assert evaluation.summary()["frames"] == len(stock)  # the frames the pipeline made


def test_a_video_setting_keys_its_frames_and_a_stored_video_keeps_its_frame_scores(tmp_path):
    from tmpdiff.cache import Cache

    settings = RunSettings(model="tiny-wan2.2", steps=4)
    assert settings.to_dict()["frames"] == 5 and "frames" not in RunSettings(model="shapes-dit").to_dict()
    store = Cache(tmp_path / "c.sqlite")
    first = Evaluator(Engine("cpu"), store).evaluate(settings, "fp32*2,int8wo*2")
    again = Evaluator(Engine("cpu"), store).evaluate(settings, "fp32*2,int8wo*2")  # another process's view
    assert again.cached and again.summary()["frame_ssim"] == first.summary()["frame_ssim"]
    assert len(first.summary()["frame_ssim"]) == 5


def test_generate_writes_a_playable_lossless_video(tmp_path):
    out = tmp_path / "v.png"
    done = subprocess.run([sys.executable, "-m", "tmpdiff", "generate", "--model", "tiny-wan2.2", "--schedule",
                           "fp32*2,int8wo,skip", "--out", str(out), "--db", str(tmp_path / "c.sqlite")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert line["frames"] == 5 and len(line["frame_ssim"]) == 5 and line["worst_frame_ssim"] <= line["ssim"]
    assert line["steps_run"] == ["fp32", "fp32", "int8wo", "skip"]
    with Image.open(out) as video:
        assert video.format == "PNG" and video.is_animated and video.n_frames == 5 and video.size == (16, 16)
    bad = subprocess.run([sys.executable, "-m", "tmpdiff", "generate", "--model", "tiny-wan2.2", "--out",
                          str(tmp_path / "v.gif")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "a .png file (an animated PNG) or a .webp file" in bad.stderr


def test_the_apps_result_view_plays_both_clips_losslessly():
    import base64
    import io
    import re

    from tmpdiff.studies.study import Study
    from tmpdiff.ui import panels

    settings = RunSettings(model="tiny-wan2.2", steps=4)
    comparison = Study.open(Engine("cpu")).compare(settings, "fp32*2,int8wo,skip")
    evaluation = comparison.evaluation
    html, *_ = panels.result_views(comparison, panels.THIS_DEVICE)
    clips = re.findall(r"src='data:image/png;base64,([^']+)'", html)
    assert "video-pair" in html and len(clips) == 2 and "SSIM per frame" in html
    with Image.open(io.BytesIO(base64.b64decode(clips[1]))) as played:
        frames = []
        for index in range(played.n_frames):
            played.seek(index)
            frames.append(np.asarray(played.convert("RGB")))
    kept = {f.tobytes() for f in frames}  # identical neighbouring frames may be stored once
    assert kept == {np.asarray(f).tobytes() for f in sheet_frames(evaluation.image)}


def test_a_cache_hit_scores_its_frames_only_when_they_are_asked_for(tmp_path, monkeypatch):
    import tmpdiff.measure.evaluator as evaluate
    from tmpdiff.cache import Cache

    settings = RunSettings(model="tiny-wan", steps=4)
    store = Cache(tmp_path / "c.sqlite")
    Evaluator(Engine("cpu"), store).evaluate(settings, "fp32*2,skip*2")
    scored = []
    monkeypatch.setattr(evaluate, "compare_video", lambda *a: scored.append(a) or compare_video(*a))
    hit = Evaluator(Engine("cpu"), store).evaluate(settings, "fp32*2,skip*2")
    assert hit.cached and hit.record.ssim is not None and scored == []  # a search reads this much: no re-scoring
    assert len(hit.summary()["frame_ssim"]) == 5 and len(scored) == 1
    hit.summary()
    assert len(scored) == 1  # scored once
