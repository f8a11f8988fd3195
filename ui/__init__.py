"""The web front end: its code is `tmpdiff/ui/` (Gradio Blocks only), installed with tmpdiff as `tmpdiff.ui`;
this name keeps the project's picture (engine, cache, ui) in the checkout."""

from typing import Any

import tmpdiff.ui


def __getattr__(name: str) -> Any:
    return getattr(tmpdiff.ui, name)
