"""What the app shows, built from the engine's typed results: metric cards, comparisons, warnings.

Plain functions from a ``Comparison``, a ``SearchReport`` or a ``SearchResult`` to HTML, so they are tested
without a browser; ``ui/app.py`` wires them to widgets. Every number shown was computed by the engine; these
only lay it out.
"""

from __future__ import annotations

import html
from typing import Any

from tmpdiff.frontends.plots import COLOURS, timeline
from tmpdiff.frontends.plots import live_points as live_plot
from tmpdiff.frontends.plots import search_pareto as search_plot
from tmpdiff.measure.cost_tables import Prediction
from tmpdiff.measure.metrics import LPIPS_HOW_TO
from tmpdiff.studies.comparison import Comparison
from tmpdiff.studies.report import SearchReport
from tmpdiff.studies.study import SearchResult

__all__ = ["COLOURS", "CSS", "PAGE_JS", "cards", "compare_cards", "live_plot", "pareto_rows", "search_cost",
           "search_plot", "timeline", "validation_warning"]

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
.video-pair {display: flex; gap: 12px;} .video-pair figure {flex: 1; margin: 0; max-width: 360px;}
.video-pair img {width: 100%; height: auto; image-rendering: pixelated;}  /* small clips shown large, unblurred */
.frame-strip {display: flex; align-items: flex-end; gap: 1px; height: 48px; margin: 6px 0;}
.frame-strip .strip-label {font-size: 12px; margin-right: 8px; align-self: center;}
.frame-strip .frame {width: 6px; background: #0969da;} .frame-strip .frame.worst {background: #cf222e;}
.field-error {border: 1px solid #cf222e; background: #ffebe9; color: #82071e; border-radius: 6px; padding: 6px 10px;
  margin: 4px 0;}
.stale {border: 1px dashed #9a6700; background: #fff8c5; color: #7d4e00; border-radius: 6px; padding: 6px 10px;}
.strip-note {color: #57606a; font-size: 13px;}
.step-row {flex-wrap: wrap !important; gap: 4px !important;}
.story-row {flex-wrap: wrap !important;}
.story-row > * {flex: 1 1 340px !important; min-width: 300px !important;}
.step-row > * {flex: 0 0 86px !important; min-width: 86px !important;}
.compare-img {width: 100%; max-width: 256px; image-rendering: pixelated; display: block; margin: 4px 0;}
.story h3 {margin: 4px 0;}
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


def _card(title: str, value: str, note: str = "", tooltip: str = "") -> str:
    hint = f" title='{html.escape(tooltip, quote=True)}'" if tooltip else ""
    return (f"<div class='card'{hint}><div class='title'>{html.escape(title)}</div>"
            f"<div class='value'>{html.escape(value)}</div><div class='note'>{html.escape(note)}</div></div>")


def cards(comparison: Comparison | None, target: Prediction | None = None) -> str:
    """Speed-up, SSIM, PSNR, LPIPS (or why not) and seconds of one compared schedule, as cards."""
    if comparison is None:
        return ""
    evaluation, record = comparison.evaluation, comparison.evaluation.record
    row = [_card("speed-up", f"{evaluation.speedup:.2f}x", "measured on this device") if evaluation.has_speed_claim
           else _card("speed-up", "no claim", "simulated precisions: quality only")]
    if target is not None:
        row.append(_card(f"speed-up on {target.device}", f"{target.speedup:.2f}x",
                         "predicted from measured step costs"))
    frames = evaluation.frames
    ssim_note = (f"mean of {len(frames.frame_ssim)} frames; worst {min(frames.frame_ssim):.3f}" if frames
                 else "vs the full-precision image (1 = same)")
    row.append(_card("SSIM", f"{record.ssim or 0.0:.3f}", ssim_note))
    psnr = record.psnr
    row.append(_card("PSNR", "identical" if psnr is None or psnr == float("inf") else f"{psnr:.1f} dB",
                     "higher is closer"))
    row.append(_card("LPIPS", f"{record.lpips:.3f}", "lower is closer") if record.lpips is not None
               else _card("LPIPS", "n/a", record.lpips_note or "not computed", tooltip=LPIPS_HOW_TO))
    cached = " (cached)" if evaluation.cached else ""
    row.append(_card("seconds", f"{record.measured_seconds:.2f} s",
                     f"reference {evaluation.reference_seconds:.2f} s{cached}"))
    row.append(memory_card(record.peak_bytes, record.memory or {}))
    return f"<div class='cards'>{''.join(row)}</div>" + frame_strip(list(frames.frame_ssim) if frames else [])


MEMORY_WHERE = {"gpu": "GPU, this image", "host": "host memory, this image (no GPU)",
                "host-process": "host memory, the process's peak so far"}


def memory_card(peak_bytes: int | None, memory: dict[str, Any]) -> str:
    """The image's peak memory, where it was measured, and the budget and placement it ran under (the plan in the
    tooltip)."""
    if peak_bytes is None:
        return _card("peak memory", "n/a", "not measured (stored before memory was)")
    budget = memory.get("budget_gib")
    note = MEMORY_WHERE.get(str(memory.get("where", "gpu")), "")
    note += f"; budget {budget:.1f} GiB" if isinstance(budget, int | float) else ""
    return _card("peak memory", f"{peak_bytes / 2**30:.2f} GiB", note, tooltip=str(memory.get("plan") or ""))


def video_pair(reference_uri: str, schedule_uri: str) -> str:
    """The reference and the schedule's clips side by side, playing (lossless animated PNGs)."""
    clips = "".join(f"<figure><img src='{uri}' alt='{name} clip'><figcaption>{name}</figcaption></figure>"
                    for name, uri in (("reference", reference_uri), ("schedule", schedule_uri)))
    return f"<div class='video-pair' id='video-pair'>{clips}</div>"


def frame_strip(frame_ssim: list[float]) -> str:
    """A video's per-frame SSIM as a strip of bars (taller: closer to the reference), the worst frame marked."""
    if not frame_ssim:
        return ""
    worst = min(frame_ssim)
    bars = "".join(
        f"<span class='frame{' worst' if v == worst else ''}' title='frame {i}: SSIM {v:.4f}' "
        f"style='height:{max(4, round(40 * max(v, 0.0)))}px'></span>" for i, v in enumerate(frame_ssim))
    return (f"<div class='frame-strip' id='frame-strip'><span class='strip-label'>SSIM per frame (worst "
            f"{worst:.3f})</span>{bars}</div>")


def compare_cards(result: SearchResult | None, images: dict[str, str] | None = None) -> str:
    """The stakeholder view of a search: the found schedule, the best uniform or baseline schedule at the same or
    higher speed, and the reference, each with its SSIM and speed-up, and its image (``images``: schedule → a PNG
    data URI) on the search's first calibration prompt and seed."""
    if result is None:
        return ""
    report = result.report
    label = "predicted"
    where = report.costs.device_name or "this device"
    columns = [("Found", report.schedule, report.ssim, report.speedup)]
    rival = report.rival()
    if rival is not None:
        columns.append((rival[0], rival[1].schedule, rival[1].quality, rival[1].speedup))
    columns.append(("Reference", report.reference_schedule, 1.0, 1.0))
    blocks = []
    for title, schedule, ssim_value, speedup in columns:
        image = (images or {}).get(schedule)
        picture = f"<img class='compare-img' src='{image}' alt='{html.escape(schedule)}'>" if image else ""
        blocks.append(f"<div><h4>{html.escape(title)}</h4>{picture}<code>{html.escape(schedule)}</code>"
                      f"<div class='cards'>{_card('speed-up', f'{speedup:.2f}x', f'{label} on {where}')}"
                      f"{_card('SSIM', f'{ssim_value:.3f}', 'mean over calibration images')}</div></div>")
    return f"<div class='compare'>{''.join(blocks)}</div>"


def search_cost(report: SearchReport | None) -> str:
    """What the search cost: schedules evaluated, denoiser calls (made, replayed, saved by skip), seconds per
    phase (empty for a report without them)."""
    calls = (report.denoiser_calls.get("total") if report is not None else None) or {}
    if report is None or not calls:
        return ""
    phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report.phase_seconds.items())
    return (f"<div class='search-cost' id='search-cost'>This search: {report.evaluations} schedules "
            f"evaluated · {calls['denoiser']} denoiser calls made, {calls['replayed']} replayed, "
            f"{calls['skipped']} saved by skip · {html.escape(phases)}</div>")


def validation_warning(report: SearchReport | None) -> str:
    """A visible warning when the schedule missed the floor on unseen seeds (empty otherwise)."""
    if report is None or report.validation.meets_target is not False or report.objective.target_ssim is None:
        return ""
    validation = report.validation
    return (f"<div class='warning' id='validation-warning'><b>Validation missed the floor.</b> On unseen seeds "
            f"{list(validation.seeds)} the schedule scored SSIM {validation.ssim:.3f}, below "
            f"{report.objective.target_ssim}. Search with more calibration prompts or seeds, or a higher floor.</div>")


def pareto_rows(report: SearchReport | None) -> list[list[Any]]:
    """The Pareto points as table rows (schedule, SSIM, speed-up), fastest first."""
    if report is None:
        return []
    return [[p.schedule, round(p.quality, 4), round(p.speedup, 3)] for p in report.pareto]
