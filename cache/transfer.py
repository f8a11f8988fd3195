"""Moving a cache between machines: ``Cache.export_all`` writes everything a person made or paid for to one JSON file
(every evaluation with its image, the blind test's answers, the search and sweep runs with the evaluations they
linked, the measured cost tables); ``Cache.import_all`` checks a whole file against this module's schema before it
writes anything. Answers and runs point at evaluations by their place in the file, never by a database's ids.

An export is input from another machine, perhaps another person: every entry is checked as the engine would check
the same values (settings as ``RunSettings``, schedules as ``Schedule.parse``), numbers are finite and in their
ranges, texts and lists bounded, so that nothing the engine itself would refuse, and nothing that breaks the
database's JSON functions (NaN inside a settings object), is ever stored. PSNR keeps one meaning end to end: ``null``
in a file and NULL in the database mean identical images (infinite PSNR), as ``inf`` does in memory.
"""

from __future__ import annotations

import base64
import codecs
import io
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tmpdiff.engine.settings import STORED_FIELDS, RunSettings
from tmpdiff.errors import literal, shown
from tmpdiff.measure.records import EvalKey, EvalRecord
from tmpdiff.memory.meter import MEMORY_WHERE, MemoryFigures, gib
from tmpdiff.pipelines.registry import MODELS
from tmpdiff.steps.schedule import Schedule

from .connection import CacheError

__all__ = ["EXPORT_FORMAT", "EXPORT_VERSION", "Export", "Imported", "ImportedAnswer", "ImportedCosts", "ImportedRun",
           "finite_or_none", "parse_export", "parse_export_file", "same_record"]

EXPORT_FORMAT = "tmpdiff-cache-export"
EXPORT_VERSION = 2  # 1: evaluations only (still read); 2: with blind answers, search runs and cost tables
READ_VERSIONS = (1, 2)
BLIND_VERDICTS = ("right", "wrong", "unsure")

MAX_TEXT = 4096  # characters of any text but an image (prompts are bounded tighter, by RunSettings)
MAX_DIGITS = 20  # of a whole number: a 64-bit value has at most 19; more is an overflow, not a measurement
MAX_OBJECT_BYTES = 16384  # of a device fingerprint or a memory record, as JSON
MAX_STEP_NAME = 64
MAX_PNG_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Imported:
    """One checked entry of an export: the record, and when it was first made (kept across machines)."""

    record: EvalRecord
    created_at: datetime | None


def finite_or_none(value: float | None) -> float | None:
    """SQLite stores no infinity: identical images (PSNR = inf) are stored as NULL."""
    return None if value is None or value == float("inf") else value


def same_record(a: EvalRecord, b: EvalRecord) -> bool:
    """Whether two records of one key say the same (image, scores, seconds, steps and memory); PSNR's NULL and inf
    are one value."""
    def said(r: EvalRecord) -> tuple[Any, ...]:
        return (r.png, r.ssim, finite_or_none(r.psnr), r.lpips, r.lpips_note, r.measured_seconds,
                r.predicted_seconds, list(r.steps_run), list(r.simulated), r.peak_bytes, r.memory, r.reference_seconds)

    return said(a) == said(b)


@dataclass(frozen=True)
class ImportedAnswer:
    """One blind-test answer of an export: which of its evaluations (by place), the verdict, who and when."""

    evaluation: int
    answer: str
    session: str | None
    created_at: datetime | None


@dataclass(frozen=True)
class ImportedRun:
    """One search or sweep run of an export, with the places of the evaluations it linked."""

    model: str
    request: dict[str, Any]
    result: dict[str, Any] | None
    started_at: datetime | None
    finished_at: datetime | None
    evaluations: tuple[int, ...]


@dataclass(frozen=True)
class ImportedCosts:
    """One measured cost table of an export, by the keys it is stored under."""

    model_hash: str
    settings_hash: str
    device_hash: str
    table: dict[str, Any]


@dataclass(frozen=True)
class Export:
    """A whole export file, checked."""

    evaluations: list[Imported]
    blind_answers: list[ImportedAnswer]
    search_runs: list[ImportedRun]
    cost_tables: list[ImportedCosts]


def parse_export(path: Path) -> list[Imported]:
    """Every evaluation of the export at ``path``, checked (the whole file is: see ``parse_export_file``)."""
    return parse_export_file(path).evaluations


