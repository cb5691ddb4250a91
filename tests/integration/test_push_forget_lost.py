"""Pushed outbox rows that come back (their forgetting lost in a power loss) are never applied twice.

The pusher forgets pushed rows in a commit that does not sync the WAL (``pusher._forget``), so
a power loss may bring them back.  Each case puts the rows back by hand right after a push, as
such a loss would, lets another replica change the same row, and then pushes or pulls first:
the pusher (by the push mark) and the rebase (by the mark in the pulled image) must both drop
the rows the remote holds, so the other replica's later change stays, everywhere.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

import turso_sync
from tests.conftest import KEY256
from tests.servers import primary
from turso_sync.local.capture import OUTBOX_TABLE


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with primary(tmp_path_factory.mktemp("primary")) as url:
        yield url


def outbox(conn: turso_sync.Connection) -> list[tuple[object, ...]]:
    return conn.replica.db.query(f"SELECT id, gen, ddl, changeset, created FROM {OUTBOX_TABLE} ORDER BY id")


def put_back(conn: turso_sync.Connection, rows: list[tuple[object, ...]]) -> None:
    """The outbox as it was before the push: its DELETE never reached the disk."""
    run = conn.replica.db.query
    run("BEGIN IMMEDIATE")
    for row in rows:
        run(f"INSERT INTO {OUTBOX_TABLE}(id, gen, ddl, changeset, created) VALUES (?, ?, ?, ?, ?)", row)
    run("COMMIT")


@pytest.mark.parametrize("first", ["push", "pull", "sync"])
@pytest.mark.parametrize("key", [None, KEY256], ids=["plaintext", "encrypted"])
def test_rows_pushed_and_back_in_the_outbox_are_not_applied_again(tmp_path, server, first, key):
    url = f"{server}/db/f{uuid.uuid4().hex[:12]}"
    a = turso_sync.connect(tmp_path / "a.db", url, encryption_key=key)
    a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    a.executemany("INSERT INTO t VALUES (?, ?)", [(i, "base") for i in range(20)])
    a.commit()
    a.push()
    b = turso_sync.connect(tmp_path / "b.db", url)

    a.execute("UPDATE t SET v = 'from a' WHERE id = 7")
    a.commit()
    a.execute("INSERT INTO t VALUES (100, 'new in a')")
    a.commit()
    rows = outbox(a)
    assert len(rows) == 2
    assert a.push()
    assert outbox(a) == []
    put_back(a, rows)  # as if the forgetting commit was lost
    assert a.stats().pending_changes == 2

    assert b.pull()
    assert b.execute("SELECT v FROM t WHERE id IN (7, 100) ORDER BY id").fetchall() == [("from a",), ("new in a",)]
    b.execute("UPDATE t SET v = 'from b' WHERE id = 7")
    b.execute("DELETE FROM t WHERE id = 100")
    b.commit()
    b.push()

    if first == "push":
        assert a.push() == 0  # nothing left to send: the remote holds both
    elif first == "pull":
        assert a.pull()
    else:
        a.sync()
    a.pull()
    assert a.stats().pending_changes == 0 and outbox(a) == []
    assert a.conflicts() == []  # not a conflict: the rows were the remote's already
    for conn in (a, b):
        conn.pull()
        assert conn.execute("SELECT v FROM t WHERE id IN (7, 100) ORDER BY id").fetchall() == [("from b",)]
        assert conn.execute("SELECT count(*) FROM t").fetchall() == [(20,)]
    a.close()
    b.close()
