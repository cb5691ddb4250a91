"""Send the replica's pending local changes to the primary, exactly once.

  turso-sync push notes.db

The library twin is ``conn.push()``.  A change the primary refuses stays pending and the
command exits 6; `turso-sync sync` pulls first, settles the conflict and pushes again.
"""

from __future__ import annotations

import argparse

from .replica_args import (
    add_credential_arguments,
    add_path_argument,
    add_quiet_argument,
    add_sync_arguments,
    open_replica,
)

HELP = "Push the replica's pending local changes to the primary."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``push``."""
    add_path_argument(parser)
    add_credential_arguments(parser)
    add_sync_arguments(parser)
    add_quiet_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Push once; print how many transactions went."""
    conn = open_replica(args, args.path)
    try:
        pushed = conn.push()
    finally:
        conn.close()
    if not args.quiet:
        print(f"pushed {pushed} transaction(s)" if pushed else "nothing to push")
    return 0
