"""Per-step cost of real-size denoisers per precision, eager and compiled, plus switching and skip.

Random weights (latency and memory only), native resolution, one prompt. Every step goes through
``tmpdiff.apply_schedule`` exactly as in a pipeline; text encoders and VAE are left out, so a
"loop" is the denoising loop alone (see ``end_to_end.py`` for whole pipelines).

    python benchmarks/step_costs.py --arch flux --compiled bf16,fp8,int8 --eager bf16,fp8,int8,int8wo,fp8wo,int4wo
    python benchmarks/step_costs.py --arch flux --eager "" --compiled bf16,fp8,fp8a8 --graphs both --no-mixed
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from tmpdiff import Schedule, apply_schedule, precision_status
from tmpdiff.pipelines import random_weights as realsize
from tmpdiff.variants.bank import bank_for
from tmpdiff.variants.copies import module_bytes


class DenoiseOnly:
    """The parts of a pipeline that the denoising loop touches."""

    def __init__(self, denoiser, scheduler, call, latents, reference):
        self.transformer, self.scheduler, self.call, self.latents0, self.reference = (
            denoiser, scheduler, call, latents, reference)


def build(arch: str, frames: int = 81) -> DenoiseOnly:
    from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

    g = torch.Generator("cuda").manual_seed(0)

    def randn(*shape, dtype=torch.bfloat16):
        return torch.randn(*shape, device="cuda", dtype=dtype, generator=g)

    if arch == "flux":  # 1024x1024: 4096 image tokens + 512 text tokens, guidance-distilled (batch 1)
        model = realsize.flux_transformer()
        extra = {"encoder_hidden_states": randn(1, 512, 4096), "pooled_projections": randn(1, 768),
                 "guidance": torch.full((1,), 3.5, device="cuda"), "txt_ids": torch.zeros(512, 3, device="cuda"),
                 "img_ids": torch.zeros(4096, 3, device="cuda"), "return_dict": False}

        def call(latents, t):
            return model(hidden_states=latents, timestep=(t / 1000).expand(1).to(latents.dtype), **extra)[0]

        return DenoiseOnly(model, FlowMatchEulerDiscreteScheduler(shift=3.0), call, randn(1, 4096, 64), "bf16")
    if arch == "sd3":  # SD3.5-large at 1024x1024, classifier-free guidance batches 2
        model = realsize.sd35_large_transformer()
        extra = {"encoder_hidden_states": randn(2, 333, 4096), "pooled_projections": randn(2, 2048),
                 "return_dict": False}

        def call(latents, t):
            return model(hidden_states=torch.cat([latents] * 2), timestep=t.expand(2), **extra)[0].chunk(2)[0]

        return DenoiseOnly(model, FlowMatchEulerDiscreteScheduler(shift=3.0), call, randn(1, 16, 128, 128), "bf16")
    if arch == "sdxl":  # SDXL base at 1024x1024 in fp16, classifier-free guidance batches 2
        model = realsize.sdxl_unet()
        half = torch.float16
        extra = {"encoder_hidden_states": randn(2, 77, 2048, dtype=half), "return_dict": False,
                 "added_cond_kwargs": {"text_embeds": randn(2, 1280, dtype=half),
                                       "time_ids": torch.tensor([[1024, 1024, 0, 0, 1024, 1024]] * 2,
                                                                device="cuda", dtype=half)}}
        scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                           timestep_spacing="leading", steps_offset=1)

        def call(latents, t):
            x = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            return model(x, t, **extra)[0].chunk(2)[0]

        return DenoiseOnly(model, scheduler, call, randn(1, 4, 128, 128, dtype=half), "fp16")
    if arch == "wan14b":  # Wan 2.1 T2V 14B at 832x480, `frames` frames; classifier-free guidance: 2 calls a step
        model = realsize.wan_14b_transformer()
        conditions = [randn(1, 512, 4096), randn(1, 512, 4096)]  # the prompt's and the negative prompt's
        latent_frames = (frames - 1) // 4 + 1

        def call(latents, t):
            cond, uncond = (model(hidden_states=latents, timestep=t.expand(1), encoder_hidden_states=c,
                                  return_dict=False)[0] for c in conditions)
            return uncond + 5.0 * (cond - uncond)

        return DenoiseOnly(model, FlowMatchEulerDiscreteScheduler(shift=5.0), call,
                           randn(1, 16, latent_frames, 60, 104), "bf16")
    raise ValueError(f"unknown --arch {arch!r}: flux, sd3, sdxl or wan14b")


@torch.no_grad()
def denoise(pipe: DenoiseOnly, latents: torch.Tensor) -> torch.Tensor:
    """The denoising loop over the scheduler's timesteps (set beforehand); the final latents."""
    for t in pipe.scheduler.timesteps:
        out = pipe.call(latents, t)
        latents = pipe.scheduler.step(out, t, latents, return_dict=False)[0]
    return latents


def loop(pipe: DenoiseOnly, steps: int) -> float:
    """Seconds of one denoising loop of ``steps`` steps."""
    pipe.scheduler.set_timesteps(steps, device="cuda")
    latents = pipe.latents0.clone()
    torch.cuda.synchronize()
    start = time.perf_counter()
    denoise(pipe, latents)
    torch.cuda.synchronize()
    return time.perf_counter() - start


