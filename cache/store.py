"""The cache of evaluations: an SQLite file (the default) or a server database by SQLAlchemy URL.

SQLite: one engine per file, one short session per call; safe from many threads and processes (WAL,
a busy timeout, ``BEGIN IMMEDIATE`` for every transaction) and from a killed process (an image file
is written atomically before the row that points to it; a row is one transaction). Image files are
named by the SHA-256 of their bytes, never by user text.

A server database (``postgresql+psycopg://...``), shared by many machines: the same schema and keys,
images in the ``images`` table; every write is one ``INSERT ... ON CONFLICT`` statement, so
concurrent writers of the same evaluation neither lose nor duplicate it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import os
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, inspect, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError
from sqlalchemy.orm import Session

from tmpdiff.atomic import write_atomically
from tmpdiff.errors import FieldError, literal, shown
from tmpdiff.measure.records import EvalKey, EvalRecord
from tmpdiff.pipelines.registry import MODELS
from tmpdiff.steps.schedule import Schedule

from .schema import SCHEMA_VERSION, Base, CostTableRow, EvaluationRow, ImageBlob, Meta, SearchLinkRow, SearchRunRow

__all__ = ["Cache", "CacheError", "default_db_path"]

SQLITE_HEADER = b"SQLite format 3\x00"
EXPORT_FORMAT = "tmpdiff-cache-export"
EXPORT_VERSION = 1
SCHEMA_LOCK_KEY = 0x746D7064  # "tmpd": the PostgreSQL advisory lock taken while the schema is created


class CacheError(FieldError):
    """A cache that cannot be used (the ``db`` field, unless another is named); the message says which and what to
    do. ``template`` names fields as ``{db}``; paths and library messages in it go through ``literal``."""

    def __init__(self, template: str, field: str = "db") -> None:
        super().__init__(field, None, template)


def default_db_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``tmpdiff.sqlite`` in the tmpdiff cache folder (``cache_dir``, else ``$TMPDIFF_CACHE_DIR``, else the
    user cache folder), beside the compiled variants."""
    from tmpdiff.variants.compile_cache import cache_root

    return cache_root(cache_dir) / "tmpdiff.sqlite"


