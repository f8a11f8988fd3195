"""``tmpdiff cache export|import``: a cache moved between machines (no torch, no pipeline): evaluations with their
images, blind answers, search runs and cost tables."""

from __future__ import annotations

import argparse
import json

from tmpdiff.cli.outcome import check_outputs
from tmpdiff.frontends.flags import open_store

__all__ = ["cache_command"]


def cache_command(args: argparse.Namespace) -> int:
    check_outputs(args)
    store = open_store(args.db, cache_dir=args.cache_dir)
    if args.cache_command == "export":
        moved = store.export_all(args.file).to_dict()
        print(json.dumps({"exported": moved.pop("evaluations"), **moved, "file": str(args.file)}))
    else:
        if not args.file.is_file():
            raise ValueError(f"no such file: {str(args.file)!r}")
        moved = store.import_all(args.file, replace=args.replace).to_dict()
        print(json.dumps({"imported": moved.pop("evaluations"), **moved, "db": store.where}))
    return 0

