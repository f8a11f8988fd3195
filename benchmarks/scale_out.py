"""Whole-command wall time of one sweep and one search on 1, 2, 4 … Ray GPU actors of one machine.

    python benchmarks/scale_out.py --workers 1,2,4 --out benchmarks/results/scale_out_h100x4.json

Each command is a fresh ``tmpdiff`` process, as a user types it (import, Ray start, every actor's model
load and compile-cache load included), with an empty evaluation cache of its own; the compile cache
is shared and filled first by ``tmpdiff warmup``, so no row pays a first compilation. GPU utilisation
is sampled with ``nvidia-smi`` every 0.5 s while each command runs (mean over the GPUs it was given).
Rows are checked against the first row: the sweep's SSIMs and the search's found schedule.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SWEEP = Path(__file__).parent / "sweeps" / "flux_random_32.toml"
SEARCH = ["--model", "flux-dev-random", "--steps", "28", "--ladder", "bf16,fp8,skip", "--num-prompts", "2",
          "--seeds", "0,1", "--validation-seeds", "1000", "--additivity-samples", "0"]


class GpuSampler:
    """Mean utilisation (%) of each GPU while a command runs, from ``nvidia-smi``."""

    def __init__(self) -> None:
        self.samples: list[list[float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True)
            if out.returncode == 0:
                self.samples.append([float(x) for x in out.stdout.split()])

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def mean(self, gpus: int) -> list[float]:
        return [round(statistics.fmean(s[i] for s in self.samples), 1) for i in range(gpus)] if self.samples else []


def timed(command: list[str], gpus: int) -> tuple[float, list[float], str]:
    with GpuSampler() as sampler:
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "tmpdiff", *command], capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return round(seconds, 1), sampler.mean(gpus), result.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", default="1,2", help="comma-separated actor counts (one GPU each)")
    parser.add_argument("--what", default="sweep,search", help="sweep, search or both")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    report: dict = {"device": _device(), "gpus": _gpus(), "sweep_spec": str(SWEEP), "search_args": SEARCH, "rows": []}
    if args.out.exists():
        report["rows"] = json.loads(args.out.read_text())["rows"]
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tmpdiff", "warmup", "--model", "flux-dev-random", "--precisions",
                        "bf16,fp8"], check=True, capture_output=True)
        report["warmup_seconds"] = round(time.perf_counter() - start, 1)
        for what in args.what.split(","):
            for count in counts:
                db, out = Path(folder) / f"{what}-{count}.sqlite", Path(folder) / f"{what}-{count}"
                if what == "sweep":
                    command = ["sweep", str(SWEEP), "--csv", f"{out}.csv"]
                else:
                    command = ["search", *SEARCH, "--json", f"{out}.json"]
                seconds, utilisation, stdout = timed([*command, "--compile", "--workers", str(count), "--db", str(db)],
                                                     count)
                row = {"what": what, "workers": count, "seconds": seconds, "gpu_utilisation_pct": utilisation,
                       **_outcome(what, out)}
                report["rows"].append(row)
                print(json.dumps(row), flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(report, indent=2) + "\n")
    _compare(report)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for row in report["rows"]:
        print(json.dumps({k: v for k, v in row.items() if k not in ("ssims",)}))


def _outcome(what: str, out: Path) -> dict:
    if what == "sweep":
        with Path(f"{out}.csv").open() as file:
            rows = list(csv.DictReader(file))
        return {"evaluations": len(rows), "ssims": [float(r["ssim"]) for r in rows]}
    found = json.loads(Path(f"{out}.json").read_text())
    return {"schedule": found["schedule"], "ssim": found["ssim"], "costs_source": found.get("costs_source"),
            "phase_seconds": found["phase_seconds"], "evaluations": len(found["pareto"])}


def _compare(report: dict) -> None:
    """Speed-up of each row against the one-actor row of the same command, and agreement with it."""
    for what in ("sweep", "search"):
        rows = [r for r in report["rows"] if r["what"] == what]
        base = next((r for r in rows if r["workers"] == 1), None)
        for row in rows if base else []:
            row["speedup_vs_1_gpu"] = round(base["seconds"] / row["seconds"], 3)
            if what == "sweep":
                row["max_ssim_difference"] = max(abs(a - b) for a, b in zip(row["ssims"], base["ssims"], strict=True))
            else:
                row["same_schedule_as_1_gpu"] = row["schedule"] == base["schedule"]


def _device() -> str:
    import torch

    return torch.cuda.get_device_name(0)


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


if __name__ == "__main__":
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    main()
