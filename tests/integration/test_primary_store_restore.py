"""``turso-sync restore``: a database of ``serve --store`` as it was at a revision or a time.

A real ``turso-sync serve --store`` on ``weed mini`` takes pushes from a real replica; the rows
the replica saw at each revision are compared with a plain SQLite file restored at that
revision.  The arguments go through ``turso-sync``'s own parser (``cli/main.py``'s command
table), then to the command, so its errors reach the test as exceptions.
"""

from __future__ import annotations

import datetime
import sqlite3
from pathlib import Path

import pytest

import turso_sync
from tests.integration.primary_harness import PrimaryProcess
from tests.s3_harness import BUCKET, WeedMini
from turso_sync.cli import restore as restore_cmd
from turso_sync.cli.exit_codes import CommandError
from turso_sync.cli.main import build_parser


def _restore(weed: WeedMini, prefix: str, at: str, to: Path, db: str = "default") -> int:
    args = build_parser().parse_args(
        [
            "restore",
            "--store",
            f"s3://{BUCKET}/{prefix}",
            "--s3-endpoint",
            weed.endpoint,
            "--db",
            db,
            "--at",
            at,
            "--to",
            str(to),
        ]
    )
    assert args.command == "restore"
    return restore_cmd.run(args)


def _rows(path: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return conn.execute("SELECT id, body FROM notes ORDER BY id").fetchall()


def test_restore_at_each_revision_and_at_a_time(weed: WeedMini, tmp_path: Path) -> None:
    prefix = "restore-1"
    server = PrimaryProcess(tmp_path / "data", "--store", f"s3://{BUCKET}/{prefix}", "--s3-endpoint", weed.endpoint)
    url = server.start()
    seen: dict[int, list[tuple[int, str]]] = {}
    try:
        a = turso_sync.connect(tmp_path / "a.db", url)
        assert isinstance(a, turso_sync.SyncConnection)
        a.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        a.commit()
        a.push()
        for i in range(1, 7):
            if i == 4:
                a.execute("DELETE FROM notes WHERE id = 2")
            elif i == 5:
                a.execute("UPDATE notes SET body = 'changed' WHERE id = 1")
            else:
                a.execute("INSERT INTO notes VALUES (?, ?)", (i, "x" * 3000 + str(i)))
            a.commit()
            a.push()
            a.pull()
            assert a.last_sync is not None
            seen[int(a.last_sync.revision)] = [tuple(r) for r in a.execute("SELECT id, body FROM notes ORDER BY id")]
        a.close()
    finally:
        server.stop()
    assert len(seen) == 6

    for revision, rows in seen.items():
        out = tmp_path / f"at-{revision}.db"
        assert _restore(weed, prefix, str(revision), out) == 0
        assert _rows(out) == rows, revision

    # a time after the last push: the newest revision (a minute ahead: the store dates objects to
    # the second, by its own clock); a time before the first: nothing to restore
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=1)
    now = later.strftime("%Y-%m-%dT%H:%M:%SZ")
    latest = tmp_path / "now.db"
    assert _restore(weed, prefix, now, latest) == 0
    assert _rows(latest) == seen[max(seen)]
    with pytest.raises(CommandError, match="nothing was stored at or before 2001-01-01T00:00:00Z"):
        _restore(weed, prefix, "2001-01-01T00:00:00", tmp_path / "old.db")
    assert not (tmp_path / "old.db").exists()

    # never over an existing file, never a revision the store does not hold
    before = latest.read_bytes()
    with pytest.raises(CommandError, match="exists"):
        _restore(weed, prefix, str(min(seen)), latest)
    assert latest.read_bytes() == before
    with pytest.raises(CommandError, match="is not stored"):
        _restore(weed, prefix, str(max(seen) + 1000), tmp_path / "future.db")
    assert not (tmp_path / "future.db").exists()