class Cache:
    """Evaluations, search runs and cost tables in one SQLite file.

    Example:
        >>> cache = Cache(tmp_path / "c.sqlite")  # doctest: +SKIP
        >>> cache.put(record); cache.get(record.key) is not None  # doctest: +SKIP
        True
    """

    def __init__(self, location: str | os.PathLike[str]) -> None:
        """``location``: a file path or ``sqlite:///path`` (SQLite), or a server database's SQLAlchemy URL."""
        url = _server_url(str(location))
        self.path: Path | None = None
        self.images: Path | None = None
        # Why this store reads but cannot write (an SQLite file whose -wal/-shm files cannot be made or
        # written), or None: its writes then fail as a write to a full disk would, and the image is still shown.
        self.read_only: str | None = None
        if url is None:
            path = str(location).removeprefix("sqlite:///") if str(location).startswith("sqlite:///") else location
            self.path = Path(path).expanduser()
            _refuse_foreign_file(self.path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.images = self.path.with_name(self.path.stem + "-images")
            self.images.mkdir(exist_ok=True)
            self.engine = _make_engine(self.path)
            self.where = str(self.path)
        else:
            self.where = url.render_as_string(hide_password=True)
            try:
                self.engine = create_engine(url, pool_pre_ping=True, connect_args=_server_timeouts(url))
            except ModuleNotFoundError as exc:
                raise CacheError(f"{{db}} {literal(repr(self.where))} needs the {exc.name} driver: "
                                 "pip install 'psycopg[binary]'") from None
        self._insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        try:
            self._ensure_schema()
        except CacheError as exc:
            if self.path is None or not _unwritable(exc):
                raise
            self._open_read_only(str(exc))

    def _open_read_only(self, why: str) -> None:
        """An SQLite file that cannot be written beside (no -wal/-shm, a read-only folder or disk): read what it
        holds, through SQLite's own read-only mode, rather than refuse to start (or crash on a mapped -shm)."""
        assert self.path is not None
        self.engine.dispose()
        self.engine = _make_engine(self.path, read_only=True)
        self._ensure_schema()
        self.read_only = why[why.rfind("(") + 1:why.rfind(")")] if "(" in why else why  # SQLite's own words
        warnings.warn(f"the cache {self.where} is open read-only (SQLite: {self.read_only}): stored results are "
                      "shown, new ones are not kept; check the folder's permissions and free space", stacklevel=3)

    # --- evaluations ---------------------------------------------------------------------
    def get(self, key: EvalKey) -> EvalRecord | None:
        with Session(self.engine) as session:
            row = session.scalar(_key_query(key))
            if row is None:
                return None
            png = self._read_image(row.image_sha256)
            return None if png is None else _to_record(row, key, png)

    def put(self, record: EvalRecord) -> int:
        """Insert or replace the evaluation of ``record.key``; returns its row id."""
        sha = self._write_image(record.png)
        key = record.key
        values = {
            "model": key.model, "model_hash": key.model_hash, "settings": key.settings,
            "settings_hash": key.settings_hash, "schedule": key.schedule, "schedule_hash": key.schedule_hash,
            "device": key.device, "device_hash": key.device_hash, "image_sha256": sha, "ssim": record.ssim,
            "psnr": _finite(record.psnr), "lpips": record.lpips, "lpips_note": record.lpips_note,
            "measured_seconds": record.measured_seconds, "predicted_seconds": record.predicted_seconds,
            "steps_run": list(record.steps_run), "simulated": list(record.simulated),
            "created_at": datetime.now(UTC),
        }
        statement = self._insert(EvaluationRow).values(**values)
        statement = statement.on_conflict_do_update(
            index_elements=["model", "model_hash", "settings_hash", "schedule_hash", "device_hash"],
            set_={k: statement.excluded[k] for k in values if k not in ("model", "model_hash")},
        ).returning(EvaluationRow.id)
        with Session(self.engine) as session, session.begin():
            return int(session.scalar(statement))

    def evaluations(self, model: str | None = None, settings_hash: str | None = None,
                    device_hash: str | None = None) -> list[dict[str, Any]]:
        """Every stored evaluation (newest first) matching the filters, as plain dicts."""
        query = select(EvaluationRow).order_by(EvaluationRow.created_at.desc())
        if model is not None:
            query = query.where(EvaluationRow.model == model)
        if settings_hash is not None:
            query = query.where(EvaluationRow.settings_hash == settings_hash)
        if device_hash is not None:
            query = query.where(EvaluationRow.device_hash == device_hash)
        with Session(self.engine) as session:
            return [_row_dict(row) for row in session.scalars(query)]

    def image_path(self, sha256: str) -> Path:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise CacheError(f"not an image id: {literal(shown(sha256))}")
        if self.images is None:
            raise CacheError(f"{literal(self.where)} keeps its images in the database, not in files")
        return self.images / f"{sha256}.png"

    # --- search runs and cost tables ------------------------------------------------------
    def start_search(self, model: str, request: dict[str, Any]) -> int:
        with Session(self.engine) as session, session.begin():
            run = SearchRunRow(model=model, request=request)
            session.add(run)
            session.flush()
            return run.id

    def link_search(self, run_id: int, key: EvalKey) -> None:
        with Session(self.engine) as session, session.begin():
            evaluation_id = session.scalar(_key_query(key).with_only_columns(EvaluationRow.id))
            if evaluation_id is None:
                return
            stmt = self._insert(SearchLinkRow).values(run_id=run_id, evaluation_id=evaluation_id)
            session.execute(stmt.on_conflict_do_nothing())

    def finish_search(self, run_id: int, result: dict[str, Any]) -> None:
        with Session(self.engine) as session, session.begin():
            run = session.get(SearchRunRow, run_id)
            if run is not None:
                run.result, run.finished_at = result, datetime.now(UTC)

    def search_runs(self) -> list[dict[str, Any]]:
        with Session(self.engine) as session:
            runs = session.scalars(select(SearchRunRow).order_by(SearchRunRow.started_at.desc()))
            return [{"id": r.id, "model": r.model, "request": r.request, "result": r.result,
                     "evaluations": len(r.evaluations), "finished": r.finished_at is not None} for r in runs]

    def put_costs(self, model_hash: str, settings_hash: str, device_hash: str, table: dict[str, Any]) -> None:
        statement = self._insert(CostTableRow).values(model_hash=model_hash, settings_hash=settings_hash,
                                                device_hash=device_hash, table=table)
        statement = statement.on_conflict_do_update(
            index_elements=["model_hash", "settings_hash", "device_hash"], set_={"table": table})
        with Session(self.engine) as session, session.begin():
            session.execute(statement)

    def get_costs(self, model_hash: str, settings_hash: str, device_hash: str) -> dict[str, Any] | None:
        query = select(CostTableRow.table).where(
            CostTableRow.model_hash == model_hash, CostTableRow.settings_hash == settings_hash,
            CostTableRow.device_hash == device_hash)
        with Session(self.engine) as session:
            return session.scalar(query)

    # --- moving evaluations between machines ----------------------------------------------
    def export(self, path: str | os.PathLike[str]) -> int:
        rows = []
        with Session(self.engine) as session:
            for row in session.scalars(select(EvaluationRow).order_by(EvaluationRow.id)):
                png = self._read_image(row.image_sha256)
                if png is not None:
                    data = _row_dict(row)
                    data["png_base64"] = base64.b64encode(png).decode()
                    rows.append(data)
        payload = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "evaluations": rows}
        write_atomically(Path(path), json.dumps(payload).encode(), durable=True)
        return len(rows)

    def import_(self, path: str | os.PathLike[str], replace: bool = False) -> int:
        """Validate every entry of an export file, then store the new ones; returns how many were stored.

        An entry whose evaluation is already stored the same is passed over; one that differs from the
        stored one is refused (nothing is written) unless ``replace``."""
        records = _parse_export(Path(path))
        new, differing = [], []
        for record in records:
            stored = self.get(record.key)
            if stored is None or (replace and not _same(stored, record)):
                new.append(record)
            elif not _same(stored, record):
                differing.append(record)
        if differing:
            first = differing[0].key
            raise CacheError(literal(f"{len(differing)} entries of {path} differ from evaluations already stored (the "
                                     f"first: {first.model} {first.schedule} seed {first.settings.get('seed')})")
                             + "; nothing was imported: pass {replace} to overwrite them", field="replace")
        for record in new:
            self.put(record)
        return len(new)

    # --- internals ------------------------------------------------------------------------
    def _ensure_schema(self) -> None:
        kind = "SQLite database" if self.path is not None else "database"
        try:
            tables = set(inspect(self.engine).get_table_names())
            if not tables:
                self._create_schema()
                return
            with Session(self.engine) as session:
                version = session.get(Meta, "schema_version") if "meta" in tables else None
        except OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0]
            raise CacheError(literal(f"cannot reach the {kind} {self.where} ({reason})") + ": check {db}") from None
        except DatabaseError as exc:
            raise CacheError(literal(f"{self.where} is not a usable {kind} ({exc.orig})") + ": pass another {db}") \
                from None
        found = version.value if version is not None else "none"
        if found != str(SCHEMA_VERSION):
            raise CacheError(literal(f"{self.where} holds a database of another schema (version {found}, tmpdiff "
                                     f"needs {SCHEMA_VERSION})") + ": pass another {db} or move that database away")

    def _create_schema(self) -> None:
        """Tables and the version row in one transaction: another process opening the new database at the same
        time (the processes of a ``--parallel`` launch, Ray actors) sees either no table or the whole schema,
        never tables without their version row."""
        statement = self._insert(Meta).values(key="schema_version", value=str(SCHEMA_VERSION))
        with self.engine.begin() as connection:  # SQLite: BEGIN IMMEDIATE, so one creator at a time
            if self.engine.dialect.name == "postgresql":  # the same there: a lock held to the transaction's end
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            Base.metadata.create_all(connection, checkfirst=True)
            connection.execute(statement.on_conflict_do_nothing())

    def _write_image(self, png: bytes) -> str:
        sha = hashlib.sha256(png).hexdigest()
        if self.images is None:
            statement = self._insert(ImageBlob).values(sha256=sha, png=png).on_conflict_do_nothing()
            with Session(self.engine) as session, session.begin():
                session.execute(statement)
            return sha
        target = self.image_path(sha)
        if not target.exists():
            write_atomically(target, png, durable=True)
        return sha

    def _read_image(self, sha: str) -> bytes | None:
        if self.images is None:
            with Session(self.engine) as session:
                return session.scalar(select(ImageBlob.png).where(ImageBlob.sha256 == sha))
        try:
            return self.image_path(sha).read_bytes()
        except OSError:
            return None


