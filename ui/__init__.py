"""The Gradio front end."""

from .app import build_ui
from .views import CSS

__all__ = ["CSS", "build_ui"]
