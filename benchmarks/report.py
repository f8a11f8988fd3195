"""Turn the JSON results of step_costs.py, end_to_end.py and first_image.py into benchmarks/RESULTS.md.

    python benchmarks/report.py benchmarks/results/*_steps_*.json > benchmarks/RESULTS.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

NAMES = {"flux": "FLUX.1-dev-sized transformer, 1024², batch 1",
         "sd3": "SD3.5-large-sized transformer, 1024², CFG batch 2",
         "sdxl": "SDXL-sized UNet, 1024², CFG batch 2"}


def table(report: dict) -> list[str]:
    ref = report["reference"]
    costs = {(r["precision"], r["compiled"]): r for r in report["costs"]}
    ref_compiled = costs.get((ref, True), {}).get("median_ms")
    lines = [f"### {NAMES[report['arch']]} — {report['device']}, torch {report['torch']}",
             (f"{report['parameters_b']:.2f} B parameters, {report['weights_gib']:.1f} GiB in {ref}. "
              if "weights_gib" in report else "") +
             "Median step over an 8-step loop through `apply_schedule`, after a warm-up loop." +
             (f" Note: {report['note']}." if "note" in report else ""), "",
             "| precision | status | eager ms | compiled ms | compiled vs compiled " + ref +
             " | first compiled run s (compile) | extra resident GiB |",
             "|---|---|---|---|---|---|---|"]
    extra = report.get("variant_extra_gib", {})
    for name in dict.fromkeys(r["precision"] for r in report["costs"]):
        eager, compiled = costs.get((name, False), {}), costs.get((name, True), {})
        status = (eager or compiled).get("status", "")
        ratio = (f"{ref_compiled / compiled['median_ms']:.2f}x" if ref_compiled and "median_ms" in compiled
                 and name != "skip" else "—")
        lines.append(
            f"| {name} | {status} | {_ms(eager)} | {_ms(compiled)} | {ratio} | "
            f"{compiled.get('first_run_s', float('nan')):.0f} | {extra.get(name, 0.0):.2f} |"
            if compiled else f"| {name} | {status} | {_ms(eager)} | — | — | — | {extra.get(name, 0.0):.2f} |")
    lines += ["", f"Resident set (reference + every eager variant built): {report['resident_set_gib']:.1f} GiB"
              if "resident_set_gib" in report else "", "",
              "| 28-step schedule (compiled) | measured s | predicted s | error |", "|---|---|---|---|"]
    for row in report["schedules"]:
        text = row["schedule"] if len(row["schedule"]) < 60 else row["schedule"][:57] + "..."
        lines.append(f"| `{text}` | {row['measured_s']:.3f} | {row['predicted_s']:.3f} | {row['error_pct']:+.2f} % |")
    if "switching" in report:
        sw = report["switching"]
        lines += ["", f"Switching at every step ({sw['steps']} steps, medians of interleaved loops): "
                  f"alternating {sw['medians_s']['alternating']:.3f} s against "
                  f"{sum(v for k, v in sw['medians_s'].items() if k != 'alternating') / 2:.3f} s for the mean of the "
                  f"two uniform schedules: **{sw['overhead_pct']:+.2f} %**."]
    return lines + [""]


def end_to_end(report: dict) -> list[str]:
    lines = [f"### Whole pipeline: {report['model']} ({report['steps']} steps, 1024², text encoders + VAE included, "
             f"compiled) — {report['device']}", "",
             "| schedule | measured s | predicted s | error | speed-up vs bf16 | VAE decode s |",
             "|---|---|---|---|---|---|"]
    for row in report["runs"]:
        text = row["schedule"] if len(row["schedule"]) < 60 else row["schedule"][:57] + "..."
        lines.append(f"| `{text}` | {row['measured_s']:.3f} | {row['predicted_s']:.3f} | {row['error_pct']:+.2f} % | "
                     f"{row['speedup']:.2f}x | {row['vae_decode_s']:.3f} |")
    return lines + [""]


def latency_model(report: dict) -> list[str]:
    """Predicted against the median of repeated warm runs (latency_model.py)."""
    lines = [f"### Latency model against measured time: {report['model']} ({report['steps']} steps, median of "
             f"{report['repeats']} warm runs) — {report['device']}", "",
             "| schedule | predicted s | measured median s | measured min–max s | error |", "|---|---|---|---|---|"]
    for row in report["runs"]:
        lines.append(f"| `{_short(row['schedule'])}` | {row['predicted_s']:.3f} | {row['measured_median_s']:.3f} | "
                     f"{row['measured_min_s']:.3f}–{row['measured_max_s']:.3f} | {row['error_pct']:+.1f} % |")
    return lines + ["", f"A cache hit (SQLite row and PNG read back): {report['cache_hit_ms']:.1f} ms.", ""]


def first_image(report: dict) -> list[str]:
    """Fresh processes to their first image (first_image.py)."""
    device = next((r["device"] for r in report["runs"] if "device" in r), "?")
    lines = [f"### First image from a fresh process: {report['model']} ({report['size']}²) — {device}", "",
             "Every row is a new Python process. *cold*: an empty cache folder; *warm*: the folder the cold "
             "process filled. The first image includes building, compiling or loading every variant; import "
             "and weights are apart.", "",
             "| run | schedule | import s | weights s | **first image s** | variants built (s, from cache) "
             "| steady ms/step | Dynamo graphs | Inductor compilations |", "|---|---|---|---|---|---|---|---|---|"]
    for row in report["runs"]:
        if "error" in row:
            lines.append(f"| {row['label']} | `{row['schedule']}` | failed: {' '.join(row['error'])[:200]} "
                         "| | | | | | |")
            continue
        builds = ", ".join(f"{b['precision']} {b['seconds']:.1f}{' ✓' if b['from_cache'] else ''}"
                           for b in row["builds"])
        steady = ", ".join(f"{k} {v:.1f}" for k, v in row["step_ms"].items())
        compilations = row["inductor_cache"].get("fxgraph_cache_miss", 0)
        lines.append(f"| {row['label']} | `{row['schedule']}` | {row['import_s']:.1f} | {row['weights_s']:.1f} | "
                     f"**{row['first_image_s']:.1f}** | {builds} | {steady} | {row['dynamo_graphs']} | "
                     f"{compilations} |")
    return lines + ["", "✓ = loaded from the compile cache.", ""]


PHASES = ("costs", "baselines", "search", "additivity", "planner", "validation")


def search_calls(report: dict) -> list[str]:
    """Before/now denoiser calls of one search (search_calls.py)."""
    lines = [f"### Denoiser calls of a whole search: {report['model']}, {report['steps']} steps, ladder "
             f"{','.join(report['ladder'])} — {report['device']}", "",
             "*before*: every step of every evaluation computed, every step probed; *now*: prefix replay, "
             f"single-step probes on every {_ordinal(report['runs']['now']['probe_stride'])} step. The costs phase "
             f"({report['costs_phase_calls']['denoiser']} calls) is counted in both totals.", "",
             "| run | whole command calls | " + " | ".join(PHASES[1:]) + " | wall s | schedule | SSIM | speed-up |",
             "|---|---|" + "---|" * (len(PHASES) - 1) + "---|---|---|---|"]
    for name, run in report["runs"].items():
        calls = run["denoiser_calls"]
        phases = " | ".join(str(calls.get(p, {}).get("denoiser", 0)) for p in PHASES[1:])
        batch = f", batch {run['batch_size']}" if run.get("batch_size", 1) > 1 else ""
        total = report["whole_command_calls"][name]
        lines.append(f"| {name} (stride {run.get('probe_stride', 1)}{batch}) | **{total}** "
                     f"| {phases} | {run['wall_s']:.0f} | `{_short(run['schedule'])}` | {run['ssim']:.4f} "
                     f"| {run['speedup']:.2f}x |")
    return lines + ["", f"{report['fewer_calls_x']:.2f}x fewer calls; {report['schedules_evaluated_both_ways']} "
                    f"schedules evaluated both ways, identical PNGs: {report['identical_images']}." +
                    (f" Batched: {report['batched_fewer_calls_x']:.2f}x fewer calls than before (images equal "
                     "only within the pipeline's batch invariance)." if "batched_fewer_calls_x" in report else ""), ""]


def search_report(report: dict, name: str) -> list[str]:
    """Where one real search's calls and seconds went (a `tmpdiff search --json` report)."""
    calls, seconds = report["denoiser_calls"], report["phase_seconds"]
    lines = [f"### One search: {report['model']}, {report['steps']} steps, ladder {','.join(report['ladder'])} "
             f"({name})", "",
             f"Found `{_short(report['schedule'])}`: SSIM {report['ssim']:.4f}, predicted speed-up "
             f"{report['speedup']:.2f}x, validation SSIM {report['validation']['ssim']:.4f}. Random weights: "
             "the schedule means nothing, the seconds do.", "",
             "| phase | denoiser calls | replayed | skipped | seconds |", "|---|---|---|---|---|"]
    for phase in PHASES:
        row = calls.get(phase, {})
        lines.append(f"| {phase} | {row.get('denoiser', 0)} | {row.get('replayed', 0)} | {row.get('skipped', 0)} "
                     f"| {seconds.get(phase, 0.0):.1f} |")
    total = calls["total"]
    lines.append(f"| **total** | {total['denoiser']} | {total['replayed']} | {total['skipped']} | "
                 f"**{sum(seconds.values()):.0f}** |")
    return lines + [""]


