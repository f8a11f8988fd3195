"""What the app says when it refuses: a field error names the form's label for the field (never guessed from the
text), one line goes to the server log, and the message stays on the page until it is closed."""

from __future__ import annotations

import html
import logging

import gradio as gr

from tmpdiff.errors import FieldError

__all__ = ["LOG", "field_message", "in_form_words", "label_of", "user_error"]

LOG = logging.getLogger("tmpdiff.app")

# The engine's field names, as the form labels them (others: the name with spaces, capitalised).
LABELS = {"target_ssim": "Target (SSIM floor)", "target_speedup": "Target (speed-up)",
          "prompts": "Calibration prompts", "db": "the cache database", "prompt_file": "prompt file",
          "negative_prompt": "Negative prompt", "gpu_memory": "GPU memory",
          "host_memory": "host memory"}


def label_of(field: str) -> str:
    return LABELS.get(field, field.replace("_", " ").capitalize())


def in_form_words(problem: Exception | str) -> str:
    """A refusal as the form says it: a field error names the field's label."""
    return problem.worded(label_of) if isinstance(problem, FieldError) else str(problem)


def user_error(problem: Exception | str) -> gr.Error:
    """A user's mistake: one line in the server log (no traceback), and a message that stays on the page until it
    is closed."""
    LOG.warning("refused: %s", problem)
    return gr.Error(in_form_words(problem), duration=None, print_exception=False)


def field_message(problem: Exception, element_id: str = "field-error") -> str:
    """The inline message for a bad field: the field's label first, as the form labels it."""
    field = label_of(problem.field) if isinstance(problem, FieldError) else "Input"
    return (f"<div class='field-error' id='{element_id}' role='alert'><b>{html.escape(field)}</b>: "
            f"{html.escape(in_form_words(problem))}</div>")
