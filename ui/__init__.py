"""Layer 12, ui (``ui/``, installed as ``tmpdiff.ui``): the Gradio front end (widgets ↔ engine calls), the only
package that imports Gradio; it may import every layer. Launch the Blocks with
``.queue(**QUEUE_OPTIONS).launch(**LAUNCH_OPTIONS)`` (queue bounds, stylesheet, page script, upload limit);
``serve.main`` (``app.py``, ``tmpdiff-app``) does. Names load on first use, so ``serve`` starts without Gradio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import build_ui
    from .options import LAUNCH_OPTIONS, QUEUE_OPTIONS
    from .views import CSS, PAGE_JS

_WHERE = {"build_ui": "app", "CSS": "views", "PAGE_JS": "views", "LAUNCH_OPTIONS": "options",
          "QUEUE_OPTIONS": "options"}

__all__ = ["CSS", "LAUNCH_OPTIONS", "PAGE_JS", "QUEUE_OPTIONS", "build_ui"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'tmpdiff.ui' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
