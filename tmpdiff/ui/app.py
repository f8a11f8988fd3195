"""The Gradio Blocks app: widgets in, engine calls, results back to widgets. No engine logic here."""

from __future__ import annotations

import html
import json
import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from tmpdiff import MODELS, Schedule, Status, available_precisions, get_model
from tmpdiff.cancel import Cancelled
from tmpdiff.cost_tables import load_cost_table, matching_tables, target_prediction
from tmpdiff.evaluate import Evaluator
from tmpdiff.limits import APP_SEARCH_WORK, finite
from tmpdiff.precisions import may_lead
from tmpdiff.prompts import calibration_prompts
from tmpdiff.records import stable_hash
from tmpdiff.runner import Engine, RunSettings, describe_build
from tmpdiff.search_run import SearchRequest, parse_seeds
from tmpdiff.study import Study

from . import views
from .live import LiveSearch
from .views import COLOURS

__all__ = ["build_ui"]

LOG = logging.getLogger("tmpdiff.app")

MAX_STEPS = 50
STOP_WAIT_SECONDS = 60.0  # a stopped search ends at its next denoising step; one step of a large model at most
THIS_DEVICE = "this device (measured)"
URL_STATE_JS = """(model, prompt, seed, steps, size, guidance, schedule) => {
    const url = new URL(window.location.href);
    const values = {model, prompt, seed, steps, size, guidance, schedule};
    for (const [key, value] of Object.entries(values)) url.searchParams.set(key, value ?? "");
    window.history.replaceState(null, "", url);
}"""


