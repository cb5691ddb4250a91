"""Edges users meet: sync calls on a local database, statements a replica refuses, partial-replica stats."""

from __future__ import annotations

import pytest

import turso_sync
from tests.unit.fake_remote import FakeRemote, sqlite_pages
from turso_sync import errors
from turso_sync.sync.partial import PartialSync

URL = "https://remote.invalid"


@pytest.fixture
def replica(tmp_path):
    remote = FakeRemote("r1", sqlite_pages(tmp_path / "remote.db", "CREATE TABLE t (x); INSERT INTO t VALUES (1);"))
    conn = turso_sync.connect(tmp_path / "a.db", URL, transport=remote.transport())
    yield conn
    conn.close()


@pytest.mark.parametrize("call", ["pull", "push", "sync"])
def test_a_sync_call_on_a_local_database_says_it_is_not_a_replica(tmp_path, call):
    conn = turso_sync.connect(tmp_path / "local.db")
    try:
        with pytest.raises(errors.NotAReplicaError) as caught:
            getattr(conn, call)()
        message = str(caught.value)
        assert str(tmp_path / "local.db") in message and "is not a replica" in message
        assert "open it with a remote URL, or clone it" in message
        assert isinstance(caught.value, turso_sync.ProgrammingError)
    finally:
        conn.close()


@pytest.mark.parametrize(
    "sql",
    [
        "PRAGMA journal_mode=DELETE",
        "PRAGMA main.journal_mode = wal",
        "ATTACH 'other.db' AS other",
        "DETACH other",
    ],
)
def test_a_replica_refuses_what_it_cannot_allow_and_keeps_working(replica, sql):
    with pytest.raises(errors.NotAllowedOnReplicaError, match="not allowed on a replica"):
        replica.execute(sql)
    assert replica.execute("PRAGMA journal_mode").fetchone() == ("wal",)  # reading it is fine
    replica.execute("INSERT INTO t VALUES (2)")
    replica.commit()
    assert replica.execute("SELECT count(*) FROM t").fetchone() == (2,)


def test_a_replica_still_vacuums(replica):
    replica.execute("VACUUM")  # SQLite attaches its own temporary database for it: not refused
    assert replica.execute("SELECT x FROM t").fetchall() == [(1,)]


def test_stats_give_pages_local_and_total_for_a_partial_replica_only(tmp_path, replica):
    assert (replica.stats().pages_local, replica.stats().pages_total) == (None, None)
    pages = sqlite_pages(
        tmp_path / "big.db",
        "CREATE TABLE b (x); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) "
        "INSERT INTO b SELECT randomblob(1000) FROM n;",
    )
    remote = FakeRemote("r1", pages)
    conn = turso_sync.connect(
        tmp_path / "partial.db", URL, transport=remote.transport(), partial=PartialSync(prefix_bytes=4 * 4096)
    )
    try:
        stats = conn.stats()
        assert stats.pages_total == len(pages)
        assert stats.pages_local == stats.pages_present and 1 <= stats.pages_local < len(pages)
        assert conn.execute("SELECT count(*) FROM b").fetchone() == (300,)  # the rest comes on demand
        after = conn.stats()
        assert after.pages_local == len(pages) and after.lazy_requests > 0
    finally:
        conn.close()


@pytest.mark.parametrize("call", ["pull", "push", "sync", "stats"])
def test_the_async_twin_says_the_same_of_a_local_database(tmp_path, call):
    import asyncio

    import turso_sync.aio

    async def scenario() -> None:
        conn = await turso_sync.aio.connect(tmp_path / "local.db")
        try:
            with pytest.raises(errors.NotAReplicaError, match="is not a replica"):
                await getattr(conn, call)()
        finally:
            await conn.close()

    asyncio.run(scenario())
