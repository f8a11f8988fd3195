"""The Gradio Blocks app: the page's layout, and its widgets wired to the panels.

Results stay typed until the widgets: ``gr.State`` holds the ``Comparison`` and the ``SearchResult``; the JSON
widgets only display their ``to_dict()``; every view is drawn from the state, so a widget changed after a run
never starts a computation outside the queue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import gradio as gr

from tmpdiff import MODELS, Schedule, Status, available_precisions, get_model
from tmpdiff.measure.cost_tables import matching_tables
from tmpdiff.pipelines.registry import ModelSpec
from tmpdiff.studies.request import DEFAULT_SSIM_FLOOR, SearchRequest
from tmpdiff.studies.study import Study

from . import blind, panels, search_panel
from .forms import SPEEDUP_TARGET, SSIM_FLOOR
from .messages import user_error
from .options import PRIVATE, session_of
from .state import AppState

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


class _Page(gr.Blocks):
    """The app's Blocks. An API call with too few values is told which it must send, in one line, and a value a
    widget cannot read (``steps="abc"``) is told which and why: Gradio's own checks raise plain errors, which reach
    a caller as ``{"error": null}`` unless every internal error is shown."""

    async def preprocess_data(self, block_fn: Any, inputs: list[Any], state: Any, explicit_call: bool = False) -> Any:
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except gr.Error:
            raise
        except Exception as exc:  # Gradio's processing errors and pydantic's: the caller's value, not our bug
            names = _parameter_names(block_fn.fn)
            why = " ".join(str(exc).split())[:300]
            raise user_error(f"/{block_fn.api_name or block_fn.name} could not read a value it was sent ({why}); "
                             f"it takes {', '.join(names[:len(block_fn.inputs)])}") from None

    def validate_inputs(self, block_fn: Any, inputs: list[Any]) -> None:
        wanted = block_fn.inputs
        if len(inputs) < len(wanted):
            names = ", ".join(_parameter_names(block_fn.fn)[:len(wanted)])
            raise user_error(f"/{block_fn.api_name or block_fn.name} takes {len(wanted)} values ({names}), "
                             f"got {len(inputs)}: send all of them, in this order")
        super().validate_inputs(block_fn, inputs)


def _parameter_names(fn: Callable[..., Any] | None) -> list[str]:
    """An endpoint's parameter names, as its API page lists them."""
    import inspect

    return list(inspect.signature(fn).parameters) if fn is not None else []


@dataclass
class Widgets:
    """The page's components, by name (filled in as the layout makes them)."""

    items: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["items"][name]
        except KeyError:
            raise AttributeError(name) from None

    def add(self, **components: Any) -> None:
        self.items.update(components)

    def settings(self) -> list[Any]:
        return [self.model, self.prompt, self.seed, self.steps, self.size, self.guidance]


def build_ui(study: Study, default_model: str | None = None) -> gr.Blocks:
    """The app, bound to one study (engine, evaluator, optional cache store)."""
    spec = get_model(default_model or next(iter(MODELS)))
    app = AppState(study, spec)
    api = _endpoints(app, spec)
    device = app.device
    choices = [a.name for a in available_precisions(device) if a.status is not Status.UNAVAILABLE]
    w = Widgets()
    # Served files (images, downloads) are deleted an hour after they were made, checked every hour.
    with _Page(title="tmpdiff: temporal mixed precision", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# tmpdiff: a precision for every denoising step\n"
                    "Pick a model, give each step a precision, and see what it costs and what it loses.")
        with gr.Row(elem_classes="story-row"):
            w.add(story_html=gr.HTML(elem_id="story"),
                  story_plot=gr.Plot(label="The search's Pareto front (click a point to load its schedule)",
                                     elem_id="story-plot"))
        with gr.Row():
            with gr.Column(scale=1):
                _settings_column(w, spec, device)
            with gr.Column(scale=2):
                _schedule_editor(w, spec, choices)
                _results(w)
        _search_tab(w, search_panel.default_search(spec, device))
        _history_tab(w)
        blind.tab(w, app)
        _wire_image(w, api, app)
        _wire_search(w, api)
        _wire_history(w, api)
        demo.load(api.from_url, None, [*w.settings(), w.schedule], **PRIVATE)
        demo.load(api.story, None, [w.story_html, w.story_plot, w.precisions], concurrency_limit=1,
                  concurrency_id="story", **PRIVATE)  # computed once: a second page waits for it
        gr.Examples(examples=[[spec.name, p, s] for p, s in panels.examples(spec, device)],
                    inputs=[w.model, w.prompt, w.schedule], label="Try these")
    return demo


