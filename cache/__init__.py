"""The evaluation cache: its code is `tmpdiff/cache/` (the only package that imports SQLAlchemy), installed
with tmpdiff as `tmpdiff.cache`; this name keeps the project's picture (engine, cache, ui) in the checkout."""

from tmpdiff.cache import Cache, CacheError, default_db_path

__all__ = ["Cache", "CacheError", "default_db_path"]
