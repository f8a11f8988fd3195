"""Files written whole or not at all: a reader never sees a partly written file, and a failed write leaves none."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["write_atomically"]


def write_atomically(path: Path, data: bytes, durable: bool = False) -> None:
    """Writes ``data`` under a temporary name beside ``path``, then renames it into place. ``durable``: flushed to
    disk before the rename, so that a crash cannot leave a renamed but empty file (the evaluation cache)."""
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            if durable:
                file.flush()
                os.fsync(file.fileno())
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
