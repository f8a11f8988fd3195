"""The one error a user's input gets: which field, a short prefix of the value, and what to do.

The engine raises ``FieldError`` where a value enters (settings, schedules, search requests, limits); every front
end words it from the field, never from the text: the command line names its flag (``--steps``), the app its
label ("Steps"). A message names fields as ``{field}`` placeholders and the value as ``{value}``, so a value that
holds braces, or a megabyte of text, is shown as a short prefix and never read as a placeholder.

Example:
    >>> error = FieldError("steps", 0, "{steps} must be a positive number, got {value}")
    >>> str(error)
    'steps must be a positive number, got 0'
    >>> error.worded(lambda field: "--" + field)
    '--steps must be a positive number, got 0'
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["CacheWarning", "FieldError", "TmpdiffWarning", "literal", "shown", "worded"]


class TmpdiffWarning(UserWarning):
    """Something a user must hear of (a front end never silences these, only libraries' own warnings)."""


class CacheWarning(TmpdiffWarning):
    """A result that could not be kept in the evaluation cache, or a cache that can only be read."""

SHOWN_CHARS = 60  # of a bad value, in a message: enough to recognise it, never a megabyte in a log line


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters (with how long it was) when longer."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def literal(text: str) -> str:
    """``text`` (a path, a list of names) for a message template: its braces are not placeholders."""
    return text.replace("{", "{{").replace("}", "}}")


class _Names(dict[str, str]):
    """Each field's name in some front end's words (``name_of``), and the value as shown."""

    def __init__(self, name_of: Callable[[str], str], value: str) -> None:
        super().__init__(value=value)
        self.name_of = name_of

    def __missing__(self, key: str) -> str:
        return self.name_of(key)


def worded(template: str, name_of: Callable[[str], str] = str, value: object = None) -> str:
    """A message ``template`` with each ``{field}`` named by ``name_of`` and ``{value}`` as :func:`shown`."""
    return template.format_map(_Names(name_of, shown(value)))


class FieldError(ValueError):
    """A value the engine cannot use.

    Args:
        field: the engine's name of the field (``steps``, ``target_ssim``, ``schedule``, ...).
        value: what was given (shown as a short prefix).
        template: the message, naming fields as ``{field}`` (this one's and others') and the value as ``{value}``;
            literal braces doubled.
    """

    def __init__(self, field: str, value: object, template: str) -> None:
        self.field, self.value, self.template = field, value, template
        super().__init__(self.worded())

    def worded(self, name_of: Callable[[str], str] = str) -> str:
        """The message with each field named by ``name_of`` (a front end's words; default: the engine's names)."""
        return worded(self.template, name_of, self.value)
