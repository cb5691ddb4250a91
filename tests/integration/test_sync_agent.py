"""The sync agent against real servers: Turso's tursodb and our primary, on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import turso_sync
from tests.conftest import KEY256
from tests.servers import primary, tursodb
from turso_sync.sync.exchange import drive
from turso_sync.sync.pusher import PushOutcome, push_once

pytestmark = pytest.mark.peers


@pytest.fixture(params=["tursodb", "primary"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A running server of each kind."""
    launch = tursodb if request.param == "tursodb" else primary
    with launch(tmp_path / "server") as url:
        yield url


@pytest.fixture
def ours(tmp_path: Path) -> Iterator[str]:
    with primary(tmp_path / "server") as url:
        yield url


def rows(conn, sql: str = "SELECT * FROM t ORDER BY id"):
    return conn.execute(sql).fetchall()


@contextlib.contextmanager
def replicas(tmp_path: Path, url: str, n: int = 2, **kw) -> Iterator[list]:
    conns = [turso_sync.connect(tmp_path / f"r{i}.db", url, **kw) for i in range(n)]
    try:
        yield conns
    finally:
        for c in conns:
            c.close()


def test_bootstrap_offline_writes_push_pull_converge(tmp_path, server):
    with replicas(tmp_path, server) as (a, b):
        a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, n REAL, b BLOB)")
        a.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", [(i, f"a{i}", i / 3, bytes([i])) for i in range(50)])
        a.commit()
        assert a.stats().pending_changes == 2  # the CREATE (autocommit) and the insert transaction
        assert a.push() == 2
        assert a.stats().pending_changes == 0
        assert b.pull() is True
        assert rows(b) == rows(a)
        # both write while "offline", then sync
        a.execute("UPDATE t SET v = 'a-edit' WHERE id < 5")
        a.execute("DELETE FROM t WHERE id >= 45")
        a.commit()
        b.execute("INSERT INTO t VALUES (100, 'b-new', 1.5, x'00ff')")
        b.execute("UPDATE t SET n = -1 WHERE id BETWEEN 10 AND 12")
        b.commit()
        a.sync()
        b.sync()
        a.pull()
        assert rows(a) == rows(b)
        assert len(rows(a)) == 46
        assert rows(a, "SELECT v FROM t WHERE id = 1") == [("a-edit",)]
        assert rows(a, "SELECT b FROM t WHERE id = 100") == [(b"\x00\xff",)]
        for c in (a, b):
            assert c.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert c.stats().pending_changes == 0


def test_reconnect_reuses_saved_url_and_pulls_only_changes(tmp_path, server):
    path = tmp_path / "keep.db"
    with replicas(tmp_path, server, 1) as (w,):
        w.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        w.executemany("INSERT INTO t VALUES (?, ?)", [(i, "x" * 300) for i in range(2000)])
        w.commit()
        w.push()
        first = turso_sync.connect(path, server)
        full = first.stats().network_received_bytes
        first.close()
        w.execute("INSERT INTO t VALUES (5000, 'one more')")
        w.commit()
        w.push()
        again = turso_sync.connect(path)  # no URL: the saved one is used
        assert again.pull() is True
        delta = again.stats().network_received_bytes - full
        assert rows(again, "SELECT count(*) FROM t") == [(2001,)]
        assert 0 < delta < full / 5, (delta, full)
        again.close()


def test_schema_changes_are_pushed(tmp_path, server):
    with replicas(tmp_path, server) as (a, b):
        a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        a.execute("INSERT INTO t VALUES (1, 'x')")
        a.commit()
        a.execute("ALTER TABLE t ADD COLUMN extra TEXT DEFAULT 'd'")
        a.execute("CREATE INDEX t_v ON t(v)")
        a.execute("INSERT INTO t VALUES (2, 'y', 'z')")
        a.commit()
        a.push()
        b.pull()
        assert rows(b) == [(1, "x", "d"), (2, "y", "z")]
        assert rows(b, "SELECT name FROM sqlite_schema WHERE name = 't_v'") == [("t_v",)]


def test_encrypted_replicas_sync_and_keep_no_plaintext(tmp_path, ours):
    with replicas(tmp_path, ours, encryption_key=KEY256) as (a, b):
        a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        a.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"PLAINTEXT-MARKER {i}") for i in range(300)])
        a.commit()
        b.execute("CREATE TABLE IF NOT EXISTS notes (k INTEGER PRIMARY KEY, body TEXT)")
        b.execute("INSERT INTO notes VALUES (1, 'PLAINTEXT-MARKER pending in outbox')")
        b.commit()  # stays pending: sits in b's outbox
        a.push()
        b.pull()
        assert rows(b, "SELECT count(*) FROM t") == [(300,)]
        assert b.stats().pending_changes == 1  # its CREATE and INSERT stay pending, merged by the rebase
        for name in os.listdir(tmp_path):
            file = tmp_path / name
            if file.is_file() and name.startswith("r"):
                assert b"PLAINTEXT-MARKER" not in file.read_bytes(), name


def test_encrypted_replica_of_a_remote_without_reserved_bytes_takes_the_envelope_layout(tmp_path):
    """tursodb's pages reserve no bytes: an encrypted replica keeps them whole in larger slots."""
    with tursodb(tmp_path / "srv") as url:
        with replicas(tmp_path, url, 1) as (seed,):
            seed.execute("CREATE TABLE t (x)")
            seed.execute("INSERT INTO t VALUES ('visible only with the key')")
            seed.commit()
            seed.push()
        enc = turso_sync.connect(tmp_path / "enc.db", url, encryption_key=KEY256)
        assert enc.execute("SELECT x FROM t").fetchall() == [("visible only with the key",)]
        enc.close()
        head = (tmp_path / "enc.db").read_bytes()[:7]
        assert head[6] == 0x81, head  # the envelope layout's cipher id (docs/encryption.md)
        assert b"visible only with the key" not in (tmp_path / "enc.db").read_bytes()