def sweep_workers(report: dict) -> list[str]:
    device = report["runs"][0]["rows"][0]["device"]
    lines = [f"### Sweep `{report['spec']}`, one process against Ray actors — {device}", "",
             "Whole command, each a fresh process with an empty evaluation cache; the compile cache filled "
             f"first by `tmpdiff warmup` ({report.get('warmup_seconds', {})} s).", "",
             "| run | evaluations | wall s | vs one process | max SSIM difference |", "|---|---|---|---|---|"]
    for run in report["runs"]:
        lines.append(f"| {run['name']} | {len(run['rows'])} | {run['seconds']:.1f} | "
                     f"{run.get('speedup_vs_one_process', 1.0):.2f}x | {run.get('max_ssim_difference', 0.0):.1e} |")
    return lines + [""]


def fp8_granularity(report: dict) -> list[str]:
    lines = [f"### fp8 scaling granularity, FLUX.1-dev-sized transformer, compiled — {report['device']}", "",
             "| variant | median step ms | vs bf16 | note |", "|---|---|---|---|"]
    for row in report["rows"]:
        note = row.get("invalid", "")
        lines.append(f"| {row['variant']} | {row['median_ms']:.1f} | {row['vs_bf16']:.3f}x | {note} |")
    return lines + [""]


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _short(schedule: str, width: int = 60) -> str:
    return schedule if len(schedule) <= width else schedule[:width - 3] + "..."


