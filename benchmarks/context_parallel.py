"""One FLUX.1-dev-sized image's denoising over 1 or N GPUs (diffusers' context parallelism, Ulysses), with a
per-step schedule switching precisions as on one GPU.

    torchrun --nproc-per-node 1 benchmarks/context_parallel.py --out cp1.json
    torchrun --nproc-per-node 2 benchmarks/context_parallel.py --out cp2.json --compare-to cp1.json

Compiled variants replay CUDA graphs of their whole call on one GPU; a split denoiser's only with
``TMPDIFF_CUDA_GRAPHS=all`` (``TMPDIFF_CUDA_GRAPHS=0``: none), so compare runs under the same setting.

Random weights (seed 0 on every rank, so every rank holds the same model), 1024², 28 steps, compiled per block
as tmpdiff compiles; one untimed loop per schedule (compilation, warm-up), then the median of three timed loops.
Rank 0 writes the times and the final latents' statistics; ``--compare-to`` reads the 1-GPU run's latents
and reports the largest difference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
from step_costs import build, denoise, loop  # benchmarks/ is the script's folder, so on sys.path

from tmpdiff import Schedule, Status, apply_schedule, precision_status
from tmpdiff.pipelines import context_parallel as parallel
from tmpdiff.variants.bank import bank_for

SCHEDULES = ["bf16*28", "bf16*4,fp8*20,bf16*4", "bf16*4,fp8a8*20,bf16*4"]


def final_latents(pipe, steps: int) -> torch.Tensor:
    pipe.scheduler.set_timesteps(steps, device="cuda")
    return denoise(pipe, pipe.latents0.clone()).float().cpu()


def profile_loop(pipe, schedule: Schedule, out: Path) -> None:
    """One timed loop under the profiler: this rank's GPU milliseconds by kernel, collectives (NCCL) summed
    apart, and the loop's wall time, as JSON."""
    from torch.profiler import ProfilerActivity, profile

    with apply_schedule(pipe, schedule, compile=True), profile(activities=[ProfilerActivity.CUDA]) as prof:
        wall = loop(pipe, 28)
    kernels: dict[str, float] = {}
    for event in prof.key_averages():
        if event.device_type.name == "CUDA" and event.self_device_time_total > 0:
            kernels[event.key[:120]] = kernels.get(event.key[:120], 0.0) + event.self_device_time_total / 1e3
    nccl = sum(ms for name, ms in kernels.items() if "nccl" in name.lower())
    top = dict(sorted(((k, round(v, 2)) for k, v in kernels.items()), key=lambda kv: -kv[1])[:20])
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"schedule": str(schedule), "loop_wall_s": wall, "gpu_ms": round(sum(kernels.values()), 1),
              "collectives_ms": round(nccl, 1), "largest_kernels_ms": top}
    out.write_text(json.dumps(report, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--schedules", default=";".join(SCHEDULES))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--compare-to", type=Path, default=None, help="a 1-GPU run's --out, for the difference")
    parser.add_argument("--profile", type=Path, default=None,
                        help="folder: one more loop per schedule under the profiler, each rank's largest GPU "
                             "kernels (collectives apart) written there")
    args = parser.parse_args()
    start = time.perf_counter()
    rank, world = parallel.init_process_group()
    torch.manual_seed(0)
    pipe = build("flux")
    if world > 1:
        parallel.enable_context_parallel(pipe, world)
    rows = []
    for text in args.schedules.split(";"):
        schedule = Schedule.parse(text, 28)
        if not all(precision_status(name, "cuda").status is Status.REAL for name in set(schedule)):
            continue  # e.g. fp8a8 without the fa3-fwd wheel
        with apply_schedule(pipe, schedule, compile=True):
            latents = final_latents(pipe, 28)  # builds and compiles; its latents are the compared result
        times = []
        for _ in range(3):
            with apply_schedule(pipe, schedule, compile=True) as handle:
                times.append(loop(pipe, 28))
        rows.append({"schedule": text, "loop_s": statistics.median(times), "runs_s": times,
                     "steps_run": sorted(set(handle.steps_run)), "latents": latents})
        if args.profile is not None:
            profile_loop(pipe, schedule, args.profile / f"rank{rank}_schedule{len(rows)}.json")
    if rank == 0:
        report = {"device": torch.cuda.get_device_name(), "gpus": world, "torch": torch.__version__,
                  "whole_script_s": time.perf_counter() - start,
                  "memory": {k: v / 2**30 for k, v in bank_for(pipe.transformer).memory_bytes().items()},
                  "rows": [{k: v for k, v in r.items() if k != "latents"} for r in rows]}
        torch.save({r["schedule"]: r["latents"] for r in rows}, args.out.with_suffix(".pt"))
        if args.compare_to is not None:
            base = json.loads(args.compare_to.read_text())
            single = torch.load(args.compare_to.with_suffix(".pt"))
            by_schedule = {r["schedule"]: r for r in base["rows"]}
            for row, r in zip(report["rows"], rows, strict=True):
                ref = single[row["schedule"]]
                row["max_abs_difference_vs_1_gpu"] = float((r["latents"] - ref).abs().max())
                error = (r["latents"] - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()
                row["relative_rms_vs_1_gpu"] = float(error)
                row["speedup_vs_1_gpu"] = by_schedule[row["schedule"]]["loop_s"] / row["loop_s"]
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
