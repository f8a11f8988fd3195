"""The image panels as plain functions: run a schedule beside its reference, show a comparison, the history of a
setting, and the schedule editor's helpers.

Each takes the ``AppState`` and widget values, and returns what the widgets show; a result is a typed
``Comparison`` kept in ``gr.State``, so showing it again (another "Latency on", say) never computes anything. They
are tested without a browser; ``app.build_ui`` lays the page out and wires them.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from tmpdiff import Schedule, available_precisions, get_model
from tmpdiff.engine.turns import on_behalf_of
from tmpdiff.frontends import plots
from tmpdiff.measure.cost_tables import load_cost_table, matching_tables
from tmpdiff.measure.latency import CostTable
from tmpdiff.measure.records import stable_hash
from tmpdiff.memory.meter import gib
from tmpdiff.pipelines.registry import ModelSpec
from tmpdiff.steps.precisions import may_lead
from tmpdiff.studies.comparison import Comparison
from tmpdiff.studies.history import history

from . import views
from .admission import Busy
from .forms import run_settings
from .live import saying_set_up
from .messages import field_message, in_form_words, user_error
from .served import data_uri, served_file, served_png
from .state import AppState
from .views import COLOURS

__all__ = ["THIS_DEVICE", "check_inputs", "history_views", "link_settings", "result_views", "run_image"]

THIS_DEVICE = "this device (measured)"
Progress = Callable[..., Any]


@contextmanager
def telling_builds(progress: Progress) -> Iterator[Callable[[str, float], None]]:
    """While the block runs, a model's weights loading and a variant being built (compiled, or loaded from the
    compile cache) show in the progress bar, at the phase the block last reported through the function it yields."""
    at = [0.0]

    def phase(what: str, fraction: float) -> None:
        at[0] = fraction
        progress(fraction, desc=what)

    with saying_set_up(lambda text: progress(at[0], desc=text)):
        yield phase


def run_image(app: AppState, model: str, prompt: str, seed: object, steps: object, size: object, guidance: object,
              schedule: str, progress: Progress, session: str | None = None) -> tuple[Any, dict[str, Any], Comparison]:
    """The run panel: the reference and the schedule's image (served as the PNG bytes the engine kept and scored),
    the schedule's summary, and the comparison itself. ``session``: the browser session asking (a few images
    each, a bounded number in all: ``admission.py``)."""
    try:
        with app.admission.job("image", session), on_behalf_of(session), app.image_turns, \
                telling_builds(progress) as phase:
            settings = run_settings(model, prompt, seed, steps, size, guidance)
            comparison = app.study.compare(settings, schedule or settings.reference_schedule(), on_phase=phase)
    except (Busy, ValueError) as exc:
        raise user_error(exc) from None
    progress(1.0, desc="done")
    if False in (comparison.reference.kept, comparison.evaluation.kept):  # this request's, and without paths
        gr.Warning("this result is shown but could not be kept in the cache: the database refused the write "
                   "(its folder's free space or permissions); the server's log says why")
    pair = (served_file(comparison.reference.record.png, "image.png"),
            served_file(comparison.evaluation.record.png, "image.png"))
    return pair, comparison.summary(), comparison


def result_views(comparison: Comparison | None, latency_on: str) -> tuple[Any, ...]:
    """Cards, timeline, difference map, downloads and the images' caption (what they show: class or prompt, and
    seed) of the comparison shown: all from the comparison itself (a later change of a setting's widgets computes
    nothing)."""
    if comparison is None:
        return "", plots.timeline("fp32", None), None, None, None, gr.update()
    table, target, label = comparison.costs.here, None, ""
    if latency_on != THIS_DEVICE:
        try:
            other = load_cost_table(latency_on, comparison.settings.model)
            target, table, label = comparison.predicted_on(other), other, comparison.predicted_on(other).label
        except ValueError as exc:
            gr.Warning(in_form_words(exc))
    text = views.cards(comparison, target)
    if comparison.is_video:  # a video plays: both clips, from the engine's frames, as lossless animated PNGs
        text += views.video_pair(data_uri(comparison.reference.image, animated=True),
                                 data_uri(comparison.evaluation.image, animated=True))
    label_diff = f"|reference - schedule|: black 0, white {comparison.largest_difference}/255 (the largest difference)"
    diff = gr.update(value=served_png(comparison.difference), label=label_diff)
    settings = comparison.settings
    caption = f"reference | {comparison.schedule}: {settings.resolved_prompt}, seed {settings.seed}"
    return (text, views.timeline(str(comparison.schedule), table, label), diff, *downloads(comparison),
            gr.update(label=caption))


def downloads(comparison: Comparison) -> tuple[str, str]:
    """The schedule's image and its metrics as files to download (served, and deleted, like the images)."""
    name = f"schedule-{stable_hash(str(comparison.schedule))}.png"
    return (served_file(comparison.evaluation.record.png, name),
            served_file(json.dumps(comparison.summary(), indent=2).encode(), "schedule.json"))


