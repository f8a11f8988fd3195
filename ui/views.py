"""What the app shows, built from engine results: metric cards, the per-step timeline, comparisons.

Plain functions from result dictionaries to HTML or Plotly figures, so they are tested without a
browser; ``ui/app.py`` wires them to widgets.
"""

from __future__ import annotations

import html
from typing import Any

import plotly.graph_objects as go

from tmpdiff import Schedule
from tmpdiff.latency import CostTable

__all__ = ["COLOURS", "CSS", "PAGE_JS", "cards", "compare_cards", "live_plot", "pareto_rows", "search_cost",
           "search_plot", "timeline", "validation_warning"]

COLOURS = {
    "fp32": "#1f3b73", "bf16": "#2f6db5", "fp16": "#4f8fd6", "fp8": "#e0782b", "int8": "#d9a21b",
    "fp8wo": "#f0a868", "int8wo": "#e8c35a", "int4wo": "#c0392b", "mxfp8": "#8e44ad", "nvfp4": "#6c3483",
    "skip": "#9e9e9e",
}
HOVER = "%{text}<br>speed-up %{x:.2f}x<br>SSIM %{y:.3f}<extra></extra>"
# Runs once when the page loads: a click on a point of the search's or the history's plot puts that point's
# schedule into the schedule editor (gr.Plot has no click event; a point's customdata, else its text, is
# its schedule).
PAGE_JS = """() => {
    const listen = () => {
        for (const plot of document.querySelectorAll('#search-plot .js-plotly-plot, #history-plot .js-plotly-plot')) {
            if (plot.dataset.tmpdiffClick || typeof plot.on !== 'function') continue;
            plot.dataset.tmpdiffClick = '1';
            plot.on('plotly_click', (event) => {
                const point = event.points && event.points.length ? event.points[0] : null;
                const text = point && (typeof point.customdata === 'string' ? point.customdata : point.text);
                const box = document.querySelector('#schedule textarea');
                if (!text || !box) return;
                box.value = text;
                box.dispatchEvent(new Event('input', {bubbles: true}));
            });
        }
    };
    new MutationObserver(listen).observe(document.body, {childList: true, subtree: true});
}"""

CSS = """
.cards {display: flex; flex-wrap: wrap; gap: 8px; margin: 4px 0;}
.card {flex: 1 1 120px; border: 1px solid #d0d7de; border-radius: 8px; padding: 8px 10px; background: #fff;}
.card .title {font-size: 12px; color: #57606a;}
.card .value {font-size: 24px; font-weight: 600; color: #1f2328;}
.card .note {font-size: 11px; color: #57606a;}
.compare {display: flex; flex-wrap: wrap; gap: 12px;}
.compare > div {flex: 1 1 260px;}
.search-cost {color: #57606a; font-size: 13px; margin-top: 6px;}
.warning {border-left: 4px solid #d1242f; background: #fff5f5; padding: 8px 12px; border-radius: 4px;}
#slider img, #diff img {image-rendering: pixelated;}
"""


def _card(title: str, value: str, note: str = "") -> str:
    return (f"<div class='card'><div class='title'>{html.escape(title)}</div>"
            f"<div class='value'>{html.escape(value)}</div><div class='note'>{html.escape(note)}</div></div>")


def cards(summary: dict[str, Any], target: dict[str, Any] | None = None) -> str:
    """Speed-up, SSIM, PSNR, LPIPS (or why not) and seconds of one evaluated schedule, as cards."""
    if not summary:
        return ""
    row = []
    if summary.get("speedup") is not None:
        row.append(_card("speed-up", f"{summary['speedup']:.2f}x", "measured on this device"))
    else:
        row.append(_card("speed-up", "no claim", "simulated precisions: quality only"))
    if target is not None:
        row.append(_card(f"speed-up on {target['device']}", f"{target['speedup']:.2f}x",
                         "predicted from measured step costs"))
    row.append(_card("SSIM", f"{summary['ssim']:.3f}", "vs the full-precision image (1 = same)"))
    psnr = summary.get("psnr")
    row.append(_card("PSNR", "identical" if psnr is None else f"{psnr:.1f} dB", "higher is closer"))
    if summary.get("lpips") is not None:
        row.append(_card("LPIPS", f"{summary['lpips']:.3f}", "lower is closer"))
    else:
        row.append(_card("LPIPS", "n/a", summary.get("lpips_note") or "not computed"))
    cached = " (cached)" if summary.get("cached") else ""
    row.append(_card("seconds", f"{summary['seconds']:.2f} s",
                     f"reference {summary['reference_seconds']:.2f} s{cached}"))
    return f"<div class='cards'>{''.join(row)}</div>"


def timeline(schedule: str, table: CostTable | None, label: str = "") -> go.Figure:
    """One bar per step, coloured by precision; its height is the step's cost from ``table`` in ms."""
    steps = Schedule.parse(schedule).steps
    heights = [1000 * table.step_seconds[name] if table and name in table.step_seconds else 0.0 for name in steps]
    source = label or ("predicted per step from measured step costs" if table else "no step costs measured yet")
    figure = go.Figure()
    for name in dict.fromkeys(steps):
        index = [i for i, n in enumerate(steps) if n == name]
        figure.add_trace(go.Bar(x=index, y=[heights[i] for i in index], name=name,
                                marker_color=COLOURS.get(name, "#555"),
                                hovertemplate="step %{x}: " + name + ", %{y:.1f} ms<extra></extra>"))
    figure.update_layout(title={"text": f"{len(steps)} steps: {source}", "font": {"size": 13}},
                         xaxis_title="step", yaxis_title="ms", barmode="overlay", height=260, bargap=0.1,
                         margin={"l": 40, "r": 10, "t": 40, "b": 40}, template="plotly_white")
    return figure


