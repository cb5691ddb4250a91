"""The same sync cases over both APIs: ``turso_sync.connect`` and its asyncio twin ``turso_sync.aio``.

Each case is written once, against a small adapter whose methods are coroutines; for the
blocking API they call the blocking connection directly.  Both run the same sans-IO steps, so
both must end the same way: conflicts settled and journaled, a lost push answer applied exactly
once, a partial replica, a read-only token.  Then the asyncio-only promise: cancelling a long
poll, or a push in flight, stops the request and leaves the replica consistent.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import apsw
import pytest

import turso_sync
import turso_sync.aio
from tests.servers import primary
from turso_sync import errors
from turso_sync.sync.transport import AsyncHttpTransport, HttpResponse, HttpTransport

pytestmark = pytest.mark.peers


class Twin:
    """One replica through either API; every method is a coroutine."""

    def __init__(self, conn: Any, is_async: bool) -> None:
        self.conn = conn
        self.is_async = is_async

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.conn, name)(*args, **kwargs)
        return await result if self.is_async else result

    async def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        cursor = await self._call("execute", sql, params)
        return list(await cursor.fetchall() if self.is_async else cursor.fetchall())

    async def run(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        await self._call("execute", sql, params)

    async def script(self, sql: str) -> None:
        await self._call("executescript", sql)

    async def commit(self) -> None:
        await self._call("commit")

    async def pull(self, **kwargs: Any) -> bool:
        return bool(await self._call("pull", **kwargs))

    async def push(self) -> int:
        return int(await self._call("push"))

    async def sync(self) -> bool:
        return bool(await self._call("sync"))

    async def stats(self) -> Any:
        return await self._call("stats")

    async def conflicts(self) -> list[Any]:
        return list(await self._call("conflicts"))

    async def close(self) -> None:
        await self._call("close")

    @property
    def last_sync(self) -> Any:
        return self.conn.last_sync


class LosingTransport:
    """Loses the answer of the next push batch (it reaches the remote and commits); blocking."""

    def __init__(self, url: str) -> None:
        self.real = HttpTransport(url)
        self.stats = self.real.stats
        self.lose_next_batch = False

    def request(self, path: str, body: bytes, content_type: str, timeout: float, idempotent: bool) -> HttpResponse:
        response = self.real.request(path, body, content_type, timeout, idempotent)
        if self.lose_next_batch and path == "/v2/pipeline" and b"BEGIN IMMEDIATE" in body:
            self.lose_next_batch = False
            raise errors.NetworkError(f"cannot reach {path}: the answer was lost (injected)")
        return response

    def close(self) -> None:
        self.real.close()


class AsyncLosingTransport:
    """``LosingTransport``'s asyncio twin, over ``AsyncHttpTransport``."""

    def __init__(self, url: str) -> None:
        self.real = AsyncHttpTransport(url)
        self.stats = self.real.stats
        self.lose_next_batch = False

    async def request(
        self, path: str, body: bytes, content_type: str, timeout: float, idempotent: bool
    ) -> HttpResponse:
        response = await self.real.request(path, body, content_type, timeout, idempotent)
        if self.lose_next_batch and path == "/v2/pipeline" and b"BEGIN IMMEDIATE" in body:
            self.lose_next_batch = False
            raise errors.NetworkError(f"cannot reach {path}: the answer was lost (injected)")
        return response

    async def aclose(self) -> None:
        await self.real.aclose()


class Api:
    """``turso_sync.connect`` or ``turso_sync.aio.connect``, behind one coroutine."""

    def __init__(self, is_async: bool) -> None:
        self.is_async = is_async

    async def connect(self, path: Path, url: str | None = None, **kwargs: Any) -> Twin:
        if self.is_async:
            return Twin(await turso_sync.aio.connect(path, url, **kwargs), True)
        return Twin(turso_sync.connect(path, url, **kwargs), False)

    def losing_transport(self, url: str) -> Any:
        return AsyncLosingTransport(url) if self.is_async else LosingTransport(url)


@pytest.fixture(params=["blocking", "asyncio"])
def api(request: pytest.FixtureRequest) -> Api:
    return Api(request.param == "asyncio")


@pytest.mark.parametrize(("policy", "winner"), [("last_push_wins", "b"), ("remote_wins", "a")])
def test_a_conflict_is_settled_by_the_policy_and_journaled(api: Api, tmp_path: Path, policy: str, winner: str):
    async def scenario(url: str) -> None:
        a = await api.connect(tmp_path / "a.db", url, conflict=policy)
        b = await api.connect(tmp_path / "b.db", url, conflict=policy)
        await a.script("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'base');")
        assert await a.push() == 2
        assert await b.pull() is True
        await a.run("UPDATE t SET v = 'a' WHERE id = 1")
        await a.commit()
        await a.push()
        await b.run("UPDATE t SET v = 'b' WHERE id = 1")
        await b.commit()
        assert await b.sync() is True  # the push met a's change, pulled, and the policy settled it
        assert [len(b.last_sync.new_conflicts), b.last_sync.pending_changes] == [1, 0]
        (conflict,) = await b.conflicts()
        assert (conflict.kind, conflict.pk, conflict.remote, conflict.local) == (
            "update/update",
            {"id": 1},
            {"id": 1, "v": "a"},
            {"id": 1, "v": "b"},
        )
        await a.pull()
        for twin in (a, b):
            assert await twin.query("SELECT v FROM t") == [(winner,)]
            assert (await twin.stats()).pending_changes == 0
        await a.close()
        await b.close()

    with primary(tmp_path / "server") as url:
        asyncio.run(scenario(url))


