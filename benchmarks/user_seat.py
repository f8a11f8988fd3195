"""Seconds from the user's seat: whole-process wall time of the commands a user types.

Each row is one fresh process (``python -m tmpdiff ...``, or the import alone), timed from before it
starts to after it exits: imports, weights, reference image, variant builds and all. The cache folder
starts empty, so the first ``generate`` is cold (compiles, fills the compile cache); later rows reuse it as a
user's next command would. ``generate --verbose`` rows keep the per-phase seconds the command printed, and
``set_up``: each variant's build by phase (weights, compile-cache loading, Dynamo tracing and guards, Inductor,
first run, cache saving), CUDA graph captures and warm-up calls.

Rows, in order:

* ``import tmpdiff`` and ``tmpdiff --help``;
* ``generate`` cold (empty cache folder), then warm with a fresh evaluation database (compile cache warm:
  weights, reference image and schedule image are all paid), then warm with the reference stored by the
  previous row (a second schedule of the same setting, as in an exploring session);
* with ``--warm-env NAME=VALUE`` (repeatable): the warm row again with that environment variable set;
* with ``--search``: the FLUX-sized search of issue 23, twice (the second reuses compiled graphs and costs).

    python benchmarks/user_seat.py --out benchmarks/results/user_seat_h100.json [--search]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(label: str, command: list[str], env: dict[str, str], timeout: float) -> dict:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    wall = time.perf_counter() - start
    row: dict = {"label": label, "command": " ".join(command[1:]), "process_wall_s": round(wall, 2),
                 "exit": done.returncode}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if lines:
        printed = json.loads(lines[-1])
        for key in ("phase_seconds", "set_up", "seconds", "speedup", "ssim", "cached", "schedule", "steps_run"):
            if key in printed:
                row[key] = printed[key]
    if "--json" in command and done.returncode == 0:  # a search: what it found and where its seconds went
        report = json.loads(Path(command[command.index("--json") + 1]).read_text())
        row.update({key: report.get(key) for key in ("found", "phase_seconds", "skipped", "costs_source")})
    if done.returncode:
        row["stderr_tail"] = done.stderr.strip().splitlines()[-4:]
    return row


def plan(args: argparse.Namespace, work: Path) -> list[tuple[str, list[str]]]:
    tmpdiff = [sys.executable, "-m", "tmpdiff", "--device", args.device]
    generate = [*tmpdiff, "generate", "--model", args.model, "--size", str(args.size), "--verbose"]
    rows = [
        ("import tmpdiff", [sys.executable, "-c", "import tmpdiff"]),
        ("tmpdiff --help", [*tmpdiff, "--help"]),
        ("generate, cold (empty cache folder)",
         [*generate, "--schedule", args.schedule, "--db", str(work / "cold.db"), "--out", str(work / "cold.png")]),
        ("generate, warm compile cache, fresh evaluation database",
         [*generate, "--schedule", args.schedule, "--db", str(work / "warm.db"), "--out", str(work / "warm.png")]),
        ("generate, warm, reference stored (a second schedule of the same setting)",
         [*generate, "--schedule", args.second_schedule, "--db", str(work / "warm.db"),
          "--out", str(work / "second.png")]),
    ]
    for i, setting in enumerate(args.warm_env):  # the warm row again, under another environment setting
        rows.append((f"generate, warm compile cache, fresh evaluation database, {setting}",
                     [*generate, "--schedule", args.schedule, "--db", str(work / f"env{i}.db"),
                      "--out", str(work / f"env{i}.png")]))
    if args.search_only:
        rows = []
    if args.search or args.search_only:
        search = [*tmpdiff, "search", "--model", args.model, "--size", str(args.size), "--steps", "28",
                  "--ladder", "bf16,fp8,skip", "--num-prompts", "1", "--seeds", "0,1"]
        rows += [("search, compile cache warm from generate", [*search, "--db", str(work / "search1.db"),
                                                              "--json", str(work / "search1.json")]),
                 ("search again, fresh evaluation database", [*search, "--db", str(work / "search2.db"),
                                                             "--json", str(work / "search2.json")])]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="flux-dev-random")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--schedule", default="bf16*4,fp8*20,bf16*4")
    parser.add_argument("--second-schedule", default="bf16*4,fp8*22,bf16*2")
    parser.add_argument("--search", action="store_true", help="also time the FLUX-sized search twice")
    parser.add_argument("--search-only", action="store_true",
                        help="only the search rows (after a run with the same --work folder warmed its caches)")
    parser.add_argument("--warm-env", action="append", default=[], metavar="NAME=VALUE",
                        help="time the warm generate again with this environment variable set (repeatable)")
    parser.add_argument("--work", type=Path, default=None, help="folder for caches and outputs (default: a new one)")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/user_seat.json"))
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="tmpdiff-seat-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TMPDIFF_CACHE_DIR": str(work / "cache"), "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for variable in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):  # the tmpdiff cache folder holds them
        env.pop(variable, None)
    report: dict = {"model": args.model, "size": args.size, "device": args.device, "rows": []}
    for label, command in plan(args, work):
        settings = [item for item in args.warm_env if label.endswith(item)]
        extra = dict(item.split("=", 1) for item in settings)
        row = timed(label, command, {**env, **extra}, args.timeout)
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")  # after every row: a cut-off run keeps its rows


if __name__ == "__main__":
    main()
