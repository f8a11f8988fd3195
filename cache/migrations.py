"""The cache's schema on disk: created whole in one transaction, or brought up from an earlier version in place.

Databases written by an earlier tmpdiff stay readable: each version step adds what the new one needs (nothing is
dropped or rewritten), under the same lock that guards creation, so processes opening the same database at once
migrate it once.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, insert, inspect, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError, OperationalError

from tmpdiff.errors import CacheWarning, literal

from .connection import CacheError
from .schema import SCHEMA_VERSION, Base, Meta

__all__ = ["ensure_schema"]

SCHEMA_LOCK_KEY = 0x746D7064  # "tmpd": the PostgreSQL advisory lock taken while the schema is created or migrated


def _to_2(connection: Connection) -> None:
    """Version 2: each evaluation's memory (peak bytes, and the placement plan), and the blind test's answers."""
    connection.execute(text("ALTER TABLE evaluations ADD COLUMN peak_bytes BIGINT"))
    connection.execute(text("ALTER TABLE evaluations ADD COLUMN memory JSON"))
    Base.metadata.create_all(connection, checkfirst=True)


def _to_3(connection: Connection) -> None:
    """Version 3: the reference's seconds timed beside each image, and which session gave each blind answer."""
    connection.execute(text("ALTER TABLE evaluations ADD COLUMN reference_seconds FLOAT"))
    connection.execute(text("ALTER TABLE blind_answers ADD COLUMN session VARCHAR(32)"))


STEPS: dict[int, Callable[[Connection], None]] = {1: _to_2, 2: _to_3}  # from version N to N + 1
ADDED = {2: "each image's memory and the blind test's answers",
         3: "the reference's seconds timed beside each image and each blind answer's session"}


def ensure_schema(engine: Engine, where: str, read_only: bool = False) -> None:
    """The schema of this tmpdiff in the database at ``where``: created in a new one, migrated in place in one of
    an earlier version; a ``CacheError`` for one this tmpdiff cannot use."""
    kind = "SQLite database" if engine.dialect.name == "sqlite" else "database"
    try:
        tables = set(inspect(engine).get_table_names())
        if not tables:
            _in_lock(engine, _create)
            return
        with engine.connect() as connection:
            found = _version(connection) if "meta" in tables else None
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0]
        raise CacheError(literal(f"cannot reach the {kind} {where} ({reason})") + ": check {db}") from None
    except DatabaseError as exc:
        raise CacheError(literal(f"{where} is not a usable {kind} ({exc.orig})") + ": pass another {db}") from None
    if found == SCHEMA_VERSION:
        return
    if found is not None and found > SCHEMA_VERSION:  # written by a newer tmpdiff (a fleet upgraded before us)
        raise CacheError(literal(f"{where} holds a cache of schema {found}, written by a newer tmpdiff (this one "
                                 f"reads schema {SCHEMA_VERSION})") + ": upgrade tmpdiff on this machine "
                         "(pip install -U tmpdiff), or pass another {db}")
    if found is None or found not in STEPS or read_only:
        why = "open read-only: it cannot be migrated" if read_only and found in STEPS else "pass another {db} " \
            "or move that database away"
        raise CacheError(literal(f"{where} holds a database of another schema (version {found or 'none'}, tmpdiff "
                                 f"needs {SCHEMA_VERSION})") + f": {why}")
    try:
        found = _in_lock(engine, _migrate)
    except (OperationalError, DatabaseError) as exc:  # a read-only file or role, a database gone away: in words
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise CacheError(literal(f"{where} holds a cache of schema {found} that could not be brought to schema "
                                 f"{SCHEMA_VERSION} ({reason})") + ": give this tmpdiff write access to it once, "
                         "or pass another {db}") from None
    if found is None or found >= SCHEMA_VERSION:  # another process did it while this one waited for the lock
        return
    added = "; ".join(ADDED[v] for v in range(found + 1, SCHEMA_VERSION + 1))
    warnings.warn(f"the cache {where} was brought from schema {found} to {SCHEMA_VERSION} (added: {added}); a "
                  f"tmpdiff that reads schema {found} can no longer open it, so upgrade every machine that shares it",
                  CacheWarning, stacklevel=3)


def _version(connection: Connection) -> int | None:
    value = connection.scalar(select(Meta.value).where(Meta.key == "schema_version"))
    return int(value) if value is not None and str(value).isdigit() else None


def _in_lock(engine: Engine, work: Callable[[Connection], Any]) -> Any:
    """``work`` in one transaction that one process at a time holds (SQLite: BEGIN IMMEDIATE; PostgreSQL: an
    advisory lock held to the transaction's end); returns what it returns."""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        return work(connection)


def _create(connection: Connection) -> None:
    """Tables and the version row together: another process opening the new database at the same time (the
    processes of a ``--parallel`` launch, Ray actors) sees either no table or the whole schema."""
    Base.metadata.create_all(connection, checkfirst=True)
    if _version(connection) is None:
        connection.execute(insert(Meta).values(key="schema_version", value=str(SCHEMA_VERSION)))


def _migrate(connection: Connection) -> int | None:
    """Each step from the stored version to this one (read again under the lock: another process may have done
    them); returns the version found under the lock."""
    found = _version(connection)
    version = found
    while version is not None and version < SCHEMA_VERSION:
        STEPS[version](connection)
        version += 1
    connection.execute(update(Meta).where(Meta.key == "schema_version").values(value=str(SCHEMA_VERSION)))
    return found
