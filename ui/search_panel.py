"""The search panels as plain functions: a live search, the comparison a search ends on, and the opening story.

A finished search is a typed ``SearchResult`` (its report and the images it shows) kept in ``gr.State``; its JSON
widget only displays ``report.to_dict()``.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from tmpdiff.pipelines.registry import ModelSpec
from tmpdiff.steps.cancel import Cancelled
from tmpdiff.studies.prompts import calibration_prompts
from tmpdiff.studies.request import DEFAULT_SSIM_FLOOR, SearchRequest
from tmpdiff.studies.study import SearchResult

from . import views
from .admission import Busy
from .forms import search_request
from .live import LiveSearch
from .messages import LOG, field_message, user_error
from .panels import Progress, precision_rows, telling_builds
from .served import data_uri
from .state import AppState

__all__ = ["check_search", "default_search", "search_updates", "search_views", "story_views"]

STOP_WAIT_SECONDS = 60.0  # a stopped search ends at its next denoising step; one step of a large model at most


def search_updates(app: AppState, model: str, target_kind: str, target: object, steps: object, ladder: str,
                   num_prompts: object, seeds: str, progress: Progress,
                   session: str | None = None) -> Iterator[tuple[Any, ...]]:
    """The search panel: the points as they land, then the found schedule, the report (shown), its front and the
    result (kept). A session runs one search at a time, the app a few (their images take turns with everyone's:
    ``engine.turns.TurnLock``)."""
    try:
        request = search_request(model, target_kind, target, steps, ladder, num_prompts, seeds)
        with app.admission.job("search", session):
            yield from _search_updates(app, request, progress)
    except (Busy, ValueError) as exc:  # a bad field, or Busy
        raise user_error(exc) from None


def _search_updates(app: AppState, request: SearchRequest, progress: Progress) -> Iterator[tuple[Any, ...]]:
    search_run = LiveSearch(app.study, request, turns=app.search_turns)
    drawn = 0
    try:
        # Every update suspends the generator, points or not: only a suspended generator can be closed when the
        # page goes away or the request is cancelled (costs and baselines come before any point).
        for update in search_run.updates():
            if update.message:
                progress(update.fraction, desc=update.message, unit="evaluations")
            plot = gr.update()
            if len(update.points) > drawn:
                drawn, plot = len(update.points), views.live_plot(update.points, request.target_ssim)
            yield gr.update(), gr.update(), plot, gr.update()
    finally:
        # The page was closed or the run ended: the worker stops at its next denoising step; wait for it,
        # so the next request finds the pipeline free.
        search_run.stop(wait=STOP_WAIT_SECONDS)
    try:
        report = search_run.result()
    except Cancelled:
        raise user_error("the search was stopped; every finished evaluation is kept in the cache") from None
    progress(1.0, desc="the found schedule's images")
    result = app.study.showcase(report)  # in this job's turn: cache hits, computed here only without a cache
    yield report.schedule, report.to_dict(), views.search_plot(report), result


def search_views(result: SearchResult | None) -> tuple[str, str, list[list[Any]]]:
    """The compare panel: a missed-floor warning, found / rival / reference with their images, the front's
    rows."""
    report = result.report if result is not None else None
    return (views.validation_warning(report), views.compare_cards(result, _image_uris(result)) +
            views.search_cost(report), views.pareto_rows(report))


def check_search(model: str, target_kind: str, target: object, steps: object, ladder: str, num_prompts: object,
                 seeds: str) -> str:
    """Runs with the click, before the queue: a bad search field gets a message that stays."""
    try:
        search_request(model, target_kind, target, steps, ladder, num_prompts, seeds)
    except ValueError as exc:
        return field_message(exc, "search-field-error")
    return ""


def story_views(app: AppState, progress: Progress) -> tuple[str, go.Figure | None, list[list[str]]]:
    """What tmpdiff buys on this device, on screen when the page opens: a search of the default model (computed
    once, its evaluations and step costs kept in the cache for the next start)."""
    if app.story is None:
        try:
            with telling_builds(progress) as phase:
                phase("measuring this device and searching the default model (once)", 0.05)
                app.story = app.study.showcase(app.study.search(default_search(app.spec, app.device)))
        except (ValueError, Cancelled) as exc:
            LOG.warning("no opening comparison: %s", exc)
            return "", None, precision_rows(app.device, app.evaluator.costs.get(app.spec.name))
    report = app.story.report
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.ladder_notes)
    floor = report.objective.target_ssim
    head = (f"<div class='story'><h3>On this device ({html.escape(report.costs.device_name or app.device)}"
            f"): {report.speedup:.2f}x predicted at SSIM {report.ssim:.3f}</h3>"
            f"<p id='story-line'><b>The story:</b> a search of {html.escape(report.model)} gave each of its "
            f"{report.steps} steps a precision from {', '.join(report.ladder)} so that its images keep SSIM ≥ "
            f"{floor} against full precision, and found the schedule below.</p>"
            "<p id='baselines-line'><b>Beside it:</b> the fastest uniform or 16-bit-edges baseline that meets the "
            "same floor (what you would pick without a search), and the reference.</p>"
            "<p id='speedups-line'><b>Speed-ups here are predicted</b> from step costs measured on this device; "
            "run a schedule to measure its image, timed beside the reference.</p>"
            + (f"<ul>{notes}</ul>" if notes else ""))
    body = views.compare_cards(app.story, _image_uris(app.story))
    return (head + body + "</div>", views.search_plot(report),
            precision_rows(app.device, app.evaluator.costs.get(report.model)))


def _image_uris(result: SearchResult | None) -> dict[str, str]:
    """A search's images as lossless PNG data URIs, by schedule."""
    return {name: data_uri(evaluation.image) for name, evaluation in (result.images if result else ())}


def default_search(spec: ModelSpec, device: str) -> SearchRequest:
    """The search the page opens on, and the Search tab's defaults (one question, one answer): small, on the
    default model, with the rungs that can be real on this kind of device (the ladder check drops any measured no
    cheaper than the reference)."""
    rungs = ("fp8", "skip") if device.startswith("cuda") else ("bf16", "skip")
    prompts = tuple(calibration_prompts(spec.labels, 2))
    return SearchRequest(model=spec.name, prompts=prompts, seeds=(0, 1), steps=spec.steps,
                         target_ssim=DEFAULT_SSIM_FLOOR, ladder=(spec.dtype, *rungs), validation_seeds=(1000,),
                         additivity_samples=0)
