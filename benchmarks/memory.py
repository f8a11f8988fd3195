"""Bytes, not only seconds: a FLUX.1-dev-sized pipeline under GPU memory budgets, against stock diffusers.

One process, one run of each (ratios from the same run): the stock baseline a 24 GiB user has today (diffusers' bf16
pipeline, the transformer under block-level group offloading with CUDA streams, encoders and VAE resident, eager),
then tmpdiff without a budget and at each budget (``--gpu-memory``, the allocator capped to it), each schedule's
second image timed, each row from a closed engine as a ``generate`` process would run it (``--no-fresh``: every
variant built so far stays, as in the rows measured before 2026-12-08). Every row names its schedule, budget, peak
and speed-up against the stock baseline; images under a budget are compared with the unbudgeted ones; rows are
written as they are measured.

    python benchmarks/memory.py --budgets 24,16,12 --out benchmarks/results/memory_h200.json
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tmpdiff.engine.runner import Engine, device_name, telling_plans_to
from tmpdiff.engine.settings import RunSettings
from tmpdiff.measure.metrics import ssim
from tmpdiff.memory.meter import GIB, status_bytes

EDGED = "bf16*4,fp8*20,bf16*4"
SCHEDULES = ("bf16*28", "bf16*4,fp8*20,bf16*4", "fp8r*4,fp8*20,fp8r*4", "fp8*28")


def host_link() -> float:
    """Pinned host-to-device copy rate in GB/s (what streaming runs at on this machine)."""
    host = torch.empty(1 << 30, dtype=torch.uint8).pin_memory()
    device = torch.empty_like(host, device="cuda")
    device.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(4):
        device.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    return 4 * (1 << 30) / (time.perf_counter() - start) / 1e9


def host_now() -> dict[str, float]:
    """The process's host memory now (GB): anonymous (the OS cannot drop it), file-backed (mmap'd checkpoint pages
    it can) and page-locked."""
    names = {"RssAnon": "host_anon_gb", "RssFile": "host_file_gb", "VmPin": "host_vmpin_gb"}
    return {names[key]: round(value / 1e9, 2) for key, value in status_bytes(names).items()}


def stock(settings: RunSettings, budget: int) -> dict[str, Any]:
    """Stock diffusers at ``budget`` GiB: bf16 transformer group-offloaded block by block with streams."""
    from tmpdiff.pipelines.registry import load_pipeline

    torch.cuda.set_per_process_memory_fraction(budget * GIB / torch.cuda.mem_get_info()[1])
    pipe = load_pipeline(settings.model, "cuda", host=True)
    pipe.transformer.enable_group_offload(onload_device=torch.device("cuda"), offload_device=torch.device("cpu"),
                                          offload_type="block_level", num_blocks_per_group=1, use_stream=True)
    for name in ("text_encoder", "text_encoder_2", "vae"):
        getattr(pipe, name).to("cuda")
    seconds = []
    for _ in range(2):  # the second image is timed
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with torch.no_grad():
            pipe(**settings.call_kwargs("cuda"), output_type="pil")
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    row = {"config": "stock diffusers bf16, transformer group offloading (block level, streams), encoders resident",
           "schedule": "bf16*28", "budget_gib": budget, "seconds": round(seconds[-1], 3),
           "first_image_seconds": round(seconds[0], 3), "peak_gib": round(torch.cuda.max_memory_allocated() / GIB, 2)}
    del pipe
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(1.0)
    return row


def ours(engine: Engine, settings: RunSettings, budget: float | None, plans: list[str],
         schedules: list[str], landed: Any = None, fresh: bool = True) -> list[dict[str, Any]]:
    """Each schedule's second image under ``budget``; ``landed(row)`` hears of each row as it is measured. With
    ``fresh`` each schedule starts from a closed engine, as a ``generate`` process does: only its own variants
    exist (weights are memory-mapped, so loading again takes seconds; variants come from the compile cache)."""
    engine.set_gpu_memory(budget)
    rows = []
    for schedule in schedules:
        if fresh:
            engine.close()
        result = engine.generate(settings, schedule)  # the engine warms cold precisions up before it times
        assert result.memory is not None
        placer = engine.placer(settings.model)
        streamed = placer.plan.per_image if placer is not None and placer.plan is not None else None
        rows.append({"schedule": schedule, "budget_gib": budget, "seconds": round(result.seconds, 3),
                     "peak_gib": round((result.memory.peak_bytes or 0) / GIB, 2), "plan": plans[-1] if plans else "",
                     "host_peak_gb": round((result.memory.host_peak_bytes or 0) / 1e9, 2),
                     "pinned_gb": round(result.memory.pinned_bytes / 1e9, 2),
                     "streamed_gb_per_image": round(streamed / 1e9, 2) if streamed is not None else None,
                     **host_now(), "placement_seconds_so_far": round(engine.set_up.placement, 2),
                     "image": np.asarray(result.image)})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "image"}), flush=True)
        if landed is not None:
            landed(rows[-1])
    return rows


def _public(row: dict[str, Any], result: dict[str, Any], unbudgeted: dict[str, Any] | None = None) -> dict[str, Any]:
    """A row as the results file keeps it: no pixels, its speed-up against the stock baseline, and its transfer
    floor (the bytes it streams an image at the measured host link, or its unbudgeted seconds, whichever is larger)
    with the fraction of it reached."""
    public = {k: v for k, v in row.items() if k != "image"}
    base = result.get("stock", {}).get("seconds")
    if base:
        public["speedup_vs_stock"] = round(base / row["seconds"], 2)
    if unbudgeted is not None and row.get("streamed_gb_per_image") is not None:
        floor = max(row["streamed_gb_per_image"] / result["host_link_gb_s"], unbudgeted["seconds"])
        public["floor_seconds"] = round(floor, 3)
        public["fraction_of_floor"] = round(floor / row["seconds"], 3)
    return public


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="flux-dev-random")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--budgets", default="24,16,12", help="GiB, comma-separated")
    parser.add_argument("--schedules", default=";".join(SCHEDULES), help="';'-separated schedules")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--stock", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--fresh", action=argparse.BooleanOptionalAction, default=True,
                        help="each row from a closed engine, as a generate process (default); --no-fresh keeps every "
                             "variant built so far")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    budgets = [float(b) for b in args.budgets.split(",") if b]
    schedules = [s for s in args.schedules.split(";") if s]
    settings = RunSettings(model=args.model, steps=args.steps, size=args.size)
    result: dict[str, Any] = {"device": device_name("cuda"), "torch": torch.__version__, "model": args.model,
                              "size": args.size, "steps": args.steps, "compiled": args.compile,
                              "host_link_gb_s": round(host_link(), 1)}
    if args.stock:
        result["stock"] = stock(settings, int(max(budgets)))
        print(json.dumps(result["stock"]), flush=True)
    plans: list[str] = []
    engine = Engine("cuda", compile=args.compile)

    def landed(row: dict[str, Any]) -> None:
        result.setdefault("rows_so_far", []).append({k: v for k, v in row.items() if k != "image"})
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    with telling_plans_to(lambda model, line: plans.append(line)):  # every plan of the runs below, to their rows
        free = ours(engine, settings, None, plans, schedules, landed, args.fresh)
        result["unbudgeted"], result["rows"] = [_public(r, result) for r in free], []
        result.pop("rows_so_far", None)
        edged = next((r["image"] for r in free if r["schedule"] == EDGED), None)
        for row, public in zip(free, result["unbudgeted"], strict=True):
            if edged is not None and "fp8r" in row["schedule"]:
                public["ssim_vs_bf16_edges"] = round(ssim(row["image"], edged), 5)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        for budget in budgets:  # each row written as it comes: a long run keeps what it measured
            budgeted = ours(engine, settings, budget, plans, schedules, landed, args.fresh)
            edged = next((r["image"] for r in budgeted if r["schedule"] == EDGED), None)
            for row, unbudgeted in zip(budgeted, free, strict=True):
                row["ssim_vs_unbudgeted"] = round(ssim(row["image"], unbudgeted["image"]), 5)
                row["bit_equal_to_unbudgeted"] = bool(np.array_equal(row["image"], unbudgeted["image"]))
                if edged is not None and "fp8r" in row["schedule"]:  # the residual rung against 16-bit edges
                    row["ssim_vs_bf16_edges"] = round(ssim(row["image"], edged), 5)
                result["rows"].append(_public(row, result, unbudgeted))
            result.pop("rows_so_far", None)  # the budget's rows are complete, with their comparisons
            args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("rows", "unbudgeted")}))


if __name__ == "__main__":
    main()
