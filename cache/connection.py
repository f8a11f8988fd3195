"""Opening a cache database: an SQLite file (WAL, busy timeouts, read-only when its folder cannot be written) or a
PostgreSQL server by SQLAlchemy URL (connect and statement timeouts), and the error a cache that cannot be used
raises."""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError

from tmpdiff.errors import CacheWarning, FieldError, literal, shown

__all__ = ["CacheError", "default_db_path", "make_sqlite_engine", "refuse_foreign_file", "server_timeouts",
           "server_url", "unwritable"]

SQLITE_HEADER = b"SQLite format 3\x00"


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


def unwritable(exc: CacheError) -> bool:
    text = str(exc)
    return any(reason in text for reason in ("readonly database", "unable to open database file", "disk I/O error"))


def make_sqlite_engine(path: Path, read_only: bool = False) -> Engine:
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

    _guard_shared_memory(engine, path)

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        # Take the write lock up front: a deferred transaction that upgrades later can fail
        # with "database is locked" without waiting for the busy timeout.
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def _guard_shared_memory(engine: Engine, path: Path) -> None:
    """SQLite maps the WAL's ``-shm`` file into memory, and the kernel ends the process (SIGBUS) at the next touch
    of a mapped page the file no longer backs: one cut short under a running process (truncated by another program
    or a cleanup), or one made immutable (``chattr +i``: ext4 refuses writes through the mapping). Before each use,
    a file smaller than this process has seen is grown back to that size (zeros): the pages exist again, SQLite
    finds the index's checksums wrong and rebuilds it from the WAL, and the cache goes on (said once as a
    ``CacheWarning``). One that cannot be grown back, or is immutable, is cut loose: this process's mappings of it
    become private memory with the same bytes, so nothing it does later (closing included) can fault, and every
    later use of the cache is refused in words."""
    shm = Path(f"{path}-shm")
    seen = [0]
    lost: list[str] = []

    @event.listens_for(engine, "checkout")
    def _check(_dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if lost:
            raise CacheError(lost[0])
        try:
            size = shm.stat().st_size
        except OSError:  # removed (SQLite does, as its last connection closes): nothing mapped is cut short
            seen[0] = 0
            return
        if _unwritable_in_place(shm):
            lost.append(literal(f"{shm} is immutable or append-only (chattr +i or +a)") +
                        ": SQLite cannot share the cache through it, so this process stops using it; make the file "
                        "writable again (chattr -i -a) and restart with that {db}")
        elif size < seen[0]:
            try:
                os.truncate(shm, seen[0])
            except OSError as exc:
                lost.append(literal(f"{shm} was cut short under this process and cannot be restored "
                                    f"({exc.strerror})") + ": restart with a writable {db}")
            else:
                warnings.warn(f"{shm.name} was cut short while the cache was open; SQLite rebuilds it from the log",
                              CacheWarning, stacklevel=2)
                return
        if lost:
            _detach_mappings(shm)
            raise CacheError(lost[0])
        seen[0] = size


STATX_ATTR_IMMUTABLE, STATX_ATTR_APPEND = 0x10, 0x20


@functools.cache
def _statx() -> Any:
    """glibc's ``statx`` (2.28+, Linux), looked up once: every checkout of a cache connection asks it; None
    elsewhere."""
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).statx
    except (AttributeError, OSError):
        return None


def _unwritable_in_place(file: Path) -> bool:
    """Whether ``file`` carries an inode flag under which a write through a shared mapping faults (Linux's
    ``statx`` attributes). Asked by path, never by opening the file: closing any descriptor of a file drops every
    POSIX lock this process holds on it, and SQLite locks the ``-shm`` file so processes share it safely."""
    import ctypes

    statx = _statx()
    if statx is None:  # nothing to ask
        return False
    buffer = ctypes.create_string_buffer(256)
    at_fdcwd, basic_stats = -100, 0x7FF
    if statx(at_fdcwd, str(file).encode(), 0, basic_stats, buffer) != 0:
        return False
    attributes = int.from_bytes(buffer.raw[8:16], "little")
    return bool(attributes & (STATX_ATTR_IMMUTABLE | STATX_ATTR_APPEND))


def _detach_mappings(file: Path) -> None:
    """Replaces each of this process's mappings of ``file`` by private anonymous memory holding the bytes the file
    still has (zeros past its end), at the same addresses, so SQLite's pointers stay valid and never fault. The
    bytes are read through the mapping itself (only pages the file still backs), so the file is never opened."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    map_fixed = 0x10
    name = str(file.resolve())
    try:
        size = file.stat().st_size
    except OSError:
        size = 0
    with open("/proc/self/maps") as maps:
        lines = maps.readlines()
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[5].rstrip("\n").removesuffix(" (deleted)") != name:
            continue
        start, end = (int(part, 16) for part in fields[0].split("-"))
        backed = max(0, min(end - start, size - int(fields[2], 16)))
        data = ctypes.string_at(start, backed)
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | map_fixed
        if libc.mmap(start, end - start, mmap.PROT_READ | mmap.PROT_WRITE, flags, -1, 0) != start:
            raise OSError(ctypes.get_errno(), f"could not detach {file}")
        ctypes.memmove(start, data, len(data))


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


def server_url(location: str) -> Any:
    """The SQLAlchemy URL of a server database, or None for an SQLite file (a path or ``sqlite:///``)."""
    if "://" not in location or location.startswith("sqlite:///"):
        return None
    try:
        url = make_url(location)
        url.port  # noqa: B018 - a port that is not a number ("[::1") fails here, not at the first connect
    except (ArgumentError, ValueError):
        raise CacheError(f"{{db}} {literal(shown(location))} is neither a file path nor a database URL such as "
                         "postgresql+psycopg://user@host/db") from None
    if url.get_backend_name() != "postgresql":
        raise CacheError(f"{{db}} {literal(repr(url.render_as_string(hide_password=True)))}: tmpdiff caches in "
                         "SQLite (a path) or PostgreSQL (postgresql+psycopg://...)")
    return url


def refuse_foreign_file(path: Path) -> None:
    """Refuses, before anything opens, waits on or writes beside it, a path that is not an SQLite file or a new
    one: a folder, something not a regular file (a FIFO would hang the open, a device would be written beside),
    a file of another kind."""
    if path.is_dir():
        raise CacheError(f"{{db}} {literal(repr(str(path)))} is a folder: give a file path")
    if path.exists() and not path.is_file():
        raise CacheError(f"{{db}} {literal(repr(str(path)))} is not a regular file (a pipe, a device or a socket): "
                         "give the path of an SQLite file, or of a new one")
    if path.exists() and path.stat().st_size > 0:
        with path.open("rb") as handle:
            if handle.read(16) != SQLITE_HEADER:
                raise CacheError(literal(f"{path} is not a SQLite database") + ": pass another {db}")


# A server that accepts connections but never answers must not hang a command: PostgreSQL gets a connect
# and a statement timeout unless the URL sets its own (?connect_timeout=N&options=-c statement_timeout=N).
CONNECT_TIMEOUT_S = 10


STATEMENT_TIMEOUT_MS = 60_000


def server_timeouts(url: Any) -> dict[str, Any]:
    if not url.drivername.startswith("postgresql"):
        return {}
    args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        args["connect_timeout"] = CONNECT_TIMEOUT_S
    if "statement_timeout" not in str(url.query.get("options", "")):
        args["options"] = f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"
    return args

