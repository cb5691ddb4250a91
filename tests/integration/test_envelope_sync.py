"""Encrypted replicas of remotes whose pages reserve no bytes: the envelope layout, with real servers.

A default ``tursodb --sync-server`` creates pages that reserve no bytes, and so does our primary
for a database it did not create itself (one seeded here with stdlib SQLite's defaults).  An
encrypted replica of either keeps the pages whole and stores each in a ``P + 32``-byte slot
(``crypto/envelope.py``); it syncs both ways with plaintext replicas, other envelope replicas and
pyturso, works as a partial replica, and no row's plaintext reaches any of its files.
"""

from __future__ import annotations

import contextlib
import glob
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

import turso_sync
from tests.conftest import KEY256
from tests.integration.primary_harness import Peer, peers_installed
from tests.servers import primary, tursodb
from turso_sync.crypto.envelope import is_envelope
from turso_sync.sync.files import ReplicaFiles

pytestmark = pytest.mark.peers

MARKER = "envelope-row-marker"
P = 4096
S = P + 32


def replica_files(path: Path) -> list[Path]:
    return [Path(f) for f in glob.glob(f"{path}*") if Path(f).is_file()]


def assert_no_plaintext(path: Path) -> None:
    for file in replica_files(path):
        assert MARKER.encode() not in file.read_bytes(), file


def assert_envelope(path: Path) -> None:
    raw = path.read_bytes()
    assert is_envelope(raw), f"{path} is not in the envelope layout"
    assert len(raw) % P == 0


def seed_without_reserved_bytes(data_dir: Path, rows: int) -> None:
    """Our primary's default database, written beforehand by stdlib SQLite: pages reserve no bytes."""
    path = data_dir / "databases" / "default" / "db"
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT NOT NULL, v TEXT NOT NULL)")
    db.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
        "INSERT INTO t SELECT i, printf('key-%06d', (i * 7919) % ?), ? || ' ' || i || ' ' || hex(randomblob(200)) "
        "FROM n",
        (rows, rows, MARKER),
    )
    db.execute("CREATE INDEX t_k ON t(k)")
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert db.execute("SELECT count(*) FROM t").fetchone() == (rows,)
    db.close()
    assert path.read_bytes()[20] == 0


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[str]:
    data_dir = tmp_path / "server"
    seed_without_reserved_bytes(data_dir, 3000)
    with primary(data_dir) as url:
        yield url


def rows(conn: turso_sync.Connection) -> list[tuple[object, ...]]:
    return conn.execute("SELECT id, body FROM notes ORDER BY id").fetchall()


def test_envelope_replicas_of_tursodb_sync_both_ways(tmp_path: Path) -> None:
    with tursodb(tmp_path / "srv") as url:
        # an encrypted replica of the still-empty remote: the envelope layout from the start
        a = turso_sync.connect(tmp_path / "a.db", url, encryption_key=KEY256)
        a.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        a.executemany("INSERT INTO notes VALUES (?, ?)", [(i, f"{MARKER} a{i}") for i in range(300)])
        a.commit()
        assert a.push() == 2
        # a new encrypted replica of the remote, whose pages reserve 0 bytes, and a plaintext one
        b = turso_sync.connect(tmp_path / "b.db", url, encryption_key=KEY256)
        plain = turso_sync.connect(tmp_path / "plain.db", url)
        assert rows(b) == rows(plain) == rows(a)
        b.execute("UPDATE notes SET body = ? WHERE id = 7", (f"{MARKER} from b",))
        b.execute("INSERT INTO notes VALUES (1000, ?)", (f"{MARKER} b1000",))
        b.commit()
        b.push()
        plain.execute("INSERT INTO notes VALUES (2000, ?)", (f"{MARKER} plain",))
        plain.commit()
        plain.push()
        assert a.pull()
        want = rows(a)
        assert (
            (7, f"{MARKER} from b") in want and (1000, f"{MARKER} b1000") in want and (2000, f"{MARKER} plain") in want
        )
        assert len(want) == 302
        a.checkpoint()
        for conn in (a, b, plain):
            conn.close()
        for name in ("a.db", "b.db"):
            assert_envelope(tmp_path / name)
            assert_no_plaintext(tmp_path / name)
            assert ReplicaFiles(str(tmp_path / name)).check(KEY256, deep=True) == []  # verify reads slots
        # a reopen needs only the key; the wrong key is refused and names the file
        a = turso_sync.connect(tmp_path / "a.db", encryption_key=KEY256)
        assert a.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert rows(a) == want
        a.close()
        with pytest.raises(turso_sync.EncryptionError, match=r"wrong encryption key for .*a\.db"):
            turso_sync.connect(tmp_path / "a.db", encryption_key="ab" * 32)


@pytest.mark.parametrize("server", ["tursodb", "primary"])
def test_envelope_replicas_keep_syncing_round_after_round(tmp_path: Path, server: str) -> None:
    context = tursodb(tmp_path / "srv") if server == "tursodb" else _seeded_primary(tmp_path)
    with context as url:
        a = turso_sync.connect(tmp_path / "a.db", url, encryption_key=KEY256)
        a.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT)")
        a.commit()
        a.push()
        b = turso_sync.connect(tmp_path / "b.db", url, encryption_key=KEY256)
        for r in range(4):
            a.execute("INSERT INTO notes VALUES (?, ?)", (r, f"{MARKER} a{r}"))
            a.commit()
            b.execute("INSERT INTO notes VALUES (?, ?)", (100 + r, f"{MARKER} b{r}"))
            b.commit()
            a.sync()
            b.sync()
        a.pull()
        assert rows(a) == rows(b) and len(rows(a)) == 8
        for conn in (a, b):
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            conn.close()
        for name in ("a.db", "b.db"):
            assert_envelope(tmp_path / name)
            assert_no_plaintext(tmp_path / name)


