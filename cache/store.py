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
import json
import os
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, distinct, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from tmpdiff.atomic import write_atomically
from tmpdiff.errors import CacheWarning, literal, shown
from tmpdiff.measure.records import BlindTally, EvalKey, EvalRecord, StoredEvaluation, StoredSearchRun
from tmpdiff.memory.meter import MemoryFigures

from .connection import (
    CacheError,
    default_db_path,
    make_sqlite_engine,
    refuse_foreign_file,
    server_timeouts,
    server_url,
    unwritable,
)
from .migrations import ensure_schema
from .moves import Moved, add_answers, add_runs
from .schema import BlindAnswerRow, CostTableRow, EvaluationRow, ImageBlob, SearchLinkRow, SearchRunRow
from .transfer import (
    EXPORT_FORMAT,
    EXPORT_VERSION,
    Imported,
    ImportedCosts,
    finite_or_none,
    parse_export_file,
    same_record,
)

__all__ = ["Cache", "CacheError", "Moved", "default_db_path"]


class Cache:
    """Evaluations, search runs and cost tables in one SQLite file.

    Example:
        >>> cache = Cache(tmp_path / "c.sqlite")  # doctest: +SKIP
        >>> cache.put(record); cache.get(record.key) is not None  # doctest: +SKIP
        True
    """

    def __init__(self, location: str | os.PathLike[str]) -> None:
        """``location``: a file path or ``sqlite:///path`` (SQLite), or a server database's SQLAlchemy URL."""
        url = server_url(str(location))
        self.path: Path | None = None
        self.images: Path | None = None
        # Why this store reads but cannot write (an SQLite file whose -wal/-shm files cannot be made or
        # written), or None: its writes then fail as a write to a full disk would, and the image is still shown.
        self.read_only: str | None = None
        if url is None:
            path = str(location).removeprefix("sqlite:///") if str(location).startswith("sqlite:///") else location
            self.path = Path(path).expanduser()
            refuse_foreign_file(self.path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.images = self.path.with_name(self.path.stem + "-images")
            self.images.mkdir(exist_ok=True)
            self.engine = make_sqlite_engine(self.path)
            self.where = str(self.path)
        else:
            self.where = url.render_as_string(hide_password=True)
            try:
                self.engine = create_engine(url, pool_pre_ping=True, connect_args=server_timeouts(url))
            except ModuleNotFoundError as exc:
                raise CacheError(f"{{db}} {literal(repr(self.where))} needs the {exc.name} driver: "
                                 "pip install 'psycopg[binary]'") from None
        self._insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        try:
            ensure_schema(self.engine, self.where)
        except CacheError as exc:
            if self.path is None or not unwritable(exc):
                raise
            self._open_read_only(str(exc))

    def _open_read_only(self, why: str) -> None:
        """An SQLite file that cannot be written beside (no -wal/-shm, a read-only folder or disk): read what it
        holds, through SQLite's own read-only mode, rather than refuse to start (or crash on a mapped -shm)."""
        assert self.path is not None
        self.engine.dispose()
        self.engine = make_sqlite_engine(self.path, read_only=True)
        ensure_schema(self.engine, self.where, read_only=True)
        self.read_only = why[why.rfind("(") + 1:why.rfind(")")] if "(" in why else why  # SQLite's own words
        warnings.warn(f"the cache {self.where} is open read-only (SQLite: {self.read_only}): stored results are "
                      "shown, new ones are not kept; check the folder's permissions and free space", CacheWarning,
                      stacklevel=3)

    # --- evaluations ---------------------------------------------------------------------
    def get(self, key: EvalKey) -> EvalRecord | None:
        with Session(self.engine) as session:
            row = session.scalar(_key_query(key))
            if row is None:
                return None
            png = self.image(row.image_sha256)
            return None if png is None else _to_record(row, key, png)

    def put(self, record: EvalRecord) -> int:
        """Insert or replace the evaluation of ``record.key``; returns its row id."""
        self._write_image_file(record.png)  # outside the write lock: an fsync holds up no other writer
        with Session(self.engine) as session, session.begin():
            return self._put_in(session, record, None)

    def _put_in(self, session: Session, record: EvalRecord, created_at: datetime | None) -> int:
        """``record`` written within ``session``'s transaction (an image file is written before, by content: one of
        a transaction rolled back is only an unreferenced file)."""
        sha = hashlib.sha256(record.png).hexdigest()
        if self.images is None:
            session.execute(self._insert(ImageBlob).values(sha256=sha, png=record.png).on_conflict_do_nothing())
        key = record.key
        values = {
            "model": key.model, "model_hash": key.model_hash, "settings": key.settings,
            "settings_hash": key.settings_hash, "schedule": key.schedule, "schedule_hash": key.schedule_hash,
            "device": key.device, "device_hash": key.device_hash, "image_sha256": sha, "ssim": record.ssim,
            "psnr": finite_or_none(record.psnr), "lpips": record.lpips, "lpips_note": record.lpips_note,
            "measured_seconds": record.measured_seconds, "predicted_seconds": record.predicted_seconds,
            "steps_run": list(record.steps_run), "simulated": list(record.simulated),
            "created_at": created_at or datetime.now(UTC), "peak_bytes": record.peak_bytes,
            "memory": record.memory.to_dict() if record.memory else None,
            "reference_seconds": record.reference_seconds,
        }
        insert = self._insert(EvaluationRow).values(**values)
        statement = insert.on_conflict_do_update(
            index_elements=["model", "model_hash", "settings_hash", "schedule_hash", "device_hash"],
            set_={k: insert.excluded[k] for k in values if k not in ("model", "model_hash")},
        ).returning(EvaluationRow.id)
        return int(session.execute(statement).scalar_one())

    def evaluations(self, model: str | None = None, settings_hash: str | None = None,
                    device_hash: str | None = None) -> list[StoredEvaluation]:
        """Every stored evaluation (newest first) matching the filters."""
        query = select(EvaluationRow).order_by(EvaluationRow.created_at.desc())
        if model is not None:
            query = query.where(EvaluationRow.model == model)
        if settings_hash is not None:
            query = query.where(EvaluationRow.settings_hash == settings_hash)
        if device_hash is not None:
            query = query.where(EvaluationRow.device_hash == device_hash)
        with Session(self.engine) as session:
            return [_stored(row) for row in session.scalars(query)]

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

    def search_runs(self) -> list[StoredSearchRun]:
        """Every logged search and sweep, newest first."""
        with Session(self.engine) as session:
            runs = session.scalars(select(SearchRunRow).order_by(SearchRunRow.started_at.desc()))
            return [StoredSearchRun(id=r.id, model=r.model, request=r.request, result=r.result,
                                    evaluations=len(r.evaluations), finished=r.finished_at is not None) for r in runs]

    def put_costs(self, model_hash: str, settings_hash: str, device_hash: str, table: dict[str, Any]) -> None:
        with Session(self.engine) as session, session.begin():
            session.execute(self._costs_statement(model_hash, settings_hash, device_hash, table))

    def _costs_statement(self, model_hash: str, settings_hash: str, device_hash: str, table: dict[str, Any]) -> Any:
        statement = self._insert(CostTableRow).values(model_hash=model_hash, settings_hash=settings_hash,
                                                device_hash=device_hash, table=table)
        return statement.on_conflict_do_update(
            index_elements=["model_hash", "settings_hash", "device_hash"], set_={"table": table})

    def get_costs(self, model_hash: str, settings_hash: str, device_hash: str) -> dict[str, Any] | None:
        query = select(CostTableRow.table).where(
            CostTableRow.model_hash == model_hash, CostTableRow.settings_hash == settings_hash,
            CostTableRow.device_hash == device_hash)
        with Session(self.engine) as session:
            return session.scalar(query)

    # --- moving a cache between machines (transfer.py checks what comes in) ------------------
    def export(self, path: str | os.PathLike[str]) -> int:
        """Everything to ``path`` (see ``export_all``); returns how many evaluations."""
        return self.export_all(path).evaluations

    def export_all(self, path: str | os.PathLike[str]) -> Moved:
        """Every evaluation (with its image), blind answer, search run and cost table, to one JSON file."""
        with Session(self.engine) as session:
            evaluations: list[dict[str, Any]] = []
            place: dict[int, int] = {}
            for row in session.scalars(select(EvaluationRow).order_by(EvaluationRow.id)):
                png = self.image(row.image_sha256)
                if png is not None:
                    place[row.id] = len(evaluations)
                    evaluations.append({**_stored(row).to_dict(), "png_base64": base64.b64encode(png).decode()})
            answers = [{"evaluation": place[a.evaluation_id], "answer": a.answer, "session": a.session,
                        "created_at": a.created_at.isoformat()}
                       for a in session.scalars(select(BlindAnswerRow).order_by(BlindAnswerRow.id))
                       if a.evaluation_id in place]
            runs = [{"model": r.model, "request": r.request, "result": r.result,
                     "started_at": r.started_at.isoformat(),
                     "finished_at": r.finished_at.isoformat() if r.finished_at else None,
                     "evaluations": sorted(place[link.evaluation_id] for link in r.evaluations
                                           if link.evaluation_id in place)}
                    for r in session.scalars(select(SearchRunRow).order_by(SearchRunRow.id))]
            costs = [{"model_hash": c.model_hash, "settings_hash": c.settings_hash, "device_hash": c.device_hash,
                      "table": c.table} for c in session.scalars(select(CostTableRow).order_by(CostTableRow.id))]
        payload = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "evaluations": evaluations,
                   "blind_answers": answers, "search_runs": runs, "cost_tables": costs}
        write_atomically(Path(path), json.dumps(payload).encode(), durable=True)
        return Moved(len(evaluations), len(answers), len(runs), len(costs))

    def import_(self, path: str | os.PathLike[str], replace: bool = False) -> int:
        """Everything new in an export (see ``import_all``); returns how many evaluations were stored."""
        return self.import_all(path, replace).evaluations

    def import_all(self, path: str | os.PathLike[str], replace: bool = False) -> Moved:
        """Validate the whole export file, then store what is new of it in one transaction; says how much of each
        part was stored. An evaluation or cost table stored the same is passed over; one that differs from the
        stored one is refused (nothing is written) unless ``replace``; an answer or a run already here (the same
        one, by its content and time) is not added twice, so importing a file again stores nothing."""
        export = parse_export_file(Path(path))
        new = self._new_evaluations(export.evaluations, replace, path)
        costs = self._new_costs(export.cost_tables, replace, path)
        for entry in new:
            self._write_image_file(entry.record.png)
        with Session(self.engine) as session, session.begin():  # all of it, or (on any error) none
            for entry in new:
                self._put_in(session, entry.record, entry.created_at)
            ids = [session.scalar(_key_query(e.record.key).with_only_columns(EvaluationRow.id))
                   for e in export.evaluations]
            answers = add_answers(session, export.blind_answers, ids)
            runs = add_runs(session, export.search_runs, ids)
            for c in costs:
                session.execute(self._costs_statement(c.model_hash, c.settings_hash, c.device_hash, c.table))
        return Moved(len(new), answers, runs, len(costs))

    def _new_evaluations(self, entries: list[Imported], replace: bool, path: Any) -> list[Imported]:
        new, differing = [], []
        for entry in entries:
            stored = self.get(entry.record.key)
            if stored is None or (replace and not same_record(stored, entry.record)):
                new.append(entry)
            elif not same_record(stored, entry.record):
                differing.append(entry.record)
        if differing:
            first = differing[0].key
            raise CacheError(literal(f"{len(differing)} entries of {path} differ from evaluations already stored (the "
                                     f"first: {first.model} {first.schedule} seed {first.settings.get('seed')})")
                             + "; nothing was imported: pass {replace} to overwrite them", field="replace")
        return new

    def _new_costs(self, tables: list[ImportedCosts], replace: bool, path: Any) -> list[ImportedCosts]:
        new, differing = [], 0
        for c in tables:
            stored = self.get_costs(c.model_hash, c.settings_hash, c.device_hash)
            if stored is None or (replace and stored != c.table):
                new.append(c)
            elif stored != c.table:
                differing += 1
        if differing:
            raise CacheError(literal(f"{differing} cost tables of {path} differ from ones already stored") +
                             "; nothing was imported: pass {replace} to overwrite them", field="replace")
        return new

    # --- the blind test -----------------------------------------------------------------------
    def record_blind_answer(self, evaluation_id: int, answer: str, session: str | None = None) -> None:
        """One answer (``right``, ``wrong`` or ``unsure``); ``session``: a tag of who answered, never an id."""
        with Session(self.engine) as session_, session_.begin():
            session_.add(BlindAnswerRow(evaluation_id=evaluation_id, answer=answer, session=session))

    def blind_tallies(self, evaluation_ids: Sequence[int]) -> list[BlindTally]:
        """The answers given for each of ``evaluation_ids`` that has any, beside its scores, and from how many
        sessions."""
        wanted = BlindAnswerRow.evaluation_id.in_(list(evaluation_ids))
        counts = (select(BlindAnswerRow.evaluation_id, BlindAnswerRow.answer, func.count()).where(wanted)
                  .group_by(BlindAnswerRow.evaluation_id, BlindAnswerRow.answer))
        sessions = (select(BlindAnswerRow.evaluation_id, func.count(distinct(BlindAnswerRow.session))).where(wanted)
                    .group_by(BlindAnswerRow.evaluation_id))
        with Session(self.engine) as session:
            found: dict[int, dict[str, int]] = {}
            for evaluation_id, answer, count in session.execute(counts):
                found.setdefault(evaluation_id, {})[answer] = count
            by_session = dict(session.execute(sessions).tuples().all())
            rows = session.scalars(select(EvaluationRow).where(EvaluationRow.id.in_(list(found))))
            return [BlindTally(row.id, row.schedule, row.settings.get("prompt"), row.settings.get("seed"), row.ssim,
                               row.lpips, found[row.id].get("right", 0), found[row.id].get("wrong", 0),
                               found[row.id].get("unsure", 0), int(by_session.get(row.id, 0)))
                    for row in rows]

    # --- internals ------------------------------------------------------------------------
    def _write_image_file(self, png: bytes) -> None:
        """A file-backed cache's image file (a database-backed one keeps its images in its transaction)."""
        if self.images is None:
            return
        target = self.image_path(hashlib.sha256(png).hexdigest())
        if not target.exists():
            write_atomically(target, png, durable=True)

    def image(self, sha: str) -> bytes | None:
        """A stored image's PNG bytes by its SHA-256 (None when it is gone)."""
        if self.images is None:
            with Session(self.engine) as session:
                return session.scalar(select(ImageBlob.png).where(ImageBlob.sha256 == sha))
        try:
            return self.image_path(sha).read_bytes()
        except OSError:
            return None


