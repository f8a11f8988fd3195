"""The Gradio front end. Launch the Blocks with ``**LAUNCH_OPTIONS`` (its stylesheet and page script)."""

from .app import build_ui
from .views import CSS, PAGE_JS

LAUNCH_OPTIONS = {"css": CSS, "js": PAGE_JS}

__all__ = ["CSS", "LAUNCH_OPTIONS", "PAGE_JS", "build_ui"]
