"""Whole-command wall time of one sweep in one process and on Ray actors, each a fresh process.

    python benchmarks/sweep_workers.py benchmarks/sweeps/flux_random.toml --workers 1,2 --compile

Each run gets an empty evaluation cache (the compile cache is shared and filled first with
``tmpdiff warmup``, so no row pays a first compilation). Rows are compared with the single-process run:
the same evaluations, and the largest SSIM difference is reported.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path


def sweep(spec: Path, folder: Path, name: str, extra: list[str]) -> dict:
    out = folder / f"{name}.csv"
    command = [sys.executable, "-m", "tmpdiff", "sweep", str(spec), "--csv", str(out),
               "--db", str(folder / f"{name}.sqlite"), *extra]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    with out.open() as file:
        rows = list(csv.DictReader(file))
    return {"name": name, "args": extra, "seconds": round(seconds, 1), "rows": rows,
            "summary": json.loads(result.stdout.splitlines()[-1])}


def agreement(rows: list[dict], reference: list[dict]) -> float:
    """The largest SSIM difference between two runs' rows (same evaluations, same order)."""
    assert [r["evaluation"] for r in rows] == [r["evaluation"] for r in reference], "different evaluations"
    return max(abs(float(a["ssim"]) - float(b["ssim"])) for a, b in zip(rows, reference, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("spec", type=Path)
    parser.add_argument("--workers", default="1", help="comma-separated actor counts to time after one process")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sweep_workers.json"))
    args = parser.parse_args()
    flags = ["--compile"] if args.compile else []
    models = {m for grid in tomllib.loads(args.spec.read_text()).get("grid", []) for m in grid["models"]}
    report: dict = {"spec": str(args.spec), "runs": []}
    with tempfile.TemporaryDirectory() as folder:
        if args.compile:
            for model in sorted(models):
                start = time.perf_counter()
                subprocess.run([sys.executable, "-m", "tmpdiff", "warmup", "--model", model, "--precisions",
                                "bf16,fp8"], check=True, capture_output=True)
                report.setdefault("warmup_seconds", {})[model] = round(time.perf_counter() - start, 1)
        alone = sweep(args.spec, Path(folder), "one-process", flags)
        report["runs"].append(alone)
        for count in [int(n) for n in args.workers.split(",") if n]:
            run = sweep(args.spec, Path(folder), f"ray-{count}", [*flags, "--workers", str(count)])
            run["max_ssim_difference"] = agreement(run["rows"], alone["rows"])
            run["speedup_vs_one_process"] = round(alone["seconds"] / run["seconds"], 3)
            report["runs"].append(run)
    for run in report["runs"]:
        print(json.dumps({k: v for k, v in run.items() if k not in ("rows", "summary")}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
