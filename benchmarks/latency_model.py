"""How well the additive latency model predicts measured end-to-end time, and how fast a cache hit is.

Timing belongs here, not in the unit tests: on a shared 2-core CI machine one run's error moves by
several percent from run to run. Each schedule is measured ``--repeats`` times after the engine is
warm; the report gives the median, the spread and the model's error against the median.

    python benchmarks/latency_model.py --out benchmarks/results/latency_model_cpu.json
    python benchmarks/latency_model.py --device cuda --model flux-dev-random --steps 28 \\
        --schedules "bf16*28" "bf16*4,fp8*20,bf16*4" --out benchmarks/results/latency_model_h100.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from tmpdiff.cache import Cache
from tmpdiff.engine.runner import Engine, device_name
from tmpdiff.engine.settings import RunSettings
from tmpdiff.measure.evaluator import Evaluator
from tmpdiff.pipelines.registry import quiet_libraries

CPU_SCHEDULES = ["fp32*2,bf16*6", "fp32*2,skip,fp32*2,skip,fp32*2", "bf16*4,int8wo*4"]


def measure(evaluator: Evaluator, settings: RunSettings, schedule: str, repeats: int) -> dict[str, object]:
    predicted = evaluator.evaluate(settings, schedule).record.predicted_seconds
    runs = [evaluator.engine.generate(settings, schedule).seconds for _ in range(repeats)]
    median = statistics.median(runs)
    return {"schedule": schedule, "predicted_s": predicted, "measured_median_s": median,
            "measured_min_s": min(runs), "measured_max_s": max(runs),
            "error_pct": None if predicted is None else 100 * (predicted - median) / median}


def cache_hit_ms(settings: RunSettings, schedule: str, device: str, repeats: int) -> float:
    """Median time of ``Evaluator.evaluate`` answered from the SQLite cache (image read included)."""
    with tempfile.TemporaryDirectory() as folder:
        cache = Cache(Path(folder) / "hits.sqlite")
        evaluator = Evaluator(Engine(device), cache)
        evaluator.evaluate(settings, schedule)
        fresh = Evaluator(Engine(device), Cache(Path(folder) / "hits.sqlite"))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            assert fresh.evaluate(settings, schedule).cached
            times.append(time.perf_counter() - start)
        return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="shapes-dit")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--schedules", nargs="+", default=CPU_SCHEDULES)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latency_model_cpu.json"))
    args = parser.parse_args()
    quiet_libraries()
    evaluator = Evaluator(Engine(args.device, compile=args.device == "cuda"))
    settings = RunSettings(model=args.model, prompt="blue circle", seed=3, steps=args.steps)
    runs = []
    for schedule in args.schedules:
        runs.append(measure(evaluator, settings, schedule, args.repeats))
        print(json.dumps(runs[-1]), flush=True)
    report: dict[str, object] = {"model": args.model, "device": device_name(args.device), "steps": args.steps,
                                 "repeats": args.repeats, "runs": runs,
                                 "costs": evaluator.costs[args.model].to_dict()}
    report["cache_hit_ms"] = cache_hit_ms(settings, args.schedules[0], args.device, args.repeats)
    print(json.dumps({"cache_hit_ms": report["cache_hit_ms"]}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