def _gpu(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``spaces.GPU`` on Hugging Face ZeroGPU Spaces; a no-op elsewhere."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(fn)


@contextmanager
def telling_builds(engine: Engine, progress: gr.Progress, at: float = 0.5) -> Iterator[None]:
    """While the block runs, a variant being built (compiled, or loaded from the compile cache) shows in
    the progress bar instead of a silent wait."""
    engine.on_build = lambda precision, mode, expected: progress(at, desc=describe_build(precision, mode, expected))
    try:
        yield
    finally:
        engine.on_build = None


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
    prompt_count, step_count = _whole(num_prompts, "calibration prompts"), _whole(steps, "steps")
    seed_values = parse_seeds(seeds, "Seeds")
    _search_work(prompt_count, len(seed_values), step_count)
    floor = target_kind == "SSIM floor"
    return SearchRequest(
        model=model, prompts=tuple(calibration_prompts(spec.labels, prompt_count)), seeds=seed_values,
        steps=step_count, ladder=tuple(x.strip() for x in ladder.split(",") if x.strip()) or None,
        target_ssim=finite(target, "target") if floor else None,
        target_speedup=finite(target, "target") if not floor else None,
        validation_seeds=(1000,), additivity_samples=0, baselines=True,
    )


def _whole(value: float | None, name: str) -> int:
    """A number field's value as a whole number; a ``ValueError`` naming the field for NaN, infinities,
    fractions and empty fields (JSON clients can send all of them)."""
    number = finite(value, name)  # type: ignore[arg-type]
    if not number.is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(number)


def _search_work(prompts: int, seeds: int, steps: int) -> None:
    """The app's bound on one search: calibration images x steps per evaluated schedule."""
    work = prompts * seeds * steps
    if work > APP_SEARCH_WORK:
        raise ValueError(f"this search runs {prompts} prompts x {seeds} seeds x {steps} steps = {work} denoiser "
                         f"calls per schedule, over the app's limit of {APP_SEARCH_WORK}: use fewer prompts or seeds "
                         "here, or run it from the command line (`tmpdiff search`), which has no such limit")


def _plot(rows: list[dict[str, Any]], reference_seconds: float | None) -> go.Figure:
    """Quality against speed-up for every cached evaluation of one setting."""
    figure = go.Figure()
    if rows and reference_seconds:
        for uniform in (True, False):
            part = [r for r in rows if (len(Schedule.parse(r["schedule"]).precisions) == 1) == uniform]
            if not part:
                continue
            figure.add_trace(go.Scatter(
                x=[reference_seconds / r["measured_seconds"] for r in part], y=[r["ssim"] for r in part],
                mode="markers", name="uniform" if uniform else "mixed",
                marker={"size": 12 if uniform else 9, "symbol": "diamond" if uniform else "circle"},
                text=[r["schedule"] + (" (simulated: no speed claim)" if r["simulated"] else "") for r in part],
                customdata=[r["schedule"] for r in part],
                hovertemplate="%{text}<br>speed-up %{x:.2f}x<br>SSIM %{y:.3f}<extra></extra>",
            ))
    figure.update_layout(xaxis_title="measured speed-up vs reference", yaxis_title="SSIM vs reference",
                         height=420, margin={"l": 40, "r": 10, "t": 30, "b": 40}, template="plotly_white")
    return figure


def build_ui(evaluator: Evaluator, store: Any | None = None, default_model: str | None = None) -> gr.Blocks:
    """The app, bound to one evaluator (engine + optional cache store)."""
    device = evaluator.engine.device
    model_names = list(MODELS)
    default_model = default_model or model_names[0]
    spec = get_model(default_model)
    choices = [a.name for a in available_precisions(device) if a.status is not Status.UNAVAILABLE]

    def history(model: str, settings_hash: str | None = None) -> tuple[list[list[Any]], list[dict[str, Any]]]:
        rows = store.evaluations(model=model, settings_hash=settings_hash) if store else []
        table = [[r["schedule"], _round(r["ssim"]), _round(r["psnr"]), _round(r["lpips"]),
                  _round(r["measured_seconds"]), r["settings"].get("prompt"), r["settings"].get("seed")]
                 for r in rows[:200]]
        return table, rows

    @_gpu
    def generate(model: str = default_model, prompt: str = "", seed: float = 0, steps: float = spec.steps,
                 size: float = spec.size, guidance: float = spec.guidance, schedule: str = "",
                 progress: gr.Progress = gr.Progress()) -> tuple[Any, dict[str, Any]]:
        try:
            settings = _settings(model, prompt, seed, steps, size, guidance)
            schedule_obj = evaluator.engine.check_schedule(schedule or settings.reference_schedule(), settings)
            with telling_builds(evaluator.engine, progress, 0.1):
                progress(0.1, desc="reference image (full precision)")
                reference = evaluator.reference(settings)
            with telling_builds(evaluator.engine, progress, 0.5):
                progress(0.5, desc=f"schedule {schedule_obj}")
                # The reference schedule is the reference itself: "cached" only when it was.
                result = reference if schedule_obj == settings.reference_schedule() else \
                    evaluator.evaluate(settings, schedule_obj)
        except ValueError as exc:
            raise user_error(exc) from None
        progress(1.0, desc="done")
        if evaluator.store_error:
            gr.Warning(f"{evaluator.store_error}: this result is shown but not kept; check the database and its "
                       "folder (free space, permissions)")
        summary = result.summary()
        if result.record.simulated:
            summary["note"] = f"simulated precisions ({', '.join(result.record.simulated)}): no speed claim"
        return (reference.image, result.image), summary

    @_gpu
    def search(model: str = default_model, target_kind: str = "SSIM floor", target: float = 0.9,
               steps: float = spec.steps, ladder: str = "", num_prompts: float = 4, seeds: str = "0,1",
               progress: gr.Progress = gr.Progress()) -> Iterator[tuple[Any, Any, Any]]:
        try:
            request = search_request(model, target_kind, target, steps, ladder, num_prompts, seeds)
        except ValueError as exc:
            raise user_error(exc) from None
        search_run = LiveSearch(Study(evaluator, store), request)
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

    def check_inputs(model: str, prompt: str, seed: float, steps: float, size: float, guidance: float,
                     schedule: str) -> tuple[str, Any]:
        """Runs with the click, before the queue: a bad field gets a message beside the editor that stays,
        and the cards say they were not updated (the run itself then refuses the same input)."""
        try:
            settings = _settings(model, prompt, seed, steps, size, guidance)
            evaluator.engine.check_schedule(schedule or settings.reference_schedule(), settings)
        except ValueError as exc:
            return field_message(exc), "<div class='stale' id='stale'>Not updated: fix the field above.</div>"
        return "", gr.update()

    def pareto(model: str, prompt: str, seed: float, steps: float, size: float, guidance: float):
        try:
            settings = _settings(model, prompt, seed, steps, size, guidance)
        except ValueError as exc:
            raise user_error(exc) from None
        table, rows = history(model, stable_hash(settings.to_dict()))
        reference = [r for r in rows if r["schedule"] == str(settings.reference_schedule())]
        ref_seconds = reference[0]["measured_seconds"] if reference else None
        return _plot([r for r in rows if r["ssim"] is not None], ref_seconds), table

    def load_row(table: Any, event: gr.SelectData) -> str:
        row = event.index[0] if isinstance(event.index, list | tuple) else event.index
        return str(table.iloc[row, 0]) if hasattr(table, "iloc") else str(table[row][0])

    def downloads(pair: Any, metrics: dict[str, Any]) -> tuple[str | None, str | None]:
        if not metrics or not pair:
            return None, None
        folder = Path(tempfile.mkdtemp(prefix="tmpdiff-"))
        image = pair[1]
        image_path = folder / f"schedule-{stable_hash(metrics.get('schedule', ''))}.png"
        if hasattr(image, "save"):
            image.save(image_path)
        elif isinstance(image, str | Path):
            image_path.write_bytes(Path(image).read_bytes())
        schedule_path = folder / "schedule.json"
        schedule_path.write_text(json.dumps(metrics, indent=2))
        return str(image_path), str(schedule_path)

    def show_result(model: str, prompt: str, seed: float, steps: float, size: float, guidance: float,
                    latency_on: str, pair: Any, summary: dict[str, Any]):
        """Cards, timeline and difference map of the evaluation just shown."""
        if not summary or not pair:
            return "", views.timeline(str(Schedule.uniform(get_model(model).dtype, int(steps))), None), None
        settings = _settings(model, prompt, seed, steps, size, guidance)
        schedule_obj = Schedule.parse(summary["schedule"])
        table, target = evaluator.costs.get(model), None
        if latency_on != THIS_DEVICE:
            try:
                other = load_cost_table(latency_on, model)
                target = target_prediction(other, settings.reference_schedule(), schedule_obj)
                table = other
            except ValueError as exc:
                gr.Warning(str(exc))
        # From the engine's pixels (cache hits), never from the copies the browser was served.
        diff, largest = evaluator.difference(settings, schedule_obj)
        timeline = views.timeline(str(schedule_obj), table, target["label"] if target else "")
        label = f"|reference - schedule|: black 0, white {largest}/255 (the largest difference)"
        return views.cards(summary, target), timeline, gr.update(value=diff, label=label)

    def comparison_images(report: dict[str, Any]) -> dict[str, str]:
        """The found, rival and reference schedules' images on the search's first calibration setting (all
        evaluated by the search: cache hits), as lossless PNG data URIs."""
        request = (report or {}).get("request") or {}
        if not request.get("prompts") or not request.get("seeds"):
            return {}
        settings = RunSettings(model=report["model"], prompt=request["prompts"][0], seed=request["seeds"][0],
                               steps=report["steps"], size=request.get("size"), guidance=request.get("guidance"))
        rival = report.get("best_baseline_at_speedup") or {}
        names = [report["schedule"], rival.get("schedule"), str(settings.reference_schedule())]
        return {name: _data_uri(evaluator.evaluate(settings, name).image) for name in names if name}

    def show_search(report: dict[str, Any]):
        return (views.validation_warning(report),
                views.compare_cards(report, comparison_images(report)) + views.search_cost(report),
                views.pareto_rows(report))

    story_report: dict[str, Any] = {}

    @_gpu
    def story(progress: gr.Progress = gr.Progress()):
        """What tmpdiff buys on this device, on screen when the page opens: a search of the default model
        (computed once, its evaluations and step costs kept in the cache for the next start)."""
        if not story_report:
            try:
                with telling_builds(evaluator.engine, progress, 0.1):
                    progress(0.05, desc="measuring this device and searching the default model (once)")
                    story_report.update(Study(evaluator, store).search(_story_request(spec, device)).to_dict())
            except (ValueError, Cancelled) as exc:
                LOG.warning("no opening comparison: %s", exc)
                return "", None, precision_rows(device, evaluator.costs.get(spec.name))
        report = story_report
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.get("ladder_notes", []))
        head = (f"<div class='story'><h3>On this device ({html.escape(report['costs'].get('device_name') or device)}"
                f"): {report['speedup']:.2f}x at SSIM {report['ssim']:.3f}</h3>"
                f"<p>A search of {html.escape(report['model'])} for the floor SSIM "
                f"{report['objective']['target_ssim']} found the schedule below; beside it the best uniform or "
                "boundary schedule at least as fast, and the reference. Speed-ups are predicted from step costs "
                "measured here.</p>" + (f"<ul>{notes}</ul>" if notes else ""))
        body = views.compare_cards(report, comparison_images(report))
        return (head + body + "</div>", views.search_plot(report),
                precision_rows(device, evaluator.costs.get(report["model"])))

    def from_url(request: gr.Request):
        """The model, settings and schedule a shared link carries (``?model=...&schedule=...``)."""
        query = dict(request.query_params) if request is not None else {}
        if not query:
            return [gr.update()] * 7
        try:
            s = get_model(query.get("model", default_model))
            settings = _settings(s.name, query.get("prompt", s.example_prompt), float(query.get("seed", 0)),
                                 float(query.get("steps", s.steps)), float(query.get("size", s.size)),
                                 float(query.get("guidance", s.guidance)))
            text = query.get("schedule") or str(settings.reference_schedule())
            evaluator.engine.check_schedule(text, settings)
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

    # Served files (images, downloads) are deleted an hour after they were made, checked every hour.
    with gr.Blocks(title="tmpdiff: temporal mixed precision", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# tmpdiff: a precision for every denoising step\n"
                    "Pick a model, give each step a precision, and see what it costs and what it loses.")
        with gr.Row(elem_classes="story-row"):
            story_html = gr.HTML(elem_id="story")
            story_plot = gr.Plot(label="The search's Pareto front (click a point to load its schedule)",
                                 elem_id="story-plot")
        with gr.Row():
            with gr.Column(scale=1):
                model = gr.Dropdown(model_names, value=default_model, label="Model")
                model_info = gr.Markdown(_describe(spec))
                prompt = gr.Textbox(value=spec.example_prompt, label="Prompt (or class name)")
                with gr.Row():
                    seed = gr.Number(value=0, step=1, label="Seed", minimum=0)
                    steps = gr.Slider(1, MAX_STEPS, value=spec.steps, step=1, label="Steps")
                with gr.Row():
                    size = gr.Number(value=spec.size, step=1, label="Size (px)")
                    guidance = gr.Number(value=spec.guidance, label="Guidance")
                with gr.Accordion(f"Precisions on this device ({device})", open=False):
                    precisions = gr.Dataframe(precision_rows(device), headers=["precision", "status", "step cost here",
                                                                                "why"], interactive=False,
                                              elem_id="precisions")
            with gr.Column(scale=2):
                schedule = gr.Textbox(value=str(Schedule.uniform(spec.dtype, spec.steps)),
                                      label="Schedule (paste or edit: e.g. fp32*2,int8*6)", elem_id="schedule")
                strip = gr.HTML(schedule_strip(str(Schedule.uniform(spec.dtype, spec.steps))))
                field_error = gr.HTML(elem_id="field-error-box")
                with gr.Row():
                    bulk = gr.Dropdown(choices, value=choices[0], label="Precision", scale=2)
                    k = gr.Number(value=2, precision=0, label="k", scale=1)
                    all_button = gr.Button("Uniform", scale=1)
                    first_button = gr.Button("First k", scale=1)

                @gr.render(inputs=[schedule, steps])
                def per_step(text: str, n: float):
                    try:
                        names = list(Schedule.parse(text).steps)
                    except ValueError:
                        return
                    if len(names) != int(n):
                        return
                    with gr.Row(equal_height=True, elem_classes="step-row"):
                        for i, name in enumerate(names):
                            box = gr.Dropdown(choices, value=name if name in choices else choices[0],
                                              label=f"{i}", min_width=70, container=True, key=f"step-{i}")

                            def set_step(value: str, current: str, i: int = i) -> str:
                                try:
                                    return str(Schedule.parse(current).replace([i], value))
                                except ValueError as exc:
                                    raise user_error(exc) from None

                            box.input(set_step, [box, schedule], schedule)

                with gr.Row():
                    run = gr.Button("Run schedule", variant="primary", elem_id="run", scale=2)
                    latency_on = gr.Dropdown([THIS_DEVICE, *matching_tables(default_model)], value=THIS_DEVICE,
                                             label="Latency on", scale=1, elem_id="latency-on")
                cards = gr.HTML(elem_id="cards")
                with gr.Row():
                    # PNG, not Gradio's default WebP: lossy compression would be larger than the differences
                    # the page exists to show.
                    slider = gr.ImageSlider(label="reference | schedule", type="pil", elem_id="slider", scale=2,
                                            interactive=False, format="png")
                    diff = gr.Image(label="|reference - schedule| (brighter: larger)", type="pil", elem_id="diff",
                                    interactive=False, scale=1, height=320, format="png")
                timeline = gr.Plot(label="Per-step timeline", elem_id="timeline")
                with gr.Accordion("Details (JSON) and downloads", open=False):
                    metrics = gr.JSON(label="Quality and latency", elem_id="metrics")
                    with gr.Row():
                        image_file = gr.File(label="Image")
                        schedule_file = gr.File(label="Schedule and metrics (JSON)")
        with gr.Tab("Search"):
            with gr.Row():
                target_kind = gr.Radio(["SSIM floor", "Speed-up target"], value="SSIM floor", label="Objective")
                target = gr.Number(value=0.9, label="Target")
                ladder = gr.Textbox(value="", label="Ladder (empty: measured on this device)")
                num_prompts = gr.Number(value=4, step=1, label="Calibration prompts")
                seeds = gr.Textbox(value="0,1", label="Seeds")
            search_button = gr.Button("Search", variant="primary", elem_id="search")
            search_field_error = gr.HTML(elem_id="search-field-error-box")
            search_warning = gr.HTML(elem_id="search-warning")
            compare = gr.HTML(elem_id="compare")
            with gr.Row():
                search_figure = gr.Plot(label="Pareto front of this search (click a point to load its schedule)",
                                        elem_id="search-plot")
                pareto_table = gr.Dataframe(headers=["schedule", "SSIM", "speed-up"], interactive=False,
                                            label="Pick a point to load its schedule", elem_id="pareto-table")
            with gr.Accordion("Search report (JSON)", open=False):
                report = gr.JSON(label="Search report", elem_id="report")
        with gr.Tab("Pareto and history") as history_tab:
            refresh = gr.Button("Refresh from cache")
            with gr.Row():
                plot = gr.Plot(label="Every cached evaluation of this setting (click a point to load its schedule)",
                               elem_id="history-plot")
                table = gr.Dataframe(headers=["schedule", "SSIM", "PSNR", "LPIPS", "seconds", "prompt", "seed"],
                                     interactive=False, label="Pick a row to load its schedule")

        inputs = [model, prompt, seed, steps, size, guidance]
        schedule.change(schedule_strip, schedule, strip, api_visibility="private")
        steps.release(resize, [schedule, steps, model], schedule, api_visibility="private")
        # Only a person's choice resets the settings: a shared link sets model and schedule together.
        model.input(model_changed, model, [prompt, steps, size, guidance, schedule, model_info, latency_on],
                     api_visibility="private")
        all_button.click(uniform, [steps, bulk], schedule, api_visibility="private")
        first_button.click(first_k, [schedule, steps, k, bulk], schedule, api_visibility="private")
        # Images and searches queue apart: a long search never holds everyone's images for its whole length
        # (the engine runs one pipeline call at a time, in turn, so an image waits one search image at most).
        run.click(check_inputs, [*inputs, schedule], [field_error, cards], queue=False, api_visibility="private")
        run.click(generate, [*inputs, schedule], [slider, metrics], api_name="generate", concurrency_limit=1,
                  concurrency_id="generate", trigger_mode="once").then(
            downloads, [slider, metrics], [image_file, schedule_file], api_visibility="private")
        metrics.change(show_result, [*inputs, latency_on, slider, metrics], [cards, timeline, diff],
                       api_visibility="private")
        latency_on.change(show_result, [*inputs, latency_on, slider, metrics], [cards, timeline, diff],
                          api_visibility="private")
        demo.load(from_url, None, [*inputs, schedule], api_visibility="private")
        for widget in (*inputs, schedule):  # the page address always reopens what is on screen
            widget.change(None, [*inputs, schedule], None, js=URL_STATE_JS)
        search_button.click(check_search, [model, target_kind, target, steps, ladder, num_prompts, seeds],
                            search_field_error, queue=False, api_visibility="private")
        search_button.click(search, [model, target_kind, target, steps, ladder, num_prompts, seeds],
                            [schedule, report, search_figure], api_name="search", concurrency_limit=1,
                            concurrency_id="search", trigger_mode="once").success(  # the found schedule in every panel
            generate, [*inputs, schedule], [slider, metrics], api_visibility="private", concurrency_id="generate")
        demo.load(story, None, [story_html, story_plot, precisions], api_visibility="private",
                  concurrency_id="search")
        report.change(show_search, report, [search_warning, compare, pareto_table], api_visibility="private")
        pareto_table.select(load_row, pareto_table, schedule, api_visibility="private")
        refresh.click(pareto, inputs, [plot, table], api_name="pareto")
        history_tab.select(pareto, inputs, [plot, table], api_visibility="private")  # no Refresh click needed
        # Picking a row loads its schedule, then its images (a cache hit, so no model call).
        table.select(load_row, table, schedule, api_visibility="private").then(
            generate, [*inputs, schedule], [slider, metrics], api_visibility="private", concurrency_id="generate")
        gr.Examples(
            examples=[[default_model, p, s] for p, s in _examples(spec, device)],
            inputs=[model, prompt, schedule], label="Try these",
        )
    return demo


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


