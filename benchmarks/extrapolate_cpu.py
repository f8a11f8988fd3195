"""Extrapolating a skipped step against reusing it, on the default model (CPU).

For 8 and 28 steps, schedules with the same steps left uncomputed (late, alternating) are scored with plain
``skip`` and with ``extrap`` (first-order extrapolation from the last two computed steps): mean SSIM over
4 prompts x 2 seeds. Then a search for the SSIM floor 0.9 with the ladder ``fp32,skip`` against ``fp32,extrap``.

    python benchmarks/extrapolate_cpu.py --out benchmarks/results/extrapolate_cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from tmpdiff.engine.runner import Engine
from tmpdiff.engine.settings import RunSettings
from tmpdiff.measure.evaluator import Evaluator
from tmpdiff.pipelines.registry import get_model, quiet_libraries
from tmpdiff.studies.procedure import run_search
from tmpdiff.studies.prompts import calibration_prompts
from tmpdiff.studies.request import SearchRequest


def patterns(steps: int, rung: str) -> dict[str, str]:
    """Schedules leaving steps uncomputed in ``rung``, by name (every one computes its first two steps)."""
    late = steps // 4
    alternating = ",".join(["fp32"] * 2 + [rung if i % 2 == 0 else "fp32" for i in range(steps - 2)])
    return {f"last {late} of {steps} uncomputed but the final one": f"fp32*{steps - late - 1},{rung}*{late},fp32",
            f"every other step after 2 ({(steps - 2 + 1) // 2} uncomputed)": alternating,
            f"a block of {steps // 2} in the middle": f"fp32*{steps // 4},{rung}*{steps // 2},"
                                                   f"fp32*{steps - steps // 4 - steps // 2}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/extrapolate_cpu.json"))
    args = parser.parse_args()
    quiet_libraries()
    spec = get_model("shapes-dit")
    evaluator = Evaluator(Engine("cpu"), predict=False)
    prompts = calibration_prompts(spec.labels, 4)
    report: dict = {"model": spec.name, "prompts": prompts, "seeds": [0, 1], "comparisons": [], "searches": []}
    for steps in (8, 28):
        settings = [RunSettings(model=spec.name, prompt=p, seed=s, steps=steps) for p in prompts for s in (0, 1)]
        for (label, skip), extrap in zip(patterns(steps, "skip").items(), patterns(steps, "extrap").values(),
                                         strict=True):
            scores = {name: statistics.fmean(evaluator.evaluate(s, schedule).record.ssim for s in settings)
                      for name, schedule in (("skip", skip), ("extrap", extrap))}
            row = {"steps": steps, "pattern": label, "skip_schedule": skip, "ssim_skip": round(scores["skip"], 4),
                   "ssim_extrap": round(scores["extrap"], 4), "extrap_better": scores["extrap"] > scores["skip"]}
            report["comparisons"].append(row)
            print(json.dumps(row), flush=True)
    for rung in ("skip", "extrap"):
        request = SearchRequest(model=spec.name, prompts=tuple(prompts), seeds=(0, 1), steps=8, target_ssim=0.9,
                                ladder=("fp32", rung), validation_seeds=(1000,))
        found = run_search(evaluator, request)
        row = {"ladder": f"fp32,{rung}", "schedule": found.schedule, "ssim": round(found.ssim, 4),
               "speedup": round(found.speedup, 3), "uncomputed_steps": uncomputed(found.schedule, rung)}
        report["searches"].append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


def uncomputed(text: str, rung: str) -> int:
    from tmpdiff.steps.schedule import Schedule

    return sum(name == rung for name in Schedule.parse(text))


if __name__ == "__main__":
    main()
