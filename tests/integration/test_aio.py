"""turso_sync.aio: the asyncio twin, against a real primary."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import turso_sync.aio
from tests.conftest import KEY256
from tests.servers import primary

pytestmark = pytest.mark.peers


def test_async_replicas_write_push_pull(tmp_path):
    async def scenario(url: str) -> None:
        a = await turso_sync.aio.connect(tmp_path / "a.db", url, encryption_key=KEY256)
        b = await turso_sync.aio.connect(tmp_path / "b.db", url, encryption_key=KEY256)
        await a.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);")
        await a.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"v{i}") for i in range(10)])
        await a.commit()
        assert (await a.stats()).pending_changes == 2
        assert await a.push() == 2
        assert await b.pull() is True
        cur = await b.execute("SELECT count(*), max(v) FROM t")
        assert await cur.fetchone() == (10, "v9")
        # the event loop stays free while a long poll waits on the worker thread
        waiter = asyncio.create_task(b.pull(long_poll_timeout_ms=20000))
        ticks = 0
        while not waiter.done() and ticks < 3:
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 3 and not waiter.done()
        await a.execute("INSERT INTO t VALUES (99, 'late')")
        await a.commit()
        await a.push()
        assert await asyncio.wait_for(waiter, 15) is True
        cur = await b.execute("SELECT v FROM t WHERE id = 99")
        assert await cur.fetchall() == [("late",)]
        async with a:
            await a.execute("INSERT INTO t VALUES (100, 'ctx')")
        await b.close()

    with primary(tmp_path / "server") as url:
        asyncio.run(scenario(url))


def test_async_local_database(tmp_path):
    async def scenario() -> None:
        conn = await turso_sync.aio.connect(tmp_path / "local.db", encryption_key=KEY256)
        await conn.execute("CREATE TABLE t (x)")
        await conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(5)])
        await conn.commit()
        cur = await conn.execute("SELECT sum(x) FROM t")
        assert await cur.fetchone() == (10,)
        await conn.close()

    asyncio.run(scenario())


def test_async_partial_replica_fetches_lazily(tmp_path: Path) -> None:
    """``partial=`` passes through ``turso_sync.aio.connect``; lazy fetches run on the worker thread."""

    async def scenario(url: str) -> None:
        writer = await turso_sync.aio.connect(tmp_path / "w.db", url)
        await writer.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);")
        await writer.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"{i:04d}" + "x" * 1000) for i in range(2000)])
        await writer.commit()
        await writer.push()
        await writer.close()
        options = turso_sync.PartialSync(prefix_bytes=16 * 1024, segment_size=4096)
        part = await turso_sync.aio.connect(tmp_path / "p.db", url, partial=options)
        before = await part.stats()
        assert before.pages_total is not None and before.pages_present is not None
        assert before.pages_present < before.pages_total / 10
        cur = await part.execute("SELECT v FROM t WHERE id = ?", (1500,))
        assert (await cur.fetchone())[0].startswith("1500x")
        after = await part.stats()
        assert after.lazy_requests > 0 and after.lazy_bytes_fetched > 0
        assert after.pages_present < after.pages_total
        cur = await part.execute("SELECT count(*), sum(length(v)) FROM t")
        assert await cur.fetchone() == (2000, 2000 * 1004)
        await part.close()

    with primary(tmp_path / "server") as url:
        asyncio.run(scenario(url))