def _data_uri(image: Any) -> str:
    import base64
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # lossless: the engine's pixels
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _describe(spec: Any) -> str:
    extra = f" Classes: {', '.join(spec.labels)}." if spec.labels else ""
    return f"*{spec.description or spec.source}* ({spec.dtype} reference, {spec.steps} steps, {spec.size}px).{extra}"


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def _fail(message: str) -> str:
    raise user_error(message)


# The engine's field names, as the form labels them.
LABELS = {"target_ssim": "Target (SSIM floor)", "target_speedup": "Target (speed-up)"}


def in_form_words(message: str) -> str:
    for field, label in LABELS.items():
        message = message.replace(field, label)
    return message


def user_error(problem: ValueError | str) -> gr.Error:
    """A user's mistake: one line in the server log (no traceback), and a message that stays on the page
    until it is closed."""
    LOG.warning("refused: %s", problem)
    return gr.Error(in_form_words(str(problem)), duration=None, print_exception=False)


FIELDS = ("seeds", "seed", "steps", "size", "guidance", "prompt", "schedule", "model", "target",
          "calibration prompts", "ladder")


def field_message(problem: Exception, element_id: str = "field-error") -> str:
    """The inline message for a bad field: the field's name first, as the form labels it."""
    text = in_form_words(str(problem))
    head = text[:60].lower()
    field = next((f for f in FIELDS if head.startswith(f) or any(f" {f}{end}" in head for end in " ,:")), "input")
    return (f"<div class='field-error' id='{element_id}' role='alert'><b>{html.escape(field.capitalize())}</b>: "
            f"{html.escape(text)}</div>")

