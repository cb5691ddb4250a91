"""Partial replicas against our primary: lazy pages, pinned to the bootstrap revision."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

import turso_sync
from tests.conftest import KEY256, wait_for
from tests.servers import free_port, primary

pytestmark = pytest.mark.peers

MB = 1024 * 1024
PREFIX = 256 * 1024


def seed(data_dir: Path, rows: int) -> dict[str, object]:
    """Write the primary's default database before it starts; return the expected answers."""
    path = data_dir / "databases" / "default" / "db"
    path.parent.mkdir(parents=True, exist_ok=True)
    db = apsw.Connection(str(path))
    db.reserve_bytes(reserve=28)  # what the primary creates: encrypted replicas can use the pages
    db.execute("PRAGMA page_size=4096")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT NOT NULL, v TEXT NOT NULL)")
    with db:
        db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO t SELECT i, printf('key-%08d', (i * 7919) % ?), "
            "printf('marker-%d-', i) || hex(randomblob(220)) FROM n",
            (rows, rows),
        )
    db.execute("CREATE INDEX t_k ON t(k)")
    db.execute("CREATE TABLE s (id INTEGER PRIMARY KEY, name TEXT)")
    db.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200) "
        "INSERT INTO s SELECT i, 'name-' || i FROM n"
    )
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    answers = answer_all(db, rows)
    db.close()
    return answers


POINT_IDS = [1, 17, 4242, 9999, 23456, 54321, 77777, 99000]


def answer_all(conn, rows: int) -> dict[str, object]:
    ids = [i for i in POINT_IDS if i <= rows]
    return {
        "points": [conn.execute("SELECT id, k, v FROM t WHERE id = ?", (i,)).fetchall() for i in ids],
        "range": conn.execute(
            "SELECT id, k FROM t WHERE k BETWEEN 'key-00001000' AND 'key-00001200' ORDER BY k"
        ).fetchall(),
        "aggregate": conn.execute("SELECT count(*), sum(id), sum(length(v)), max(k) FROM t").fetchall(),
    }


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, object], int]]:
    """A 50 MB database on our primary, and the answers a full copy gives."""
    data_dir = tmp_path_factory.mktemp("big") / "server"
    rows = 96_000
    answers = seed(data_dir, rows)
    with primary(data_dir) as url:
        yield url, answers, rows


def disk_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.iterdir() if p.is_file())


@pytest.mark.parametrize("key", [None, KEY256], ids=["plaintext", "encrypted"])
def test_partial_answers_like_a_full_replica_fetching_little(tmp_path, big, key):
    url, answers, rows = big
    conn = turso_sync.connect(
        tmp_path / "p.db", url, encryption_key=key, partial=turso_sync.PartialSync(prefix_bytes=PREFIX)
    )
    try:
        start = conn.stats()
        total = start.pages_total
        assert total is not None and total * 4096 >= 45 * MB
        assert start.pages_present is not None and start.pages_present * 4096 <= PREFIX + 64 * 4096
        ids = [i for i in POINT_IDS if i <= rows]
        points = [conn.execute("SELECT id, k, v FROM t WHERE id = ?", (i,)).fetchall() for i in ids]
        assert points == answers["points"]
        after_points = conn.stats()
        fraction = after_points.pages_present / total
        print(
            f"point queries: {after_points.pages_present}/{total} pages present ({fraction:.2%}), "
            f"{after_points.lazy_requests} requests, {after_points.lazy_bytes_fetched} bytes"
        )
        assert fraction < 0.05, fraction
        assert after_points.lazy_bytes_fetched < 2 * MB
        rng = conn.execute(
            "SELECT id, k FROM t WHERE k BETWEEN 'key-00001000' AND 'key-00001200' ORDER BY k"
        ).fetchall()
        assert rng == answers["range"]
        agg = conn.execute("SELECT count(*), sum(id), sum(length(v)), max(k) FROM t").fetchall()
        assert agg == answers["aggregate"]
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        if key is not None:
            assert b"marker-" not in disk_bytes(tmp_path)
    finally:
        conn.close()
    if key is None:
        assert b"marker-4242-" in disk_bytes(tmp_path)  # sanity: the search would find plaintext