def _unwritable(exc: CacheError) -> bool:
    text = str(exc)
    return any(reason in text for reason in ("readonly database", "unable to open database file", "disk I/O error"))


def _make_engine(path: Path, read_only: bool = False) -> Engine:
    where = f"file:{path.resolve()}?mode=ro&uri=true" if read_only else str(path)
    engine = create_engine(f"sqlite:///{where}", connect_args={"timeout": 60, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let the BEGIN below open transactions
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=60000")
        if not read_only:
            _switch_to_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        # Take the write lock up front: a deferred transaction that upgrades later can fail
        # with "database is locked" without waiting for the busy timeout.
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def _switch_to_wal(cursor: Any, patience_s: float = 60.0) -> None:
    """WAL mode, which a new file takes from its first opener. While another process switches the same new file,
    SQLite answers "database is locked" at once, without waiting for the busy timeout: so wait here."""
    import sqlite3
    import time

    deadline = time.monotonic() + patience_s
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _server_url(location: str) -> Any:
    """The SQLAlchemy URL of a server database, or None for an SQLite file (a path or ``sqlite:///``)."""
    if "://" not in location or location.startswith("sqlite:///"):
        return None
    try:
        url = make_url(location)
    except ArgumentError:
        raise CacheError(f"{{db}} {literal(shown(location))} is neither a file path nor a database URL such as "
                         "postgresql+psycopg://user@host/db") from None
    if url.get_backend_name() != "postgresql":
        raise CacheError(f"{{db}} {literal(repr(url.render_as_string(hide_password=True)))}: tmpdiff caches in "
                         "SQLite (a path) or PostgreSQL (postgresql+psycopg://...)")
    return url


def _refuse_foreign_file(path: Path) -> None:
    if path.is_dir():
        raise CacheError(f"{{db}} {literal(repr(str(path)))} is a folder: give a file path")
    if path.exists() and path.stat().st_size > 0:
        with path.open("rb") as handle:
            if handle.read(16) != SQLITE_HEADER:
                raise CacheError(literal(f"{path} is not a SQLite database") + ": pass another {db}")


def _key_query(key: EvalKey) -> Any:
    return select(EvaluationRow).where(
        EvaluationRow.model == key.model, EvaluationRow.model_hash == key.model_hash,
        EvaluationRow.settings_hash == key.settings_hash, EvaluationRow.schedule_hash == key.schedule_hash,
        EvaluationRow.device_hash == key.device_hash)


def _to_record(row: EvaluationRow, key: EvalKey, png: bytes) -> EvalRecord:
    return EvalRecord(key=key, png=png, ssim=row.ssim, psnr=row.psnr if row.psnr is not None else float("inf"),
                      lpips=row.lpips, lpips_note=row.lpips_note, measured_seconds=row.measured_seconds,
                      predicted_seconds=row.predicted_seconds, steps_run=list(row.steps_run),
                      simulated=list(row.simulated))


def _row_dict(row: EvaluationRow) -> dict[str, Any]:
    return {
        "id": row.id, "model": row.model, "model_hash": row.model_hash, "settings": row.settings,
        "settings_hash": row.settings_hash, "schedule": row.schedule, "schedule_hash": row.schedule_hash,
        "device": row.device, "device_hash": row.device_hash, "image_sha256": row.image_sha256,
        "ssim": row.ssim, "psnr": row.psnr, "lpips": row.lpips, "lpips_note": row.lpips_note,
        "measured_seconds": row.measured_seconds, "predicted_seconds": row.predicted_seconds,
        "steps_run": row.steps_run, "simulated": row.simulated, "created_at": row.created_at.isoformat(),
    }


# A server that accepts connections but never answers must not hang a command: PostgreSQL gets a connect
# and a statement timeout unless the URL sets its own (?connect_timeout=N&options=-c statement_timeout=N).
CONNECT_TIMEOUT_S = 10
STATEMENT_TIMEOUT_MS = 60_000


def _server_timeouts(url: Any) -> dict[str, Any]:
    if not url.drivername.startswith("postgresql"):
        return {}
    args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        args["connect_timeout"] = CONNECT_TIMEOUT_S
    if "statement_timeout" not in str(url.query.get("options", "")):
        args["options"] = f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"
    return args


def _finite(value: float | None) -> float | None:
    """SQLite stores no infinity: identical images (PSNR = inf) are stored as NULL."""
    return None if value is None or value == float("inf") else value


def _parse_export(path: Path) -> list[EvalRecord]:
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CacheError(literal(f"{path} is not a tmpdiff export ({exc})"), field="file") from None
    except RecursionError:
        raise CacheError(literal(f"{path} is not a tmpdiff export (nested too deeply)"), field="file") from None
    if not isinstance(payload, dict) or payload.get("format") != EXPORT_FORMAT:
        raise CacheError(literal(f"{path} is not a tmpdiff export: its 'format' is not {EXPORT_FORMAT!r}"),
                         field="file")
    if payload.get("version") != EXPORT_VERSION:
        raise CacheError(literal(f"{path} is export version {shown(payload.get('version'))}; this tmpdiff reads "
                                 f"{EXPORT_VERSION}"), field="file")
    entries = payload.get("evaluations")
    if not isinstance(entries, list):
        raise CacheError(literal(f"{path}: 'evaluations' must be a list"), field="file")
    return [_parse_entry(entry, i, path) for i, entry in enumerate(entries)]


_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,), "model_hash": (str,), "settings": (dict,), "schedule": (str,), "device": (dict,),
    "ssim": (float, int, type(None)), "psnr": (float, int, type(None)), "lpips": (float, int, type(None)),
    "lpips_note": (str,), "measured_seconds": (float, int), "predicted_seconds": (float, int, type(None)),
    "steps_run": (list,), "simulated": (list,), "png_base64": (str,),
}


