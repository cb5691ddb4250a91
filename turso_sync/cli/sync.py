"""Push the pending local changes, then pull the primary's new commits.

  turso-sync sync notes.db

The library twin is ``conn.sync()``; ``conn.replica.sync()`` returns the ``SyncResult``
printed here.  When the primary refuses a pushed change, sync pulls (the
rebase settles the conflict under --conflict and journals it) and pushes again.
"""

from __future__ import annotations

import argparse
import contextlib
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
    with contextlib.closing(open_replica(args, args.path, progress=meter)) as conn:
        try:
            result = conn.replica.sync()
        finally:
            if meter is not None:
                meter.finish()
    if not args.quiet:
        news = "pulled new commits" if result.changed else "nothing new from the primary"
        print(
            f"synced {args.path}: {'pushed pending changes, ' if result.pushed else ''}{news}; "
            f"revision {result.revision}, {result.pending_changes} pending"
        )
        if result.new_conflicts:
            print(f"{len(result.new_conflicts)} new conflict(s): see `turso-sync conflicts {args.path}`")
    return 0
