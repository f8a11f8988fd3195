"""Layer 11, cli: the ``tmpdiff`` command line, a front end over the engine like the app (``tmpdiff.ui``). Imports
frontends and every layer before it."""

from tmpdiff.cli.entry import main, run

__all__ = ["main", "run"]
