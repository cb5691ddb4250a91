"""Send the replica's pending local changes to the primary, exactly once.

  turso-sync push notes.db

The library twin is ``conn.push()``; ``conn.replica.push()`` returns the ``PushResult``
printed here.  A push that meets a remote change it has not seen (or a
constraint the remote state breaks) pulls, lets ``--conflict`` settle it (journaled), and
pushes again, as ``sync`` does.  A change the primary still refuses after that stays pending
and the command exits 6.
"""

from __future__ import annotations

import argparse
import contextlib

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
    with contextlib.closing(open_replica(args, args.path)) as conn:
        result = conn.replica.push()
    if not args.quiet:
        print(f"pushed {result.pushed} transaction(s)" if result.pushed else "nothing to push")
        # a push that met remote changes it had not seen pulled, and the policy settled them
        if result.new_conflicts:
            print(f"{len(result.new_conflicts)} new conflict(s): see `turso-sync conflicts {args.path}`")
    return 0