def parse_export_file(path: Path) -> Export:
    """The export at ``path``, every part checked; a ``CacheError`` naming the first bad entry (and nothing else
    happens: the caller writes only after this returns)."""
    payload = _load(path)
    entries = _entries(payload, path)
    evaluations = [_parse_entry(entry, f"{path} entry {i}") for i, entry in enumerate(entries)]
    count = len(evaluations)
    return Export(evaluations,
                  _parsed_list(payload, "blind_answers", path, lambda e: _parse_answer(e, count)),
                  _parsed_list(payload, "search_runs", path, lambda e: _parse_run(e, count)),
                  _parsed_list(payload, "cost_tables", path, _parse_costs))


def _parsed_list(payload: dict[str, Any], name: str, path: Path, parse: Any) -> list[Any]:
    """The part ``name`` of an export (absent in version 1: empty), each entry parsed or a ``CacheError``."""
    entries = payload.get(name, [])
    if not isinstance(entries, list):
        raise CacheError(literal(f"{path}: {name!r} must be a list"), field="file")
    parsed = []
    for i, entry in enumerate(entries):
        try:
            if not isinstance(entry, dict):
                raise ValueError("not an object")
            parsed.append(parse(entry))
        except ValueError as exc:
            words = exc.worded() if hasattr(exc, "worded") else str(exc)
            raise CacheError(literal(f"{path} {name} entry {i}: {words}"), field="file") from None
    return parsed


