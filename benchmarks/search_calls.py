"""What a whole search costs in denoiser calls and seconds, before and now.

The same search (same request, same measured cost table, no evaluation cache) twice in one process:
"before" as the search ran until prefix replay existed (every step of every evaluation computed,
every step probed), "now" with the defaults (prefixes replayed, every 3rd step probed). Every
schedule evaluated both ways must give the same PNG bytes; the found schedules are compared. A third
run, "batched", adds ``--batch-size``: its images match only within the pipeline's batch invariance,
so it is compared by schedule and SSIM, not by bytes.

    python benchmarks/search_calls.py --out benchmarks/results/search_calls_cpu.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

from tmpdiff.engine.runner import Engine, device_name
from tmpdiff.measure.evaluator import Evaluator
from tmpdiff.measure.latency import measure_costs, timed_run
from tmpdiff.pipelines.registry import quiet_libraries
from tmpdiff.studies.procedure import run_search
from tmpdiff.studies.request import SearchRequest


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="shapes-dit")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--ladder", default="fp32,bf16,skip")
    parser.add_argument("--target-ssim", type=float, default=0.9)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--probe-stride", type=int, default=3, help="the 'now' run's probe stride")
    parser.add_argument("--batch-size", type=int, default=2, help="the 'batched' run's images per call (0: no run)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/search_calls.json"))
    args = parser.parse_args()
    quiet_libraries()
    ladder = tuple(args.ladder.split(","))
    request = {"model": args.model, "prompts": ("red circle",), "seeds": (0, 1), "steps": args.steps,
               "ladder": ladder, "target_ssim": args.target_ssim, "validation_seeds": (1000, 1001)}
    engine = Engine(args.device)
    probe = SearchRequest(**request)
    settings = probe.settings(probe.prompts[0], probe.seeds[0])
    costs = measure_costs(timed_run(engine, settings), settings.spec.dtype, [n for n in ladder if n != "fp32"],
                          steps=args.steps, device=args.device, compiled=engine.mode.value != "eager")
    costs_calls = dict(engine.calls)  # the CLI measures costs once per command, with or without replay
    report: dict = {"costs_phase_calls": costs_calls, "model": args.model, "steps": args.steps,
                    "ladder": list(ladder), "device": device_name(args.device), "runs": {}}
    images: dict[str, dict[str, str]] = {}
    plan = [("before", False, 1, 1), ("now", True, args.probe_stride, 1)]
    plan += [("batched", True, args.probe_stride, args.batch_size)] if args.batch_size > 1 else []
    for name, replay, stride, batch in plan:
        evaluator = Evaluator(engine)
        evaluator.costs[args.model] = costs  # one measured table for both runs: only replay and probes differ
        images[name] = _recording_images(evaluator)
        start = time.perf_counter()
        request_now = SearchRequest(**request, replay=replay, probe_stride=stride, batch_size=batch)
        found = run_search(evaluator, request_now).to_dict()
        run = {"wall_s": time.perf_counter() - start, "replay": replay, "probe_stride": stride, "batch_size": batch,
               "schedule": found["schedule"], "ssim": found["ssim"], "speedup": found["speedup"],
               "evaluations": found["evaluations"], "validation_ssim": found["validation"]["ssim"],
               "additivity_r2": found["additivity"]["r2"], "strategies": found["strategies"],
               "denoiser_calls": found["denoiser_calls"], "phase_seconds": found["phase_seconds"],
               "replay_stats": found["replay"]}
        report["runs"][name] = run
        print(json.dumps({"run": name, **{k: run[k] for k in ("wall_s", "schedule", "ssim", "speedup")},
                          "calls": run["denoiser_calls"]["total"]}), flush=True)
    report["whole_command_calls"] = {k: run["denoiser_calls"]["total"]["denoiser"] + costs_calls["denoiser"]
                                     for k, run in report["runs"].items()}
    before, now = report["whole_command_calls"]["before"], report["whole_command_calls"]["now"]
    report["fewer_calls_x"] = before / max(now, 1)
    if "batched" in report["runs"]:
        report["batched_fewer_calls_x"] = before / max(report["whole_command_calls"]["batched"], 1)
    common = images["before"].keys() & images["now"].keys()
    report["schedules_evaluated_both_ways"] = len(common)
    report["identical_images"] = all(images["before"][k] == images["now"][k] for k in common)
    report["now_at_least_as_fast"] = report["runs"]["now"]["speedup"] >= report["runs"]["before"]["speedup"] - 1e-9
    report["now_meets_floor"] = report["runs"]["now"]["ssim"] >= args.target_ssim
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report.get(k) for k in ("whole_command_calls", "fewer_calls_x", "batched_fewer_calls_x",
                                                 "schedules_evaluated_both_ways",
                                             "identical_images", "now_at_least_as_fast", "now_meets_floor")}))


def _recording_images(evaluator: Evaluator) -> dict[str, str]:
    """Records the PNG digest of every schedule the evaluator scores, by evaluation key."""
    seen: dict[str, str] = {}
    evaluate = evaluator.evaluate

    def recording(settings, schedule):  # noqa: ANN001, ANN202 - a thin wrapper of Evaluator.evaluate
        evaluation = evaluate(settings, schedule)
        seen[evaluation.record.key.digest] = hashlib.sha256(evaluation.record.png).hexdigest()
        return evaluation

    evaluator.evaluate = recording  # type: ignore[method-assign]
    return seen


if __name__ == "__main__":
    main()