def _endpoints(app: AppState, spec: ModelSpec) -> SimpleNamespace:
    """Thin wrappers over the panels: Gradio reads each endpoint's parameters and defaults (the API's) from these
    signatures; the work is in the panels."""

    @_gpu
    def generate(model: str = spec.name, prompt: str = "", seed: int | str = 0, steps: int = spec.steps,
                 size: int = spec.size, guidance: float = spec.guidance, schedule: str = "",
                 progress: gr.Progress = gr.Progress(), request: gr.Request | None = None) -> tuple[Any, ...]:
        return panels.run_image(app, model, prompt, seed, steps, size, guidance, schedule, progress,
                                session_of(request))

    @_gpu
    def search(model: str = spec.name, target_kind: str = SSIM_FLOOR, target: float = DEFAULT_SSIM_FLOOR,
               steps: int = spec.steps, ladder: str = "", num_prompts: int = 4, seeds: str = "0,1",
               progress: gr.Progress = gr.Progress(),
               request: gr.Request | None = None) -> Iterator[tuple[Any, ...]]:
        yield from search_panel.search_updates(app, model, target_kind, target, steps, ladder, num_prompts, seeds,
                                               progress, session_of(request))

    @_gpu
    def story(progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
        return search_panel.story_views(app, progress)

    def pareto(model: str, prompt: str, seed: int | str, steps: int, size: int, guidance: float,
               axis: str = panels.AXES[0]) -> tuple[Any, ...]:
        return panels.history_views(app, model, prompt, seed, steps, size, guidance, axis)

    def check_inputs(model: str, prompt: str, seed: int | str, steps: int, size: int, guidance: float,
                     schedule: str) -> tuple[Any, ...]:
        return panels.check_inputs(app, model, prompt, seed, steps, size, guidance, schedule)

    def from_url(request: gr.Request) -> Any:
        return panels.link_settings(app, request)

    return SimpleNamespace(generate=generate, search=search, story=story, pareto=pareto, check_inputs=check_inputs,
                           from_url=from_url)


def _settings_column(w: Widgets, spec: ModelSpec, device: str) -> None:
    w.add(model=gr.Dropdown(list(MODELS), value=spec.name, label="Model"))
    w.add(model_info=gr.Markdown(panels.describe(spec)))
    w.add(prompt=gr.Textbox(value=spec.example_prompt, label="Prompt (or class name)"))
    with gr.Row():
        # A text box, not a Number: a browser's numbers are doubles, and seeds run to 2**63 - 1.
        w.add(seed=gr.Textbox(value="0", label="Seed", max_lines=1, elem_id="seed"),
              steps=gr.Slider(1, MAX_STEPS, value=spec.steps, step=1, label="Steps"))
    with gr.Row():
        w.add(size=gr.Number(value=spec.size, step=1, label="Size (px)"),
              guidance=gr.Number(value=spec.guidance, label="Guidance"))
    with gr.Accordion(f"Precisions on this device ({device})", open=False):
        w.add(precisions=gr.Dataframe(panels.precision_rows(device), interactive=False, elem_id="precisions",
                                      headers=["precision", "status", "step cost here", "why"]))


def _schedule_editor(w: Widgets, spec: ModelSpec, choices: list[str]) -> None:
    reference = str(Schedule.uniform(spec.dtype, spec.steps))
    w.add(schedule=gr.Textbox(value=reference, label="Schedule (paste or edit: e.g. fp32*2,int8*6)",
                              elem_id="schedule"))
    w.add(strip=gr.HTML(panels.schedule_strip(reference)), field_error=gr.HTML(elem_id="field-error-box"))
    with gr.Row():
        w.add(bulk=gr.Dropdown(choices, value=choices[0], label="Precision", scale=2),
              k=gr.Number(value=2, precision=0, label="k", scale=1),
              all_button=gr.Button("Uniform", scale=1), first_button=gr.Button("First k", scale=1))

    @gr.render(inputs=[w.schedule, w.steps])
    def per_step(text: str, n: float) -> None:
        try:
            names = list(Schedule.parse(text).steps)
        except ValueError:
            return
        if len(names) != int(n):
            return
        # A Dropdown made inside @gr.render is disabled unless it says it is interactive.
        with gr.Row(elem_classes="step-row", elem_id="step-boxes"):
            for i, name in enumerate(names):
                box = gr.Dropdown(choices, value=name if name in choices else choices[0], label=f"step {i}",
                                  min_width=72, container=True, interactive=True, key=f"step-{i}",
                                  elem_classes="step-box")

                def set_step(value: str, current: str, i: int = i) -> str:
                    try:
                        return str(Schedule.parse(current).replace([i], value))
                    except ValueError as exc:
                        raise panels.user_error(exc) from None

                box.input(set_step, [box, w.schedule], w.schedule)


def _results(w: Widgets) -> None:
    with gr.Row(equal_height=True):
        w.add(run=gr.Button("Run schedule", variant="primary", elem_id="run", scale=1),
              run_status=gr.HTML(elem_id="run-status", min_height=48, padding=False),
              latency_on=gr.Dropdown([panels.THIS_DEVICE, *matching_tables(w.model.value)],
                                     value=panels.THIS_DEVICE, label="Latency on", scale=1, elem_id="latency-on"))
    w.add(cards=gr.HTML(elem_id="cards"), comparison=gr.State(None))
    with gr.Row():
        # PNG, not Gradio's default WebP: lossy compression would be larger than the differences the page exists
        # to show.
        w.add(slider=gr.ImageSlider(label="reference | schedule", type="pil", elem_id="slider", scale=2,
                                    interactive=False, format="png"),
              diff=gr.Image(label="|reference - schedule| (brighter: larger)", type="pil", elem_id="diff",
                            interactive=False, scale=1, height=320, format="png"))
    w.add(timeline=gr.Plot(label="Per-step timeline", elem_id="timeline"))
    with gr.Accordion("Details (JSON) and downloads", open=False):
        w.add(metrics=gr.JSON(label="Quality and latency", elem_id="metrics"))
        with gr.Row():
            w.add(image_file=gr.File(label="Image"), schedule_file=gr.File(label="Schedule and metrics (JSON)"))


def _search_tab(w: Widgets, default: SearchRequest) -> None:
    ladder = ",".join(default.ladder or ())
    with gr.Tab("Search"):
        gr.Markdown(f"Its defaults are the search the page opened on ({len(default.prompts)} calibration prompts x "
                    f"seeds {','.join(map(str, default.seeds))}, ladder {ladder}, SSIM floor {default.target_ssim}):"
                    " Search runs it step by step, from the cache; change any field to ask another question.",
                    elem_id="search-defaults-line")
        with gr.Row():
            w.add(target_kind=gr.Radio([SSIM_FLOOR, SPEEDUP_TARGET], value=SSIM_FLOOR, label="Objective"),
                  target=gr.Number(value=default.target_ssim, label="Target"),
                  ladder=gr.Textbox(value=ladder, label="Ladder (empty: every precision measured on this device)"),
                  num_prompts=gr.Number(value=len(default.prompts), step=1, label="Calibration prompts"),
                  seeds=gr.Textbox(value=",".join(map(str, default.seeds)), label="Seeds"))
        with gr.Row(equal_height=True):
            w.add(search_button=gr.Button("Search", variant="primary", elem_id="search", scale=1),
                  search_status=gr.HTML(elem_id="search-status", min_height=48, padding=False))
        w.add(search_field_error=gr.HTML(elem_id="search-field-error-box"),
              search_warning=gr.HTML(elem_id="search-warning"), compare=gr.HTML(elem_id="compare"),
              search_result=gr.State(None))
        with gr.Row():
            w.add(search_figure=gr.Plot(label="Pareto front of this search (click a point to load its schedule)",
                                        elem_id="search-plot"),
                  pareto_table=gr.Dataframe(headers=["schedule", "SSIM", "speed-up (predicted)"], interactive=False,
                                            label="Pick a point to load its schedule", elem_id="pareto-table"))
        with gr.Accordion("Search report (JSON)", open=False):
            w.add(report=gr.JSON(label="Search report", elem_id="report"))


def _history_tab(w: Widgets) -> None:
    with gr.Tab("Pareto and history") as history_tab:
        with gr.Row():
            w.add(history_tab=history_tab, refresh=gr.Button("Refresh from cache", scale=1),
                  history_axis=gr.Radio(list(panels.AXES), value=panels.AXES[0], label="Plot SSIM against",
                                        scale=2, elem_id="history-axis"))
        with gr.Row():
            w.add(history_plot=gr.Plot(label="Every cached evaluation of this setting (click a point to load its "
                                             "schedule)", elem_id="history-plot"),
                  history_table=gr.Dataframe(headers=["schedule", "SSIM", "PSNR", "LPIPS", "seconds",
                                                      "speed-up (measured)", "speed-up (predicted)", "peak GiB",
                                                      "prompt", "seed"], interactive=False,
                                             label="Pick a row to load its schedule"))


def _shown(w: Widgets) -> tuple[list[Any], list[Any]]:
    """The result views' inputs (the comparison kept, and where latency is predicted) and outputs."""
    return [w.comparison, w.latency_on], [w.cards, w.timeline, w.diff, w.image_file, w.schedule_file, w.slider]


def _wire_image(w: Widgets, api: SimpleNamespace, app: AppState) -> None:
    inputs, image = w.settings(), [w.slider, w.metrics, w.comparison]
    shown, views = _shown(w)
    w.schedule.change(panels.schedule_strip, w.schedule, w.strip, **PRIVATE)
    w.steps.release(panels.resize, [w.schedule, w.steps, w.model], w.schedule, **PRIVATE)
    # Only a person's choice resets the settings: a shared link sets model and schedule together.
    w.model.input(panels.model_changed, w.model, [w.prompt, w.steps, w.size, w.guidance, w.schedule, w.model_info,
                                                  w.latency_on], **PRIVATE)
    w.all_button.click(panels.uniform, [w.steps, w.bulk], w.schedule, **PRIVATE)
    w.first_button.click(panels.first_k, [w.schedule, w.steps, w.k, w.bulk], w.schedule, **PRIVATE)
    # No Gradio queue limit for images and searches: every request reaches the app at once, where a session may
    # hold a few and the app a bounded number (a refusal says how long to wait: admission.py), and the engine
    # runs one pipeline call at a time, in turn, a search's calls letting waiting images go first.
    w.run.click(api.check_inputs, [*inputs, w.schedule], [w.field_error, w.cards], queue=False, **PRIVATE)
    w.run.click(api.generate, [*inputs, w.schedule], image, api_name="generate", concurrency_limit=None,
                concurrency_id="generate", trigger_mode="once", show_progress_on=w.run_status).then(
        panels.result_views, shown, views, **PRIVATE)
    w.latency_on.change(panels.result_views, shown, views, **PRIVATE)  # from the kept comparison: nothing runs
    w.add(image_outputs=image)
    for widget in (*inputs, w.schedule):  # the page address always reopens what is on screen
        widget.change(None, [*inputs, w.schedule], None, js=URL_STATE_JS)


def _wire_search(w: Widgets, api: SimpleNamespace) -> None:
    fields = [w.model, w.target_kind, w.target, w.steps, w.ladder, w.num_prompts, w.seeds]
    shown, views = _shown(w)
    w.search_button.click(search_panel.check_search, fields, w.search_field_error, queue=False, **PRIVATE)
    found = w.search_button.click(api.search, fields, [w.schedule, w.report, w.search_figure, w.search_result],
                                  api_name="search", concurrency_limit=None, concurrency_id="search",
                                  trigger_mode="once", show_progress_on=w.search_status)
    found.then(search_panel.search_views, w.search_result, [w.search_warning, w.compare, w.pareto_table], **PRIVATE)
    # The found schedule in every panel.
    found.success(api.generate, [*w.settings(), w.schedule], w.image_outputs, concurrency_id="generate",
                  show_progress_on=w.search_status, **PRIVATE).then(panels.result_views, shown, views, **PRIVATE)
    w.pareto_table.select(panels.load_row, w.pareto_table, w.schedule, **PRIVATE)


def _wire_history(w: Widgets, api: SimpleNamespace) -> None:
    inputs = w.settings()
    shown, views = _shown(w)
    history = [*inputs, w.history_axis]
    w.refresh.click(api.pareto, history, [w.history_plot, w.history_table], api_name="pareto")
    w.history_tab.select(api.pareto, history, [w.history_plot, w.history_table], **PRIVATE)
    w.history_axis.change(api.pareto, history, [w.history_plot, w.history_table], **PRIVATE)
    # Picking a row loads its schedule, then its images (a cache hit, so no model call).
    w.history_table.select(panels.load_row, w.history_table, w.schedule, **PRIVATE).then(
        api.generate, [*inputs, w.schedule], w.image_outputs, concurrency_id="generate",
        show_progress_on=w.run_status, **PRIVATE).then(
        panels.result_views, shown, views, **PRIVATE)
