"""Compiled fp8 step time by torchao scaling granularity and Inductor tuning, against compiled bf16.

    python benchmarks/fp8_granularity.py --out benchmarks/results/fp8_granularity_h100.json

FLUX.1-dev-sized transformer (random weights), 1024², batch 1, each variant compiled regionally (one
graph per block class, as tmpdiff does); median of 20 steps after 3 warm-up steps. Rows: bf16; fp8 with
per-row scales (tmpdiff's fp8); fp8 with one scale per tensor; per-row with Inductor's
coordinate-descent tuning on (torchao's default, which tmpdiff turns off for compile time).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from compile_probe import flux_inputs  # benchmarks/ is the script's folder, so on sys.path

from tmpdiff.pipelines import random_weights as realsize


@torch.no_grad()
def time_steps(model, kwargs: dict, warmup: int = 3, steps: int = 20) -> tuple[float, float]:
    start = time.perf_counter()
    for _ in range(warmup):
        model(**kwargs)
    torch.cuda.synchronize()
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        model(**kwargs)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return first, 1000 * statistics.median(times)


def variant(base, granularity: str | None):
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_

    model = copy.deepcopy(base)
    if granularity:
        scale = PerRow() if granularity == "row" else PerTensor()
        quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=scale, set_inductor_config=False))
    model.compile_repeated_blocks(fullgraph=True)
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fp8_granularity.json"))
    args = parser.parse_args()
    base = realsize.flux_transformer()
    kwargs = flux_inputs()
    rows = []
    for name, granularity, tuning in (("bf16", None, False), ("fp8 per-row", "row", False),
                                      ("fp8 per-tensor", "tensor", False), ("fp8 per-row + tuning", "row", True)):
        torch._dynamo.reset()  # else the blocks' code, compiled for the previous variant, is reused as it is
        torch._inductor.config.coordinate_descent_tuning = tuning
        model = variant(base, granularity)
        first, median = time_steps(model, kwargs)
        rows.append({"variant": name, "first_3_steps_s": round(first, 1), "median_ms": round(median, 2)})
        print(json.dumps(rows[-1]), flush=True)
        del model
        torch.cuda.empty_cache()
    bf16 = rows[0]["median_ms"]
    for row in rows:
        row["vs_bf16"] = round(bf16 / row["median_ms"], 3)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
