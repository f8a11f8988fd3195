"""Does Dynamo's caching precompile remove a warm process's re-tracing, with the torch this machine has?

Each row is fresh processes sharing one cache folder: a cold one that compiles and stores
``torch.compiler.save_cache_artifacts()``, then a warm one that loads them first. Rows: four plain
Linear-GELU blocks (each compiled), then ``tmpdiff warmup`` of a tiny FLUX (its repeated blocks compiled by
diffusers' ``compile_repeated_blocks``), with ``TORCH_CACHING_PRECOMPILE`` off and on, and int8 weights with it on.

    python benchmarks/precompile_probe.py --out benchmarks/results/caching_precompile_probe_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

BLOCKS = r"""
import json, os, sys, time
import torch
from torch._dynamo.utils import compilation_time_metrics, counters
torch._dynamo.config.caching_precompile = sys.argv[2] == "on"
stored = os.path.join(sys.argv[1], "artifacts.bin")
if os.path.exists(stored):
    torch.compiler.load_cache_artifacts(open(stored, "rb").read())

class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(64, 64), torch.nn.Linear(64, 64)

    def forward(self, x):
        return x + self.b(torch.nn.functional.gelu(self.a(x)))

model = torch.nn.Sequential(*[Block() for _ in range(4)])
for block in model:
    block.compile(fullgraph=True, dynamic=False)
start = time.perf_counter()
with torch.no_grad():
    model(torch.randn(8, 64))
print(json.dumps({"first_call_s": round(time.perf_counter() - start, 3),
                  "dynamo_trace_s": round(sum(compilation_time_metrics.get("bytecode_tracing", ())), 3),
                  "inductor_compilations": counters["inductor"]["fxgraph_cache_miss"],
                  "dynamo_cache": dict(counters["dynamo_cache"])}))
if not os.path.exists(stored):
    open(stored, "wb").write(torch.compiler.save_cache_artifacts()[0])
"""


def run(command: list[str], folder: Path, precompile: bool) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(folder / "inductor"),
           "TORCH_CACHING_PRECOMPILE": "1" if precompile else "0", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"exit": done.returncode, "error": done.stderr.strip().splitlines()[-1][:300]}
    return json.loads(lines[-1])


def blocks_rows(precompile: bool) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "blocks.py"  # a module file: precompile finds code by its module
        script.write_text(BLOCKS)
        command = [sys.executable, str(script), folder, "on" if precompile else "off"]
        return {"cold": run(command, Path(folder), precompile), "warm": run(command, Path(folder), precompile)}


def warmup_rows(precision: str, precompile: bool) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "tmpdiff", "--device", "cpu", "warmup", "--model", "tiny-flux",
                   "--precisions", precision, "--cache-dir", folder]
        rows = {}
        for name in ("cold", "warm"):
            printed = run(command, Path(folder), precompile)
            rows[name] = printed["variants"][0]["builds"][0] if "variants" in printed else printed
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = {"device": f"{platform.machine()} CPU, {os.cpu_count()} cores (torch {torch.__version__})",
              "plain_blocks": {"precompile_off": blocks_rows(False), "precompile_on": blocks_rows(True)},
              "tiny_flux_fp32": {"precompile_off": warmup_rows("fp32", False),
                                 "precompile_on": warmup_rows("fp32", True)},
              "tiny_flux_int8_precompile_on": warmup_rows("int8", True)}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