def _same(a: EvalRecord, b: EvalRecord) -> bool:
    return (a.png, a.ssim, a.psnr, a.lpips, a.measured_seconds) == (b.png, b.ssim, _finite(b.psnr), b.lpips,
                                                                     b.measured_seconds)


def _parse_entry(entry: Any, index: int, path: Path) -> EvalRecord:
    where = f"{path} entry {index}"
    if not isinstance(entry, dict):
        raise CacheError(literal(f"{where} is not an object"), field="file")
    for name, types in _TYPES.items():
        if not isinstance(entry.get(name), types) or isinstance(entry.get(name), bool):
            raise CacheError(literal(f"{where}: field {name!r} is missing or of the wrong type"), field="file")
    for name in ("ssim", "psnr", "lpips", "measured_seconds", "predicted_seconds"):
        if isinstance(entry[name], float) and not math.isfinite(entry[name]):
            raise CacheError(literal(f"{where}: field {name!r} is {entry[name]}: only finite numbers (or null) are "
                                     "stored"), field="file")
    if entry["model"] not in MODELS:
        raise CacheError(literal(f"{where}: unknown model {entry['model']!r}"), field="file")
    try:
        schedule = Schedule.parse(entry["schedule"])
        steps = entry["settings"].get("steps")
        if steps is not None and steps != len(schedule):
            raise ValueError(f"schedule {entry['schedule']!r} has {len(schedule)} steps, settings say {steps}")
        png = base64.b64decode(entry["png_base64"], validate=True)
        _check_png(png)
    except ValueError as exc:
        raise CacheError(literal(f"{where}: {exc}"), field="file") from None
    key = EvalKey(model=entry["model"], model_hash=entry["model_hash"], settings=entry["settings"],
                  schedule=str(schedule), schedule_hash=schedule.hash, device=entry["device"])
    return EvalRecord(key=key, png=png, ssim=entry["ssim"], psnr=entry["psnr"], lpips=entry["lpips"],
                      lpips_note=entry["lpips_note"], measured_seconds=float(entry["measured_seconds"]),
                      predicted_seconds=entry["predicted_seconds"], steps_run=[str(s) for s in entry["steps_run"]],
                      simulated=[str(s) for s in entry["simulated"]])


def _check_png(png: bytes) -> None:
    from PIL import Image

    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("the image is not a PNG")
    try:
        with Image.open(io.BytesIO(png)) as image:
            image.verify()
    except Exception as exc:  # PIL raises many types for broken files
        raise ValueError(f"the PNG is broken ({exc})") from None

