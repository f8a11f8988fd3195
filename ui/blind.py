"""The blind test tab: a stored schedule's image and its reference in random order, "which is full precision?",
the answer revealed after each vote, and every answer tallied per schedule in the cache beside SSIM and LPIPS.

What the page holds of a pair is two images served under random names (re-encoded with random padding, pixels
unchanged, so neither name nor size repeats across pairs) and, in ``gr.State``, its random token; which image is
the reference stays in the app's ``BlindBook`` until the pair is answered, once.
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from tmpdiff.engine.settings import RunSettings
from tmpdiff.studies.blind import (
    BlindSetting,
    blind_settings,
    check_answer,
    next_pair,
    record_answer,
    tallies,
    verdict_of,
)

from .forms import run_settings
from .messages import in_form_words, user_error
from .options import PRIVATE, session_of
from .served import served_blind
from .state import AppState

__all__ = ["answer", "open_tab", "show_pair", "tab"]

HEADERS = ["schedule", "answers", "sessions", "found the reference", "can't tell", "SSIM", "LPIPS", "prompt", "seed"]
VERDICTS = {"right": "Right", "wrong": "Wrong", "unsure": "Noted as can't tell"}
QUESTION = "Which one is full precision?"


def _no_store() -> gr.Error:
    return user_error("the blind test keeps its answers in the cache: start the app without --no-cache")


def _settings_by_hash(app: AppState, model: str) -> dict[str, BlindSetting]:
    if app.store is None:
        raise _no_store()
    return {s.settings_hash: s for s in blind_settings(app.evaluator, app.store, model)}


def open_tab(app: AppState, model: str, prompt: str, seed: object, steps: object, size: object, guidance: object,
             session: str | None = None) -> tuple[Any, ...]:
    """The settings of the model on screen that have pairs (the main form's setting chosen when it has some), and
    the first pair of the one chosen."""
    if app.store is None:
        raise _no_store()
    choices = _settings_by_hash(app, model)
    try:
        on_screen = run_settings(model, prompt, seed, steps, size, guidance)
        wanted = app.evaluator.key(on_screen, on_screen.reference_schedule()).settings_hash
    except ValueError:
        wanted = None
    chosen = wanted if wanted in choices else next(iter(choices), None)
    picker = gr.update(choices=[(s.label, h) for h, s in choices.items()], value=chosen)
    return (picker, *_pair_of(app, model, choices.get(chosen or ""), session))


def show_pair(app: AppState, model: str, settings_hash: str | None, session: str | None = None) -> tuple[Any, ...]:
    """The next pair of the chosen setting (stored images only: nothing is computed), and its tally."""
    return _pair_of(app, model, _settings_by_hash(app, model).get(settings_hash or ""), session)


def _pair_of(app: AppState, model: str, chosen: BlindSetting | None, session: str | None) -> tuple[Any, ...]:
    if app.store is None:
        raise _no_store()
    if chosen is None:
        return (gr.update(value=None, label="A"), gr.update(value=None, label="B"), None,
                f"<p id='blind-note'>No schedule of {html.escape(model)} is in the cache beside its reference yet: "
                "run one on the first tab, then come back.</p>", [])
    pair = next_pair(app.evaluator, app.store, chosen.settings)
    rows = tally_rows(app, chosen.settings)
    if pair is None:
        return (gr.update(value=None, label="A"), gr.update(value=None, label="B"), None,
                "<p id='blind-note'>This setting's images are no longer in the cache.</p>", rows)
    app.blind.show(pair, session)
    return (gr.update(value=served_blind(pair.first_png), label="A"),
            gr.update(value=served_blind(pair.second_png), label="B"), pair.token,
            f"<p id='blind-note'>{QUESTION}</p>", rows)


def answer(app: AppState, token: str | None, choice: str, model: str, settings_hash: str | None,
           session: str | None = None) -> tuple[Any, ...]:
    """Keeps the answer (once per pair shown), and reveals which image was which; "Next pair" shows another."""
    if app.store is None:
        raise _no_store()
    store = app.store
    try:
        check_answer(choice)  # a bad choice is refused before the pair is used up
        pair = app.blind.take(token, session)
    except ValueError as exc:
        raise user_error(in_form_words(exc)) from None
    verdict = app.evaluator.kept(lambda: record_answer(store, pair, choice, app.blind.session_tag(session)))
    if not isinstance(verdict, str):  # the cache refused the write: the answer is revealed, not counted
        gr.Warning("your answer could not be kept in the cache (the database refused the write; the server's log "
                   "says why): it is not in the tally")
        verdict = verdict_of(pair, choice)
    chosen = _settings_by_hash(app, model).get(settings_hash or "")
    rows = tally_rows(app, chosen.settings) if chosen else []
    reference, schedule = "full precision", f"schedule {pair.schedule}"
    first, second = (reference, schedule) if pair.reference_first else (schedule, reference)
    said = (f"<p id='blind-note'><b>{VERDICTS[verdict]}</b>: A was {html.escape(first)}, B was "
            f"{html.escape(second)}. Press Next pair for another.</p>")
    return gr.update(label=f"A: {first}"), gr.update(label=f"B: {second}"), None, said, rows


def tally_rows(app: AppState, settings: RunSettings) -> list[list[Any]]:
    if app.store is None:
        return []
    rows = []
    for t in tallies(app.evaluator, app.store, settings):
        share = "-" if t.right_share is None else f"{t.right}/{t.right + t.wrong} ({100 * t.right_share:.0f}%)"
        rows.append([t.schedule, t.answers, t.sessions, share, t.unsure, _rounded(t.ssim), _rounded(t.lpips),
                     t.prompt, t.seed])
    return rows


def tab(w: Any, app: AppState) -> None:
    """The tab's layout and wiring (``w``: the page's widgets, ``app.build_ui``)."""
    with gr.Tab("Blind test") as blind_tab:
        gr.Markdown("A schedule's image and the full-precision image of the same setting, in random order. Pick "
                    "the one you think is full precision: the answer is revealed, kept in the cache and tallied "
                    "per schedule beside SSIM and LPIPS.")
        setting = gr.Dropdown([], label="Setting being tested (the model on screen; each has its stored schedules)",
                              interactive=True, elem_id="blind-setting")
        note, token = gr.HTML(elem_id="blind-note-box"), gr.State(None)
        with gr.Row(elem_classes="blind-pair"):
            first = gr.Image(label="A", type="filepath", format="png", interactive=False, elem_id="blind-a",
                             height=420, buttons=[])
            second = gr.Image(label="B", type="filepath", format="png", interactive=False, elem_id="blind-b",
                              height=420, buttons=[])
        with gr.Row():
            buttons = {"first": gr.Button("A is full precision", elem_id="blind-pick-a"),
                       "second": gr.Button("B is full precision", elem_id="blind-pick-b"),
                       "unsure": gr.Button("Can't tell", elem_id="blind-unsure")}
            following = gr.Button("Next pair", elem_id="blind-next", variant="primary")
        table = gr.Dataframe(headers=HEADERS, interactive=False, label="Answers so far (this setting)",
                             elem_id="blind-tally")
    shown = [first, second, token, note, table]

    def opened(model: str, prompt: str, seed: object, steps: object, size: object, guidance: object,
               request: gr.Request) -> tuple[Any, ...]:
        return open_tab(app, model, prompt, seed, steps, size, guidance, session_of(request))

    def picked(model: str, chosen: str | None, request: gr.Request) -> tuple[Any, ...]:
        return show_pair(app, model, chosen, session_of(request))

    blind_tab.select(opened, w.settings(), [setting, *shown], **PRIVATE)
    setting.input(picked, [w.model, setting], shown, **PRIVATE)
    following.click(picked, [w.model, setting], shown, **PRIVATE)
    for choice, button in buttons.items():
        def voted(current: str | None, model: str, chosen: str | None, request: gr.Request,
                  choice: str = choice) -> tuple[Any, ...]:
            return answer(app, current, choice, model, chosen, session_of(request))

        button.click(voted, [token, w.model, setting], shown, concurrency_limit=1, concurrency_id="blind-vote",
                     **PRIVATE)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
