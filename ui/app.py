"""The Gradio Blocks app: the page's layout, and its widgets wired to the panels (``panels.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from tmpdiff import MODELS, Schedule, Status, available_precisions, get_model
from tmpdiff.measure.cost_tables import matching_tables
from tmpdiff.measure.evaluator import Evaluator

from . import panels
from .panels import (
    THIS_DEVICE,
    AppState,
    _describe,
    _examples,
    check_search,
    downloads,
    first_k,
    load_row,
    model_changed,
    precision_rows,
    resize,
    schedule_strip,
    uniform,
    user_error,
)

__all__ = ["build_ui"]

MAX_STEPS = 50
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


def _session(request: gr.Request | None) -> str | None:
    """The browser (or API client) session asking, for per-session limits."""
    return getattr(request, "session_hash", None) if request is not None else None


def build_ui(evaluator: Evaluator, store: Any | None = None, default_model: str | None = None) -> gr.Blocks:
    """The app, bound to one evaluator (engine + optional cache store)."""
    device = evaluator.engine.device
    model_names = list(MODELS)
    default_model = default_model or model_names[0]
    spec = get_model(default_model)
    choices = [a.name for a in available_precisions(device) if a.status is not Status.UNAVAILABLE]

    app = AppState(evaluator, store, spec)

    # Thin wrappers: Gradio reads each endpoint's parameters and defaults (the API's) from these signatures;
    # the work is in the panels, which take the app state.
    @_gpu
    def generate(model: str = default_model, prompt: str = "", seed: float = 0, steps: float = spec.steps,
                 size: float = spec.size, guidance: float = spec.guidance, schedule: str = "",
                 progress: gr.Progress = gr.Progress(), request: gr.Request = None) -> tuple[Any, dict[str, Any]]:
        return panels.run_image(app, model, prompt, seed, steps, size, guidance, schedule, progress,
                                _session(request))

    @_gpu
    def search(model: str = default_model, target_kind: str = "SSIM floor", target: float = 0.9,
               steps: float = spec.steps, ladder: str = "", num_prompts: float = 4, seeds: str = "0,1",
               progress: gr.Progress = gr.Progress(), request: gr.Request = None) -> Iterator[tuple[Any, Any, Any]]:
        yield from panels.search_updates(app, model, target_kind, target, steps, ladder, num_prompts, seeds, progress,
                                         _session(request))

    @_gpu
    def story(progress: gr.Progress = gr.Progress()):
        return panels.story_views(app, progress)

    def pareto(model: str, prompt: str, seed: float, steps: float, size: float, guidance: float):
        return panels.history_views(app, model, prompt, seed, steps, size, guidance)

    def check_inputs(model: str, prompt: str, seed: float, steps: float, size: float, guidance: float,
                     schedule: str):
        return panels.check_inputs(app, model, prompt, seed, steps, size, guidance, schedule)

    def show_result(model: str, prompt: str, seed: float, steps: float, size: float, guidance: float,
                    latency_on: str, pair: Any, summary: dict[str, Any]):
        return panels.result_views(app, model, prompt, seed, steps, size, guidance, latency_on, pair, summary)

    def show_search(report: dict[str, Any]):
        return panels.search_views(app, report)

    def from_url(request: gr.Request):
        return panels.link_settings(app, request)

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
        # No Gradio queue limit for images and searches: every request reaches the app at once, where a session
        # may hold a few and the app a bounded number (a refusal says how long to wait: admission.py), and the
        # engine runs one pipeline call at a time, in turn, a search's calls letting waiting images go first.
        run.click(check_inputs, [*inputs, schedule], [field_error, cards], queue=False, api_visibility="private")
        run.click(generate, [*inputs, schedule], [slider, metrics], api_name="generate", concurrency_limit=None,
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
                            [schedule, report, search_figure], api_name="search", concurrency_limit=None,
                            concurrency_id="search", trigger_mode="once").success(  # the found schedule in every panel
            generate, [*inputs, schedule], [slider, metrics], api_visibility="private", concurrency_id="generate")
        demo.load(story, None, [story_html, story_plot, precisions], api_visibility="private",
                  concurrency_limit=1, concurrency_id="story")  # computed once: a second page waits for it
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

