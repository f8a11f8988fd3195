"""Host bytes from the user's seat: whole-process ``generate`` runs under GPU budgets, with the host's memory
sampled from outside the process.

Each row is one fresh ``python -m tmpdiff generate`` process. While it runs, ``/proc/<pid>/status`` is read every
0.1 s: the peaks of anonymous memory (``RssAnon``: what the OS cannot reclaim, pinned buffers included), of file-backed
pages (``RssFile``: memory-mapped weights the kernel can drop), of shared memory, and the resident-set peak
(``VmHWM``, what ``/usr/bin/time -f %M`` reports). The first row writes the random weights into the cache folder
(once, unless ``$TMPDIFF_WEIGHTS_DIR`` holds them) and loads them; later rows load them like a real checkpoint.

With ``--cgroup-max 32G`` each budget's first schedule is run again inside a cgroup v2 whose ``memory.max`` is that
limit (what a 32 GB desktop or an L4 Space imposes), where the system lets this process make one: the row says whether
it completed and the cgroup's own peak (``memory.peak``, page cache included).

    python benchmarks/host_memory.py --budgets none,24,16 --out benchmarks/results/host_memory_h100.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIELDS = ("RssAnon", "RssFile", "RssShmem", "VmHWM", "VmLck", "VmPin")
GB = 1e9


def sample(pid: int, peaks: dict[str, int], stop: threading.Event) -> None:
    """Keeps each ``FIELDS`` entry's peak (bytes) of process ``pid`` until ``stop``."""
    status = Path(f"/proc/{pid}/status")
    while not stop.is_set():
        try:
            for line in status.read_text().splitlines():
                key, _, value = line.partition(":")
                if key in FIELDS:
                    peaks[key] = max(peaks.get(key, 0), int(value.split()[0]) * 1024)
        except (OSError, ValueError, IndexError):
            return
        stop.wait(0.1)


def cgroup(limit: str) -> Path | None:
    """A fresh cgroup v2 with ``memory.max`` = ``limit``, or None where this process may not make one."""
    root = Path("/sys/fs/cgroup")
    if not (root / "cgroup.controllers").is_file() or "memory" not in (root / "cgroup.controllers").read_text():
        return None
    group = root / f"tmpdiff-bench-{os.getpid()}-{time.monotonic_ns()}"
    try:
        if "+memory" not in (root / "cgroup.subtree_control").read_text():
            (root / "cgroup.subtree_control").write_text("+memory")
        group.mkdir()
        (group / "memory.max").write_text(limit)
        (group / "memory.swap.max").write_text("0")
    except OSError:
        return None
    return group


def run(label: str, command: list[str], env: dict[str, str], group: Path | None = None) -> dict[str, Any]:
    peaks: dict[str, int] = {}
    stop = threading.Event()
    start = time.perf_counter()
    enter = (lambda: (group / "cgroup.procs").write_text(str(os.getpid()))) if group is not None else None
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                             preexec_fn=enter)
    watcher = threading.Thread(target=sample, args=(child.pid, peaks, stop), daemon=True)
    watcher.start()
    out, err = child.communicate()
    wall = time.perf_counter() - start
    stop.set()
    watcher.join()
    row: dict[str, Any] = {"label": label, "command": " ".join(command[3:]), "process_wall_s": round(wall, 2),
                           "exit": child.returncode}
    row.update({f"peak_{key}_gb": round(value / GB, 2) for key, value in peaks.items()})
    printed = [line for line in out.splitlines() if line.startswith("{")]
    if printed:
        result = json.loads(printed[-1])
        row.update({key: result[key] for key in ("seconds", "speedup", "ssim", "phase_seconds", "memory", "plan")
                    if key in result})
    if group is not None:
        row["cgroup_memory_max"] = (group / "memory.max").read_text().strip()
        for name in ("memory.peak", "memory.events"):
            if (group / name).is_file():
                row[name] = (group / name).read_text().strip()
    if child.returncode:
        row["stderr_tail"] = err.strip().splitlines()[-4:]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="flux-dev-random")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budgets", default="none,24,16", help="GiB, comma-separated; none: no --gpu-memory")
    parser.add_argument("--schedules", default="bf16*4,fp8*20,bf16*4;fp8r*4,fp8*20,fp8r*4",
                        help="';'-separated schedules, each run at every budget")
    parser.add_argument("--generate-flags", default="", help="more flags for every generate, e.g. '--no-compile'")
    parser.add_argument("--cgroup-max", default=None, help="repeat budgeted rows under this memory.max (e.g. 32G)")
    parser.add_argument("--work", type=Path, default=None, help="cache folder to reuse (default: a new one)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="tmpdiff-host-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TMPDIFF_CACHE_DIR": str(work / "cache"), "PYTHONUNBUFFERED": "1"}
    tmpdiff = [sys.executable, "-m", "tmpdiff", "--device", args.device, "generate", "--model", args.model,
               "--verbose", "--db", str(work / "runs.db"), *args.generate_flags.split()]
    report: dict[str, Any] = {"model": args.model, "generate_flags": args.generate_flags, "rows": []}
    load = (f"from tmpdiff.pipelines.registry import load_pipeline; load_pipeline({args.model!r}, {args.device!r}, "
            "host=True)")
    rows: list[tuple[str, list[str], str | None]] = [  # (label, command, memory.max to run it under)
        ("load the model into host memory (random weights: written once first)", [sys.executable, "-c", load], None)]
    limited: list[tuple[str, list[str], str | None]] = []
    for budget in args.budgets.split(","):
        given = [] if budget == "none" else ["--gpu-memory", budget]
        for i, schedule in enumerate(args.schedules.split(";")):
            command = [*tmpdiff, "--schedule", schedule, *given, "--out", str(work / "image.png")]
            rows.append((f"generate {schedule} at {budget} GiB", command, None))
            if args.cgroup_max and given and i == 0:  # after every plain row
                limited.append((f"generate {schedule} at {budget} GiB under memory.max {args.cgroup_max}", command,
                                args.cgroup_max))
    rows += limited
    for label, command, limit in rows:
        group = cgroup(limit) if limit else None
        if limit and group is None:
            report["rows"].append({"label": label, "skipped": "no cgroup v2 memory controller this process may use"})
            continue
        row = run(label, command, env, group)
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
