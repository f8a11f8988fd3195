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
from tmpdiff.measure.evaluator import Evaluation
from tmpdiff.measure.metrics import LPIPS_HOW_TO
from tmpdiff.memory.meter import MEMORY_WHERE, MemoryFigures, gib
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
/* The per-step boxes in a grid, several a row (Gradio wraps a row's form fields in one .form). */
#step-boxes > .form {display: grid !important; grid-template-columns: repeat(auto-fill, minmax(112px, 1fr));
  gap: 4px !important; width: 100% !important; background: transparent !important; border: none !important;}
#step-boxes .step-box {min-width: 0 !important; width: auto !important; padding: 6px 8px !important;
  border: 1px solid #d0d7de !important; border-radius: 6px;}
#step-boxes .step-box input {min-width: 0 !important;}
.story-row {flex-wrap: wrap !important;}
.story-row > * {flex: 1 1 340px !important; min-width: 300px !important;}
.compare-img {width: 100%; max-width: 256px; image-rendering: pixelated; display: block; margin: 4px 0;}
.compare-figure {margin: 0;} .compare-figure figcaption {font-size: 12px; color: #57606a;}
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
#diff img {width: 100% !important; height: 100% !important; object-fit: contain;}  /* a 64 px map drawn large */
#blind-a img, #blind-b img {image-rendering: pixelated; width: 100% !important; height: 100% !important;
  object-fit: contain;}  /* judged large: a 64 px image upscaled pixel-exact */
