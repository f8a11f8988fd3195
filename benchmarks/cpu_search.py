"""The README's search on the default model, run as a user types it, its report kept for the README.

    python benchmarks/cpu_search.py           # then: python benchmarks/readme_results.py

Runs ``tmpdiff search --steps 8 --target-ssim 0.9`` (4 calibration prompts x 2 seeds, the additivity check
on) in a fresh process with an empty cache and writes its report to ``benchmarks/results/search_cpu.json``
with the command's wall time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMAND = ["search", "--steps", "8", "--target-ssim", "0.9"]


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "report.json"
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "tmpdiff", *COMMAND, "--json", str(out),
                                 "--db", str(Path(folder) / "c.sqlite")], capture_output=True, text=True, cwd=ROOT)
        seconds = time.perf_counter() - start
        if result.returncode:
            raise SystemExit(result.stderr[-3000:])
        report = json.loads(out.read_text())
    report["command"] = "tmpdiff " + " ".join(COMMAND)
    report["command_seconds"] = round(seconds, 1)
    target = ROOT / "benchmarks" / "results" / "search_cpu.json"
    target.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("schedule", "ssim", "speedup", "evaluations", "command_seconds")}))


if __name__ == "__main__":
    main()