def test_full_replica_gives_the_same_answers(tmp_path, big):
    url, answers, rows = big
    with contextlib.closing(turso_sync.connect(tmp_path / "full.db", url)) as full:
        assert answer_all(full, rows) == answers


@pytest.fixture
def small(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A 4 MB database on our primary (on a fixed port, so it can be stopped and started again)."""
    data_dir = tmp_path / "server"
    seed(data_dir, 8000)
    yield data_dir, free_port()


def partial(path: Path, url: str, **kw) -> turso_sync.Connection:
    return turso_sync.connect(path, url, partial=turso_sync.PartialSync(prefix_bytes=64 * 1024, **kw))


def test_remote_updates_after_bootstrap_arrive_by_pull_even_on_unread_pages(tmp_path, small):
    data_dir, port = small
    with primary(data_dir, port=port) as url:
        p = partial(tmp_path / "p.db", url)
        w = turso_sync.connect(tmp_path / "w.db", url)
        try:
            assert p.execute("SELECT v FROM t WHERE id = 10").fetchone()[0].startswith("marker-10-")
            w.execute("UPDATE t SET v = 'changed-' || id WHERE id IN (10, 5000, 7000)")
            w.execute("DELETE FROM t WHERE id = 6000")
            w.execute("INSERT INTO t VALUES (9001, 'key-new', 'new-row')")
            w.commit()
            assert w.push() == 1
            # before the pull, a page never read comes at the bootstrap revision: the old row
            assert p.execute("SELECT v FROM t WHERE id = 7000").fetchone()[0].startswith("marker-7000-")
            assert p.pull() is True
            got = p.execute("SELECT id, v FROM t WHERE id IN (10, 5000, 6000, 7000, 9001) ORDER BY id").fetchall()
            assert got == [(10, "changed-10"), (5000, "changed-5000"), (7000, "changed-7000"), (9001, "new-row")]
            # pages never read and unchanged remotely still come from the bootstrap revision
            assert p.execute("SELECT k FROM t WHERE id = 4000").fetchone() == (f"key-{4000 * 7919 % 8000:08d}",)
            # local writes on a partial replica push and converge
            p.execute("UPDATE t SET v = 'from-partial' WHERE id = 3000")
            p.commit()
            assert p.push() == 1
            p.checkpoint()  # backfill marks pages present; later fetches must not overwrite them
            assert w.pull() is True
            full = "SELECT count(*), sum(id), sum(length(v)), group_concat(v) FROM t WHERE v NOT LIKE 'marker-%'"
            assert p.execute(full).fetchall() == w.execute(full).fetchall()
            assert (
                p.execute("SELECT count(*), sum(length(v)) FROM t").fetchall()
                == w.execute("SELECT count(*), sum(length(v)) FROM t").fetchall()
            )
            assert p.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            p.close()
            w.close()


def test_offline_reads_present_pages_and_refuses_missing_ones(tmp_path, small):
    data_dir, port = small
    path = tmp_path / "p.db"
    with primary(data_dir, port=port) as url:
        p = partial(path, url)
        assert p.execute("SELECT count(*) FROM t WHERE id < 50").fetchone() == (49,)
    try:
        # the server is gone: what is local still answers
        assert p.execute("SELECT count(*) FROM t WHERE id < 50").fetchone() == (49,)
        with pytest.raises(turso_sync.NetworkError, match=r"page \d+ is not yet local and the replica is offline"):
            p.execute("SELECT sum(length(v)) FROM t").fetchall()
        with pytest.raises(turso_sync.NetworkError, match="not yet local"):
            p.execute("SELECT v FROM t WHERE id = 7999").fetchall()
        assert p.execute("SELECT count(*) FROM t WHERE id < 50").fetchone() == (49,)
        with primary(data_dir, port=port):
            assert p.execute("SELECT count(*) FROM t").fetchone() == (8000,)
            assert p.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        p.close()


SCAN_FOREVER = """
import sys, turso_sync
conn = turso_sync.connect(sys.argv[1], partial=turso_sync.PartialSync(prefix_bytes=65536, segment_size=4096))
print("open", flush=True)
while True:
    conn.execute("SELECT sum(length(v)) FROM t").fetchall()
    conn.execute("SELECT count(*) FROM t WHERE k > ''").fetchall()
"""


@pytest.mark.parametrize("key", [None, KEY256], ids=["plaintext", "encrypted"])
def test_kill_during_lazy_fetch_leaves_a_consistent_replica(tmp_path, small, key):
    data_dir, port = small
    path = tmp_path / "p.db"
    with primary(data_dir, port=port) as url:
        with contextlib.closing(
            turso_sync.connect(path, url, encryption_key=key, partial=turso_sync.PartialSync(prefix_bytes=65536))
        ):
            pass
        script = (
            SCAN_FOREVER
            if key is None
            else SCAN_FOREVER.replace("segment_size=4096)", f"segment_size=4096), encryption_key='{key}'")
        )
        for attempt in range(3):
            before = os.path.getmtime(str(path) + "-present")
            child = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
            try:
                wait_for(lambda: os.path.getmtime(str(path) + "-present") != before, 30, "lazy fetches to start")
                wait_for(lambda: random.random() < 0.2, 5, "a random moment")
                child.send_signal(signal.SIGKILL)
            finally:
                child.wait(30)
                if child.stdout:
                    child.stdout.close()
        with contextlib.closing(turso_sync.connect(path, encryption_key=key)) as p:
            assert p.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert p.execute("SELECT count(*), sum(id) FROM t").fetchone() == (8000, 8000 * 8001 // 2)
            assert p.stats().pages_present == p.stats().pages_total


def test_query_bootstrap_brings_what_the_query_reads(tmp_path, small):
    data_dir, port = small
    path = tmp_path / "q.db"
    options = turso_sync.PartialSync(bootstrap="query", query="SELECT name FROM s WHERE id > 10")
    with primary(data_dir, port=port) as url:
        conn = turso_sync.connect(path, url, partial=options)
        stats = conn.stats()
        assert stats.pages_present is not None and stats.pages_present < stats.pages_total / 10
    try:
        # offline: the query's tables are local, the rest is not
        assert conn.execute("SELECT count(*), max(name) FROM s WHERE id > 10").fetchone() == (190, "name-99")
        with pytest.raises(turso_sync.NetworkError, match="not yet local"):
            conn.execute("SELECT count(*) FROM t").fetchone()
    finally:
        conn.close()


PYTURSO_PARTIAL = """
import os, sys, turso, turso.sync
path, url = sys.argv[1], sys.argv[2]
opts = turso.sync.PartialSyncOpts(bootstrap_strategy=turso.sync.PartialSyncPrefixBootstrap(length=65536))
conn = turso.sync.connect(path, url, partial_sync_experimental=opts)
print(os.stat(path).st_blocks * 512, flush=True)
print(conn.execute("SELECT v FROM t WHERE id = 4000").fetchone()[0][:12], flush=True)
print(repr(conn.execute("SELECT count(*), sum(id), max(k) FROM t").fetchall()), flush=True)
print(os.stat(path).st_blocks * 512, flush=True)
"""


def test_pyturso_partial_sync_against_our_primary(tmp_path, small):
    data_dir, port = small
    with primary(data_dir, port=port) as url:
        out = subprocess.run(
            [sys.executable, "-c", PYTURSO_PARTIAL, str(tmp_path / "t.db"), url],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert out.returncode == 0, out.stderr[-2000:]
    boot_bytes, point, aggregate, end_bytes = out.stdout.split("\n")[:4]
    assert int(boot_bytes) <= 256 * 1024 < int(end_bytes)  # the prefix at first (a sparse file), then lazily
    assert point == "marker-4000-"
    assert aggregate == repr([(8000, 8000 * 8001 // 2, "key-00007999")])
