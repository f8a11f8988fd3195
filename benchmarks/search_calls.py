"""What a whole search costs in denoiser calls and seconds, with and without prefix replay.

The same search (same request, same measured cost table, no evaluation cache) twice in one process:
once computing every step of every evaluation, once replaying the denoiser outputs of schedule
prefixes already run. Both must find the same schedule with the same SSIMs.

    python benchmarks/search_calls.py --out benchmarks/results/search_calls_cpu.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tmpdiff.evaluate import Evaluator
from tmpdiff.latency import measure_costs, timed_run
from tmpdiff.models import quiet_libraries
from tmpdiff.runner import Engine, device_name
from tmpdiff.search_run import SearchRequest, run_search


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="shapes-dit")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--ladder", default="fp32,bf16,skip")
    parser.add_argument("--target-ssim", type=float, default=0.9)
    parser.add_argument("--device", default="cpu")
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
    for replay in (False, True):
        evaluator = Evaluator(engine)
        evaluator.costs[args.model] = costs  # one measured table for both runs: only replay differs
        start = time.perf_counter()
        found = run_search(evaluator, SearchRequest(**request, replay=replay))
        run = {"wall_s": time.perf_counter() - start, "schedule": found["schedule"], "ssim": found["ssim"],
               "speedup": found["speedup"], "evaluations": found["evaluations"],
               "validation_ssim": found["validation"]["ssim"], "denoiser_calls": found["denoiser_calls"],
               "phase_seconds": found["phase_seconds"], "replay": found["replay"]}
        report["runs"]["replay" if replay else "no_replay"] = run
        print(json.dumps({"replay": replay, **{k: run[k] for k in ("wall_s", "schedule", "ssim", "evaluations")},
                          "calls": run["denoiser_calls"]["total"]}), flush=True)
    plain, fast = (report["runs"][k]["denoiser_calls"]["total"]["denoiser"] + costs_calls["denoiser"]
                   for k in ("no_replay", "replay"))
    report["whole_command_calls"] = {"no_replay": plain, "replay": fast}
    report["fewer_calls_x"] = plain / max(fast, 1)
    report["same_result"] = all(report["runs"]["replay"][k] == report["runs"]["no_replay"][k]
                                for k in ("schedule", "ssim", "evaluations", "validation_ssim"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("whole_command_calls", "fewer_calls_x", "same_result")}))


if __name__ == "__main__":
    main()
