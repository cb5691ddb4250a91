"""The engine's own page paths on a hardened database (no server): what works, what waits for wiring."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from turso_sync.local.engine import LocalDatabase


@pytest.fixture
def engine(tmp_path: Path) -> LocalDatabase:
    db = LocalDatabase(tmp_path / "h.db", encryption_key=secrets.token_hex(32), cipher="hardened")
    conn = db.connect()
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"row {i}" + "z" * 200) for i in range(200)])
    conn.commit()
    conn.close()
    return db


def test_history_and_snapshots_decrypt_wal_and_database_images(engine: LocalDatabase) -> None:
    before = engine.snapshot()
    engine.checkpoint()  # now the images come from the database file, encrypted for it
    after = engine.snapshot()
    assert before.pages == after.pages and before.db_size == after.db_size
    latest: dict[int, bytes] = {}
    for txn in engine.history(0):  # the frame log's copies of WAL images
        latest.update(txn.pages)
    assert latest and all(after.pages[pgno] == image for pgno, image in latest.items())
    assert after.pages[1][:16] == b"SQLite format 3\x00"


def test_installed_pages_read_back(engine: LocalDatabase) -> None:
    snapshot = engine.snapshot()
    engine.install_pages({2: snapshot.pages[2]}, snapshot.db_size)
    conn = engine.connect()
    assert len(conn.execute("SELECT * FROM t").fetchall()) == 200
    conn.close()
