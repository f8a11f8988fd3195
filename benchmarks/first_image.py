"""Seconds from a fresh process to the first finished image, cold (empty caches) and warm.

Every measurement is its own Python process, as a user's would be: import, build or load the
weights (reported apart), then one image with the schedule (variants built, compiled or loaded
from the compile cache), then a second image whose per-step times give the steady state.

* ``compiled`` cold: an empty cache folder; then warm: the same folder, in new processes.
* ``aot`` cold: an empty cache folder, variants exported and AoT-compiled; then warm: packages
  loaded in a process that never calls ``torch.compile``.

    python benchmarks/first_image.py --out benchmarks/results/first_image_h100.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START = time.perf_counter()
SCHEDULES = {"bf16": "bf16*28", "fp8": "fp8*28", "mixed": "bf16*4,fp8*20,bf16*4"}
# (label, mode, schedule name, cache folder (each phase has its own, empty at the start), extra environment)
PLAN = [
    ("compiled cold", "compiled", "mixed", "compiled", {}),
    ("compiled warm", "compiled", "mixed", "compiled", {}),
    ("compiled warm, 1 compile thread", "compiled", "mixed", "compiled", {"TORCHINDUCTOR_COMPILE_THREADS": "1"}),
    ("aot cold", "aot", "mixed", "aot", {}),
    ("aot warm", "aot", "mixed", "aot", {}),
    ("compiled warm", "compiled", "fp8", "compiled", {}),
    ("compiled warm", "compiled", "bf16", "compiled", {}),
]


def child(mode: str, schedule: str, model: str, size: int, cache_dir: str, device: str) -> dict:
    """One fresh process's measurements (runs inside the child)."""
    import torch
    from torch._dynamo.utils import counters

    from tmpdiff import Schedule, apply_schedule
    from tmpdiff.engine.runner import Engine, device_name
    from tmpdiff.engine.settings import RunSettings
    from tmpdiff.pipelines.registry import quiet_libraries

    quiet_libraries()
    row: dict = {"mode": mode, "schedule": schedule, "import_s": time.perf_counter() - START}
    engine = Engine(device, compile=mode, cache_dir=cache_dir)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    settings = RunSettings(model=model, size=size, steps=len(Schedule.parse(schedule)))
    start = time.perf_counter()
    pipe = engine.pipeline(model)
    sync()
    row["weights_s"] = time.perf_counter() - start
    for label in ("first_image_s", "second_image_s"):
        start = time.perf_counter()
        with torch.no_grad(), apply_schedule(pipe, schedule, compile=engine.mode, cache=engine.compile_cache) as h:
            pipe(**settings.call_kwargs(device))
        sync()
        row[label] = time.perf_counter() - start
        if label == "first_image_s":
            row["builds"] = [{"precision": b.precision, "seconds": round(b.seconds, 2), "from_cache": b.from_cache}
                             for b in h.builds]
    by_precision: dict[str, list[float]] = {}
    for name, seconds in zip(h.steps_run, h.step_seconds, strict=True):
        by_precision.setdefault(name, []).append(seconds * 1000)
    row["step_ms"] = {name: statistics.median(ms) for name, ms in by_precision.items()}
    row["dynamo_graphs"] = counters["stats"]["unique_graphs"]
    row["inductor_cache"] = {k: v for k, v in counters["inductor"].items() if k.startswith("fxgraph_cache")}
    row["device"] = device_name(device)
    row["compile_times"] = _compile_times()
    return row


def _compile_times() -> dict[str, float]:
    """Dynamo's own seconds per compile phase (summed), where the first image's build time goes."""
    from torch._dynamo.utils import compile_times

    names, values = compile_times(repr="csv", aggregate=True)
    seconds = {name: round(float(value), 2) for name, value in zip(names, values, strict=True)}
    return {name: value for name, value in seconds.items() if value >= 0.05}


def run_child(args: argparse.Namespace, mode: str, schedule: str, cache_dir: Path, extra_env: dict) -> dict:
    command = [sys.executable, "-X", "faulthandler", __file__, "--child", mode, schedule, "--model", args.model,
               "--size", str(args.size),
               "--cache-dir", str(cache_dir), "--device", args.device]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra_env}
    for variable in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):  # the tmpdiff cache folder holds them
        env.pop(variable, None)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.child_timeout)
    wall = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        said = [line for line in done.stderr.strip().splitlines() if "Warning" not in line and line.strip()]
        return {"mode": mode, "schedule": schedule, "error": [f"exit {done.returncode}", *said[-4:]], "wall_s": wall}
    return {**json.loads(lines[-1]), "process_wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="flux-dev-random")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--phases", default="compiled,aot", help="which of compiled, aot to run")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "SCHEDULE"), help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-timeout", type=float, default=420)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/first_image.json"))
    args = parser.parse_args()
    if args.child:
        row = child(args.child[0], args.child[1], args.model, args.size, args.cache_dir, args.device)
        print(json.dumps(row), flush=True)
        return
    phases = args.phases.split(",")
    folders = {name: Path(tempfile.mkdtemp(prefix=f"tmpdiff-{name}-")) for name in ("compiled", "aot")}
    report: dict = {"model": args.model, "size": args.size, "schedules": SCHEDULES, "runs": []}
    for label, mode, name, folder, extra_env in PLAN:
        if mode not in phases:
            continue
        row = {"label": label, **run_child(args, mode, SCHEDULES[name], folders[folder], extra_env)}
        report["runs"].append(row)
        print(json.dumps(row), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")  # after every run: a cut-off run keeps its rows


if __name__ == "__main__":
    main()
