"""The app's panels as plain functions: run, compare, search, history, and the opening story.

Each takes the ``AppState`` (one evaluator, the cache store, the default model) and a widget's values, and
returns what the widgets show, so it is tested without a browser; ``app.build_ui`` lays the page out and
wires them.
"""


from __future__ import annotations

import html
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from tmpdiff import Schedule, available_precisions, get_model
from tmpdiff.atomic import write_atomically
from tmpdiff.engine.runner import telling_builds_to
from tmpdiff.engine.settings import RunSettings
from tmpdiff.engine.turns import TurnLock, on_behalf_of
from tmpdiff.errors import FieldError
from tmpdiff.frontends import plots
from tmpdiff.frontends.words import describe_build
from tmpdiff.limits import APP_SEARCH_WORK, finite
from tmpdiff.measure.cost_tables import load_cost_table, matching_tables, target_prediction
from tmpdiff.measure.evaluator import Evaluator
from tmpdiff.measure.records import stable_hash
from tmpdiff.steps.cancel import Cancelled
from tmpdiff.steps.precisions import may_lead
from tmpdiff.studies.procedure import SearchRequest, parse_seeds
from tmpdiff.studies.prompts import calibration_prompts
from tmpdiff.studies.study import Study, history

from . import views
from .admission import Admission, Busy
from .live import LiveSearch
from .views import COLOURS

__all__ = ["AppState", "check_inputs", "check_search", "history_views", "link_settings", "result_views",
           "run_image", "search_updates", "search_views", "story_views"]


@dataclass
class AppState:
    """What every panel reads: the one evaluator (engine and cache), the store for history, the default model."""

    evaluator: Evaluator
    store: Any | None
    spec: Any
    story: dict[str, Any] = field(default_factory=dict)  # the opening search's report, computed once
    admission: Admission = field(default_factory=Admission)  # jobs per session and in all (admission.py)
    # Images run whole, one after another in the order asked: interleaving two images' pipeline calls would make
    # each wait for both (searches still take turns call by call, and let a waiting image go first).
    image_turns: TurnLock = field(default_factory=TurnLock)
    search_turns: TurnLock = field(default_factory=TurnLock)  # one search runs; the others admitted wait in turn

    @property
    def device(self) -> str:
        return self.evaluator.engine.device


LOG = logging.getLogger("tmpdiff.app")

STOP_WAIT_SECONDS = 60.0  # a stopped search ends at its next denoising step; one step of a large model at most
THIS_DEVICE = "this device (measured)"


@contextmanager
def telling_builds(progress: gr.Progress, at: float = 0.5) -> Iterator[None]:
    """While the block runs, a variant being built (compiled, or loaded from the compile cache) shows in
    the progress bar instead of a silent wait."""
    with telling_builds_to(lambda precision, mode, expected: progress(at, desc=describe_build(precision, mode,
                                                                                             expected))):
        yield


def schedule_strip(text: str) -> str:
    """The schedule as a row of coloured cells, one per step."""
    if not str(text).strip():
        return "<div class='strip-note'>No schedule given: every step runs in the reference precision.</div>"
    try:
        steps = Schedule.parse(text).steps
    except ValueError as exc:
        return f"<div class='strip-error'>{html.escape(str(exc))}</div>"
    cells = "".join(
        f"<span title='step {i}: {name}' style='display:inline-block;min-width:2.2em;padding:4px 2px;margin:1px;"
        f"border-radius:3px;text-align:center;color:white;font-size:11px;background:{COLOURS.get(name, '#555')}'>"
        f"{name}</span>" for i, name in enumerate(steps)
    )
    return f"<div class='schedule-strip'>{cells}</div>"


def precision_rows(device: str, table: Any = None) -> list[list[str]]:
    """Each precision, its status here, its measured cost per step (once measured) and why."""
    def cost(name: str) -> str:
        if table is None or name not in table.step_seconds:
            return "not measured yet"
        note = " (simulated: no speed claim)" if name in table.simulated else ""
        return f"{1000 * table.step_seconds[name]:.1f} ms{note}"

    return [[a.name, a.status.value, cost(a.name), a.reason] for a in available_precisions(device)]


def _settings(model: str, prompt: str, seed: float, steps: float, size: float, guidance: float) -> RunSettings:
    return RunSettings(model=model, prompt=prompt or None, seed=_whole(seed, "seed"), steps=_whole(steps, "steps"),
                       size=_whole(size, "size"), guidance=finite(guidance, "guidance"))


