"""Show the replica's conflict journal: every conflict a pull met, and how it was settled.

  turso-sync conflicts notes.db [--json]

The library twin is ``conn.conflicts()``.  Each entry names the table and key, the kind
(update/update, update/delete, delete/update, insert/insert, constraint, foreign_key, schema),
the resolution, and the base, local, remote and resulting rows.  No network.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any

from .replica_args import add_credential_arguments, add_path_argument, open_replica
from .rows import jsonable

HELP = "Show the conflict journal: every conflict met so far and how it was settled."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``conflicts``."""
    add_path_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON array of conflicts")
    add_credential_arguments(parser)


def _row(row: dict[str, Any] | None) -> Any:
    return None if row is None else {k: jsonable(v) for k, v in row.items()}


def _brief(row: dict[str, Any] | None) -> str:
    if row is None:
        return "(none)"
    return ", ".join(f"{k}={v!r}" for k, v in row.items())


def run(args: argparse.Namespace) -> int:
    """Print every journaled conflict, oldest first."""
    conn = open_replica(args, args.path)
    try:
        items = conn.conflicts()
    finally:
        conn.close()
    if args.json:
        out = []
        for c in items:
            entry = dataclasses.asdict(c)
            for side in ("pk", "base", "local", "remote", "result"):
                entry[side] = _row(entry[side])
            out.append(entry)
        print(json.dumps(out, indent=1))
        return 0
    if not items:
        print(f"no conflicts in {args.path}")
        return 0
    for c in items:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.at)) if isinstance(c.at, int | float) else c.at
        print(f"#{c.id} {when} revision {c.revision}: {c.kind} on {c.table} {_brief(c.pk)} -> {c.resolution}")
        for side in ("base", "local", "remote", "result"):
            print(f"    {side:<6} {_brief(getattr(c, side))}")
    sys.stdout.flush()
    return 0