def check_inputs(app: AppState, model: str, prompt: str, seed: object, steps: object, size: object,
                 guidance: object, schedule: str) -> tuple[str, Any]:
    """Runs with the click, before the queue: a bad field gets a message beside the editor that stays, and the
    cards say they were not updated (the run itself then refuses the same input at the same boundary)."""
    try:
        settings = run_settings(model, prompt, seed, steps, size, guidance)
        app.evaluator.engine.check_schedule(schedule or settings.reference_schedule(), settings)
    except ValueError as exc:
        return field_message(exc), "<div class='stale' id='stale'>Not updated: fix the field above.</div>"
    return "", gr.update()


AXES = ("speed-up (measured)", "speed-up (predicted)", "peak memory")  # the history plot's x axes
AXIS_KEYS = dict(zip(AXES, ("speedup", "predicted_speedup", "peak_gib"), strict=True))


def history_views(app: AppState, model: str, prompt: str, seed: object, steps: object, size: object,
                  guidance: object, axis: str = AXES[0]) -> tuple[go.Figure, list[list[Any]]]:
    """The history panel: every cached evaluation of this setting, plotted (SSIM against speed-up or peak memory:
    the trade-off in seconds or in bytes) and listed."""
    if axis not in AXES:
        raise user_error(f"the history plots SSIM against one of {', '.join(AXES)}, not {axis!r:.40}")
    try:
        settings = run_settings(model, prompt, seed, steps, size, guidance)
    except ValueError as exc:
        raise user_error(exc) from None
    points = history(app.evaluator, app.store, settings)
    table = [[p.schedule, _round(p.ssim), _round(p.psnr), _round(p.lpips), _round(p.seconds), _round(p.speedup),
              _round(p.predicted_speedup), gib(p.peak_bytes),
              p.prompt, p.seed] for p in points[:200]]
    return plots.history(points, AXIS_KEYS[axis]), table


def link_settings(app: AppState, request: gr.Request) -> Any:
    """The model, settings and schedule a shared link carries (``?model=...&schedule=...``)."""
    query = dict(request.query_params) if request is not None else {}
    if not query:
        return [gr.update()] * 7
    try:
        spec = get_model(query.get("model", app.spec.name))
        settings = run_settings(spec.name, query.get("prompt", spec.example_prompt), query.get("seed", 0),
                                query.get("steps", spec.steps), query.get("size", spec.size),
                                query.get("guidance", spec.guidance))
        schedule = app.evaluator.engine.check_schedule(query.get("schedule") or settings.reference_schedule(),
                                                       settings)
    except ValueError as exc:
        gr.Warning(f"the link's settings were not loaded: {in_form_words(exc)}")
        return [gr.update()] * 7
    return (spec.name, settings.prompt or "", settings.seed, settings.steps, settings.size, settings.guidance,
            str(schedule))


