"""Push the pending local changes, then pull the primary's new commits.

  turso-sync sync notes.db

The library twin is ``conn.sync()``.  When the primary refuses a pushed change, sync pulls (the
rebase settles the conflict under --conflict and journals it) and pushes again.
"""

from __future__ import annotations

import argparse
import sys

from .progress import ProgressMeter
from .replica_args import (
    add_credential_arguments,
    add_path_argument,
    add_quiet_argument,
    add_sync_arguments,
    open_replica,
)

HELP = "Push pending local changes, then pull the primary's new commits."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``sync``."""
    add_path_argument(parser)
    add_credential_arguments(parser)
    add_sync_arguments(parser)
    add_quiet_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Sync once; print where the replica stands."""
    meter = ProgressMeter("sync", sys.stderr) if not args.quiet else None
    conn = open_replica(args, args.path, progress=meter)
    try:
        before = conn.stats()
        try:
            changed = conn.sync()
        finally:
            if meter is not None:
                meter.finish()
        after = conn.stats()
    finally:
        conn.close()
    if not args.quiet:
        pushed = after.pushes - before.pushes
        news = "pulled new commits" if changed else "nothing new from the primary"
        print(
            f"synced {args.path}: {'pushed pending changes, ' if pushed else ''}{news}; "
            f"revision {after.revision}, {after.pending_changes} pending"
        )
        if after.conflicts > before.conflicts:
            print(f"{after.conflicts - before.conflicts} new conflict(s): see `turso-sync conflicts {args.path}`")
    return 0
