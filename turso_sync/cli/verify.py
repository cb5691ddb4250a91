"""Check the replica at PATH: its files, encryption and integrity, and whether it has the primary's latest revision.

  turso-sync verify notes.db [--offline] [--json] [--repair [--remote URL]]

First the replica's files are checked against each other (``ReplicaFiles.check``: a database
file emptied, truncated or replaced, a frame log, ``-sync`` or revert file missing or damaged,
every page the frame log recorded last that differs from the file); then its encryption
(``ReplicaFiles.encryption_report``: the format, for the hardened format the key epochs in use
and a rotation under way, and every stored page image, in the database file, the WAL, the frame
log and the revert files, that fails authentication); then SQLite's integrity check; then the
revision.  The library twins: ``ReplicaFiles(path).check(deep=True)``,
``ReplicaFiles(path).encryption_report(key, cipher)``, ``conn.execute("PRAGMA integrity_check")``,
then ``conn.pull(0)``, which returns False when the primary has nothing newer (up to date) and
otherwise applies what was missing.  ``--json`` prints all of it as one JSON object instead.

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
import json
import os
import re
from typing import Any

from .. import errors
from ..local.capture import is_replica
from ..local.connection import Connection
from ..sync.files import EPOCH_PLACES, Damage, EncryptionReport, PageFailure, ReplicaFiles, lost_state_remedy, remedy
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
    parser.add_argument("--json", action="store_true", help="print the findings as one JSON object")
    add_credential_arguments(parser)
    add_sync_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Files first, encryption and integrity next (a damaged replica is not compared), then the revision.

    Damage of any kind exits 7 with the remedy, never 1 (an error) or 5 (a key): once the key
    opened the replica, a page that fails authentication was changed on disk.
    """
    if args.repair and args.offline:
        raise CommandError("--repair re-clones from the primary; it cannot run with --offline")
    if args.remote is not None:
        check_remote_url(args.remote, "--remote")
    out = _Findings(args.json, args.path)
    try:
        return _verify(args, out)
    finally:
        out.finish()


def _verify(args: argparse.Namespace, out: _Findings) -> int:
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
        out.files_damaged(damages, _format_only(files, key, cipher))
        url_lost = any(d.file == files.state_file for d in damages)
        if not args.repair:
            out.say("remedy", lost_state_remedy(args.path) if url_lost else remedy(args.path))
            return out.exit(ExitCode.VERIFY_FAILED)
        if url_lost and args.remote is None:
            raise CommandError(
                f"{args.path}-sync cannot be read, so the primary's URL is unknown: "
                f"run `turso-sync verify --repair {args.path} --remote URL`"
            )
        report = files.repair(encryption_key=key, cipher=cipher, auth_token=auth_token(args), remote_url=args.remote)
        out.repaired(report.lines, [os.path.basename(n) for n in report.set_aside])
    encryption_report = files.encryption_report(key, cipher)  # every stored page image authenticated
    if not damages:
        out.files_ok(len(files.existing()), encryption_report)
    out.epochs(encryption_report, args.path)
    conn = open_replica(args, args.path)
    try:
        failed = _failure_lines(encryption_report.failures, args.path)
        try:
            problems = integrity_problems(conn.execute("PRAGMA integrity_check").fetchall())
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
        except errors.SyncError:
            raise  # a partial replica fetching a page: the primary, not damage
        except errors.DatabaseError as exc:
            # the key opened page 1, so a page that fails authentication (or that SQLite cannot
            # parse) was changed on disk: damage, not a key problem.  The scan above named them.
            problems = [] if failed else [damage_text(exc, args.path)]
        if failed or problems:
            out.integrity_failed(failed, problems)
            out.say("remedy", remedy(args.path))
            return out.exit(ExitCode.VERIFY_FAILED)
        out.integrity_ok(pages, encryption_report)
        before = conn.stats()
        if before.pending_changes:
            out.say("pending", f"{before.pending_changes} local change(s) not pushed yet")
        out.data["pending"] = before.pending_changes
        if args.offline:
            out.revision(
                before.revision,
                None,
                f"{before.revision or '(never pulled)'} (not compared with the primary: --offline)",
            )
            return out.exit(ExitCode.OK)
        try:
            behind = conn.pull(long_poll_timeout_ms=0)
        except errors.SyncError:
            out.revision(before.revision, None, f"{before.revision} (could not ask the primary; see below)")
            raise
        revision = conn.stats().revision
        if behind:
            text = f"was behind the primary (had {before.revision}); pulled revision {revision}, now up to date"
        else:
            text = f"up to date with the primary (revision {revision})"
        out.revision(before.revision, revision, text)
    finally:
        conn.close()
    return out.exit(ExitCode.OK)