def schedule_strip(text: str) -> str:
    """The schedule as a row of coloured cells, one per step."""
    if not str(text).strip():
        return "<div class='strip-note'>No schedule given: every step runs in the reference precision.</div>"
    try:
        steps = Schedule.parse(text).steps
    except ValueError as exc:
        return f"<div class='strip-error'>{html.escape(in_form_words(exc))}</div>"
    cells = "".join(
        f"<span title='step {i}: {name}' style='display:inline-block;min-width:2.2em;padding:4px 2px;margin:1px;"
        f"border-radius:3px;text-align:center;color:white;font-size:11px;background:{COLOURS.get(name, '#555')}'>"
        f"{name}</span>" for i, name in enumerate(steps)
    )
    return f"<div class='schedule-strip'>{cells}</div>"


def precision_rows(device: str, table: CostTable | None = None) -> list[list[str]]:
    """Each precision, its status here, its measured cost per step (once measured) and why."""
    def cost(name: str) -> str:
        if table is None or name not in table.step_seconds:
            return "not measured yet"
        note = " (simulated: no speed claim)" if name in table.simulated else ""
        return f"{1000 * table.step_seconds[name]:.1f} ms{note}"

    return [[a.name, a.status.value, cost(a.name), a.reason] for a in available_precisions(device)]


def uniform(steps: float, name: str) -> str:
    if not may_lead(name):
        raise user_error(f"{name!r} cannot fill every step")
    return str(Schedule.uniform(name, int(steps)))


def first_k(current: str, steps: float, k: float, name: str) -> str:
    try:
        base = Schedule.coerce(current, int(steps))
        return str(base.replace(range(min(int(k), int(steps))), name))
    except ValueError as exc:
        raise user_error(exc) from None


def resize(current: str, steps: float, model: str) -> str:
    reference = get_model(model).dtype
    try:
        names = list(Schedule.parse(current).steps)
    except ValueError:
        names = []
    names = (names + [names[-1] if names else reference] * int(steps))[: int(steps)]
    return str(Schedule(tuple(names))) if names else reference


def model_changed(model: str) -> tuple[Any, ...]:
    spec = get_model(model)
    return (gr.update(value=spec.example_prompt, placeholder=spec.example_prompt), spec.steps, spec.size,
            spec.guidance, str(Schedule.uniform(spec.dtype, spec.steps)), describe(spec),
            gr.update(choices=[THIS_DEVICE, *matching_tables(model)], value=THIS_DEVICE))


def load_row(table: Any, event: gr.SelectData) -> str:
    row = event.index[0] if isinstance(event.index, list | tuple) else event.index
    return str(table.iloc[row, 0]) if hasattr(table, "iloc") else str(table[row][0])


def examples(spec: ModelSpec, device: str) -> list[tuple[str, str]]:
    """Schedules whose trade-off is real on this device: on a CPU (where 8-bit kernels are slower than fp32)
    what skipping steps buys; on a GPU, 8-bit middle steps as well."""
    ref, n = spec.dtype, spec.steps
    prompts = list(spec.labels[:3]) if spec.labels else [spec.example_prompt] * 3
    late = f"{ref}*{n - 2},skip,{ref}"
    alternate = str(Schedule((ref,) * (n // 2) + tuple("skip" if i % 2 == 0 else ref for i in range(n - n // 2))))
    if device.startswith("cuda"):
        return [(prompts[0], f"{ref}*2,fp8*{n - 4},{ref}*2"), (prompts[1], late), (prompts[2], alternate)]
    return [(prompts[0], late), (prompts[1], alternate), (prompts[2], f"{ref}*{n // 2},skip*{n - n // 2}")]


def describe(spec: ModelSpec) -> str:
    extra = f" Classes: {', '.join(spec.labels)}." if spec.labels else ""
    return f"*{spec.description or spec.source}* ({spec.dtype} reference, {spec.steps} steps, {spec.size}px).{extra}"


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)
