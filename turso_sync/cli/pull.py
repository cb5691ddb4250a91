"""Apply the primary's new commits to the replica at PATH.

  turso-sync pull notes.db [--long-poll-ms 5000]

The library twin is ``conn.pull(long_poll_timeout_ms)``; ``conn.replica.pull()`` returns the
``PullResult`` printed here.  Pending local changes are replayed
on top (conflicts are settled by --conflict and journaled: see `turso-sync conflicts`).
The whole pull is one atomic step: interrupted, the replica keeps its previous state.
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

HELP = "Pull the primary's new commits into the replica."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``pull``."""
    add_path_argument(parser)
    parser.add_argument(
        "--long-poll-ms",
        type=int,
        default=0,
        metavar="MS",
        help="when already up to date, wait up to MS milliseconds for a new commit (default 0)",
    )
    add_credential_arguments(parser)
    add_sync_arguments(parser)
    add_quiet_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Pull once; print the new revision."""
    meter = ProgressMeter("pull", sys.stderr) if not args.quiet else None
    with contextlib.closing(open_replica(args, args.path, progress=meter)) as conn:
        try:
            result = conn.replica.pull(long_poll_timeout_ms=max(0, args.long_poll_ms))
        finally:
            if meter is not None:
                meter.finish()
    if not args.quiet:
        state = "pulled: {} is now at" if result.changed else "already up to date: {} is at"
        print(f"{state.format(args.path)} revision {result.revision}")
        if result.pending_changes:
            print(f"{result.pending_changes} local change(s) still to push")
        if result.new_conflicts:
            print(f"{len(result.new_conflicts)} new conflict(s): see `turso-sync conflicts {args.path}`")
    return 0
