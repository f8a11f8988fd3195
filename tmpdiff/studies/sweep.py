"""A sweep: models × prompts × seeds × schedules from a small spec file, every evaluation through the cache.

A spec is TOML (every combination of the lists in each ``[[grid]]`` table, or of the top-level
keys when there is none) or CSV (one evaluation per row)::

    [[grid]]
    models = ["shapes-dit"]
    prompts = ["red circle", "blue square"]   # or prompts_file = "prompts.txt"
    seeds = [0, 1]
    steps = 8                                 # optional, as sizes and guidance: a value or a list
    schedules = ["reference", "fp32*4,skip*4"]

Every evaluation is looked up in the cache before it is computed, so a sweep that was stopped
resumes where it stopped, and a finished sweep costs nothing to export again.
"""

from __future__ import annotations

import csv
import itertools
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

from tmpdiff.engine.settings import RunSettings
from tmpdiff.measure.evaluator import Evaluation, Evaluator
from tmpdiff.steps.schedule import Schedule
from tmpdiff.studies.prompts import read_prompt_file

__all__ = ["CSV_COLUMNS", "SweepItem", "load_spec", "run_sweep", "summarize", "sweep_row", "write_csv"]

REFERENCE = "reference"
GRID_KEYS = {"models", "prompts", "prompts_file", "seeds", "steps", "sizes", "guidance", "negative_prompt",
             "schedules"}
CSV_REQUIRED = ("model", "schedule")
CSV_OPTIONAL = ("prompt", "seed", "steps", "size", "guidance", "negative_prompt")
CSV_COLUMNS = ("model", "prompt", "seed", "steps", "size", "guidance", "schedule", "ssim", "psnr", "lpips",
               "lpips_note", "seconds", "reference_seconds", "speedup", "predicted_seconds", "device", "cached",
               "evaluation")
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class SweepItem:
    """One evaluation of a sweep: a setting and a schedule (``reference`` resolved)."""

    settings: RunSettings
    schedule: Schedule


def load_spec(path: str | Path) -> list[SweepItem]:
    """The evaluations a TOML or CSV spec asks for, each checked; raises ValueError naming the place."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such sweep spec: {str(path)!r}")
    if path.suffix.lower() == ".toml":
        items = _from_toml(path)
    elif path.suffix.lower() == ".csv":
        items = _from_csv(path)
    else:
        raise ValueError(f"a sweep spec is a .toml or .csv file, got {str(path)!r}")
    if not items:
        raise ValueError(f"sweep spec {str(path)!r} asks for no evaluation")
    return list(dict.fromkeys(items))  # the same evaluation twice is run once


def _from_toml(path: Path) -> list[SweepItem]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read sweep spec {str(path)!r}: {exc}") from None
    grids = data.pop("grid", None)
    if grids is None:
        grids = [data]
    elif data:
        raise ValueError(f"{path.name}: with [[grid]] tables, put every key inside them (found {sorted(data)})")
    if not isinstance(grids, list):
        raise ValueError(f"{path.name}: 'grid' must be an array of tables: [[grid]]")
    items = []
    for number, grid in enumerate(grids, 1):
        where = f"{path.name} grid {number}" if len(grids) > 1 else path.name
        items += _expand_grid(grid, where, path.parent)
    return items


def _expand_grid(grid: dict[str, Any], where: str, folder: Path) -> list[SweepItem]:
    unknown = set(grid) - GRID_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r}; a grid takes {', '.join(sorted(GRID_KEYS))}")
    prompts = _values(grid, "prompts", where, str, [None])
    if "prompts_file" in grid:
        if "prompts" in grid:
            raise ValueError(f"{where}: give 'prompts' or 'prompts_file', not both")
        prompts = _prompt_file(grid["prompts_file"], where, folder)
    axes = (_values(grid, "models", where, str), prompts, _values(grid, "seeds", where, int, [0]),
            _values(grid, "steps", where, int, [None]), _values(grid, "sizes", where, int, [None]),
            _values(grid, "guidance", where, (int, float), [None]))
    negative = str(grid.get("negative_prompt", ""))
    schedules = _values(grid, "schedules", where, str)
    items = []
    from_file = "prompts_file" in grid
    for model, prompt, seed, steps, size, guidance in itertools.product(*axes):
        try:
            settings = _settings(where, model=model, prompt=prompt, seed=seed, steps=steps, size=size,
                                 guidance=None if guidance is None else float(guidance), negative_prompt=negative)
        except ValueError:
            if not from_file:
                raise
            # Never echo a file's lines back: the spec may point at a file its author cannot read.
            line = prompts.index(prompt) + 1
            raise ValueError(f"{where}: prompt {line} of prompts_file is not a prompt {model} takes") from None
        items += [_item(where, settings, text) for text in schedules]
    return items


def _prompt_file(name: Any, where: str, folder: Path) -> list[str]:
    """The prompts of a file beside the spec (the spec's folder or below it), read as the spec's author
    could; never a path outside it."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: prompts_file must be a file name, e.g. prompts_file = \"prompts.txt\"")
    root = folder.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"{where}: prompts_file must name a file beside the spec or below its folder, "
                         f"got {name!r}")
    try:
        return read_prompt_file(path)
    except ValueError:
        raise ValueError(f"{where}: cannot read prompts_file {name!r} (one prompt per line, UTF-8)") from None


def _values(grid: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...],
            default: list[Any] | None = None) -> list[Any]:
    """A grid key as a list (a single value is a list of one), each value of ``kind``."""
    if key not in grid:
        if default is None:
            raise ValueError(f"{where}: missing {key!r} (a list, e.g. {key} = [...])")
        return default
    values = grid[key] if isinstance(grid[key], list) else [grid[key]]
    for value in values:
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{where}: {key} must hold {_kind_name(kind)} values, got {value!r}")
    if not values:
        raise ValueError(f"{where}: {key} is empty")
    return values


