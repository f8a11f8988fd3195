"""The Gradio front end."""

from .app import build_ui

__all__ = ["build_ui"]
