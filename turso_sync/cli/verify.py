"""Check the replica at PATH: its files, its integrity, and whether it has the primary's latest revision.

  turso-sync verify notes.db [--offline] [--repair [--remote URL]]

First the replica's files are checked against each other (``ReplicaFiles.check``: a database
file emptied, truncated or replaced, a frame log, ``-sync`` or revert file missing or damaged);
then SQLite's integrity check; then the revision.  The library twins:
``ReplicaFiles(path).check(deep=True)``, ``conn.execute("PRAGMA integrity_check")``, then
``conn.pull(0)``, which returns False when the primary has nothing newer (up to date) and
otherwise applies what was missing.

``--repair`` re-clones a damaged replica from the primary (``ReplicaFiles.repair``): when the
database file is readable its pending changes and conflict journal are carried over and replayed
on top of the remote state, so no pending write is lost; when it is not, it says what is lost.
Damaged files are kept beside it with a ``.damaged`` suffix.  ``--remote`` gives the URL when the
``-sync`` file itself is lost.

Exit status 0 when the replica is intact (or was repaired) and was compared with the primary,
7 when its files are damaged or the integrity check fails, 3 (4 for a refused token) when the
primary could not be asked; with --offline only the local checks run.
"""

from __future__ import annotations

import argparse
import os
import re

from .. import errors
from ..local.capture import is_replica
from ..local.connection import Connection
from ..sync.files import Damage, ReplicaFiles, lost_state_remedy, remedy
from .exit_codes import CommandError, ExitCode, damage_text
from .replica_args import (
    add_credential_arguments,
    add_path_argument,
    add_sync_arguments,
    auth_token,
    check_key_fits,
    check_remote_url,
    encryption,
    open_replica,
)

HELP = "Check the replica's files and integrity, and whether it has the primary's latest revision."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``verify``."""
    add_path_argument(parser)
    parser.add_argument("--offline", action="store_true", help="check the local replica only; no network")
    parser.add_argument(
        "--repair",
        action="store_true",
        help="re-clone a damaged replica from the primary, keeping its pending changes when readable",
    )
    parser.add_argument("--remote", metavar="URL", help="with --repair: the primary's URL, when PATH-sync is lost")
    add_credential_arguments(parser)
    add_sync_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Files first, integrity next (a damaged replica is not compared), then the revision.

    Damage of any kind exits 7 with the remedy, never 1 (an error) or 5 (a key): once the key
    opened the replica, a page that fails authentication was changed on disk.
    """
    if args.repair and args.offline:
        raise CommandError("--repair re-clones from the primary; it cannot run with --offline")
    if args.remote is not None:
        check_remote_url(args.remote, "--remote")
    files = ReplicaFiles(args.path)
    key, cipher = encryption(args)
    if os.path.exists(files.path):
        check_key_fits(args, args.path, key, cipher=cipher)
    if files.is_replica():
        damages = files.check(key, cipher, deep=True)
    elif not os.path.exists(files.path):
        raise CommandError(f"{args.path} does not exist; create it with `turso-sync clone URL {args.path}`")
    elif _lost_its_state(files, key, cipher):
        damages = [Damage(files.state_file, "the sync state is missing, but the database is a replica", False)]
    else:
        raise CommandError(f"{args.path} is not a replica (no {os.path.basename(files.path)}-sync beside it)")
    if damages:
        print(f"files:     DAMAGED ({len(damages)} problem(s))")
        for damage in damages:
            print(f"  {damage.line()}")
        url_lost = any(d.file == files.state_file for d in damages)
        if not args.repair:
            print(f"remedy:    {lost_state_remedy(args.path) if url_lost else remedy(args.path)}")
            return ExitCode.VERIFY_FAILED
        if url_lost and args.remote is None:
            raise CommandError(
                f"{args.path}-sync cannot be read, so the primary's URL is unknown: "
                f"run `turso-sync verify --repair {args.path} --remote URL`"
            )
        report = files.repair(encryption_key=key, cipher=cipher, auth_token=auth_token(args), remote_url=args.remote)
        print("repair:    re-cloned from the primary")
        for line in report.lines:
            print(f"  {line}")
        if report.set_aside:
            print(f"  damaged files kept: {', '.join(os.path.basename(n) for n in report.set_aside)}")
    else:
        print(f"files:     ok ({len(files.existing())} files)")
    conn = open_replica(args, args.path)
    try:
        try:
            problems = integrity_problems(conn.execute("PRAGMA integrity_check").fetchall())
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
        except errors.SyncError:
            raise  # a partial replica fetching a page: the primary, not damage
        except errors.DatabaseError as exc:
            # the key opened page 1, so a page that fails authentication (or that SQLite cannot
            # parse) was changed on disk: damage, not a key problem
            problems = [damage_text(exc, args.path)]
        if problems:
            shown = problems[:_SHOWN] + ([f"and {len(problems) - _SHOWN} more"] if len(problems) > _SHOWN else [])
            print(f"integrity: FAILED ({'; '.join(shown)})")
            print(f"remedy:    {remedy(args.path)}")
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


_SHOWN = 5  # problems named on the integrity line; the rest are counted

_NEVER_USED = re.compile(r"^Page (\d+): never used$")


def integrity_problems(rows: list[tuple[object, ...]]) -> list[str]:
    """SQLite's ``integrity_check`` answer as a short list (empty when it says ``ok``).

    The answer may be one row per problem or one row holding several lines; the
    ``*** in database main ***`` banner is dropped, and the "Page N: never used" lines (one per
    page, often about a hundred) become one: ``N pages never used: 3..40, 52``.
    """
    lines = [line.strip() for row in rows for line in str(row[0]).splitlines()]
    lines = [line for line in lines if line and line != "ok" and not line.startswith("*** in database")]
    unused = [int(m.group(1)) for m in map(_NEVER_USED.match, lines) if m]
    problems = [line for line in lines if not _NEVER_USED.match(line)]
    if unused:
        problems.append(f"{len(unused)} page(s) never used: {_ranges(sorted(unused))}")
    return problems


def _ranges(numbers: list[int]) -> str:
    """``1..4, 7, 9..10`` for [1, 2, 3, 4, 7, 9, 10]."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(f"{a}..{b}" if b > a else str(a) for a, b in spans)


def _lost_its_state(files: ReplicaFiles, key: str | None, cipher: str) -> bool:
    """True when the database at PATH holds the sync tables although PATH-sync is gone."""
    conn = Connection(files.path, encryption_key=key, cipher=cipher, record_frames=False)
    try:
        return is_replica(conn.apsw_connection)
    finally:
        conn.close()
