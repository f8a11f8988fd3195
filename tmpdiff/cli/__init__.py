"""The ``tmpdiff`` command line: a front end over the engine, like the app (``tmpdiff.ui``)."""

from tmpdiff.cli.entry import main, run

__all__ = ["main", "run"]