@contextlib.contextmanager
def _seeded_primary(tmp_path: Path) -> Iterator[str]:
    data_dir = tmp_path / "server"
    seed_without_reserved_bytes(data_dir, 500)
    with primary(data_dir) as url:
        yield url


@pytest.mark.skipif(not peers_installed(), reason="make peers installs pyturso's peers")
def test_an_envelope_replica_and_pyturso_share_our_primary(tmp_path: Path, seeded: str) -> None:
    ours = turso_sync.connect(tmp_path / "ours.db", seeded, encryption_key=KEY256)
    assert ours.execute("SELECT count(*) FROM t").fetchone() == (3000,)
    peer = Peer("pyturso")
    try:
        peer.call("connect", path=str(tmp_path / "peer.db"), url=seeded)
        assert peer.call("query", sql="SELECT count(*) FROM t") == [[3000]]
        peer.call("exec", sql="INSERT INTO t VALUES (5001, 'from-pyturso', ?)", args=[f"{MARKER} peer"])
        peer.call("exec", sql="UPDATE t SET v = ? WHERE id = 1", args=[f"{MARKER} peer edit"])
        peer.call("push")
        assert ours.pull()
        assert ours.execute("SELECT v FROM t WHERE id IN (1, 5001) ORDER BY id").fetchall() == [
            (f"{MARKER} peer edit",),
            (f"{MARKER} peer",),
        ]
        ours.execute("INSERT INTO t VALUES (6001, 'from-ours', ?)", (f"{MARKER} ours",))
        ours.execute("DELETE FROM t WHERE id BETWEEN 10 AND 19")
        ours.commit()
        ours.push()
        peer.call("pull")
        assert peer.call("query", sql="SELECT count(*), max(id) FROM t") == [[3000 + 2 - 10, 6001]]
        assert peer.call("query", sql="SELECT v FROM t WHERE id = 6001") == [[f"{MARKER} ours"]]
        assert ours.execute("SELECT count(*) FROM t").fetchone() == (2992,)
        assert ours.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        peer.close()
        ours.close()
    assert_envelope(tmp_path / "ours.db")
    assert_no_plaintext(tmp_path / "ours.db")


def test_a_partial_envelope_replica_fetches_pages_lazily(tmp_path: Path, seeded: str) -> None:
    full = turso_sync.connect(tmp_path / "full.db", seeded)
    want = {
        "points": [full.execute("SELECT id, k, v FROM t WHERE id = ?", (i,)).fetchall() for i in (1, 777, 2999)],
        "range": full.execute("SELECT id FROM t WHERE k BETWEEN 'key-001000' AND 'key-001100' ORDER BY k").fetchall(),
        "aggregate": full.execute("SELECT count(*), sum(id), sum(length(v)) FROM t").fetchall(),
    }
    full.close()
    path = tmp_path / "p.db"
    conn = turso_sync.connect(
        path, seeded, encryption_key=KEY256, partial=turso_sync.PartialSync(prefix_bytes=64 * 1024)
    )
    try:
        start = conn.stats()
        assert start.pages_total is not None and start.pages_present is not None
        assert start.pages_present < start.pages_total
        points = [conn.execute("SELECT id, k, v FROM t WHERE id = ?", (i,)).fetchall() for i in (1, 777, 2999)]
        assert points == want["points"]
        after = conn.stats()
        assert after.lazy_requests and after.pages_present is not None
        assert start.pages_present < after.pages_present < after.pages_total
        rng = conn.execute("SELECT id FROM t WHERE k BETWEEN 'key-001000' AND 'key-001100' ORDER BY k").fetchall()
        assert rng == want["range"]
        assert conn.execute("SELECT count(*), sum(id), sum(length(v)) FROM t").fetchall() == want["aggregate"]
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        conn.execute("INSERT INTO t VALUES (9000, 'local', ?)", (f"{MARKER} local",))
        conn.commit()
        conn.push()
    finally:
        conn.close()
    assert_envelope(path)
    assert_no_plaintext(path)
    again = turso_sync.connect(path, encryption_key=KEY256)
    try:
        assert again.execute("SELECT v FROM t WHERE id = 9000").fetchone() == (f"{MARKER} local",)
    finally:
        again.close()


def test_a_passphrase_replica_of_tursodb_uses_the_envelope_layout(tmp_path: Path) -> None:
    with tursodb(tmp_path / "srv") as url:
        seed = turso_sync.connect(tmp_path / "seed.db", url)
        seed.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        seed.execute("INSERT INTO notes VALUES (1, ?)", (f"{MARKER} seed",))
        seed.commit()
        seed.push()
        seed.close()
        path = tmp_path / "pw.db"
        conn = turso_sync.connect(path, url, passphrase="correct horse battery staple")
        assert rows(conn) == [(1, f"{MARKER} seed")]
        conn.execute("INSERT INTO notes VALUES (2, ?)", (f"{MARKER} pw",))
        conn.commit()
        conn.push()
        conn.close()
        assert_envelope(path)
        assert_no_plaintext(path)
        with pytest.raises(turso_sync.EncryptionError, match="wrong encryption key"):
            turso_sync.connect(path, passphrase="wrong horse battery staple")
        conn = turso_sync.connect(path, passphrase="correct horse battery staple")
        assert rows(conn) == [(1, f"{MARKER} seed"), (2, f"{MARKER} pw")]
        conn.close()
