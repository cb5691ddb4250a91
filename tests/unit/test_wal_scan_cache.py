"""The cache of WAL scans is bounded and forgets a database once its last connection closes.

A server opens thousands of databases in turn (at most ``--max-open-databases`` at once): each
one's last WAL scan (its committed frames) must not stay in memory after it closed.
"""

from __future__ import annotations

from pathlib import Path

from turso_sync.local import walformat
from turso_sync.local.connection import Connection
from turso_sync.local.walindex import committed_wal


def _database(path: Path) -> Connection:
    conn = Connection(path, isolation_level=None)
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (randomblob(3000))")
    return conn


def test_a_closed_database_leaves_no_scan_behind(tmp_path: Path) -> None:
    conn = _database(tmp_path / "a.db")
    assert committed_wal(str(conn.path)).txns, "the WAL holds the commits"
    assert any(key.startswith(str(tmp_path)) for key in walformat._scans)
    conn.close()
    assert not any(key.startswith(str(tmp_path)) for key in walformat._scans)


def test_the_cache_keeps_at_most_scans_kept_entries(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(walformat, "SCANS_KEPT", 4)
    conns = [_database(tmp_path / f"{i}.db") for i in range(10)]
    try:
        for conn in conns:
            committed_wal(str(conn.path))
            assert len(walformat._scans) <= 4
        newest = str(conns[-1].path) + "-wal"
        assert any(key.endswith(newest.rsplit("/", 1)[1]) for key in walformat._scans)
    finally:
        for conn in conns:
            conn.close()
