"""Where a FLUX.1-dev-sized step's GPU time goes, per precision: CUDA kernels grouped by kind.

    python benchmarks/step_profile.py --precisions bf16,fp8,fp8a8 --out benchmarks/results/step_profile_h200.json

Random weights, 1024², compiled as tmpdiff compiles (regionally), compile cache warm after a first loop;
four steps under ``torch.profiler``; each kernel's GPU time summed into groups by its name (GEMMs,
attention, fp8 quantization, the rest of Inductor's fused element-wise kernels), per step.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch
from step_costs import build, loop  # benchmarks/ is the script's folder, so on sys.path

from tmpdiff import Schedule, apply_schedule

GROUPS = (("attention", ("flash", "fmha", "attention", "cudnn", "sdpa")),
          ("gemm", ("gemm", "sm90_xmma", "cutlass", "_scaled_mm", "nvjet", "matmul")),
          ("quantize", ("amax", "abs_max", "float8", "to_fp8")))


def group_of(kernel: str) -> str:
    lowered = kernel.lower()
    for group, needles in GROUPS:
        if any(n in lowered for n in needles):
            return group
    return "other (fused element-wise, norms, copies)"


def profile(pipe, name: str, steps: int = 4) -> dict:
    schedule = Schedule.uniform(name, steps)
    with apply_schedule(pipe, schedule, compile=True):
        loop(pipe, steps)  # builds and compiles
    with apply_schedule(pipe, schedule, compile=True), torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        wall = loop(pipe, steps)
    groups: dict[str, float] = defaultdict(float)
    top: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        ms = event.device_time_total / 1000 / steps
        if ms > 0:
            groups[group_of(event.key)] += ms
            top[event.key] += ms
    largest = sorted(top.items(), key=lambda kv: -kv[1])[:12]
    return {"precision": name, "wall_ms_per_step": 1000 * wall / steps,
            "gpu_ms_per_step": {k: round(v, 2) for k, v in sorted(groups.items())},
            "largest_kernels_ms_per_step": {k[:120]: round(v, 2) for k, v in largest}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--precisions", default="bf16,fp8,fp8a8")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/step_profile.json"))
    args = parser.parse_args()
    pipe = build("flux")
    rows = []
    for name in args.precisions.split(","):
        rows.append(profile(pipe, name))
        print(json.dumps(rows[-1]), flush=True)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "arch": "flux", "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
