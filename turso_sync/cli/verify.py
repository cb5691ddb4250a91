"""Check the replica at PATH: its integrity, and whether it still has the primary's latest revision.

  turso-sync verify notes.db [--offline]

The library twins: ``conn.execute("PRAGMA integrity_check")``, then ``conn.pull(0)``, which
returns False when the primary has nothing newer than the replica's synced revision (up to
date) and otherwise applies what was missing (the replica was behind; it is up to date after).
Exit status 0 when the replica is intact and was compared with the primary, 7 when the
integrity check fails, 3 (4 for a refused token) when the primary could not be asked; with
--offline only the local check runs.
"""

from __future__ import annotations

import argparse

from .. import errors
from .exit_codes import ExitCode
from .replica_args import add_credential_arguments, add_path_argument, add_sync_arguments, open_replica

HELP = "Check the replica's integrity and whether it has the primary's latest revision."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``verify``."""
    add_path_argument(parser)
    parser.add_argument("--offline", action="store_true", help="check the local replica only; no network")
    add_credential_arguments(parser)
    add_sync_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Integrity first (a damaged replica is not compared), then the revision."""
    conn = open_replica(args, args.path)
    try:
        problems = [str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall()]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        if problems != ["ok"]:
            print(f"integrity: FAILED ({len(problems)} problem(s)); first: {problems[0]}")
            return ExitCode.VERIFY_FAILED
        print(f"integrity: ok ({pages} pages)")
        before = conn.stats()
        if before.pending_changes:
            print(f"pending:   {before.pending_changes} local change(s) not pushed yet")
        if args.offline:
            print(f"revision:  {before.revision or '(never pulled)'} (not compared with the primary: --offline)")
            return ExitCode.OK
        try:
            behind = conn.pull(long_poll_timeout_ms=0)
        except errors.SyncError:
            print(f"revision:  {before.revision} (could not ask the primary; see below)")
            raise
        revision = conn.stats().revision
        if behind:
            print(
                f"revision:  was behind the primary (had {before.revision}); pulled revision {revision}, now up to date"
            )
        else:
            print(f"revision:  up to date with the primary (revision {revision})")
    finally:
        conn.close()
    return ExitCode.OK
