"""Evaluation records for the cache tests, importable by the writer processes those tests start without the
engine (diffusers and the pipelines take seconds to import in each process)."""

import io

from PIL import Image

from tmpdiff import Schedule
from tmpdiff.engine.settings import RunSettings
from tmpdiff.measure.records import EvalKey, EvalRecord


def png_bytes(colour=(10, 20, 30)):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def record(schedule="fp32*4", seed=0, ssim=0.9):
    s = Schedule.parse(schedule)
    settings = RunSettings(model="tiny-sd15", seed=seed, steps=len(s)).to_dict()  # as the engine keys them
    key = EvalKey(model="tiny-sd15", model_hash="abc", settings=settings, schedule=str(s),
                  schedule_hash=s.hash, device={"device": "cpu"})
    return EvalRecord(key=key, png=png_bytes(), ssim=ssim, psnr=30.0, lpips=None, lpips_note="n/a",
                      measured_seconds=1.0, predicted_seconds=None, steps_run=list(s.steps))
