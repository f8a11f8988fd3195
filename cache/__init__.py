"""The SQLite cache of evaluated schedules: the only package that imports SQLAlchemy."""

from .store import Cache, CacheError, Moved, default_db_path

__all__ = ["Cache", "CacheError", "Moved", "default_db_path"]
