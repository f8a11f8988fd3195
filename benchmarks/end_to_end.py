"""Whole-pipeline latency (text encoders, denoiser, VAE) of schedules, predicted against measured.

FLUX.1-dev's architecture with random weights (``flux-dev-random``), 1024², 28 steps, compiled
variants, through the same ``Evaluator`` the CLI and the app use (no cache).

    python benchmarks/end_to_end.py --out benchmarks/results/end_to_end.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from tmpdiff.engine.runner import Engine
from tmpdiff.engine.settings import RunSettings
from tmpdiff.measure.evaluator import Evaluator
from tmpdiff.pipelines.registry import quiet_libraries

SCHEDULES = ["bf16*28", "fp8*28", "bf16*4,fp8*20,bf16*4", "bf16*2,fp8*26",
             "bf16*4," + ",".join(["fp8", "skip"] * 12)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="flux-dev-random")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/end_to_end.json"))
    parser.add_argument("--schedules", default=";".join(SCHEDULES), help="schedules to time, ';'-separated")
    args = parser.parse_args()
    quiet_libraries()
    evaluator = Evaluator(Engine("cuda", compile=True))
    settings = RunSettings(model=args.model, steps=args.steps)
    start = time.perf_counter()
    evaluator.engine.pipeline(args.model)
    report = {"model": args.model, "device": torch.cuda.get_device_name(), "steps": args.steps,
              "load_s": time.perf_counter() - start, "runs": []}
    for text in args.schedules.split(";"):
        evaluation = evaluator.evaluate(settings, text)
        record = evaluation.record
        row = {"schedule": text, "measured_s": record.measured_seconds, "predicted_s": record.predicted_seconds,
               "error_pct": 100 * (record.measured_seconds - record.predicted_seconds) / record.predicted_seconds,
               "speedup": evaluation.speedup, "vae_decode_s": evaluation.vae_seconds}
        report["runs"].append(row)
        print(json.dumps(row), flush=True)
    table = evaluator.costs[args.model]
    report["costs"] = table.to_dict()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
