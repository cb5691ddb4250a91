"""The encrypted WAL keeps a valid checksum chain when frames are written after a recovery.

Found by the key-rotation kill test: WAL recovery reads frames whole up to the first invalid
one, and the next transaction writes its first frame exactly there.  The VFS took that header
write for SQLite's checksum rewrite (which also follows a whole-frame read) and sealed the
header over the stale body on disk; the frame then failed every later scan, and the next
install or recovery dropped it and everything after it (committed rows lost).
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

import turso_sync
from turso_sync.local import install
from turso_sync.local.engine import LocalDatabase
from turso_sync.local.walindex import committed_wal, wal_index_limit


def last_commit(path: str) -> int:
    scan = committed_wal(path)
    return scan.txns[-1].commit_frame if scan.txns else 0


def test_a_frame_written_where_recovery_stopped_keeps_a_valid_checksum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "app.db")
    key = secrets.token_hex(32)
    db = LocalDatabase(path, encryption_key=key, cipher="hardened")
    conn = db.connect(isolation_level=None)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER)")
    conn.execute("INSERT INTO t VALUES (1, 0)")
    # an install killed after its frames were durable, before it marked the wal-index stale
    with db.write_lock() as engine_conn:
        size = int(engine_conn.execute("PRAGMA page_count").get)  # type: ignore[arg-type]
        images = db.page_reader()
        pages = {pgno: images(pgno) for pgno in range(1, size + 1)}
        monkeypatch.setattr(install, "invalidate_wal_index", lambda _path: None)
        install.append_transaction(db.path, db.codec, pages, size)
        monkeypatch.undo()
    before = last_commit(db.path)
    conn.execute("UPDATE t SET n = n + 1 WHERE id = 1")  # one frame, over the unindexed ones
    assert last_commit(db.path) == before + 1
    install.invalidate_wal_index(db.path)  # the next read recovers from the file alone
    conn.execute("UPDATE t SET n = n + 1 WHERE id = 1")  # its first frame goes where recovery stopped
    limit = wal_index_limit(db.path)
    assert limit is not None and last_commit(db.path) == limit[0]
    conn.close()
    db.close()
    again = turso_sync.connect(path, encryption_key=key, cipher="hardened")
    assert again.execute("SELECT n FROM t").fetchall() == [(2,)]
    again.close()


def test_spilled_pages_rewritten_in_one_transaction_keep_the_chain(tmp_path: Path) -> None:
    """A transaction larger than the page cache overwrites its own frames in place, then SQLite
    rewrites their checksums at commit: every frame must still verify."""
    path = str(tmp_path / "app.db")
    key = secrets.token_hex(32)
    conn = turso_sync.connect(path, encryption_key=key, cipher="hardened", isolation_level=None)
    conn.execute("PRAGMA cache_size = 4")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("BEGIN")
    for round_ in range(3):
        conn.executemany("INSERT OR REPLACE INTO t VALUES (?, ?)", [(i, f"{round_}-" + "x" * 300) for i in range(400)])
    conn.execute("COMMIT")
    limit = wal_index_limit(conn.path)
    assert limit is not None and last_commit(conn.path) == limit[0]
    conn.close()
    again = turso_sync.connect(path, encryption_key=key, cipher="hardened")
    assert again.execute("SELECT count(*), min(v) FROM t").fetchone() == (400, "2-" + "x" * 300)
    assert again.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    again.close()


def test_checksum_rewrites_from_any_frame_of_a_fresh_wal_keep_the_chain(tmp_path: Path) -> None:
    """Spilling transactions on a WAL just emptied: SQLite's checksum rewrite then often starts at
    frame 2 and reads frame 1's checksum first, which must not count as WAL recovery."""
    import random

    rnd = random.Random(20)
    path = str(tmp_path / "app.db")
    key = secrets.token_hex(32)
    conn = turso_sync.connect(path, encryption_key=key, cipher="hardened", isolation_level=None)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    expected: dict[int, bytes] = {}
    for round_ in range(40):
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        conn.execute("PRAGMA cache_size = 3")
        conn.execute("BEGIN")
        for _ in range(rnd.choice((20, 60, 150))):
            row, value = rnd.randrange(300), rnd.randbytes(rnd.choice((16, 300, 1500)))
            conn.execute("INSERT OR REPLACE INTO t VALUES (?, ?)", (row, value))
            expected[row] = value
        conn.execute("COMMIT")
        limit = wal_index_limit(conn.path)
        assert limit is not None and last_commit(conn.path) == limit[0], f"round {round_}"
    conn.close()
    again = turso_sync.connect(path, encryption_key=key, cipher="hardened")
    assert dict(again.execute("SELECT id, v FROM t").fetchall()) == expected
    again.close()
