"""The blind test tab: a stored schedule's image and its reference in random order, "which is full precision?",
and every answer tallied per schedule in the cache beside SSIM and LPIPS (a human check of the trade-off).

The pair shown lives in ``gr.State`` (which image is the reference never reaches the page until it is answered).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from tmpdiff.studies.blind import BlindPair, next_pair, record_answer, tallies

from .forms import run_settings
from .messages import in_form_words, user_error
from .served import served_file
from .state import AppState

__all__ = ["answer", "show_pair", "tab"]

HEADERS = ["schedule", "answers", "found the reference", "can't tell", "SSIM", "LPIPS", "prompt", "seed"]
VERDICTS = {"right": "Right: that was the full-precision image.",
            "wrong": "Wrong: that was the schedule's image; the other was full precision.",
            "unsure": "Noted as can't tell."}


def show_pair(app: AppState, model: str, prompt: str, seed: object, steps: object, size: object,
              guidance: object) -> tuple[Any, ...]:
    """The next pair of the setting on screen (stored images only: nothing is computed), and its tally."""
    if app.store is None:
        raise user_error("the blind test keeps its answers in the cache: start the app without --no-cache")
    try:
        settings = run_settings(model, prompt, seed, steps, size, guidance)
    except ValueError as exc:
        raise user_error(exc) from None
    pair = next_pair(app.evaluator, app.store, settings)
    rows = tally_rows(app, settings)
    if pair is None:
        return (None, None, None, "<p id='blind-note'>No schedule of this setting is in the cache yet: run one on "
                "the first tab, then come back.</p>", rows)
    return (served_file(pair.first_png, "a.png"), served_file(pair.second_png, "b.png"), pair,
            "<p id='blind-note'>Which one is full precision?</p>", rows)


def answer(app: AppState, pair: BlindPair | None, choice: str, model: str, prompt: str, seed: object,
           steps: object, size: object, guidance: object) -> tuple[Any, ...]:
    """Keeps the answer, says whether it was right, and shows the next pair."""
    if pair is None or app.store is None:
        raise user_error("show a pair first")
    try:
        verdict = record_answer(app.store, pair, choice)
    except ValueError as exc:
        raise user_error(in_form_words(exc)) from None
    first, second, following, _, rows = show_pair(app, model, prompt, seed, steps, size, guidance)
    said = f"<p id='blind-note'>{VERDICTS[verdict]} ({pair.schedule}) Next pair: which one is full precision?</p>"
    return first, second, following, said, rows


def tally_rows(app: AppState, settings: Any) -> list[list[Any]]:
    if app.store is None:
        return []
    rows = []
    for t in tallies(app.evaluator, app.store, settings):
        share = "-" if t.right_share is None else f"{t.right}/{t.right + t.wrong} ({100 * t.right_share:.0f}%)"
        rows.append([t.schedule, t.answers, share, t.unsure, _rounded(t.ssim), _rounded(t.lpips), t.prompt, t.seed])
    return rows


def tab(w: Any, app: AppState) -> None:
    """The tab's layout and wiring (``w``: the page's widgets, ``app.build_ui``)."""
    with gr.Tab("Blind test") as blind_tab:
        gr.Markdown("A schedule's image and the full-precision image of the same setting, in random order. Pick "
                    "the one you think is full precision; the answers are kept in the cache and tallied per "
                    "schedule beside SSIM and LPIPS.")
        note, pair = gr.HTML(elem_id="blind-note-box"), gr.State(None)
        with gr.Row():
            first = gr.Image(label="A", type="filepath", format="png", interactive=False, elem_id="blind-a")
            second = gr.Image(label="B", type="filepath", format="png", interactive=False, elem_id="blind-b")
        with gr.Row():
            buttons = {"first": gr.Button("A is full precision", elem_id="blind-pick-a"),
                       "second": gr.Button("B is full precision", elem_id="blind-pick-b"),
                       "unsure": gr.Button("Can't tell", elem_id="blind-unsure")}
        table = gr.Dataframe(headers=HEADERS, interactive=False, label="Answers so far", elem_id="blind-tally")
    settings, shown = w.settings(), [first, second, pair, note, table]
    blind_tab.select(lambda *values: show_pair(app, *values), settings, shown, api_visibility="private")
    for choice, button in buttons.items():
        button.click(lambda current, *values, choice=choice: answer(app, current, choice, *values),
                     [pair, *settings], shown, api_visibility="private")


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