"""


def _card(title: str, value: str, note: str = "", tooltip: str = "") -> str:
    hint = f" title='{html.escape(tooltip, quote=True)}'" if tooltip else ""
    return (f"<div class='card'{hint}><div class='title'>{html.escape(title)}</div>"
            f"<div class='value'>{html.escape(value)}</div><div class='note'>{html.escape(note)}</div></div>")


def cards(comparison: Comparison | None, target: Prediction | None = None) -> str:
    """Speed-up (measured, and predicted beside it), SSIM, PSNR, LPIPS (or why not), seconds and memory of one
    compared schedule, as cards."""
    if comparison is None:
        return ""
    evaluation, record = comparison.evaluation, comparison.evaluation.record
    row = speedup_cards(comparison, target)
    frames = evaluation.frames
    ssim_note = (f"mean of {len(frames.frame_ssim)} frames; worst {min(frames.frame_ssim):.3f}" if frames
                 else "vs the full-precision image (1 = same)")
    row.append(_card("SSIM", f"{record.ssim or 0.0:.3f}", ssim_note))
    psnr = record.psnr
    row.append(_card("PSNR", "identical" if psnr is None or psnr == float("inf") else f"{psnr:.1f} dB",
                     "higher is closer"))
    row.append(_card("LPIPS", f"{record.lpips:.3f}", "lower is closer") if record.lpips is not None
               else _card("LPIPS", "n/a", lpips_in_plain_words(record.lpips_note),
                          tooltip=f"{record.lpips_note or 'not computed'}. {LPIPS_HOW_TO}"))
    row.append(_card("seconds", f"{record.measured_seconds:.2f} s", seconds_note(evaluation)))
    row.append(memory_card(record.peak_bytes, record.memory))
    return f"<div class='cards'>{''.join(row)}</div>" + frame_strip(list(frames.frame_ssim) if frames else [])


def speedup_cards(comparison: Comparison, target: Prediction | None = None) -> list[str]:
    """The schedule's speed-up as measured (seconds of one moment) and as predicted from step costs, side by side,
    each saying which it is; and predicted on another device when one is chosen."""
    evaluation = comparison.evaluation
    if not evaluation.has_speed_claim:
        return [_card("speed-up (measured)", "no claim", "simulated precisions: quality only")]
    when = "reference timed beside it" if evaluation.timed_beside else "reference timed at another moment"
    stored = ", stored" if evaluation.cached else ""
    row = [_card("speed-up (measured)", f"{evaluation.speedup:.2f}x", f"on this device; {when}{stored}")]
    predicted = comparison.predicted_here
    row.append(_card("speed-up (predicted)", f"{predicted.speedup:.2f}x", "from step costs measured here")
               if predicted is not None else _card("speed-up (predicted)", "n/a", unpredicted_note(comparison)))
    if target is not None:
        row.append(_card(f"speed-up (predicted on {target.device})", f"{target.speedup:.2f}x",
                         "from that device's measured step costs"))
    return row


def unpredicted_note(comparison: Comparison) -> str:
    """Why a schedule has no predicted speed-up here."""
    table = comparison.costs.here
    if table is None:
        return "no step costs measured here yet (a search measures them)"
    missing = [name for name in comparison.schedule.precisions if name not in table.step_seconds]
    if missing:
        return f"no step cost measured here for {', '.join(missing)} (a search with it in its ladder measures it)"
    return "simulated precisions: no speed claim"


def seconds_note(evaluation: Evaluation) -> str:
    """Where the reference's seconds beside the image's come from."""
    if evaluation.is_reference:
        return "the reference itself"
    when = "timed beside it" if evaluation.timed_beside else "timed at another moment"
    return f"reference {evaluation.reference_seconds:.2f} s, {when}"


def lpips_in_plain_words(note: str) -> str:
    """Why LPIPS is missing, in words a person reads at a glance (the technical reason goes in the tooltip)."""
    if "could not fetch" in note:
        return "not computed: its model could not be downloaded here (offline?)"
    if "switched off" in note:
        return "not computed: downloading its model is switched off here"
    if "is not a file" in note:
        return "not computed: the model file set for it is missing"
    return "not computed here"


def memory_card(peak_bytes: int | None, memory: MemoryFigures | None) -> str:
    """The image's peak memory, where it was measured, and the budget and placement it ran under (the plan in the
    tooltip)."""
    if peak_bytes is None:
        return _card("peak memory", "n/a", "not measured (stored before memory was)")
    figures = memory or MemoryFigures(peak_bytes)
    note = MEMORY_WHERE.get(figures.where, "")
    note += f"; budget {gib(figures.budget_bytes, digits=1):.1f} GiB" if figures.budget_bytes is not None else ""
    host = ""
    if figures.where == "gpu" and figures.host_peak_bytes is not None:
        host = f"host memory: {gib(figures.host_peak_bytes):.2f} GiB peak"
        if figures.pinned_bytes:
            host += f", {gib(figures.pinned_bytes):.2f} GiB of it pinned for streamed blocks"
        note += f"; host {gib(figures.host_peak_bytes, digits=1):.1f} GiB"
    return _card("peak memory", f"{gib(peak_bytes):.2f} GiB", note,
                 tooltip=" · ".join(part for part in (figures.plan, host) if part))


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
    """The stakeholder view of a search: the found schedule, the best baseline that meets the same objective (and
    the best one at least as fast, said as such), and the reference, each with its SSIM and predicted speed-up,
    and its image (``images``: schedule → a PNG data URI), captioned with the prompt and seed it shows."""
    if result is None:
        return ""
    report = result.report
    where = report.costs.device_name or "this device"
    columns = [("Found", report.schedule, report.ssim, report.speedup)]
    columns += [(title, point.schedule, point.quality, point.speedup) for title, point in report.rivals()]
    columns.append(("Reference", report.reference_schedule, 1.0, 1.0))
    caption = image_caption(result)
    blocks = []
    for title, schedule, ssim_value, speedup in columns:
        image = (images or {}).get(schedule)
        picture = (f"<figure class='compare-figure'><img class='compare-img' src='{image}' "
                   f"alt='{html.escape(schedule)}'><figcaption>{html.escape(caption)}</figcaption></figure>"
                   if image else "")
        blocks.append(f"<div><h4>{html.escape(title)}</h4>{picture}<code>{html.escape(schedule)}</code>"
                      f"<div class='cards'>{_card('speed-up (predicted)', f'{speedup:.2f}x', f'on {where}')}"
                      f"{_card('SSIM', f'{ssim_value:.3f}', 'mean over calibration images')}</div></div>")
    return f"<div class='compare'>{''.join(blocks)}</div>"


def image_caption(result: SearchResult) -> str:
    """What the search's images show: the class or prompt and the seed of its first calibration setting."""
    request = result.report.request
    if request is None:
        return ""
    settings = request.first_settings
    return f"{settings.resolved_prompt} · seed {settings.seed}"


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
