"""Bootstrap a new local replica of the database at URL into PATH.

  turso-sync clone http://127.0.0.1:8080/db/notes notes.db --encryption-key-file notes.key

The library twin is ``turso_sync.connect(PATH, URL, auth_token=..., encryption_key=...)``;
``--partial`` / ``--query`` are ``partial=turso_sync.PartialSync(...)`` (docs/partial.md).
PATH must not exist; the URL is saved beside it (PATH-sync, no secrets), so later commands
need only PATH.  With a key every page is encrypted at rest; the primary's pages must
reserve 28 bytes (``turso-sync serve`` creates its databases that way).
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import errors
from ..page import PAGE_SIZE
from ..sync.partial import PartialSync
from .exit_codes import CommandError, in_cli_terms
from .progress import ProgressMeter, human_bytes
from .replica_args import (
    add_credential_arguments,
    add_quiet_argument,
    add_sync_arguments,
    check_remote_url,
    open_replica,
)

HELP = "Bootstrap a new local replica from the primary at URL."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``clone``."""
    parser.add_argument("url", metavar="URL", help="the primary's database URL (http://, https://, libsql://)")
    parser.add_argument("path", metavar="PATH", help="where to create the replica (must not exist)")
    add_credential_arguments(parser)
    add_sync_arguments(parser)
    add_quiet_argument(parser)
    partial = parser.add_argument_group(
        "partial replica", "bootstrap only part of the database; every other page is fetched on first read"
    )
    partial.add_argument("--partial", action="store_true", help="bootstrap a prefix (see --prefix-bytes)")
    partial.add_argument(
        "--prefix-bytes", type=int, default=256 * 1024, metavar="N", help="bytes of the prefix (default 262144)"
    )
    partial.add_argument("--query", metavar="SQL", help="bootstrap the pages this query reads (implies --partial)")
    partial.add_argument(
        "--segment-size", type=int, default=128 * 1024, metavar="N", help="bytes fetched per miss (default 131072)"
    )
    partial.add_argument("--no-prefetch", action="store_true", help="do not fetch B-tree children with a page")


def run(args: argparse.Namespace) -> int:
    """Clone; a failed clone leaves nothing behind (``turso_sync.connect`` removes what it created)."""
    check_remote_url(args.url)
    path = os.path.realpath(args.path)
    if os.path.exists(path):
        raise CommandError(f"{args.path} already exists; clone into a new path")
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise CommandError(f"the folder of {args.path} ({folder}) does not exist; create it first, then clone")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CommandError(f"cannot create files in {folder} (permission denied); clone into a folder you can write")
    partial = None
    if args.partial or args.query:
        try:
            partial = PartialSync(
                bootstrap="query" if args.query else "prefix",
                prefix_bytes=args.prefix_bytes,
                query=args.query,
                segment_size=args.segment_size,
                prefetch=not args.no_prefetch,
            )
        except errors.ProgrammingError as exc:  # refused before any network or file
            raise CommandError(in_cli_terms(str(exc))) from None
    meter = ProgressMeter("clone", sys.stderr) if not args.quiet else None
    try:
        conn = open_replica(args, path, remote_url=args.url, progress=meter, partial=partial)
    finally:
        if meter is not None:
            meter.finish()
    try:
        stats = conn.stats()
        pages = os.path.getsize(path) // PAGE_SIZE
        encrypted = "encrypted" if conn.encrypted else "not encrypted"
    finally:
        conn.close()
    if not args.quiet:
        held = f"{pages} pages"
        if stats.pages_total is not None:
            held = f"{stats.pages_present} of {stats.pages_total} pages local (partial)"
        print(
            f"cloned {args.url} into {args.path}: revision {stats.revision}, {held}, "
            f"{human_bytes(stats.network_received_bytes)} received, {encrypted}",
            file=sys.stderr,
        )
    return 0
