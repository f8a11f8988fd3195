"""Writes the README's measured figures from the result files, so no number there is copied by hand.

    python benchmarks/readme_results.py

Each block between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` in README.md is rewritten from
``benchmarks/results/``: ``cpu-search`` (``cpu_search.py``), ``load-test`` (``load_test.py``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def cpu_search(report: dict) -> str:
    rival = report.get("best_baseline_at_speedup") or {}
    additivity = report.get("additivity") or {}
    lines = [
        f"Measured on the default model (`{report['command']}`, CPU, {report['steps']} steps, ladder "
        f"{', '.join(report['ladder'])} as measured there): `{report['schedule']}`, SSIM {report['ssim']:.3f} "
        f"({report['validation']['ssim']:.3f} on unseen seeds), predicted {report['speedup']:.2f}x, in "
        f"{report['evaluations']} evaluations against a bound of {report['evaluation_bound']}; "
        f"{report['command_seconds']:.0f} s for the whole command.",
    ]
    if rival:
        lines.append(f"The best baseline at least as fast was `{rival['schedule']}` at SSIM {rival['ssim']:.3f}.")
    if additivity:
        lines.append(f"The additivity check measured R² = {additivity['r2']:.2f} (reusing an output with `skip` is "
                     "not an additive error).")
    return " ".join(lines)


def load_test(report: dict) -> str:
    return (f"{report['clients']} clients for {report['seconds']:.0f} s on the 2-core CPU (`python "
            f"benchmarks/load_test.py`): {report['counts']['generate']} images and {report['counts']['search']} "
            f"searches, {report['counts'].get('refused_busy', 0)} requests told the app was busy (they waited as "
            f"told and asked again), {report['counts']['errors']} errors; a client asking for one image at a time "
            f"waited "
            f"{report['polite_generate_p50_s']:.2f} s (median) and {report['polite_generate_p95_s']:.2f} s (p95) "
            f"against {report['idle_generate_s']:.2f} s on an idle app ({report['p95_over_idle']:.1f}x)"
            f"{_in_flight(report)}; "
            f"{report['evaluations_stored']} evaluations stored, each once "
            f"({'yes' if report['stored_once'] else 'NO'}), integrity check {report['integrity_check']}, "
            f"{report['tracebacks_in_app_log']} tracebacks in the app's log.")


def _in_flight(report: dict) -> str:
    if "others_images_in_flight_mean" not in report:
        return ""
    return (f", finding on average {report['others_images_in_flight_mean']:.1f} of the other clients' images and "
            f"{report['others_searches_in_flight_mean']:.1f} of their searches in flight as it asked")


BLOCKS = {"cpu-search": ("search_cpu.json", cpu_search), "load-test": ("load_test_cpu.json", load_test)}


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    for name, (file, render) in BLOCKS.items():
        path = RESULTS / file
        if not path.exists():
            print(f"skipped {name}: no {path.relative_to(ROOT)}")
            continue
        block = f"<!-- results:{name} -->\n{render(json.loads(path.read_text()))}\n<!-- /results:{name} -->"
        pattern = re.compile(rf"<!-- results:{name} -->.*?<!-- /results:{name} -->", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no results:{name} block")
        text = pattern.sub(lambda _, block=block: block, text)
        print(f"wrote {name}")
    readme.write_text(text)


if __name__ == "__main__":
    main()
