"""Every figure tmpdiff draws, in one place: the CLI writes them as HTML, the app shows them.

Each function takes the engine's typed results (a ``SearchReport``, ``HistoryPoint``s, a ``CostTable``) and returns
a Plotly figure; plotly is imported when a figure is first drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tmpdiff.memory.meter import gib
from tmpdiff.steps.schedule import Schedule

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from tmpdiff.measure.latency import CostTable
    from tmpdiff.studies.algorithms import Point
    from tmpdiff.studies.history import HistoryPoint
    from tmpdiff.studies.report import SearchReport

__all__ = ["COLOURS", "additivity", "history", "live_points", "search_pareto", "timeline"]

COLOURS = {
    "fp32": "#1f3b73", "bf16": "#2f6db5", "fp16": "#4f8fd6", "fp8": "#e0782b", "int8": "#d9a21b",
    "fp8wo": "#f0a868", "int8wo": "#e8c35a", "int4wo": "#c0392b", "mxfp8": "#8e44ad", "nvfp4": "#6c3483",
    "fp8a8": "#b3541e", "fp8r": "#16a085", "skip": "#9e9e9e",
    "extrap": "#bdbdbd",
}
HOVER = "%{text}<br>speed-up %{x:.2f}x<br>SSIM %{y:.3f}<extra></extra>"
LAYOUT = {"margin": {"l": 40, "r": 10, "t": 40, "b": 40}, "template": "plotly_white"}


def search_pareto(report: SearchReport | None) -> go.Figure:
    """The search's Pareto front (a line through its points, fastest last), the baselines and the found
    schedule, each with its own marker; the floor as a dotted line."""
    import plotly.graph_objects as go

    figure = go.Figure()
    if report is not None:
        front = sorted(report.pareto, key=lambda p: p.speedup)
        for name, points, mode, symbol, size in (
                ("Pareto front", front, "lines+markers", "circle", 9),
                ("baselines", list(report.baselines), "markers", "diamond-open", 12),
                ("found", [report.found], "markers", "star", 18)):
            figure.add_trace(go.Scatter(
                x=[p.speedup for p in points], y=[p.quality for p in points], mode=mode, name=name,
                marker={"symbol": symbol, "size": size, "line": {"width": 2}}, text=[p.schedule for p in points],
                customdata=[p.schedule for p in points], hovertemplate=HOVER))
        floor = report.objective.target_ssim
        if floor is not None:
            figure.add_hline(y=floor, line_dash="dot", annotation_text=f"floor {floor}")
    where = (report.costs.device_name if report is not None else None) or "this device"
    figure.update_layout(xaxis_title=f"predicted speed-up on {where}", yaxis_title="mean SSIM vs reference",
                         height=380, title=report.model if report is not None else "", **LAYOUT)
    return figure


def additivity(report: SearchReport) -> go.Figure | None:
    """Degradation predicted from single steps against measured, with the additive line (None without
    an additivity check in the report)."""
    import plotly.graph_objects as go

    check = report.additivity
    if check is None:
        return None
    figure = go.Figure(go.Scatter(x=list(check.predicted), y=list(check.measured), mode="markers",
                                  text=list(check.schedules), name="mixed schedules"))
    top = max([*check.predicted, *check.measured, 1e-6])
    figure.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", name="additive"))
    figure.update_layout(title=f"additivity: R² = {check.r2:.3f}", xaxis_title="predicted degradation",
                         yaxis_title="measured degradation", **LAYOUT)
    return figure


def timeline(schedule: str, table: CostTable | None, label: str = "") -> go.Figure:
    """One bar per step whose precision has a measured cost in ``table`` (its height: that cost in ms), coloured by
    precision; a step without one is marked "not measured" (an x on the axis, never a 0 ms bar)."""
    import plotly.graph_objects as go

    steps = Schedule.parse(schedule).steps
    costs = table.step_seconds if table else {}
    unmeasured = sorted({name for name in steps if name not in costs})
    source = label or ("predicted per step from measured step costs" if table else "no step costs measured yet")
    if unmeasured and table:
        source += f"; not measured: {', '.join(unmeasured)}"
    figure = go.Figure()
    for name in dict.fromkeys(steps):
        index = [i for i, n in enumerate(steps) if n == name]
        if name in costs:
            figure.add_trace(go.Bar(x=index, y=[1000 * costs[name]] * len(index), name=name,
                                    marker_color=COLOURS.get(name, "#555"),
                                    hovertemplate="step %{x}: " + name + ", %{y:.1f} ms<extra></extra>"))
        else:
            figure.add_trace(go.Scatter(x=index, y=[0.0] * len(index), mode="markers", name=f"{name}: not measured",
                                        marker={"symbol": "x-thin-open", "size": 12, "line": {"width": 2},
                                                "color": COLOURS.get(name, "#555")},
                                        hovertemplate="step %{x}: " + name + ", not measured<extra></extra>"))
    figure.update_layout(title={"text": f"{len(steps)} steps: {source}", "font": {"size": 13}},
                         xaxis_title="step", yaxis_title="ms (predicted)" if table else "ms", barmode="overlay",
                         height=260, bargap=0.1, **LAYOUT)
    if not costs:
        figure.update_yaxes(showticklabels=False)
    return figure


def live_points(points: Sequence[Point], floor: float | None = None) -> go.Figure:
    """Every schedule evaluated so far (mean SSIM, predicted speed-up), while a search runs."""
    import plotly.graph_objects as go

    figure = go.Figure(go.Scatter(
        x=[p.speedup for p in points], y=[p.quality for p in points], mode="markers", name="evaluated",
        text=[p.schedule for p in points], customdata=[p.schedule for p in points], hovertemplate=HOVER))
    if floor is not None:
        figure.add_hline(y=floor, line_dash="dot", annotation_text=f"floor {floor}")
    figure.update_layout(title={"text": f"{len(points)} schedules evaluated so far", "font": {"size": 13}},
                         xaxis_title="predicted speed-up", yaxis_title="mean SSIM vs reference", height=380,
                         **LAYOUT)
    return figure


HISTORY_AXES = {"speedup": "speed-up, measured (reference timed beside each image)",
                "predicted_speedup": "speed-up, predicted from step costs measured here",
                "peak_gib": "peak memory of the image (GiB)"}


def history(points: Sequence[HistoryPoint], axis: str = "speedup") -> go.Figure:
    """Quality against measured speed-up (``axis="speedup"``), predicted speed-up (``"predicted_speedup"``) or the
    image's peak memory (``"peak_gib"``) for every stored evaluation of one setting (uniform schedules as
    diamonds); evaluations without a value on that axis (no speed claim for simulated precisions, an image timed
    alone, no memory measured before it was) are left out, not placed, and the title says how many."""
    import plotly.graph_objects as go

    def x(point: HistoryPoint) -> float | None:
        if axis == "speedup":
            return point.speedup
        if axis == "predicted_speedup":
            return point.predicted_speedup
        return gib(point.peak_bytes, digits=None)

    figure = go.Figure()
    unit = " GiB" if axis == "peak_gib" else "x"
    placed = sum(1 for p in points if x(p) is not None and p.ssim is not None)
    if placed < len(points):
        figure.update_layout(title={"text": f"{placed} of {len(points)} stored evaluations have this value "
                                            "(the table lists them all)", "font": {"size": 13}})
    hover = "%{text}<br>%{x:.2f}" + unit + "<br>SSIM %{y:.3f}<extra></extra>"
    for uniform in (True, False):
        part = [p for p in points if p.uniform == uniform and x(p) is not None and p.ssim is not None]
        if part:
            figure.add_trace(go.Scatter(
                x=[x(p) for p in part], y=[p.ssim for p in part], mode="markers",
                name="uniform" if uniform else "mixed", text=[p.schedule for p in part],
                customdata=[p.schedule for p in part], hovertemplate=hover,
                marker={"size": 12 if uniform else 9, "symbol": "diamond" if uniform else "circle"}))
    figure.update_layout(xaxis_title=HISTORY_AXES[axis], yaxis_title="SSIM vs reference", height=420, **LAYOUT)
    return figure
