"""A temporal precision schedule: one precision name per denoising step.

Text form: comma-separated ``name`` or ``name*count`` tokens, e.g. ``bf16*4,fp8*20,bf16*4``.
``Schedule.parse(text)`` and ``str(schedule)`` round-trip; ``schedule.hash`` is stable across
processes and versions of Python, so it can key a cache.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tmpdiff.errors import FieldError
from tmpdiff.limits import MAX_STEPS
from tmpdiff.steps.precisions import get_precision

__all__ = ["Schedule", "SCHEDULE_FORMAT_VERSION"]

SCHEDULE_FORMAT_VERSION = 1
_TOKEN = re.compile(r"^([a-z0-9]+)(?:\*(\d+))?$")


@dataclass(frozen=True)
class Schedule:
    """One precision per step; validated on construction.

    Example:
        >>> s = Schedule.parse("bf16*2,int8wo*2")
        >>> s.steps
        ('bf16', 'bf16', 'int8wo', 'int8wo')
        >>> str(s)
        'bf16*2,int8wo*2'
    """

    steps: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.steps, tuple):
            object.__setattr__(self, "steps", tuple(self.steps))
        if not self.steps:
            raise FieldError("schedule", "", "a {schedule} needs at least one step, got an empty one")
        if len(self.steps) > MAX_STEPS:
            raise FieldError("schedule", len(self.steps),
                             f"a {{schedule}} has at most {MAX_STEPS} steps, got {{value}}")
        for name in self.steps:
            get_precision(name, "schedule")
        if not get_precision(self.steps[0]).may_lead:
            raise FieldError("schedule", self.steps[0], "{value} cannot be the first step of a {schedule}: there is "
                             "no earlier model output to reuse; start it with a computing precision")

    @classmethod
    def parse(cls, text: str, steps: int | None = None) -> Schedule:
        """Parse the text form; when ``steps`` is given the schedule must have exactly that many.

        Raises:
            FieldError: of the schedule, naming the malformed token, the unknown precision, or both counts.
        """
        if steps is not None and steps <= 0:
            raise FieldError("steps", steps, "{steps} must be a positive number, got {value}")
        if not isinstance(text, str):
            raise FieldError("schedule", text, "a {schedule} is text such as 'bf16*4,fp8*4', got {value}")
        tokens = [t.strip() for t in text.split(",")]
        if tokens == [""]:
            raise FieldError("schedule", text, "empty {schedule}: write e.g. 'bf16*4,fp8*4'")
        names: list[str] = []
        for token in tokens:
            names.extend(_expand_token(token, MAX_STEPS - len(names)))
        if steps is not None and len(names) != steps:
            raise FieldError("schedule", text, f"{{schedule}} {{value}} has {len(names)} steps but {steps} were asked "
                             f"for: make the counts add up to {steps}")
        return cls(tuple(names))

    @classmethod
    def uniform(cls, name: str, steps: int) -> Schedule:
        if not 0 < steps <= MAX_STEPS:
            raise FieldError("steps", steps, f"{{steps}} must be from 1 to {MAX_STEPS}, got {{value}}")
        return cls((name,) * steps)

    @classmethod
    def coerce(cls, value: Schedule | str | Sequence[str], steps: int | None = None) -> Schedule:
        """A schedule from its text, a list of names, or itself."""
        if isinstance(value, Schedule):
            schedule = value
        elif isinstance(value, str):
            schedule = cls.parse(value)
        else:
            schedule = cls(tuple(value))
        if steps is not None and len(schedule) != steps:
            raise FieldError("schedule", str(schedule),
                             f"{{schedule}} {{value}} has {len(schedule)} steps but {steps} were asked for")
        return schedule

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self):
        return iter(self.steps)

    def __getitem__(self, index: int) -> str:
        return self.steps[index]

    def __str__(self) -> str:
        return ",".join(
            name if (count := len(list(group))) == 1 else f"{name}*{count}"
            for name, group in itertools.groupby(self.steps)
        )

    @property
    def precisions(self) -> tuple[str, ...]:
        """The distinct precisions, in order of first use."""
        return tuple(dict.fromkeys(self.steps))

    def replace(self, indices: Iterable[int], name: str) -> Schedule:
        steps = list(self.steps)
        for i in indices:
            steps[i] = name
        return Schedule(tuple(steps))

    def to_dict(self) -> dict[str, object]:
        return {"version": SCHEDULE_FORMAT_VERSION, "steps": list(self.steps)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Schedule:
        steps = data.get("steps")
        if data.get("version") != SCHEDULE_FORMAT_VERSION or not isinstance(steps, list):
            raise ValueError(f"not a version-{SCHEDULE_FORMAT_VERSION} schedule: {data!r:.200}")
        return cls(tuple(str(s) for s in steps))

    @property
    def hash(self) -> str:
        """A stable 16-hex-digit digest of the canonical dict."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _expand_token(token: str, room: int) -> list[str]:
    """The token's steps; a ``ValueError`` before expanding one that would take the schedule past
    ``MAX_STEPS`` (``room`` steps are left)."""
    match = _TOKEN.match(token)
    if not match:
        raise FieldError("schedule", token, "malformed {schedule} token {value}: write 'name' or 'name*count', "
                         "e.g. 'fp8*4'")
    name, count = match.group(1), match.group(2)
    get_precision(name, "schedule")
    digits = (count or "").lstrip("0")
    if len(digits) > len(str(MAX_STEPS)):  # never handed to int(): thousands of digits get Python's own hint
        raise FieldError("schedule", token, f"{{schedule}} token {{value}} takes it past {MAX_STEPS} steps, the most "
                         "a schedule may have")
    repeat = 1 if count is None else int(digits or "0")
    if repeat <= 0:
        raise FieldError("schedule", token, f"{{schedule}} token {{value}} repeats {repeat} times: counts must be "
                         "at least 1")
    if repeat > room:
        raise FieldError("schedule", token, f"{{schedule}} token {{value}} takes it past {MAX_STEPS} steps, the most "
                         "a schedule may have")
    return [name] * repeat
