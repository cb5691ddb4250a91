"""Bootstrap a new local replica of the database at URL into PATH.

  turso-sync clone http://127.0.0.1:8080/db/notes notes.db --encryption-key-file notes.key

The library twin is ``turso_sync.connect(PATH, URL, auth_token=..., encryption_key=...)``.
PATH must not exist; the URL is saved beside it (PATH-sync, no secrets), so later commands
need only PATH.  With a key every page is encrypted at rest; the primary's pages must
reserve 28 bytes (``turso-sync serve`` creates its databases that way).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from .exit_codes import CommandError
from .progress import ProgressMeter, human_bytes
from .replica_args import add_credential_arguments, add_quiet_argument, add_sync_arguments, open_replica

HELP = "Bootstrap a new local replica from the primary at URL."

#: files a replica keeps beside PATH; a failed clone removes the ones it created
_REPLICA_SUFFIXES = ("", "-wal", "-shm", "-frames", "-sync", "-sync.tmp", "-sync.lock", ".bootstrap")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``clone``."""
    parser.add_argument("url", metavar="URL", help="the primary's database URL (http://, https://, libsql://)")
    parser.add_argument("path", metavar="PATH", help="where to create the replica (must not exist)")
    add_credential_arguments(parser)
    add_sync_arguments(parser)
    add_quiet_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Clone, or remove everything a failed clone left behind."""
    path = os.path.realpath(args.path)
    present = [path + s for s in _REPLICA_SUFFIXES if os.path.exists(path + s)]
    if os.path.exists(path):
        raise CommandError(f"{args.path} already exists; clone into a new path")
    meter = ProgressMeter("clone", sys.stderr) if not args.quiet else None
    try:
        conn = open_replica(args, path, remote_url=args.url, progress=meter)
    except BaseException:
        for suffix in _REPLICA_SUFFIXES:
            if path + suffix not in present:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path + suffix)
        raise
    finally:
        if meter is not None:
            meter.finish()
    try:
        stats = conn.stats()
        pages = os.path.getsize(path) // 4096
        encrypted = "encrypted" if conn.encrypted else "not encrypted"
    finally:
        conn.close()
    if not args.quiet:
        print(
            f"cloned {args.url} into {args.path}: revision {stats.revision}, {pages} pages, "
            f"{human_bytes(stats.network_received_bytes)} received, {encrypted}",
            file=sys.stderr,
        )
    return 0