def _place(value: Any, count: int, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < count:
        raise ValueError(f"field {field!r} is {shown(value)}: the place of an evaluation of this file (0 to "
                         f"{count - 1})")
    return value


def _short_text(value: Any, field: str, longest: int, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= longest:
        raise ValueError(f"field {field!r} must be a text of 1 to {longest} characters")
    return value


def _parse_answer(entry: dict[str, Any], count: int) -> ImportedAnswer:
    if entry.get("answer") not in BLIND_VERDICTS:
        raise ValueError(f"field 'answer' is {shown(entry.get('answer'))}: one of {', '.join(BLIND_VERDICTS)}")
    return ImportedAnswer(_place(entry.get("evaluation"), count, "evaluation"), entry["answer"],
                          _short_text(entry.get("session"), "session", 32, optional=True),
                          _checked_time(entry.get("created_at")))


def _parse_run(entry: dict[str, Any], count: int) -> ImportedRun:
    if entry.get("model") not in MODELS:
        raise ValueError(f"unknown model {shown(entry.get('model'))}")
    _check_object(entry.get("request"), "request")
    if entry.get("result") is not None:
        _check_object(entry["result"], "result")
    places = entry.get("evaluations")
    if not isinstance(places, list) or len(places) > count:
        raise ValueError("field 'evaluations' must list places of this file's evaluations")
    linked = tuple(sorted({_place(v, count, "evaluations") for v in places}))
    return ImportedRun(entry["model"], entry["request"], entry.get("result"), _checked_time(entry.get("started_at")),
                       _checked_time(entry.get("finished_at")), linked)


def _parse_costs(entry: dict[str, Any]) -> ImportedCosts:
    from tmpdiff.measure.latency import CostTable

    model_hash, settings_hash, device_hash = (str(_short_text(entry.get(name), name, 32))
                                              for name in ("model_hash", "settings_hash", "device_hash"))
    _check_object(entry.get("table"), "table")
    try:
        table = CostTable.from_dict(entry["table"])  # the engine's own reading of a cost table
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"field 'table' is not a cost table ({str(exc)[:200]})") from None
    seconds = [*table.step_seconds.values(), table.fixed_seconds]
    if not 0 < table.steps <= 1000 or not all(0.0 <= v < 1e6 for v in seconds):
        raise ValueError("field 'table' holds a step count or seconds out of range")
    return ImportedCosts(model_hash, settings_hash, device_hash, entry["table"])


def _load(path: Path) -> Any:
    """The file's JSON, refusing what standard JSON does not hold (NaN, Infinity) and numbers no column holds."""
    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not a number JSON holds")

    def bounded_int(text: str) -> int:
        if len(text.lstrip("-")) > MAX_DIGITS:
            raise ValueError(f"the whole number {shown(text)} is too large")
        return int(text)

    def finite_float(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"the number {shown(text)} is too large")
        return value

    try:
        return json.loads(_read_checked(path), parse_constant=no_constants, parse_int=bounded_int,
                          parse_float=finite_float)
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise CacheError(literal(f"{path} is not a tmpdiff export ({exc})"), field="file") from None
    except RecursionError:
        raise CacheError(literal(f"{path} is not a tmpdiff export (nested too deeply)"), field="file") from None


CHUNK = 2**20
LONGEST_RUN = MAX_PNG_BYTES * 4 // 3 + CHUNK  # between two quotes: a base64 image at most


def _read_checked(path: Path) -> str:
    """The file's text, read a chunk at a time and refused at the first chunk no export can hold, so that junk
    costs at most a chunk or an image's length of memory, not the whole file: an export opens with ``{``, is
    UTF-8 (``json.dumps`` writes ASCII), has no megabyte of bare whitespace, and no run without a quote longer
    than an image's base64."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    parts: list[str] = []
    since_quote = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            if not parts and not chunk.lstrip().startswith(b"{"):
                raise ValueError("it does not open with '{'")
            if not chunk.strip():
                raise ValueError("it holds a megabyte of bare whitespace")
            quote = chunk.rfind(b'"')
            since_quote = len(chunk) - 1 - quote if quote >= 0 else since_quote + len(chunk)
            if since_quote > LONGEST_RUN:
                raise ValueError(f"it holds over {LONGEST_RUN} bytes without a quote, more than an image's text")
            parts.append(decoder.decode(chunk))  # a UnicodeDecodeError at the first chunk that is not text
    parts.append(decoder.decode(b"", final=True))
    return "".join(parts)


def _entries(payload: Any, path: Path) -> list[Any]:
    if not isinstance(payload, dict) or payload.get("format") != EXPORT_FORMAT:
        raise CacheError(literal(f"{path} is not a tmpdiff export: its 'format' is not {EXPORT_FORMAT!r}"),
                         field="file")
    if payload.get("version") not in READ_VERSIONS:
        raise CacheError(literal(f"{path} is export version {shown(payload.get('version'))}; this tmpdiff reads "
                                 f"{' and '.join(map(str, READ_VERSIONS))}"), field="file")
    entries = payload.get("evaluations")
    if not isinstance(entries, list):
        raise CacheError(literal(f"{path}: 'evaluations' must be a list"), field="file")
    return entries


_NUMBER = (int, float)
_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,), "model_hash": (str,), "settings": (dict,), "schedule": (str,), "device": (dict,),
    "ssim": (*_NUMBER, type(None)), "psnr": (*_NUMBER, type(None)), "lpips": (*_NUMBER, type(None)),
    "lpips_note": (str,), "measured_seconds": _NUMBER, "predicted_seconds": (*_NUMBER, type(None)),
    "steps_run": (list,), "simulated": (list,), "png_base64": (str,),
}
# Each score's range (None: no bound that side); PSNR may be null (identical images).
_RANGES: dict[str, tuple[float | None, float | None]] = {
    "ssim": (-1.0, 1.0), "psnr": (0.0, None), "lpips": (0.0, None), "measured_seconds": (0.0, None),
    "predicted_seconds": (0.0, None),
}


def _parse_entry(entry: Any, where: str) -> Imported:
    try:
        _check_fields(entry)
        schedule = Schedule.parse(entry["schedule"])
        settings = _checked_settings(entry["settings"], entry["model"], len(schedule))
        steps_run = _step_names(entry["steps_run"], "steps_run", len(schedule), exact=True)
        if steps_run != list(schedule.steps):  # the engine records the precision each step ran: the schedule's
            raise ValueError(f"field 'steps_run' ({shown(','.join(steps_run))}) is not the schedule's steps")
        simulated = _step_names(entry["simulated"], "simulated", len(schedule), exact=False)
        if not set(simulated) <= set(schedule.precisions):
            raise ValueError(f"field 'simulated' names precisions the schedule has not ({shown(simulated)})")
        png = _checked_png(entry["png_base64"])
        peak, memory = _checked_memory(entry.get("peak_bytes"), entry.get("memory"))
        created_at = _checked_time(entry.get("created_at"))
        reference_seconds = _optional_seconds(entry.get("reference_seconds"), "reference_seconds")
    except ValueError as exc:  # FieldError (the engine's own checks) is a ValueError too
        words = exc.worded() if hasattr(exc, "worded") else str(exc)
        raise CacheError(literal(f"{where}: {words}"), field="file") from None
    key = EvalKey(model=entry["model"], model_hash=entry["model_hash"], settings=settings, schedule=str(schedule),
                  schedule_hash=schedule.hash, device=entry["device"])
    psnr = float("inf") if entry["psnr"] is None else float(entry["psnr"])
    record = EvalRecord(key=key, png=png, ssim=_float_or_none(entry["ssim"]), psnr=psnr,
                        lpips=_float_or_none(entry["lpips"]), lpips_note=entry["lpips_note"],
                        measured_seconds=float(entry["measured_seconds"]),
                        predicted_seconds=_float_or_none(entry["predicted_seconds"]), steps_run=steps_run,
                        simulated=simulated, peak_bytes=peak, memory=memory,
                        reference_seconds=reference_seconds)
    return Imported(record, created_at)


def _optional_seconds(value: Any, name: str) -> float | None:
    """An optional duration (exports written before it was kept have none): a positive finite number or null."""
    if value is None:
        return None
    if not isinstance(value, _NUMBER) or isinstance(value, bool) or not 0.0 < float(value) < 1e9:
        raise ValueError(f"field {name!r} is {shown(value)}: a number of seconds above 0 and below 1e9, or null")
    return float(value)


def _check_fields(entry: Any) -> None:
    if not isinstance(entry, dict):
        raise ValueError("not an object")
    for name, types in _TYPES.items():
        value = entry.get(name)
        if not isinstance(value, types) or isinstance(value, bool):
            raise ValueError(f"field {name!r} is missing or of the wrong type")
        if isinstance(value, str) and name != "png_base64" and len(value) > MAX_TEXT:
            raise ValueError(f"field {name!r} has {len(value)} characters, at most {MAX_TEXT}")
    for name, (low, high) in _RANGES.items():
        value = entry[name]
        if value is not None and ((low is not None and value < low) or (high is not None and value > high)):
            raise ValueError(f"field {name!r} is {shown(value)}, outside [{low}, {high if high is not None else '∞'}]")
    if entry["model"] not in MODELS:
        raise ValueError(f"unknown model {shown(entry['model'])}")
    if not 0 < len(entry["model_hash"]) <= 64 or not entry["model_hash"].isalnum():
        raise ValueError(f"field 'model_hash' is {shown(entry['model_hash'])}: a hash of 1 to 64 letters and digits")
    _check_object(entry["device"], "device")
    device = entry["device"]
    if not isinstance(device.get("device"), str) or not all(
            isinstance(v, str | int | float | bool) or v is None for v in device.values()):
        raise ValueError(f"field 'device' ({shown(device)}) is not a device fingerprint: it names its 'device' and "
                         "holds plain values")


def _checked_settings(settings: dict[str, Any], model: str, steps: int) -> dict[str, Any]:
    """``settings`` as the engine keys them: the same dict ``RunSettings(...).to_dict()`` makes, or refused."""
    extra = set(settings) - set(STORED_FIELDS) - {"frames"}
    if extra:
        raise ValueError(f"settings hold unknown keys ({shown(sorted(extra))})")
    kinds = {"prompt": (str, type(None)), "negative_prompt": (str,), "seed": (int,), "steps": (int,), "size": (int,),
             "guidance": (int, float), "frames": (int,)}
    for name, types in kinds.items():
        if name in settings and (not isinstance(settings[name], types) or isinstance(settings[name], bool)):
            raise ValueError(f"settings' {name!r} is {shown(settings[name])}, of the wrong type")
    if settings.get("model") != model:
        raise ValueError(f"settings are for model {shown(settings.get('model'))}, the entry for {shown(model)}")
    canonical = RunSettings.of_stored(settings).to_dict()
    if canonical != settings:
        differing = sorted(k for k in set(canonical) | set(settings) if canonical.get(k) != settings.get(k))
        raise ValueError(f"settings are not as the engine writes them (differing: {', '.join(differing)})")
    if canonical["steps"] != steps:
        raise ValueError(f"the schedule has {steps} steps, settings say {canonical['steps']}")
    return canonical


def _step_names(names: list[Any], field: str, steps: int, exact: bool) -> list[str]:
    if (len(names) != steps) if exact else (len(names) > steps):
        raise ValueError(f"field {field!r} has {len(names)} entries for a schedule of {steps} steps")
    if not all(isinstance(n, str) and 0 < len(n) <= MAX_STEP_NAME for n in names):
        raise ValueError(f"field {field!r} must list step names")
    return list(names)


def _checked_png(text: str) -> bytes:
    from PIL import Image

    if len(text) > MAX_PNG_BYTES * 4 // 3 + 4:
        raise ValueError(f"the image is larger than {MAX_PNG_BYTES >> 20} MiB")
    png = base64.b64decode(text, validate=True)
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("the image is not a PNG")
    try:
        with Image.open(io.BytesIO(png)) as image:
            image.verify()
    except Exception as exc:  # PIL raises many types for broken files
        raise ValueError(f"the PNG is broken ({exc})") from None
    return png


# ``MemoryFigures.to_dict()``'s keys
MEMORY_KEYS = {"peak_gib", "where", "resident_gib", "plan", "budget_gib", "host_peak_gib", "pinned_gib"}
MOST_GIB = 16384.0  # more memory than any one machine holds: a typo or a forgery, not a measurement


def _gib_or_none(value: Any, field: str, low: float = 0.0) -> float | None:
    if value is None:
        return None
    if not isinstance(value, _NUMBER) or isinstance(value, bool) or not low <= value <= MOST_GIB:
        raise ValueError(f"'memory.{field}' is {shown(value)}: GiB from {low:g} to {MOST_GIB:g}, or null")
    return float(value)


def _checked_memory(peak: Any, memory: Any) -> tuple[int | None, MemoryFigures | None]:
    """The peak and the memory record as the engine writes them (``MemoryFigures.to_dict``), agreeing."""
    if not (peak is None or (isinstance(peak, int) and not isinstance(peak, bool) and 0 <= peak < 1 << 50)):
        raise ValueError(f"'peak_bytes' is {shown(peak)}: a whole number of bytes from 0 to 2**50 - 1, or null")
    if memory is None:
        return peak, None
    _check_object(memory, "memory")
    if not set(memory) <= MEMORY_KEYS:
        raise ValueError(f"'memory' holds unknown keys ({shown(sorted(set(memory) - MEMORY_KEYS))})")
    if memory.get("where", "gpu") not in MEMORY_WHERE:
        raise ValueError(f"'memory.where' is {shown(memory.get('where'))}: one of {', '.join(MEMORY_WHERE)}")
    peak_gib = _gib_or_none(memory.get("peak_gib"), "peak_gib")
    agrees = peak is None or abs(gib(peak, digits=None) - (peak_gib or 0.0)) <= 0.01
    if (peak_gib is None) != (peak is None) or not agrees:
        raise ValueError(f"'memory.peak_gib' ({shown(peak_gib)}) does not agree with 'peak_bytes' ({shown(peak)})")
    _gib_or_none(memory.get("budget_gib"), "budget_gib", low=0.01)
    _gib_or_none(memory.get("host_peak_gib"), "host_peak_gib")
    _gib_or_none(memory.get("pinned_gib"), "pinned_gib")
    resident = memory.get("resident_gib") or {}
    if not isinstance(resident, dict) or not all(isinstance(k, str) and len(k) <= MAX_STEP_NAME for k in resident):
        raise ValueError("'memory.resident_gib' must map part names to GiB")
    for size in resident.values():
        _gib_or_none(size, "resident_gib")
    if not isinstance(memory.get("plan", ""), str):
        raise ValueError("'memory.plan' must be a text")
    return peak, MemoryFigures.from_dict(memory, peak)


def _check_object(value: Any, field: str) -> None:
    """A small JSON object of bounded texts (a device fingerprint, a memory record)."""
    if not isinstance(value, dict):
        raise ValueError(f"field {field!r} must be an object")
    if len(json.dumps(value)) > MAX_OBJECT_BYTES:
        raise ValueError(f"field {field!r} is larger than {MAX_OBJECT_BYTES} bytes")


def _checked_time(value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value) if isinstance(value, str) and len(value) <= 64 else None
    except ValueError:
        when = None
    if when is None:
        raise ValueError(f"'created_at' is not an ISO 8601 time: {shown(value)}")
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)
