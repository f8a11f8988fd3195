"""Where the first compiled run of a FLUX-sized transformer spends its time, per precision.

Builds the FLUX.1-dev-sized transformer (random weights) on CUDA, makes one precision variant
through tmpdiff's own bank, compiles it per repeated block, and reports the first call's seconds,
the number of graphs Dynamo made, the recompiles and why, Inductor's cache hits, and the steady
step time. Run it in fresh processes to compare settings:

    TORCH_LOGS=recompiles python benchmarks/compile_probe.py --precision fp8 --dynamic auto
    python benchmarks/compile_probe.py --precision fp8 --dynamic false
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch._dynamo.utils import counters

from tmpdiff.pipelines import random_weights as realsize
from tmpdiff.variants.bank import Mode, bank_for
from tmpdiff.variants.compile_cache import CompileCache
from tmpdiff.variants.copies import copy_module


def flux_inputs() -> dict:
    g = torch.Generator("cuda").manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, device="cuda", dtype=torch.bfloat16, generator=g)

    return {"hidden_states": randn(1, 4096, 64), "encoder_hidden_states": randn(1, 512, 4096),
            "pooled_projections": randn(1, 768), "guidance": torch.full((1,), 3.5, device="cuda"),
            "timestep": torch.full((1,), 0.5, device="cuda", dtype=torch.bfloat16),
            "txt_ids": torch.zeros(512, 3, device="cuda"), "img_ids": torch.zeros(4096, 3, device="cuda"),
            "return_dict": False}


def steady_ms(model, inputs, repeats: int = 6) -> float:
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        model(**inputs)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


class _Timed(torch.nn.Module):
    """Times the first call of the (compiled) block it wraps; outside the compiled region."""

    def __init__(self, block: torch.nn.Module, row: dict) -> None:
        super().__init__()
        self.block, self.row, self.done = block, row, False

    def forward(self, *args, **kwargs):
        if self.done:
            return self.block(*args, **kwargs)
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = self.block(*args, **kwargs)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        self.done = True
        self.row["block_first_s"].append(round(seconds, 3))
        print(f"block {len(self.row['block_first_s'])} {type(self.block).__name__}: {seconds:.2f} s", flush=True)
        return out


def _time_blocks(model, row: dict) -> None:
    row["block_first_s"] = []
    for blocks in (model.transformer_blocks, model.single_transformer_blocks):
        for i, block in enumerate(blocks):
            blocks[i] = _Timed(block, row)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--precision", default="fp8")
    parser.add_argument("--dynamic", choices=["auto", "false"], default="false")
    parser.add_argument("--save-artifacts", default=None)
    parser.add_argument("--load-artifacts", default=None)
    parser.add_argument("--mode", choices=["compiled", "aot"], default="compiled")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--eager-first", action="store_true", help="time the eager variant's first calls first")
    parser.add_argument("--block-times", action="store_true", help="time each block's first call")
    parser.add_argument("--stacks", default=None, help="dump every thread's stack to this file every 30 s")
    args = parser.parse_args()
    if args.stacks:
        import faulthandler

        faulthandler.dump_traceback_later(30, repeat=True, file=open(args.stacks, "w"))  # noqa: SIM115
    torch.manual_seed(0)
    model = realsize.flux_transformer()
    inputs = flux_inputs()
    bank = bank_for(model)
    row: dict = {"precision": args.precision, "dynamic": args.dynamic, "mode": args.mode}
    if args.load_artifacts:
        start = time.perf_counter()
        with open(args.load_artifacts, "rb") as f:
            torch.compiler.load_cache_artifacts(f.read())
        row["load_artifacts_s"] = time.perf_counter() - start
    with torch.no_grad():
        if bank.needs_rows(args.precision):
            from tmpdiff.variants.bank import record_linear_rows

            with record_linear_rows(model) as rows:
                model(**inputs)
            bank.linear_rows = rows
        if args.mode == "aot":  # tmpdiff's own path: export + AOTInductor per block class, through the cache
            cache = CompileCache(args.cache_dir)
            cache.activate()
            start = time.perf_counter()
            variant = bank.build(args.precision, Mode.AOT, example=((), inputs), cache=cache)
            row["build_s"] = time.perf_counter() - start
            row["from_cache"] = bank.builds[(args.precision, Mode.AOT)].from_cache
            start = time.perf_counter()
            variant(**inputs)
            torch.cuda.synchronize()
            row["first_call_s"] = time.perf_counter() - start
            row["ref_diff"] = (variant(**inputs)[0].float() - bank.build(args.precision, Mode.EAGER)(**inputs)[0]
                               .float()).abs().mean().item()
        else:
            eager = bank.build(args.precision, Mode.EAGER)
            if args.eager_first:
                for label in ("eager_first_call_s", "eager_second_call_s"):
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                    eager(**inputs)
                    torch.cuda.synchronize()
                    row[label] = time.perf_counter() - start
                print("PROBE " + json.dumps(row), flush=True)
            variant = copy_module(eager, share=True)
            kwargs = {"fullgraph": True} if args.dynamic == "auto" else {"fullgraph": True, "dynamic": False}
            variant.compile_repeated_blocks(**kwargs)
            if args.block_times:
                _time_blocks(variant, row)
            torch.cuda.synchronize()
            start = time.perf_counter()
            variant(**inputs)
            torch.cuda.synchronize()
            row["first_call_s"] = time.perf_counter() - start
        row["steady_ms"] = steady_ms(variant, inputs)
    row["unique_graphs"] = counters["stats"]["unique_graphs"]
    row["inductor"] = {k: v for k, v in counters["inductor"].items() if "cache" in k}
    row["aot_autograd"] = {k: v for k, v in counters["aot_autograd"].items() if "cache" in k}
    if args.save_artifacts:
        start = time.perf_counter()
        blob, _info = torch.compiler.save_cache_artifacts()
        with open(args.save_artifacts, "wb") as f:
            f.write(blob)
        row["save_artifacts_s"] = time.perf_counter() - start
        row["artifacts_mb"] = len(blob) / 2**20
    print(torch._dynamo.utils.compile_times(repr="str"), flush=True)
    print("PROBE " + json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
