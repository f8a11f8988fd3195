"""Per-architecture, per-device step-cost tables (the ``CostTable`` JSON format) from step_costs.py results.

    python benchmarks/cost_tables.py benchmarks/results/flux_steps_h200.json --fixed-from end_to_end_h200.json

Writes ``tmpdiff/costs/<architecture>-<device>.json``: the compiled per-step medians of each precision
(those are what a deployment runs), with ``skip``. ``fixed_seconds`` (text encoders, VAE) comes from an
end_to_end.py result of the same architecture and device when given; otherwise it is 0 and the note
says predictions cover the denoiser steps only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tmpdiff.measure.latency import CostTable

ARCHITECTURES = {"flux": ("flux-dev", 28), "sd3": ("sd3.5-large", 28), "sdxl": ("sdxl", 30),
                 "wan14b": ("wan2.1-t2v-14b", 50)}
OUT = Path(__file__).resolve().parent.parent / "tmpdiff" / "costs"


def convert(steps_report: dict, fixed: float | None) -> CostTable:
    architecture, steps = ARCHITECTURES[steps_report["arch"]]
    compiled = {row["precision"]: row for row in steps_report["costs"] if row["compiled"] and "median_ms" in row}
    shape = steps_report.get("shape")
    where = (f"{shape['width']}x{shape['height']}, {shape['frames']} frames, {shape['calls_per_step']} calls a step"
             if shape else "1024²")
    note = (f"compiled denoiser steps measured with benchmarks/step_costs.py at {where}, random weights; " +
            ("fixed seconds from benchmarks/end_to_end.py" if fixed is not None
             else "no fixed seconds: predictions cover the denoiser steps only"))
    return CostTable(
        device="cuda", compiled=True, steps=steps,
        step_seconds={name: row["median_ms"] / 1000 for name, row in compiled.items()},
        step_spread={name: row.get("spread_ms", 0.0) / 1000 for name, row in compiled.items()},
        fixed_seconds=fixed or 0.0, architecture=architecture, device_name=steps_report["device"], note=note)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("steps_reports", nargs="+", type=Path, help="step_costs.py results")
    parser.add_argument("--arch", choices=list(ARCHITECTURES), help="for results that predate the 'arch' field")
    parser.add_argument("--fixed-from", type=Path, help="an end_to_end.py result (its costs' fixed_seconds)")
    args = parser.parse_args()
    fixed_report = json.loads(args.fixed_from.read_text()) if args.fixed_from else None
    for path in args.steps_reports:
        report = json.loads(path.read_text())
        report.setdefault("arch", args.arch)
        if report["arch"] is None:
            parser.error(f"{path} names no architecture: pass --arch")
        architecture = ARCHITECTURES[report["arch"]][0]
        same = (fixed_report and fixed_report["device"] == report["device"]
                and fixed_report["model"].removesuffix("-random") == architecture)
        table = convert(report, fixed_report["costs"]["fixed_seconds"] if same else None)
        device = report["device"].split()[1].lower()  # "NVIDIA H200" -> "h200"
        out = OUT / f"{architecture}-{device}.json"
        out.write_text(json.dumps(table.to_dict(), indent=2) + "\n")
        print(out, {k: round(v * 1000, 1) for k, v in table.step_seconds.items()})


if __name__ == "__main__":
    main()
