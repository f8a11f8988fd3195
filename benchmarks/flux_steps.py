"""Per-step cost of a FLUX.1-dev-sized transformer per precision, and the switching overhead.

Random weights (latency and memory only), 1024x1024 (4096 image + 512 text tokens), batch 1.
Every step runs through ``tmpdiff.apply_schedule`` exactly as in a pipeline; the text encoders
and VAE are left out (their weights are not here), so "end to end" means the denoising loop.

    python benchmarks/flux_steps.py --precisions bf16,fp8 --out benchmarks/results/flux.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from tmpdiff import Schedule, apply_schedule
from tmpdiff.variants import bank_for, module_bytes

FLUX_DEV = {"patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
            "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
            "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": (16, 56, 56)}


class DenoiseOnly:
    """The parts of a FLUX pipeline that the denoising loop touches."""

    def __init__(self, transformer, scheduler):
        self.transformer, self.scheduler = transformer, scheduler


def build(layers: float) -> DenoiseOnly:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    config = dict(FLUX_DEV, num_layers=round(19 * layers), num_single_layers=round(38 * layers))
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = FluxTransformer2DModel(**config).eval()
    torch.set_default_dtype(torch.float32)
    return DenoiseOnly(model, FlowMatchEulerDiscreteScheduler(shift=3.0))


def make_loop(pipe: DenoiseOnly, size: int = 1024):
    g = torch.Generator("cuda").manual_seed(0)
    tokens = (size // 16) ** 2
    kwargs = {
        "encoder_hidden_states": torch.randn(1, 512, 4096, device="cuda", dtype=torch.bfloat16, generator=g),
        "pooled_projections": torch.randn(1, 768, device="cuda", dtype=torch.bfloat16, generator=g),
        "guidance": torch.full((1,), 3.5, device="cuda"),
        "txt_ids": torch.zeros(512, 3, device="cuda"),
        "img_ids": torch.zeros(tokens, 3, device="cuda"),
        "return_dict": False,
    }
    latents0 = torch.randn(1, tokens, 64, device="cuda", dtype=torch.bfloat16, generator=g)

    @torch.no_grad()
    def loop(steps: int) -> float:
        pipe.scheduler.set_timesteps(steps, device="cuda")
        latents = latents0.clone()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for t in pipe.scheduler.timesteps:
            out = pipe.transformer(hidden_states=latents, timestep=(t / 1000).expand(1).to(latents.dtype), **kwargs)[0]
            latents = pipe.scheduler.step(out, t, latents, return_dict=False)[0]
        torch.cuda.synchronize()
        return time.perf_counter() - start

    return loop


def uniform_cost(pipe, loop, name: str, steps: int, compiled: bool, reference: str = "bf16") -> dict:
    schedule = Schedule((reference,) + ("skip",) * (steps - 1)) if name == "skip" else Schedule.uniform(name, steps)
    start = time.perf_counter()
    with apply_schedule(pipe, schedule, compile=compiled):
        loop(steps)  # builds, compiles, warms up
    first = time.perf_counter() - start
    with apply_schedule(pipe, schedule, compile=compiled):
        loop(steps)
    with apply_schedule(pipe, schedule, compile=compiled) as handle:
        total = loop(steps)
    measured = handle.step_seconds[1:] if name == "skip" else handle.step_seconds
    return {"precision": name, "compiled": compiled, "median_ms": 1000 * statistics.median(measured),
            "spread_ms": 1000 * statistics.pstdev(measured), "loop_s": total, "first_run_s": first}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--precisions", default="bf16,fp8")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--layers", type=float, default=1.0, help="fraction of FLUX.1-dev's blocks")
    parser.add_argument("--eager", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/flux_steps.json"))
    args = parser.parse_args()
    names = args.precisions.split(",")
    pipe = build(args.layers)
    loop = make_loop(pipe)
    report: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "steps": args.steps,
                    "parameters_b": sum(p.numel() for p in pipe.transformer.parameters()) / 1e9,
                    "weights_gib": module_bytes(pipe.transformer) / 2**30, "costs": [], "schedules": []}
    for compiled in ([False, True] if args.eager else [True]):
        for name in names + ["skip"]:
            row = uniform_cost(pipe, loop, name, args.steps, compiled)
            report["costs"].append(row)
            print(json.dumps(row), flush=True)
    compiled_cost = {r["precision"]: r["median_ms"] / 1000 for r in report["costs"] if r["compiled"]}
    low = names[-1]
    mixed = [
        ",".join([names[0], low] * (args.steps // 2)),  # switches every step
        f"{names[0]}*4,{low}*{args.steps - 8},{names[0]}*4",
        f"{names[0]}*2,{low}*{args.steps - 2}",
        f"{names[0]}*4," + ",".join([low, "skip"] * ((args.steps - 4) // 2)),
    ]
    for text in mixed:
        schedule = Schedule.parse(text, args.steps)
        with apply_schedule(pipe, schedule, compile=True):
            loop(args.steps)
        measured = statistics.median(_timed(pipe, loop, schedule, args.steps) for _ in range(3))
        predicted = sum(compiled_cost[n] for n in schedule)
        row = {"schedule": text, "measured_s": measured, "predicted_s": predicted,
               "error_pct": 100 * (measured - predicted) / predicted}
        report["schedules"].append(row)
        print(json.dumps(row), flush=True)
    report["variant_extra_gib"] = {k: v / 2**30 for k, v in bank_for(pipe.transformer).memory_bytes().items()}
    report["max_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("device", "weights_gib", "variant_extra_gib", "max_allocated_gib")}))


def _timed(pipe, loop, schedule, steps) -> float:
    with apply_schedule(pipe, schedule, compile=True):
        return loop(steps)


if __name__ == "__main__":
    main()