def test_long_poll_returns_as_soon_as_a_push_commits(tmp_path, ours):
    with replicas(tmp_path, ours) as (a, b):
        a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        a.commit()
        a.push()
        b.pull()
        started = threading.Event()
        result: list[bool] = []

        def waiter() -> None:
            started.set()
            result.append(b.replica.pull(long_poll_timeout_ms=20000).changed)

        thread = threading.Thread(target=waiter)
        thread.start()
        started.wait(5)
        a.execute("INSERT INTO t VALUES (1, 'wake up')")
        a.commit()
        a.push()
        thread.join(15)  # far less than the 20 s poll: the commit wakes it
        assert not thread.is_alive(), "long-poll did not return after the push"
        assert result == [True]
        assert rows(b) == [(1, "wake up")]


def test_two_agents_on_one_replica_never_double_push_or_use_a_stale_base(tmp_path, ours):
    """An app and a daemon (two agents, two processes' worth of state) share one replica."""
    path = tmp_path / "shared.db"
    app = turso_sync.connect(path, ours)
    app.executescript("CREATE TABLE log (who TEXT, n INTEGER);")
    daemon = turso_sync.connect(path)  # a second agent on the same files
    app.executemany("INSERT INTO log VALUES ('app', ?)", [(i,) for i in range(100)])
    app.commit()
    results: list[object] = []

    def push(agent) -> None:
        try:
            results.append(agent.replica.push())
        except Exception as exc:  # surfaced below
            results.append(exc)

    threads = [threading.Thread(target=push, args=(agent,)) for agent in (app, daemon, app, daemon)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not [r for r in results if isinstance(r, Exception)], results
    other = turso_sync.connect(tmp_path / "other.db", ours)
    assert other.execute("SELECT count(*) FROM log").fetchone() == (100,)  # pushed exactly once
    other.execute("INSERT INTO log VALUES ('other', 1)")
    other.commit()
    other.push()
    assert daemon.pull() is True  # the daemon moves the synced base ...
    app.execute("INSERT INTO log VALUES ('app', 1000)")
    app.commit()
    other.execute("INSERT INTO log VALUES ('other', 2)")
    other.commit()
    other.push()
    assert app.pull() is True  # ... and the app's agent rebuilds from the new one, not its stale copy
    app.push()
    other.pull()
    for conn in (app, daemon, other):
        assert sorted(conn.execute("SELECT * FROM log")) == sorted(other.execute("SELECT * FROM log"))
        assert conn.execute("SELECT count(*) FROM log").fetchone() == (103,)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    for conn in (app, daemon, other):
        conn.close()


def test_autocommit_connections_on_a_replica_capture_every_write(tmp_path, ours):
    with replicas(tmp_path, ours) as (a, b):
        auto = turso_sync.connect(a.path, isolation_level=None)  # a second connection, autocommit
        auto.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        auto.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"auto{i}") for i in range(20)])
        auto.execute("UPDATE t SET v = 'changed' WHERE id < 5")
        auto.close()
        assert a.stats().pending_changes == 3
        a.push()
        b.pull()
        assert rows(b, "SELECT count(*), sum(v = 'changed') FROM t") == [(20, 5)]


def test_a_refused_push_commits_nothing_and_keeps_every_change_pending(tmp_path, server):
    with replicas(tmp_path, server) as (a, b):
        a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, email TEXT)")
        a.commit()
        a.push()
        b.pull()
        # the remote gains a UNIQUE index; b, offline, writes a batch whose last row breaks it
        a.execute("CREATE UNIQUE INDEX t_email ON t(email)")
        a.execute("INSERT INTO t VALUES (1, 'taken@example.com')")
        a.commit()
        a.push()
        b.executemany("INSERT INTO t VALUES (?, ?)", [(10, "ok1@example.com"), (11, "ok2@example.com")])
        b.execute("INSERT INTO t VALUES (12, 'taken@example.com')")
        b.commit()
        pending = b.stats().pending_changes
        with pytest.raises(turso_sync.PushRejectedError, match="UNIQUE"):
            with b.replica.exclusive():  # one attempt, before push() pulls to settle it
                drive(push_once(b.replica, 2000, PushOutcome()), b.replica.transport)
        assert b.stats().pending_changes == pending  # nothing forgotten
        a.pull()
        assert rows(a, "SELECT id FROM t ORDER BY id") == [(1,)]  # and nothing half-applied remotely
        # push() (and sync()) settle it: pull, the rebase meets the constraint, journals it, the rest goes
        b.push()
        a.pull()
        assert rows(a, "SELECT id FROM t ORDER BY id") == [(1,), (10,), (11,)]
        assert [c.kind for c in b.conflicts()] == ["constraint"]
        assert b.conflicts()[0].local == {"id": 12, "email": "taken@example.com"}


def test_an_interrupted_bootstrap_starts_over(tmp_path, ours):
    with replicas(tmp_path, ours, 1) as (seed,):
        seed.executescript("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        seed.push()
    path = tmp_path / "half.db"
    # what a kill -9 in the middle of a bootstrap leaves: the state says so, the file is a fragment
    from turso_sync.sync.state import SyncState

    SyncState(remote_url=ours, client_id="half-1", bootstrapping=True).save(str(path))
    path.write_bytes(b"\0" * 1000)
    conn = turso_sync.connect(path, ours)
    assert rows(conn, "SELECT x FROM t") == [(1,)]
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