def uniform_cost(pipe: DenoiseOnly, name: str, steps: int, compiled: bool, graphs: bool | None = None) -> dict:
    ref = pipe.reference
    schedule = Schedule((ref,) + ("skip",) * (steps - 1)) if name == "skip" else Schedule.uniform(name, steps)
    status = precision_status(name, "cuda")
    row = {"precision": name, "compiled": compiled, "status": status.status.value}
    if compiled and graphs is not None:
        row["cuda_graphs"] = graphs
    try:
        start = time.perf_counter()
        with apply_schedule(pipe, schedule, compile=compiled, cuda_graphs=graphs):
            loop(pipe, steps)  # builds, compiles, captures, warms up
        row["first_run_s"] = time.perf_counter() - start
        with apply_schedule(pipe, schedule, compile=compiled, cuda_graphs=graphs) as handle:
            row["loop_s"] = loop(pipe, steps)
    except Exception as exc:  # a failing precision is reported, not fatal to the report
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        torch.compiler.reset()
        return row
    measured = handle.step_seconds[1:] if name == "skip" else handle.step_seconds
    row.update({"median_ms": 1000 * statistics.median(measured), "spread_ms": 1000 * statistics.pstdev(measured)})
    return row


def mixed_schedules(ref: str, low: str, steps: int) -> list[str]:
    return [
        ",".join([ref, low] * (steps // 2)),  # switches precision at every step
        f"{ref}*4,{low}*{steps - 8},{ref}*4",
        f"{ref}*2,{low}*{steps - 2}",
        f"{ref}*4," + ",".join([low, "skip"] * ((steps - 4) // 2)),
    ]


def switching_overhead(pipe: DenoiseOnly, ref: str, low: str, steps: int, repeats: int = 5) -> dict:
    """A schedule alternating two resident variants every step against the mean of the two uniform
    schedules, each timed as whole loops interleaved in one run: what switching itself costs."""
    schedules = {"alternating": Schedule.parse(",".join([ref, low] * (steps // 2)), steps),
                 ref: Schedule.uniform(ref, steps), low: Schedule.uniform(low, steps)}
    times: dict[str, list[float]] = {name: [] for name in schedules}
    for _ in range(repeats):
        for name, schedule in schedules.items():
            with apply_schedule(pipe, schedule, compile=True):
                times[name].append(loop(pipe, steps))
    medians = {name: statistics.median(values) for name, values in times.items()}
    expected = (medians[ref] + medians[low]) / 2
    return {"steps": steps, "medians_s": medians,
            "overhead_pct": 100 * (medians["alternating"] - expected) / expected}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="flux", choices=["flux", "sd3", "sdxl", "wan14b"])
    parser.add_argument("--frames", type=int, default=81, help="video frames (wan14b)")
    parser.add_argument("--no-mixed", action="store_true",
                        help="uniform step costs only: no mixed-schedule loops or switching overhead")
    parser.add_argument("--compiled", default="bf16,fp8", help="precisions timed with torch.compile")
    parser.add_argument("--eager", default="bf16,fp8", help="precisions timed without compilation")
    parser.add_argument("--graphs", choices=["on", "off", "both"], default="on",
                        help="compiled rows with CUDA graphs of the whole call, without, or both (each precision "
                             "timed both ways, one after the other); mixed schedules follow $TMPDIFF_CUDA_GRAPHS")
    parser.add_argument("--steps", type=int, default=28, help="steps of the mixed-schedule loops")
    parser.add_argument("--cost-steps", type=int, default=8, help="steps of each uniform cost loop")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    pipe = build(args.arch, args.frames)
    ref = pipe.reference
    report: dict = {"arch": args.arch, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                    "reference": ref, "parameters_b": sum(p.numel() for p in pipe.transformer.parameters()) / 1e9,
                    "weights_gib": module_bytes(pipe.transformer) / 2**30, "costs": [], "schedules": []}
    graphs = {"on": [True], "off": [False], "both": [False, True]}[args.graphs]
    plan = [(n, False, None) for n in args.eager.split(",") if n]
    plan += [(n, True, g) for n in args.compiled.split(",") if n for g in graphs]
    for name, compiled, graphed in [*plan, ("skip", True, None)]:
        row = uniform_cost(pipe, name, args.cost_steps, compiled, graphed)
        report["costs"].append(row)
        print(json.dumps(row), flush=True)
    out = args.out or Path(f"benchmarks/results/{args.arch}_steps.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.arch == "wan14b":
        report["shape"] = {"frames": args.frames, "height": 480, "width": 832, "calls_per_step": 2}
    out.write_text(json.dumps(report, indent=2) + "\n")  # the costs kept even if a later part is cut off
    if args.no_mixed:
        return
    compiled_ms = {r["precision"]: r["median_ms"] / 1000 for r in report["costs"]
                   if r["compiled"] and "median_ms" in r and r.get("cuda_graphs", True) == graphs[-1]}
    low = args.compiled.split(",")[1] if "," in args.compiled else ref
    for text in mixed_schedules(ref, low, args.steps):
        schedule = Schedule.parse(text, args.steps)
        with apply_schedule(pipe, schedule, compile=True):
            loop(pipe, args.steps)
        runs = []
        for _ in range(3):
            with apply_schedule(pipe, schedule, compile=True):
                runs.append(loop(pipe, args.steps))
        predicted = sum(compiled_ms[n] for n in schedule)
        row = {"schedule": text, "measured_s": statistics.median(runs), "predicted_s": predicted}
        row["error_pct"] = 100 * (row["measured_s"] - predicted) / predicted
        report["schedules"].append(row)
        print(json.dumps(row), flush=True)
    report["switching"] = switching_overhead(pipe, ref, low, args.steps)
    print(json.dumps(report["switching"]), flush=True)
    extra = bank_for(pipe.transformer).memory_bytes()
    report["variant_extra_gib"] = {k: v / 2**30 for k, v in extra.items()}
    eager_extra = {k: v for k, v in extra.items() if not k.endswith("+compiled")}
    report["resident_set_gib"] = report["weights_gib"] + sum(eager_extra.values()) / 2**30
    report["max_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("device", "weights_gib", "variant_extra_gib", "max_allocated_gib")}))


if __name__ == "__main__":
    main()