def _ms(row: dict) -> str:
    if "error" in row:
        return "failed: " + row["error"][:60]
    return f"{row['median_ms']:.1f}" if "median_ms" in row else "—"


def attention_kernels(report: dict) -> list[str]:
    lines = [f"### Attention kernels at FLUX's shape {tuple(report['shape_bshd'])} (batch, tokens, heads, size) — "
             f"{report['device']}, torch {report['torch']}", "",
             "| kernel | q/k outliers | ms | vs SDPA bf16 | relative RMS vs fp32 |", "|---|---|---|---|---|"]
    for r in report["rows"]:
        ms = f"{r['ms']:.3f}" if "ms" in r else "—"
        speed = f"{r['vs_sdpa_bf16']:.2f}x" if "vs_sdpa_bf16" in r else "—"
        lines.append(f"| {r['kernel']} | {'yes' if r['outliers'] else 'no'} | {ms} | {speed} | "
                     f"{100 * r['relative_rms']:.2f} % |")
    return [*lines, ""]


def step_profile(report: dict) -> list[str]:
    lines = [f"### Where a compiled FLUX-sized step's GPU time goes (profiler) — {report['device']}, "
             f"torch {report['torch']}", "", "| precision | wall ms/step (profiled) | GPU ms by kind |",
             "|---|---|---|"]
    for r in report["rows"]:
        kinds = ", ".join(f"{k} {v:.1f}" for k, v in r["gpu_ms_per_step"].items())
        lines.append(f"| {r['precision']} | {r['wall_ms_per_step']:.1f} | {kinds} |")
    return [*lines, ""]


def memory_budgets(report: dict) -> list[str]:
    """Schedules under GPU memory budgets against stock offloading (``benchmarks/memory.py``)."""
    stock = report["stock"]
    lines = [f"### Memory budgets: {report['model']} ({report['steps']} steps, {report['size']}², compiled) — "
             f"{report['device']}, torch {report['torch']}", "",
             f"Allocator capped per budget; host link {report['host_link_gb_s']} GB/s. Stock: {stock['config']}, "
             f"{stock['schedule']} at {stock['budget_gib']} GiB: {stock['seconds']:.2f} s, "
             f"peak {stock['peak_gib']} GiB.", "",
             "| budget | schedule | seconds | peak GiB | vs stock | SSIM vs unbudgeted |", "|---|---|---|---|---|---|"]
    for r in report["unbudgeted"] + report["rows"]:
        budget = "none" if r["budget_gib"] is None else f"{r['budget_gib']:g} GiB"
        ssim = r.get("ssim_vs_unbudgeted")
        lines.append(f"| {budget} | `{r['schedule']}` | {r['seconds']:.2f} | {r['peak_gib']} | "
                     f"{r['speedup_vs_stock']:.2f}x | {'' if ssim is None else f'{ssim:.5f}'} |")
    return [*lines, ""]


def main() -> None:
    print("# tmpdiff step-cost benchmarks\n\nRandom weights (latency and memory only). "
          "Reproduce on a GPU with `bash benchmarks/run_all.sh`.\n")
    for path in sys.argv[1:]:
        report = json.loads(Path(path).read_text())
        if "stock" in report and "host_link_gb_s" in report:
            print("\n".join(memory_budgets(report)))
        elif "shape_bshd" in report:
            print("\n".join(attention_kernels(report)))
        elif "arch" in report and "rows" in report:
            print("\n".join(step_profile(report)))
        elif "arch" in report and "reference" in report:  # other files (search reports, logs) are not step tables
            print("\n".join(table(report)))
        elif "whole_command_calls" in report:
            print("\n".join(search_calls(report)))
        elif "denoiser_calls" in report:
            print("\n".join(search_report(report, Path(path).stem)))
        elif "rows" in report and "variant" in report["rows"][0]:
            print("\n".join(fp8_granularity(report)))
        elif "spec" in report and "runs" in report:
            print("\n".join(sweep_workers(report)))
        elif "cache_hit_ms" in report:
            print("\n".join(latency_model(report)))
        elif "runs" in report and "schedules" in report:
            print("\n".join(first_image(report)))
        elif "runs" in report:
            print("\n".join(end_to_end(report)))


if __name__ == "__main__":
    main()