def test_a_push_whose_answer_is_lost_is_applied_exactly_once(api: Api, tmp_path: Path):
    async def scenario(url: str) -> None:
        losing = api.losing_transport(url)
        a = await api.connect(tmp_path / "a.db", url, transport=losing)
        await a.script("CREATE TABLE log (who TEXT, n INTEGER);")  # no primary key: a replay would duplicate
        await a.push()
        for n in range(3):
            await a.run("INSERT INTO log VALUES ('a', ?)", (n,))
        await a.commit()
        losing.lose_next_batch = True
        with pytest.raises(errors.NetworkError, match="injected"):
            await a.push()
        assert (await a.stats()).pending_changes == 1  # not acknowledged: still pending locally
        assert await a.sync() is True  # the fence, the pull that brings it back, nothing sent twice
        assert (await a.stats()).pending_changes == 0
        b = await api.connect(tmp_path / "b.db", url)
        assert await b.query("SELECT n FROM log ORDER BY n") == [(0,), (1,), (2,)]
        assert await a.query("SELECT n FROM log ORDER BY n") == [(0,), (1,), (2,)]
        await a.close()
        await b.close()

    with primary(tmp_path / "server") as url:
        asyncio.run(scenario(url))


def seed(data_dir: Path, rows: int) -> None:
    """The primary's default database, written before it starts (as ``turso-sync serve`` creates them)."""
    path = data_dir / "databases" / "default" / "db"
    path.parent.mkdir(parents=True, exist_ok=True)
    db = apsw.Connection(str(path))
    db.reserve_bytes(reserve=28)
    db.execute("PRAGMA page_size=4096")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    with db:
        db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO t SELECT i, printf('row-%d-', i) || hex(randomblob(200)) FROM n",
            (rows,),
        )
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def test_a_partial_replica_reads_on_demand_and_syncs(api: Api, tmp_path: Path):
    rows = 3000

    async def scenario(url: str) -> None:
        part = await api.connect(
            tmp_path / "p.db", url, partial=turso_sync.PartialSync(prefix_bytes=64 * 1024, segment_size=16 * 1024)
        )
        start = await part.stats()
        assert start.pages_total is not None and start.pages_local is not None
        assert start.pages_local < start.pages_total / 4
        assert await part.query("SELECT count(*), sum(length(v) > 0) FROM t") == [(rows, rows)]  # fetched on demand
        assert (await part.stats()).pages_local == start.pages_total
        writer = await api.connect(tmp_path / "w.db", url)
        await writer.run("INSERT INTO t VALUES (?, 'from the writer')", (rows + 1,))
        await writer.commit()
        await writer.push()
        assert await part.pull() is True
        await part.run("UPDATE t SET v = 'from the partial replica' WHERE id = 1")
        await part.commit()
        assert await part.push() == 1
        await writer.pull()
        assert await writer.query("SELECT v FROM t WHERE id IN (1, ?) ORDER BY id", (rows + 1,)) == [
            ("from the partial replica",),
            ("from the writer",),
        ]
        await part.close()
        await writer.close()

    seed(tmp_path / "server", rows)
    with primary(tmp_path / "server") as url:
        asyncio.run(scenario(url))


def test_a_read_only_token_that_pushes_is_told_so(api: Api, tmp_path: Path):
    writer_token, reader_token = "writer-" + os.urandom(8).hex(), "reader-" + os.urandom(8).hex()
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{writer_token} rw *\n{reader_token} r *\n")
    tokens.chmod(0o600)

    async def scenario(url: str) -> None:
        writer = await api.connect(tmp_path / "w.db", url, auth_token=writer_token)
        await writer.script("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);")
        await writer.push()
        reader = await api.connect(tmp_path / "r.db", url, auth_token=reader_token)  # may pull
        await reader.run("INSERT INTO t VALUES (1, 'not allowed')")
        await reader.commit()
        with pytest.raises(errors.ReadOnlyTokenError, match="this token is read-only") as caught:
            await reader.push()
        assert caught.value.status == 403
        assert (await reader.stats()).pending_changes == 1
        await reader.close()
        await writer.close()

    with primary(tmp_path / "server", "--token-file", str(tokens)) as url:
        asyncio.run(scenario(url))