def _kind_name(kind: type | tuple[type, ...]) -> str:
    return "number" if isinstance(kind, tuple) else {str: "text", int: "whole-number"}[kind]


def _from_csv(path: Path) -> list[SweepItem]:
    try:
        with path.open(newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            rows = list(reader)
            columns = [c.strip() for c in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"cannot read sweep spec {str(path)!r}: {exc}") from None
    missing = [c for c in CSV_REQUIRED if c not in columns]
    unknown = [c for c in columns if c not in CSV_REQUIRED + CSV_OPTIONAL]
    if missing or unknown:
        raise ValueError(f"{path.name}: the header needs columns {', '.join(CSV_REQUIRED)} and may have "
                         f"{', '.join(CSV_OPTIONAL)}; " + (f"missing {missing[0]!r}" if missing
                                                           else f"unknown {unknown[0]!r}"))
    items = []
    for line, row in enumerate(rows, 2):
        where = f"{path.name} line {line}"
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        settings = _settings(where, model=row["model"], prompt=row.get("prompt") or None,
                             seed=_number(row, "seed", int, where, 0), steps=_number(row, "steps", int, where),
                             size=_number(row, "size", int, where), guidance=_number(row, "guidance", float, where),
                             negative_prompt=row.get("negative_prompt", ""))
        items.append(_item(where, settings, row["schedule"]))
    return items


def _number(row: dict[str, str], column: str, kind: type, where: str, default: Any = None) -> Any:
    text = row.get(column, "")
    if not text:
        return default
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{where}: {column} must be a number, got {text!r}") from None


def _settings(where: str, **fields: Any) -> RunSettings:
    try:
        return RunSettings(**fields)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _item(where: str, settings: RunSettings, text: str) -> SweepItem:
    try:
        schedule = (settings.reference_schedule() if text.strip() == REFERENCE
                    else Schedule.parse(text, settings.resolved_steps))
    except ValueError as exc:
        raise ValueError(f"{where}: schedule {text!r} for {settings.model} at {settings.resolved_steps} steps: "
                         f"{exc}") from None
    return SweepItem(settings, schedule)


def run_sweep(evaluator: Evaluator, items: list[SweepItem], progress: Progress | None = None,
              on_evaluation: Callable[[RunSettings, Schedule], None] | None = None) -> list[dict[str, Any]]:
    """Evaluates every item (cached ones are read, not computed); rows in the spec's order. ``on_evaluation`` is
    told of each one as it is stored (``Study`` links it to the sweep's run).

    Items run grouped by setting, so each setting's reference is computed once and prefix replay
    (when the evaluator has a replay store) serves the schedules that share its prefixes.
    """
    for item in items:  # every schedule usable on this device, before any work
        evaluator.engine.check_schedule(item.schedule, item.settings)
    order = sorted(range(len(items)), key=lambda i: _run_order(items[i]))
    rows: list[dict[str, Any] | None] = [None] * len(items)
    pairs = [(items[i].settings, items[i].schedule) for i in order]
    for done, (index, evaluation) in enumerate(evaluator.evaluate_many(pairs), 1):
        item_index = order[index]
        rows[item_index] = sweep_row(evaluation)
        if on_evaluation:
            on_evaluation(items[item_index].settings, items[item_index].schedule)
        if progress:
            progress(done, len(items), str(items[item_index].schedule))
    return [row for row in rows if row is not None]


def _run_order(item: SweepItem) -> tuple[str, bool, tuple[str, ...]]:
    """By setting, its reference first, then schedules in an order that puts shared prefixes together."""
    return (repr(sorted(item.settings.to_dict().items())), item.schedule != item.settings.reference_schedule(),
            item.schedule.steps)


def sweep_row(evaluation: Evaluation) -> dict[str, Any]:
    """One CSV row: the setting, the schedule, its quality and its measured latency."""
    record, settings = evaluation.record, evaluation.record.key.settings
    psnr = None if record.psnr is None or record.psnr == float("inf") else round(record.psnr, 3)
    return {
        "model": record.key.model, "prompt": settings["prompt"], "seed": settings["seed"], "steps": settings["steps"],
        "size": settings["size"], "guidance": settings["guidance"], "schedule": record.key.schedule,
        "ssim": None if record.ssim is None else round(record.ssim, 5), "psnr": psnr,
        "lpips": None if record.lpips is None else round(record.lpips, 5), "lpips_note": record.lpips_note,
        "seconds": round(record.measured_seconds, 4), "reference_seconds": round(evaluation.reference_seconds, 4),
        "speedup": round(evaluation.speedup, 3) if evaluation.has_speed_claim else None,
        "predicted_seconds": None if record.predicted_seconds is None else round(record.predicted_seconds, 4),
        "device": record.key.device["device"], "cached": evaluation.cached, "evaluation": record.key.digest,
    }


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """The rows as CSV, written to a temporary file first so an interrupted write leaves no half file."""
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(path)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model, steps and schedule: how many evaluations, mean SSIM and mean measured speed-up."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["steps"], row["schedule"]), []).append(row)
    return [{"model": model, "steps": steps, "schedule": schedule, "evaluations": len(group),
             "mean_ssim": _mean(r["ssim"] for r in group), "mean_speedup": _mean(r["speedup"] for r in group)}
            for (model, steps, schedule), group in groups.items()]


def _mean(values: Iterator[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(fmean(present), 4) if present else None