def compare_cards(report: dict[str, Any]) -> str:
    """The stakeholder view of a search: the found schedule, the best uniform or baseline schedule at
    the same or higher speed, and the reference, each with its SSIM and speed-up."""
    if not report:
        return ""
    reference = str(Schedule.uniform(report["ladder"][0], report["steps"]))
    label = "predicted" if report.get("speedup_is_predicted") else "measured"
    where = report["costs"].get("device_name") or "this device"
    columns = [("Found", report["schedule"], report["ssim"], report["speedup"])]
    rival = report.get("best_baseline_at_speedup")
    if rival:
        columns.append(("Best baseline as fast or faster", rival["schedule"], rival["ssim"], rival["speedup"]))
    columns.append(("Reference", reference, 1.0, 1.0))
    blocks = []
    for title, schedule, ssim_value, speedup in columns:
        blocks.append(f"<div><h4>{html.escape(title)}</h4><code>{html.escape(schedule)}</code>"
                      f"<div class='cards'>{_card('speed-up', f'{speedup:.2f}x', f'{label} on {where}')}"
                      f"{_card('SSIM', f'{ssim_value:.3f}', 'mean over calibration images')}</div></div>")
    return f"<div class='compare'>{''.join(blocks)}</div>"


def search_cost(report: dict[str, Any]) -> str:
    """What the search cost: schedules evaluated, denoiser calls (made, replayed, saved by skip), seconds per
    phase (empty for a report without them)."""
    calls = ((report or {}).get("denoiser_calls") or {}).get("total")
    if not calls:
        return ""
    phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report.get("phase_seconds", {}).items())
    return (f"<div class='search-cost' id='search-cost'>This search: {report.get('evaluations', 0)} schedules "
            f"evaluated · {calls['denoiser']} denoiser calls made, {calls['replayed']} replayed, "
            f"{calls['skipped']} saved by skip · {html.escape(phases)}</div>")


def validation_warning(report: dict[str, Any]) -> str:
    """A visible warning when the schedule missed the floor on unseen seeds (empty otherwise)."""
    validation = (report or {}).get("validation") or {}
    floor = (report or {}).get("objective", {}).get("target_ssim")
    if validation.get("meets_target") is not False or floor is None:
        return ""
    return (f"<div class='warning' id='validation-warning'><b>Validation missed the floor.</b> On unseen seeds "
            f"{validation['seeds']} the schedule scored SSIM {validation['ssim']:.3f}, below {floor}. "
            "Search with more calibration prompts or seeds, or a higher floor.</div>")


def search_plot(report: dict[str, Any]) -> go.Figure:
    """The search's Pareto front with the baselines, the found schedule marked."""
    figure = go.Figure()
    if report:
        for name, points, symbol, size in (("Pareto front", report.get("pareto", []), "circle", 9),
                                           ("baselines", report.get("baselines", []), "diamond", 11),
                                           ("found", [report], "star", 18)):
            figure.add_trace(go.Scatter(
                x=[p["speedup"] for p in points], y=[p["ssim"] for p in points], mode="markers", name=name,
                marker={"symbol": symbol, "size": size}, text=[p["schedule"] for p in points],
                hovertemplate=HOVER))
        floor = report.get("objective", {}).get("target_ssim")
        if floor is not None:
            figure.add_hline(y=floor, line_dash="dot", annotation_text=f"floor {floor}")
    where = (report or {}).get("costs", {}).get("device_name") or "this device"
    figure.update_layout(xaxis_title=f"predicted speed-up on {where}", yaxis_title="mean SSIM vs reference",
                         height=380, margin={"l": 40, "r": 10, "t": 30, "b": 40}, template="plotly_white")
    return figure


def pareto_rows(report: dict[str, Any]) -> list[list[Any]]:
    """The Pareto points as table rows (schedule, SSIM, speed-up), fastest first."""
    return [[p["schedule"], round(p["ssim"], 4), round(p["speedup"], 3)] for p in (report or {}).get("pareto", [])]


def live_plot(points: list[Any], floor: float | None = None) -> go.Figure:
    """Every schedule evaluated so far (mean SSIM, predicted speed-up), while a search runs."""
    figure = go.Figure(go.Scatter(
        x=[p.speedup for p in points], y=[p.quality for p in points], mode="markers", name="evaluated",
        text=[p.schedule for p in points], hovertemplate=HOVER))
    if floor is not None:
        figure.add_hline(y=floor, line_dash="dot", annotation_text=f"floor {floor}")
    figure.update_layout(title={"text": f"{len(points)} schedules evaluated so far", "font": {"size": 13}},
                         xaxis_title="predicted speed-up", yaxis_title="mean SSIM vs reference", height=380,
                         margin={"l": 40, "r": 10, "t": 40, "b": 40}, template="plotly_white")
    return figure