def search_request(model: str, target_kind: str, target: float, steps: float, ladder: str, num_prompts: float,
                   seeds: str) -> SearchRequest:
    """The search tab's fields as a request, each checked (a ``ValueError`` naming the field otherwise)."""
    spec = get_model(model)
    prompt_count, step_count = _whole(num_prompts, "prompts"), _whole(steps, "steps")
    seed_values = parse_seeds(seeds)
    _search_work(prompt_count, len(seed_values), step_count)
    floor = target_kind == "SSIM floor"
    return SearchRequest(
        model=model, prompts=tuple(calibration_prompts(spec.labels, prompt_count)), seeds=seed_values,
        steps=step_count, ladder=tuple(x.strip() for x in ladder.split(",") if x.strip()) or None,
        target_ssim=finite(target, "target_ssim") if floor else None,
        target_speedup=finite(target, "target_speedup") if not floor else None,
        validation_seeds=(1000,), additivity_samples=0, baselines=True,
    )


def _whole(value: object, field: str) -> int:
    """A number field's value as a whole number; a ``FieldError`` for NaN, infinities, fractions and empty fields
    (JSON clients can send all of them). An integer is kept as it is: 2**63 - 1 is no float."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = finite(value, field)
    if not number.is_integer():
        raise FieldError(field, value, f"{{{field}}} must be a whole number, got {{value}}")
    return int(number)


def _search_work(prompts: int, seeds: int, steps: int) -> None:
    """The app's bound on one search: calibration images x steps per evaluated schedule."""
    work = prompts * seeds * steps
    if work > APP_SEARCH_WORK:
        raise FieldError("prompts", prompts, f"this search runs {prompts} prompts x {seeds} seeds x {steps} steps = "
                         f"{work} denoiser calls per schedule, over the app's limit of {APP_SEARCH_WORK}: use fewer "
                         "{prompts} or {seeds} here, or run it from the command line (`tmpdiff search`), which has "
                         "no such limit")


