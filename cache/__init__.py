"""Layer 8, the store (``cache/``, installed as ``tmpdiff.cache``): the SQLite or PostgreSQL cache of evaluated
schedules, the only package that imports SQLAlchemy. Imports measure and every layer before it."""

from .store import Cache, CacheError, Moved, default_db_path

__all__ = ["Cache", "CacheError", "Moved", "default_db_path"]