class Watched:
    """An async transport that says when a request of ``path`` is in flight, and whether it was cancelled.

    With ``after_answer``, the request is held after the remote answered (the remote has done it).
    """

    def __init__(self, url: str, path: str, *, after_answer: bool = False) -> None:
        self.real = AsyncHttpTransport(url)
        self.stats = self.real.stats
        self.path = path
        self.after_answer = after_answer
        self.armed = False
        self.in_flight = asyncio.Event()
        self.cancelled = False

    async def request(
        self, path: str, body: bytes, content_type: str, timeout: float, idempotent: bool
    ) -> HttpResponse:
        watched = self.armed and path == self.path and (b"BEGIN IMMEDIATE" in body or path != "/v2/pipeline")
        try:
            if watched and not self.after_answer:
                self.in_flight.set()
            response = await self.real.request(path, body, content_type, timeout, idempotent)
            if watched and self.after_answer:
                self.in_flight.set()
                await asyncio.Event().wait()  # the answer never comes
            return response
        except asyncio.CancelledError:
            self.cancelled = watched or self.cancelled
            raise

    async def aclose(self) -> None:
        await self.real.aclose()


def test_cancelling_a_long_poll_stops_the_request_and_keeps_the_replica(tmp_path: Path):
    async def scenario(url: str) -> None:
        a = await turso_sync.aio.connect(tmp_path / "a.db", url)
        await a.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);")
        await a.push()
        watched = Watched(url, "/pull-updates")
        b = await turso_sync.aio.connect(tmp_path / "b.db", url, transport=watched)
        await b.execute("INSERT INTO t VALUES (1, 'pending on b')")
        await b.commit()
        before = await b.stats()
        watched.armed = True
        poll = asyncio.create_task(b.pull(long_poll_timeout_ms=30000))
        await asyncio.wait_for(watched.in_flight.wait(), 10)
        poll.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(poll, 10)  # it ends now, not when the 30 s poll would have
        assert watched.cancelled  # the HTTP request itself was cancelled, not left running on a thread
        after = await b.stats()
        assert (after.revision, after.pending_changes, after.pulls) == (before.revision, 1, before.pulls)
        watched.armed = False
        # the replica is whole and keeps working: the same sync as if nothing had happened
        await a.execute("INSERT INTO t VALUES (2, 'from a')")
        await a.commit()
        await a.push()
        assert await b.sync() is True
        await a.pull()
        for conn in (a, b):
            cur = await conn.execute("SELECT id, v FROM t ORDER BY id")
            assert await cur.fetchall() == [(1, "pending on b"), (2, "from a")]
        cur = await b.execute("PRAGMA integrity_check")
        assert await cur.fetchall() == [("ok",)]
        await a.close()
        await b.close()

    with primary(tmp_path / "server") as url:
        asyncio.run(scenario(url))


def test_cancelling_a_push_in_flight_still_applies_it_exactly_once(tmp_path: Path):
    async def scenario(url: str) -> None:
        watched = Watched(url, "/v2/pipeline", after_answer=True)
        a = await turso_sync.aio.connect(tmp_path / "a.db", url, transport=watched)
        await a.executescript("CREATE TABLE log (n INTEGER);")  # no primary key: a replay would duplicate
        await a.push()
        await a.executemany("INSERT INTO log VALUES (?)", [(n,) for n in range(5)])
        await a.commit()
        watched.armed = True
        push = asyncio.create_task(a.push())
        await asyncio.wait_for(watched.in_flight.wait(), 10)  # the remote committed; the answer is held
        push.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(push, 10)
        watched.armed = False
        assert a.sync_connection.replica.state.push_in_doubt  # the next pull fences the batch off
        assert await a.sync() is True
        assert (await a.stats()).pending_changes == 0
        b = await turso_sync.aio.connect(tmp_path / "b.db", url)
        for conn in (a, b):
            cur = await conn.execute("SELECT n FROM log ORDER BY n")
            assert await cur.fetchall() == [(n,) for n in range(5)]
        await a.close()
        await b.close()

    with primary(tmp_path / "server") as url:
        asyncio.run(scenario(url))


def test_a_push_goes_on_while_a_pull_of_the_same_connection_long_polls(tmp_path: Path):
    """As with the blocking API (one thread polls, another pushes), a push does not wait for a long poll."""

    async def scenario(url: str) -> None:
        watched = Watched(url, "/pull-updates")
        a = await turso_sync.aio.connect(tmp_path / "a.db", url, transport=watched)
        await a.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);")
        await a.push()
        await a.pull()
        watched.armed = True
        poll = asyncio.create_task(a.pull(long_poll_timeout_ms=30000))
        await asyncio.wait_for(watched.in_flight.wait(), 10)
        await a.execute("INSERT INTO t VALUES (1, 'pushed during the poll')")
        await a.commit()
        assert await asyncio.wait_for(a.push(), 10) == 1  # not after the 30 s poll
        assert await asyncio.wait_for(poll, 10) is True  # the push itself is the remote's new commit
        assert (await a.stats()).pending_changes == 0
        b = await turso_sync.aio.connect(tmp_path / "b.db", url)
        cur = await b.execute("SELECT id, v FROM t")
        assert await cur.fetchall() == [(1, "pushed during the poll")]
        cur = await a.execute("SELECT id, v FROM t")
        assert await cur.fetchall() == [(1, "pushed during the poll")]
        await a.close()
        await b.close()

    with primary(tmp_path / "server") as url:
        asyncio.run(scenario(url))