class _Findings:
    """What verify found: printed line by line as it goes, or gathered into one JSON object (``--json``)
    printed at the end, whatever the outcome (an error's line still goes to stderr)."""

    def __init__(self, as_json: bool, path: str) -> None:
        self.as_json = as_json
        self.data: dict[str, Any] = {"path": path, "status": None}

    def say(self, label: str, text: str) -> None:
        """One ``label:`` line (text output only); ``remedy`` is kept for JSON too."""
        if label == "remedy":
            self.data["remedy"] = text
        if not self.as_json:
            print(f"{label + ':' if label else '':<11}{text}")  # no label: the previous one's next line

    def indented(self, text: str) -> None:
        if not self.as_json:
            print(f"  {text}")

    def files_ok(self, count: int, report: EncryptionReport) -> None:
        self.data["files"] = {"ok": True, "count": count, "problems": []}
        self.data["encryption"] = report.to_dict()
        self.say("files", f"ok ({count} files); format: {_format_text(report)}")

    def files_damaged(self, damages: list[Damage], report: EncryptionReport | None) -> None:
        self.data["files"] = {"ok": False, "problems": [{"file": d.file, "what": d.what} for d in damages]}
        suffix = f"; format: {_format_text(report)}" if report is not None else ""
        if report is not None:
            self.data["encryption"] = report.to_dict()
        self.say("files", f"DAMAGED ({len(damages)} problem(s)){suffix}")
        for damage in damages:
            self.indented(damage.line())

    def repaired(self, lines: list[str], set_aside: list[str]) -> None:
        self.data["repair"] = {"lines": lines, "set_aside": set_aside}
        self.say("repair", "re-cloned from the primary")
        for line in lines:
            self.indented(line)
        if set_aside:
            self.indented(f"damaged files kept: {', '.join(set_aside)}")

    def epochs(self, report: EncryptionReport, path: str) -> None:
        """For a hardened (or envelope) file: which key epochs hold how many images where, and the rotation."""
        self.data["encryption"] = report.to_dict()
        if report.format not in ("hardened", "envelope"):
            return
        for i, (epoch, places) in enumerate(sorted(report.epochs.items(), reverse=True)):
            counts = ", ".join(f"{place} {places[place]}" for place in EPOCH_PLACES if place in places)
            newest = " (new writes)" if epoch == report.epoch else ""
            self.say("epochs" if i == 0 else "", f"key epoch {epoch}{newest}: {counts}")
        self._rotation(report, path)
        if report.page_map:
            self.say("page map", f"{os.path.basename(path)}-pagemap: a page rolled back on disk is refused")
        else:
            self.say("page map", "none (a file made before page maps): a page rolled back on disk is not detected")

    def _rotation(self, report: EncryptionReport, path: str) -> None:
        rotation = report.rotation
        if rotation is None:
            self.say("rotation", "none under way")
            return
        ring = os.path.basename(rotation.ring_file)
        if rotation.ring_present:
            step = rotation.phase + (f", from page {rotation.next_page}" if rotation.next_page is not None else "")
            self.say(
                "rotation",
                f"from key epoch {rotation.old_epoch} to {rotation.new_epoch} under way ({step}); "
                f"`turso-sync rekey {path}` finishes it; keep {ring} with the database until then",
            )
        else:
            self.say(
                "rotation",
                f"from key epoch {rotation.old_epoch} to {rotation.new_epoch} under way, but its key ring {ring} "
                "is missing: put it back beside the database, then run `turso-sync rekey`",
            )

    def integrity_failed(self, failed: list[str], problems: list[str]) -> None:
        """Every page image that failed authentication (by file), then SQLite's findings (the first few)."""
        self.data["integrity"] = {"ok": False, "problems": problems}
        more = [f"and {len(problems) - _SHOWN} more"] if len(problems) > _SHOWN else []
        self.say("integrity", f"FAILED ({'; '.join(failed + problems[:_SHOWN] + more)})")

    def integrity_ok(self, pages: int, report: EncryptionReport) -> None:
        self.data["integrity"] = {"ok": True, "pages": pages, "problems": []}
        checked = f", {report.authenticated} page image(s) authenticated" if report.authenticated else ""
        self.say("integrity", f"ok ({pages} pages{checked})")

    def revision(self, before: str | None, after: str | None, text: str) -> None:
        self.data["revision"] = {"before": before, "after": after}
        self.say("revision", text)

    def exit(self, code: ExitCode) -> int:
        self.data["status"] = int(code)
        return code

    def finish(self) -> None:
        if self.as_json:
            print(json.dumps(self.data))


def _format_text(report: EncryptionReport) -> str:
    """``hardened (AES-256-GCM-SIV, raw key), key epoch 2``, ``Turso's format (aes256gcm)``, ``plaintext``."""
    source = "passphrase" if report.passphrase else "raw key"
    if report.format == "hardened":
        return f"hardened (AES-256-GCM-SIV, {source}), key epoch {report.epoch}"
    if report.format == "envelope":
        return f"envelope (hardened AES-256-GCM-SIV, whole pages in larger slots, {source}), key epoch {report.epoch}"
    if report.format == "turso":
        return f"Turso's format ({report.cipher})"
    return {"plaintext": "plaintext (not encrypted)", "empty": "none yet (empty file)"}.get(report.format, "unknown")


def _format_only(files: ReplicaFiles, key: str | None, cipher: str) -> EncryptionReport | None:
    """The format, epochs and rotation of a damaged replica, read without authenticating (None: unreadable)."""
    try:
        return files.encryption_report(key, cipher, authenticate=False)
    except (OSError, errors.DatabaseError):
        return None


def _failure_lines(failures: list[PageFailure], path: str) -> list[str]:
    """Every image that failed authentication, grouped by file: ``r.db pages 3, 7 failed authentication``."""
    by_file: dict[str, list[PageFailure]] = {}
    for failure in failures:
        by_file.setdefault(failure.file, []).append(failure)
    lines = []
    real = os.path.realpath(path)
    for file, found in by_file.items():
        name = path + file[len(real) :] if file.startswith(real) else file  # as the user wrote PATH
        pages = ", ".join(f"{f.pgno} ({f.detail})" if f.detail else str(f.pgno) for f in found)
        reasons = sorted({f.reason for f in found if f.reason})
        why = f" ({'; '.join(reasons)})" if reasons else ""
        lines.append(f"{name}: page{'s' if len(found) > 1 else ''} {pages} failed authentication{why}")
    if lines:
        lines[-1] += ": the key opened the replica, so the files were changed on disk"
    return lines


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
