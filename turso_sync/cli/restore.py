"""Write a database of the object store as it was at a revision or a time, to a new SQLite file.

  turso-sync restore --store s3://BUCKET/PREFIX [--s3-endpoint URL] [--s3-region R]
                     --db NAME --at REVISION|TIMESTAMP --to FILE

``--at`` is a revision number (what replicas and ``serve`` call revisions) or a UTC time
(ISO 8601, ``2026-12-02T00:30:00Z``; a time without a zone is taken as UTC): the newest
revision that was durable in the store at that time.  The file is the database byte for byte
as the primary kept it (still encrypted, with the same key, if it had an at-rest key); FILE
must not exist.  Credentials come from the standard AWS environment variables and files.

The library twins: ``objectstore.restore_to_file(client, DatabaseKeys(prefix, NAME), FILE, at)``
and ``objectstore.revision_at_time(client, keys, unix_time)``.

Exit status 0 when the file was written, 2 for bad options, an existing FILE or a revision
the store does not hold, 3 when the store cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os

from .exit_codes import CommandError, ExitCode

HELP = "Write a database of the object store (serve --store) as it was at a revision or time to a new file."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``restore``."""
    parser.add_argument("--store", required=True, metavar="s3://BUCKET/PREFIX", help="the store serve --store uses")
    parser.add_argument("--s3-endpoint", metavar="URL", help="S3 endpoint of --store (default: AWS)")
    parser.add_argument("--s3-region", metavar="R", help="S3 region of --store (default us-east-1)")
    parser.add_argument("--db", default="default", metavar="NAME", help="the database (default: default)")
    parser.add_argument(
        "--at",
        required=True,
        metavar="REVISION|TIMESTAMP",
        help="a revision number, or a UTC time such as 2026-12-02T00:30:00Z (the newest revision stored by then)",
    )
    parser.add_argument("--to", required=True, metavar="FILE", help="the new SQLite file to write (must not exist)")


def parse_at(text: str) -> int | float:
    """A revision (int) or a Unix time (float) from ``--at``; CommandError naming the value."""
    if text.isascii() and text.isdigit():
        return int(text)
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(
            f"--at {text!r} is neither a revision number nor an ISO 8601 time (for example 2026-12-02T00:30:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def run(args: argparse.Namespace) -> int:
    """Restore ``--db`` at ``--at`` into ``--to``."""
    at = parse_at(args.at)
    if os.path.lexists(args.to):
        raise CommandError(f"--to {args.to} exists; restore writes a new file only: give a path that does not exist")
    revision = asyncio.run(_restore(args, at))
    print(f"restored database '{args.db}' at revision {revision} to {args.to}")
    return ExitCode.OK


async def _restore(args: argparse.Namespace, at: int | float) -> int:
    from ..primary.objectstore.errors import RevisionNotStored, StoreUnavailable
    from ..primary.objectstore.layout import DatabaseKeys
    from ..primary.objectstore.restore import restore_to_file, revision_at_time

    try:
        from ..primary.objectstore.s3 import S3Client, S3Location
    except ImportError:
        raise CommandError("restore needs the S3 client library (aiobotocore): pip install 'turso-sync[s3]'") from None
    try:
        location = S3Location.parse(args.store, args.s3_endpoint, args.s3_region)
        keys = DatabaseKeys(location.prefix, args.db)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    client = await S3Client.open(location)
    try:
        revision = at if isinstance(at, int) else await revision_at_time(client, keys, at)
        try:
            return await restore_to_file(client, keys, args.to, revision)
        except FileExistsError:
            raise CommandError(f"--to {args.to} exists; restore writes a new file only") from None
    except RevisionNotStored as exc:
        raise CommandError(str(exc)) from None
    except StoreUnavailable as exc:
        raise CommandError(str(exc), ExitCode.NETWORK) from None
    finally:
        await client.close()
