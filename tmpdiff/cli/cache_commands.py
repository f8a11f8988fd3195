"""``tmpdiff cache export|import``: evaluations moved between machines (no torch, no pipeline)."""

from __future__ import annotations

import argparse
import json

from tmpdiff.cli.entry import check_outputs
from tmpdiff.frontends.flags import open_cache

__all__ = ["cache_command"]


def cache_command(args: argparse.Namespace) -> int:
    check_outputs(args)
    store = open_cache(args.db, cache_dir=args.cache_dir)
    if args.cache_command == "export":
        count = store.export(args.file)
        print(json.dumps({"exported": count, "file": str(args.file)}))
    else:
        if not args.file.is_file():
            raise ValueError(f"no such file: {str(args.file)!r}")
        count = store.import_(args.file, replace=args.replace)
        print(json.dumps({"imported": count, "db": store.where}))
    return 0