def run_image(app: AppState, model: str, prompt: str, seed: float, steps: float, size: float, guidance: float,
              schedule: str, progress: gr.Progress, session: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The run panel: the reference and the schedule's image, and the schedule's summary. ``session``: the
    browser session asking (a few images each, a bounded number in all: ``admission.py``)."""
    try:
        with app.admission.job("image", session), on_behalf_of(session), app.image_turns:
            return _run_image(app, model, prompt, seed, steps, size, guidance, schedule, progress)
    except Busy as exc:
        raise user_error(exc) from None


def _run_image(app: AppState, model: str, prompt: str, seed: float, steps: float, size: float, guidance: float,
               schedule: str, progress: gr.Progress) -> tuple[Any, dict[str, Any]]:
    try:
        settings = _settings(model, prompt, seed, steps, size, guidance)
        schedule_obj = app.evaluator.engine.check_schedule(schedule or settings.reference_schedule(), settings)
        with telling_builds(progress, 0.1):
            progress(0.1, desc="reference image (full precision)")
            reference = app.evaluator.reference(settings)
        with telling_builds(progress, 0.5):
            progress(0.5, desc=f"schedule {schedule_obj}")
            result = app.evaluator.beside(reference, settings, schedule_obj)
    except ValueError as exc:
        raise user_error(exc) from None
    progress(1.0, desc="done")
    if app.evaluator.store_error:
        gr.Warning(f"{app.evaluator.store_error}: this result is shown but not kept; check the database and its "
                   "folder (free space, permissions)")
    summary = result.summary()
    if app.evaluator.engine.split > 1:
        summary["split_over_processes"] = app.evaluator.engine.split
    if result.record.simulated:
        summary["note"] = f"simulated precisions ({', '.join(result.record.simulated)}): no speed claim"
    # The PNG bytes the engine kept (and scored), served as they are: no second encoding.
    return (served_file(reference.record.png, "image.png"), served_file(result.record.png, "image.png")), summary

def search_updates(app: AppState, model: str, target_kind: str, target: float, steps: float, ladder: str,
                   num_prompts: float, seeds: str, progress: gr.Progress,
                   session: str | None = None) -> Iterator[tuple[Any, Any, Any]]:
    """The search panel: the points as they land, then the found schedule, the report and its front. A session
    runs one search at a time, the app a few (their images take turns with everyone's: ``engine.turns.TurnLock``)."""
    try:
        request = search_request(model, target_kind, target, steps, ladder, num_prompts, seeds)
        with app.admission.job("search", session):
            yield from _search_updates(app, request, progress)
    except ValueError as exc:  # a bad field, or Busy
        raise user_error(exc) from None


def _search_updates(app: AppState, request: SearchRequest, progress: gr.Progress) -> Iterator[tuple[Any, Any, Any]]:
    search_run = LiveSearch(Study(app.evaluator, app.store), request, turns=app.search_turns)
    try:
        for update in search_run.updates():
            if update.message:
                progress(update.fraction, desc=update.message, unit="evaluations")
            if update.points:
                yield gr.update(), gr.update(), views.live_plot(update.points, request.target_ssim)
    finally:
        # The page was closed or the run ended: the worker stops at its next denoising step; wait for it,
        # so the next request finds the pipeline free.
        search_run.stop(wait=STOP_WAIT_SECONDS)
    try:
        result = search_run.result()
    except Cancelled:
        raise user_error("the search was stopped; every finished evaluation is kept in the cache") from None
    except ValueError as exc:
        raise user_error(exc) from None
    yield result.schedule, result.to_dict(), views.search_plot(result.to_dict())

def check_search(model: str, target_kind: str, target: float, steps: float, ladder: str, num_prompts: float,
                 seeds: str) -> str:
    """Runs with the click, before the queue: a bad search field gets a message that stays."""
    try:
        search_request(model, target_kind, target, steps, ladder, num_prompts, seeds)
    except ValueError as exc:
        return field_message(exc, "search-field-error")
    return ""

def check_inputs(app: AppState, model: str, prompt: str, seed: float, steps: float, size: float, guidance: float,
                 schedule: str) -> tuple[str, Any]:
    """Runs with the click, before the queue: a bad field gets a message beside the editor that stays,
    and the cards say they were not updated (the run itself then refuses the same input)."""
    try:
        settings = _settings(model, prompt, seed, steps, size, guidance)
        app.evaluator.engine.check_schedule(schedule or settings.reference_schedule(), settings)
    except ValueError as exc:
        return field_message(exc), "<div class='stale' id='stale'>Not updated: fix the field above.</div>"
    return "", gr.update()

def history_views(app: AppState, model: str, prompt: str, seed: float, steps: float, size: float, guidance: float):
    """The history panel: every cached evaluation of this setting, plotted and listed."""
    try:
        settings = _settings(model, prompt, seed, steps, size, guidance)
    except ValueError as exc:
        raise user_error(exc) from None
    points = history(app.evaluator, app.store, settings)
    table = [[p.schedule, _round(p.ssim), _round(p.psnr), _round(p.lpips), _round(p.seconds), p.prompt, p.seed]
             for p in points[:200]]
    return plots.history(points), table

def load_row(table: Any, event: gr.SelectData) -> str:
    row = event.index[0] if isinstance(event.index, list | tuple) else event.index
    return str(table.iloc[row, 0]) if hasattr(table, "iloc") else str(table[row][0])

def downloads(pair: Any, metrics: dict[str, Any]) -> tuple[str | None, str | None]:
    """The shown schedule's image and its metrics as files to download (served, and deleted, like the images)."""
    if not metrics or not pair:
        return None, None
    image, name = pair[1], f"schedule-{stable_hash(metrics.get('schedule', ''))}.png"
    image_path = served_png(image, name) if hasattr(image, "save") else served_file(Path(image).read_bytes(), name)
    return image_path, served_file(json.dumps(metrics, indent=2).encode(), "schedule.json")

def result_views(app: AppState, model: str, prompt: str, seed: float, steps: float, size: float, guidance: float,
                latency_on: str, pair: Any, summary: dict[str, Any]):
    """Cards, timeline and difference map of the evaluation just shown."""
    if not summary or not pair:
        return "", views.timeline(str(Schedule.uniform(get_model(model).dtype, int(steps))), None), None
    settings = _settings(model, prompt, seed, steps, size, guidance)
    schedule_obj = Schedule.parse(summary["schedule"])
    table, target = app.evaluator.costs.get(model), None
    if latency_on != THIS_DEVICE:
        try:
            other = load_cost_table(latency_on, model)
            target = target_prediction(other, settings.reference_schedule(), schedule_obj)
            table = other
        except ValueError as exc:
            gr.Warning(str(exc))
    # From the engine's pixels (cache hits), never from the copies the browser was served.
    diff, largest = app.evaluator.difference(settings, schedule_obj)
    timeline = views.timeline(str(schedule_obj), table, target["label"] if target else "")
    label = f"|reference - schedule|: black 0, white {largest}/255 (the largest difference)"
    html = views.cards(summary, target)
    if settings.spec.frames:  # a video plays: both clips, from the engine's frames, as lossless animated PNGs
        html += views.video_pair(_data_uri(app.evaluator.reference(settings).image, animated=True),
                                 _data_uri(app.evaluator.evaluate(settings, schedule_obj).image, animated=True))
    return html, timeline, gr.update(value=served_png(diff), label=label)

def comparison_images(app: AppState, report: dict[str, Any]) -> dict[str, str]:
    """The found, rival and reference schedules' images on the search's first calibration setting (all
    evaluated by the search: cache hits), as lossless PNG data URIs."""
    request = (report or {}).get("request") or {}
    if not request.get("prompts") or not request.get("seeds"):
        return {}
    settings = RunSettings(model=report["model"], prompt=request["prompts"][0], seed=request["seeds"][0],
                           steps=report["steps"], size=request.get("size"), guidance=request.get("guidance"))
    rival = views.baseline_rival(report)[1] or {}
    names = [report["schedule"], rival.get("schedule"), str(settings.reference_schedule())]
    return {name: _data_uri(app.evaluator.evaluate(settings, name).image) for name in names if name}

def search_views(app: AppState, report: dict[str, Any]):
    """The compare panel: a missed-floor warning, found / rival / reference with images, the front's rows."""
    return (views.validation_warning(report),
            views.compare_cards(report, comparison_images(app, report)) + views.search_cost(report),
            views.pareto_rows(report))

def story_views(app: AppState, progress: gr.Progress):
    """What tmpdiff buys on this device, on screen when the page opens: a search of the default model
    (computed once, its evaluations and step costs kept in the cache for the next start)."""
    if not app.story:
        try:
            with telling_builds(progress, 0.1):
                progress(0.05, desc="measuring this device and searching the default model (once)")
                found = Study(app.evaluator, app.store).search(_story_request(app.spec, app.device))
                app.story.update(found.to_dict())
        except (ValueError, Cancelled) as exc:
            LOG.warning("no opening comparison: %s", exc)
            return "", None, precision_rows(app.device, app.evaluator.costs.get(app.spec.name))
    report = app.story
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.get("ladder_notes", []))
    head = (f"<div class='story'><h3>On this device ({html.escape(report['costs'].get('device_name') or app.device)}"
            f"): {report['speedup']:.2f}x at SSIM {report['ssim']:.3f}</h3>"
            f"<p>A search of {html.escape(report['model'])} for the floor SSIM "
            f"{report['objective']['target_ssim']} found the schedule below; beside it the best uniform or "
            "boundary schedule at least as fast, and the reference. Speed-ups are predicted from step costs "
            "measured here.</p>" + (f"<ul>{notes}</ul>" if notes else ""))
    body = views.compare_cards(report, comparison_images(app, report))
    return (head + body + "</div>", views.search_plot(report),
            precision_rows(app.device, app.evaluator.costs.get(report["model"])))

def link_settings(app: AppState, request: gr.Request):
    """The model, settings and schedule a shared link carries (``?model=...&schedule=...``)."""
    query = dict(request.query_params) if request is not None else {}
    if not query:
        return [gr.update()] * 7
    try:
        s = get_model(query.get("model", app.spec.name))
        settings = _settings(s.name, query.get("prompt", s.example_prompt), float(query.get("seed", 0)),
                             float(query.get("steps", s.steps)), float(query.get("size", s.size)),
                             float(query.get("guidance", s.guidance)))
        text = query.get("schedule") or str(settings.reference_schedule())
        app.evaluator.engine.check_schedule(text, settings)
    except ValueError as exc:
        gr.Warning(f"the link's settings were not loaded: {exc}")
        return [gr.update()] * 7
    return (s.name, settings.prompt or "", settings.seed, settings.steps, settings.size, settings.guidance,
            str(Schedule.parse(text)))

def uniform(steps: float, name: str) -> str:
    return str(Schedule.uniform(name, int(steps))) if may_lead(name) else _fail(f"{name!r} cannot fill every step")

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

def model_changed(model: str):
    s = get_model(model)
    return (gr.update(value=s.example_prompt, placeholder=s.example_prompt), s.steps, s.size, s.guidance,
            str(Schedule.uniform(s.dtype, s.steps)), _describe(s),
            gr.update(choices=[THIS_DEVICE, *matching_tables(model)], value=THIS_DEVICE))


def _examples(spec: Any, device: str) -> list[tuple[str, str]]:
    """Schedules whose trade-off is real on this device: on a CPU (where 8-bit kernels are slower than fp32)
    what skipping steps buys; on a GPU, 8-bit middle steps as well."""
    ref, n = spec.dtype, spec.steps
    prompts = list(spec.labels[:3]) if spec.labels else [spec.example_prompt] * 3
    late = f"{ref}*{n - 2},skip,{ref}"
    alternate = str(Schedule((ref,) * (n // 2) + tuple("skip" if i % 2 == 0 else ref for i in range(n - n // 2))))
    if device.startswith("cuda"):
        return [(prompts[0], f"{ref}*2,fp8*{n - 4},{ref}*2"), (prompts[1], late), (prompts[2], alternate)]
    return [(prompts[0], late), (prompts[1], alternate), (prompts[2], f"{ref}*{n // 2},skip*{n - n // 2}")]


def _story_request(spec: Any, device: str) -> SearchRequest:
    """The search on screen when the page opens: small, on the default model, with the rungs that can be
    real on this kind of device (the ladder check drops any measured no cheaper than the reference)."""
    rungs = ("fp8", "skip") if device.startswith("cuda") else ("bf16", "skip")
    prompts = tuple(calibration_prompts(spec.labels, 2))
    return SearchRequest(model=spec.name, prompts=prompts, seeds=(0, 1), steps=spec.steps, target_ssim=0.9,
                         ladder=(spec.dtype, *rungs), validation_seeds=(1000,), additivity_samples=0)


def _png(image: Any, animated: bool = False) -> bytes:
    """The engine's pixels as PNG (lossless); ``animated``: a video's frame sheet as an animated PNG."""
    import io

    from tmpdiff.engine.frames import write_animation

    buffer = io.BytesIO()
    if animated:
        write_animation(image, buffer)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def _data_uri(image: Any, animated: bool = False) -> str:
    """A PNG data URI of the engine's pixels; ``animated``: a video's frame sheet as an animated PNG."""
    import base64

    return "data:image/png;base64," + base64.b64encode(_png(image, animated)).decode()


def served_png(image: Any, name: str = "image.png") -> str:
    """The image as a PNG file that a component serves as it is (lossless, no copy): see :func:`served_file`."""
    return served_file(_png(image), name)


def served_file(data: bytes, name: str) -> str:
    """``data`` as a file called ``name`` in Gradio's cache folder, where Gradio serves it as it is and deletes it
    an hour later. Its folder is named by the SHA-256 of the bytes, and the file is renamed into place once
    complete, so two visitors shown the same image (a cache hit) share one whole file. Gradio's own path for a
    PIL image rewrites the file for each of them, and a download racing the rewrite read a truncated file (seen
    in the load test); a folder of our own per image was never deleted."""
    import hashlib
    import os

    from gradio.utils import get_upload_folder

    folder = Path(get_upload_folder()) / "tmpdiff" / hashlib.sha256(data).hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if path.exists():
        os.utime(path)  # handed out again: Gradio deletes served files by their age (ctime)
        return str(path)
    write_atomically(path, data)
    return str(path)


def _describe(spec: Any) -> str:
    extra = f" Classes: {', '.join(spec.labels)}." if spec.labels else ""
    return f"*{spec.description or spec.source}* ({spec.dtype} reference, {spec.steps} steps, {spec.size}px).{extra}"


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def _fail(message: str) -> str:
    raise user_error(message)


# The engine's field names, as the form labels them (others: the name with spaces).
LABELS = {"target_ssim": "Target (SSIM floor)", "target_speedup": "Target (speed-up)",
          "prompts": "Calibration prompts", "db": "the cache database", "prompt_file": "prompt file",
          "negative_prompt": "Negative prompt"}


def label_of(field: str) -> str:
    return LABELS.get(field, field.replace("_", " ").capitalize())


def in_form_words(problem: Exception | str) -> str:
    """A refusal as the form says it: a field error names the field's label."""
    return problem.worded(label_of) if isinstance(problem, FieldError) else str(problem)


def user_error(problem: Exception | str) -> gr.Error:
    """A user's mistake: one line in the server log (no traceback), and a message that stays on the page
    until it is closed."""
    LOG.warning("refused: %s", problem)
    return gr.Error(in_form_words(problem), duration=None, print_exception=False)


def field_message(problem: Exception, element_id: str = "field-error") -> str:
    """The inline message for a bad field: the field's label first, as the form labels it."""
    field = label_of(problem.field) if isinstance(problem, FieldError) else "Input"
    return (f"<div class='field-error' id='{element_id}' role='alert'><b>{html.escape(field)}</b>: "
            f"{html.escape(in_form_words(problem))}</div>")