def _key_query(key: EvalKey) -> Any:
    return select(EvaluationRow).where(
        EvaluationRow.model == key.model, EvaluationRow.model_hash == key.model_hash,
        EvaluationRow.settings_hash == key.settings_hash, EvaluationRow.schedule_hash == key.schedule_hash,
        EvaluationRow.device_hash == key.device_hash)

def _to_record(row: EvaluationRow, key: EvalKey, png: bytes) -> EvalRecord:
    return EvalRecord(key=key, png=png, ssim=row.ssim, psnr=row.psnr if row.psnr is not None else float("inf"),
                      lpips=row.lpips, lpips_note=row.lpips_note, measured_seconds=row.measured_seconds,
                      predicted_seconds=row.predicted_seconds, steps_run=list(row.steps_run),
                      simulated=list(row.simulated), peak_bytes=row.peak_bytes,
                      memory=MemoryFigures.from_dict(row.memory, row.peak_bytes),
                      reference_seconds=row.reference_seconds)


def _stored(row: EvaluationRow) -> StoredEvaluation:
    return StoredEvaluation(
        id=row.id, model=row.model, model_hash=row.model_hash, settings=row.settings,
        settings_hash=row.settings_hash, schedule=row.schedule, schedule_hash=row.schedule_hash, device=row.device,
        device_hash=row.device_hash, image_sha256=row.image_sha256, ssim=row.ssim, psnr=row.psnr, lpips=row.lpips,
        lpips_note=row.lpips_note, measured_seconds=row.measured_seconds, predicted_seconds=row.predicted_seconds,
        steps_run=list(row.steps_run), simulated=list(row.simulated), created_at=row.created_at.isoformat(),
        peak_bytes=row.peak_bytes, memory=MemoryFigures.from_dict(row.memory, row.peak_bytes),
        reference_seconds=row.reference_seconds)
