"""Partial replicas without a network: presence bitmap, lazy pages, pinned snapshots, options."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from pyroaring import BitMap

import turso_sync
from tests.conftest import wait_for
from turso_sync.local.connection import Connection
from turso_sync.local.engine import LocalDatabase, RevisionGone
from turso_sync.local.lazy import btree_children, clear_fetcher, set_fetcher
from turso_sync.local.presence import PresenceMap, presence_path

P = 4096


def make_db(path: Path, rows: int = 3000) -> None:
    conn = Connection(path, isolation_level=None, record_frames=False)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"value-{i}-" + "x" * 200) for i in range(rows)])
    conn.execute("COMMIT")
    conn.apsw_connection.wal_checkpoint(mode=3)
    conn.close()


def test_presence_roundtrip_and_damage(tmp_path):
    db = str(tmp_path / "db")
    m = PresenceMap(100, "42", BitMap([1, 2, 3, 50]), requests=2, pages_fetched=5, bytes_fetched=5 * P)
    m.save(db)
    back = PresenceMap.load(db)
    assert back == m
    assert back.missing(4) and not back.missing(50) and not back.missing(101)
    assert back.present_count() == 4
    raw = bytearray(Path(presence_path(db)).read_bytes())
    raw[12] ^= 1
    Path(presence_path(db)).write_bytes(bytes(raw))
    with pytest.raises(OSError, match="damaged"):
        PresenceMap.load(db)


def test_btree_children_of_an_interior_page(tmp_path):
    path = tmp_path / "db"
    make_db(path)
    data = path.read_bytes()
    conn = Connection(path)
    root = conn.execute("SELECT rootpage FROM sqlite_schema WHERE name = 't'").fetchone()[0]
    conn.close()
    children = btree_children(data[(root - 1) * P : root * P], root)
    assert len(children) > 10 and all(1 < c <= len(data) // P for c in children)
    assert btree_children(data[(children[0] - 1) * P : children[0] * P], children[0]) == []  # a leaf


class FakeRemote:
    """Serves the pages of a saved copy; counts requests; can be held or switched off."""

    def __init__(self, pages: dict[int, bytes]) -> None:
        self.pages = pages
        self.requests: list[list[int]] = []
        self.online = True
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, pgnos: list[int], revision: str) -> dict[int, bytes]:
        assert revision == "7"
        self.gate.wait(10)
        if not self.online:
            raise turso_sync.NetworkError("connection refused")
        self.requests.append(sorted(pgnos))
        return {p: self.pages[p] for p in pgnos}


def make_partial(tmp_path: Path, keep: int = 2) -> tuple[str, FakeRemote]:
    """A plaintext database whose pages past ``keep`` are zeroed and marked missing."""
    path = tmp_path / "db"
    make_db(path)
    data = path.read_bytes()
    size = len(data) // P
    pages = {p: data[(p - 1) * P : p * P] for p in range(1, size + 1)}
    with open(path, "r+b") as f:
        f.seek(keep * P)
        f.write(bytes((size - keep) * P))
    PresenceMap(size, "7", BitMap(range(1, keep + 1))).save(str(path))
    remote = FakeRemote(pages)
    set_fetcher(os.path.realpath(path), remote)
    return os.path.realpath(path), remote


def test_lazy_reads_fetch_segments_and_children_once(tmp_path):
    path, remote = make_partial(tmp_path)
    try:
        conn = Connection(path)
        lazy = conn._state.lazy
        assert lazy is not None
        lazy.segment_pages = 4
        assert conn.execute("SELECT v FROM t WHERE id = 2500").fetchone()[0].startswith("value-2500-")
        first = len(remote.requests)
        assert all(len(r) <= 64 for r in remote.requests)
        assert conn.execute("SELECT v FROM t WHERE id = 2500").fetchone()[0].startswith("value-2500-")
        assert len(remote.requests) == first  # kept locally
        assert conn.execute("SELECT count(*), sum(length(v)) FROM t").fetchone()[0] == 3000
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        fetched = [p for r in remote.requests for p in r]
        assert len(fetched) == len(set(fetched))  # no page twice
        conn.close()
    finally:
        clear_fetcher(path, remote)


def test_concurrent_readers_of_a_missing_page_share_one_fetch(tmp_path):
    path, remote = make_partial(tmp_path)
    try:
        conn = Connection(path)
        lazy = conn._state.lazy
        assert lazy is not None
        remote.gate.clear()
        threads = [threading.Thread(target=lazy.ensure, args=(40,)) for _ in range(4)]
        threads[0].start()
        wait_for(lambda: 40 in lazy._inflight, 10, "the first fetch to start")
        for t in threads[1:]:
            t.start()
        remote.gate.set()
        for t in threads:
            t.join(10)
        assert sum(40 in r for r in remote.requests) == 1
        assert not lazy.missing(40)
        conn.close()
    finally:
        clear_fetcher(path, remote)


def test_offline_missing_page_is_a_clear_error_and_present_pages_still_work(tmp_path):
    path, remote = make_partial(tmp_path, keep=2)
    try:
        conn = Connection(path)
        assert conn.execute("SELECT v FROM t WHERE id = 1").fetchone()[0].startswith("value-1-")
        remote.online = False
        assert conn.execute("SELECT v FROM t WHERE id = 1").fetchone()[0].startswith("value-1-")
        with pytest.raises(turso_sync.NetworkError, match=r"page \d+ is not yet local and the replica is offline"):
            conn.execute("SELECT count(*) FROM t").fetchall()
        remote.online = True
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (3000,)
        conn.close()
    finally:
        clear_fetcher(path, remote)


def test_checkpoint_backfill_marks_pages_present(tmp_path):
    path, remote = make_partial(tmp_path)
    try:
        conn = Connection(path, isolation_level=None)
        # blind overwrite of many pages: a new table filled from zeroblobs reuses nothing, so
        # grow the database and rewrite rows without reading the pages first where SQLite can
        conn.execute("DELETE FROM t WHERE id >= 2000")
        conn.execute("INSERT INTO t SELECT id + 5000, 'new' FROM t WHERE id < 100")
        conn.apsw_connection.wal_checkpoint(mode=3)
        state = PresenceMap.load(path)
        assert state is not None
        lazy = conn._state.lazy
        assert lazy is not None and lazy.map.present == state.present
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (2100,)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        conn.close()
        remote.online = False
        again = Connection(path)  # everything needed is local now
        assert again.execute("SELECT count(*) FROM t").fetchone() == (2100,)
        again.close()
    finally:
        clear_fetcher(path, remote)


def test_frame_log_marks_never_fetched_pre_images(tmp_path):
    db = LocalDatabase(tmp_path / "db")
    conn = db.connect(isolation_level=None)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("INSERT INTO t VALUES (1, 'a')")
    db.checkpoint()
    seq = db.current_seq()
    db.log.is_missing = lambda pgno: pgno == 2
    conn.execute("UPDATE t SET v = 'b'")
    db.checkpoint()  # archives the transaction with page 2's pre-image marked as never fetched
    (txn,) = list(db.log.history(seq))
    (page2,) = [pg for pg in txn.pages if pg.pgno == 2]
    assert page2.pre is None and page2.pre_missing
    conn.close()
    db.close()


def test_snapshot_at_serves_any_page_as_of_an_older_revision(tmp_path):
    db = LocalDatabase(tmp_path / "db", reserved_bytes=28)
    conn = db.connect(isolation_level=None)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, "v" * 300) for i in range(100)])
    then = db.snapshot()
    conn.execute("UPDATE t SET v = 'changed' WHERE id % 7 = 0")
    db.checkpoint()
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, "w" * 300) for i in range(100, 300)])  # grows
    conn.execute("DELETE FROM t WHERE id < 10")
    now = db.snapshot()
    assert now.db_size > then.db_size
    at = db.snapshot_at(then.seq)
    assert (at.seq, at.db_size, at.pages) == (then.seq, then.db_size, then.pages)
    some = db.snapshot_at(then.seq, [1, 2, then.db_size + 1])
    assert some.pages == {1: then.pages[1], 2: then.pages[2]}
    assert db.snapshot_at(now.seq).pages == now.pages
    changed = db.snapshot_at(then.seq, None, since=0)
    assert set(changed.pages) <= set(then.pages)
    with pytest.raises(RevisionGone):
        db.snapshot_at(now.seq + 5)
    conn.close()
    db.close()


def test_partial_sync_options_are_checked():
    assert turso_sync.PartialSync().page_selector() == BitMap(range(64))
    assert turso_sync.PartialSync(bootstrap="query", query="SELECT 1").page_selector() is None
    for bad in (
        {"bootstrap": "all"},
        {"bootstrap": "query"},
        {"prefix_bytes": 100},
        {"segment_size": 5000},
    ):
        with pytest.raises(turso_sync.ProgrammingError):
            turso_sync.PartialSync(**bad)
