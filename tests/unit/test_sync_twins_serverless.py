"""The blocking API and the asyncio twin end the same way on the same remote, without a server.

``FakeRemote`` answers both (``MockTransport``, ``AsyncMockTransport``, and a blocking mock
handed to ``turso_sync.aio``); the summary of what each saw must be the same.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

import turso_sync
import turso_sync.aio
from tests.unit.fake_remote import FakeRemote, batch_response, committed, sqlite_pages
from turso_sync.sync.push import GUARD_FAIL
from turso_sync.sync.transport import TransferStats
from turso_sync.testing import AsyncMockTransport, MockTransport

URL = "https://remote.invalid"
SCHEMA = "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'base');"


async def summary(tmp_path: Path, api: str) -> list[Any]:
    """Bootstrap, a conflicting remote change, a sync that settles it, a push acknowledged once."""
    remote_file = tmp_path / "remote.db"
    remote = FakeRemote("r1", sqlite_pages(remote_file, SCHEMA))
    seen: list[Any] = []
    if api == "blocking":
        conn: Any = turso_sync.connect(tmp_path / "a.db", URL, transport=MockTransport(remote))

        async def call(name: str, *args: Any) -> Any:
            return getattr(conn, name)(*args)
    else:
        transport = AsyncMockTransport(remote) if api == "asyncio" else MockTransport(remote)
        conn = await turso_sync.aio.connect(tmp_path / "a.db", URL, transport=transport)

        async def call(name: str, *args: Any) -> Any:
            return await getattr(conn, name)(*args)

    async def rows() -> list[Any]:
        cursor = await call("execute", "SELECT id, v FROM t ORDER BY id")
        return list(await cursor.fetchall() if api != "blocking" else cursor.fetchall())

    await call("execute", "UPDATE t SET v = 'local' WHERE id = 1")
    await call("commit")
    remote.pages = sqlite_pages(tmp_path / "r2.db", "UPDATE t SET v = 'remote' WHERE id = 1;", start_from=remote_file)
    remote.revision = "r2"
    guards = iter([True])  # the first batch meets the remote change: its first guard fails

    def answer(steps: list[dict[str, Any]]) -> Any:
        result = committed(steps)
        if next(guards, False):
            result["step_results"] = [None] * len(steps)
            guard = next(  # a row's guard, not the push mark's compare-and-set (which fails the same way)
                i
                for i, step in enumerate(steps)
                if GUARD_FAIL in json.dumps(step) and "last_change_id" not in json.dumps(step)
            )
            result["step_errors"][guard] = {"message": "integer overflow", "code": "SQLITE_ERROR"}
        return batch_response(result)

    remote.answer = answer
    changed = await call("sync")
    result = conn.last_sync
    seen.append((changed, result.pushed, result.revision, result.pending_changes))
    seen.append([(c.kind, c.resolution, c.local, c.remote) for c in result.new_conflicts])
    seen.append(await rows())
    seen.append([json.dumps(batch).count('"local"') for batch in remote.batches])  # refused, then rebased
    seen.append((await call("stats")).pending_changes)
    seen.append(await call("pull"))
    await call("close")
    return seen


@pytest.mark.parametrize("api", ["asyncio", "asyncio over a blocking transport"])
def test_the_twins_end_the_same_way(tmp_path: Path, api: str) -> None:
    blocking = asyncio.run(summary(tmp_path / "blocking", "blocking"))
    twin = asyncio.run(summary(tmp_path / "twin", api))
    assert twin == blocking
    assert blocking == [
        (True, 1, "r2", 0),
        [("update/update", "local", {"id": 1, "v": "local"}, {"id": 1, "v": "remote"})],
        [(1, "local")],
        [1, 1],  # the same change: refused once (its guard), then sent again rebased on r2
        0,
        False,
    ]


@pytest.fixture(autouse=True)
def _dirs(tmp_path: Path) -> None:
    (tmp_path / "blocking").mkdir()
    (tmp_path / "twin").mkdir()


def test_a_partial_replica_of_the_twin_fetches_on_the_loop_and_refuses_to_block_it(tmp_path: Path) -> None:
    pages = sqlite_pages(
        tmp_path / "big.db",
        "CREATE TABLE b (x); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) "
        "INSERT INTO b SELECT randomblob(1000) FROM n;",
    )
    remote = FakeRemote("r1", pages)

    async def scenario() -> None:
        options = turso_sync.PartialSync(prefix_bytes=4 * 4096, segment_size=4096)
        conn = await turso_sync.aio.connect(
            tmp_path / "p.db", URL, transport=AsyncMockTransport(remote), partial=options
        )
        try:
            blocking = conn.sync_connection
            with pytest.raises(turso_sync.Error, match="event loop's thread"):
                blocking.execute("SELECT count(*) FROM b").fetchall()  # on the loop: would hang it
            cursor = await conn.execute("SELECT count(*) FROM b")
            assert await cursor.fetchall() == [(300,)]  # on the worker thread, fetched through the loop
            assert (await conn.stats()).pages_local == len(pages)
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_cancelling_the_twin_s_bootstrap_leaves_no_files(tmp_path: Path) -> None:
    class Holding:
        """An async transport whose first request never gets an answer."""

        def __init__(self) -> None:
            self.stats = TransferStats()
            self.asked = asyncio.Event()
            self.cancelled = False
            self.closed = False

        async def request(self, *args: Any) -> Any:
            self.asked.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise

        async def aclose(self) -> None:
            self.closed = True

    async def scenario() -> None:
        holding = Holding()
        task = asyncio.create_task(turso_sync.aio.connect(tmp_path / "new" / "a.db", URL, transport=holding))
        await asyncio.wait_for(holding.asked.wait(), 10)
        assert (tmp_path / "new" / "a.db-sync").exists()  # the bootstrap has begun
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert holding.cancelled and holding.closed

    (tmp_path / "new").mkdir()
    asyncio.run(scenario())
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == []
