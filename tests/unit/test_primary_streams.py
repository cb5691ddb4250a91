"""Streams kept open between requests, without a server: the baton registry, and pulls beside an open write.

``StreamRegistry`` is the event loop's bookkeeping (batons, tokens, bounds); ``EnginePages``
reads pages without the write lock while a stream holds it, and must read exactly what the
engine's locked snapshot reads.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import apsw
import pytest

from tests.conftest import KEY256
from turso_sync.local.engine import LocalDatabase
from turso_sync.primary.database import EnginePages
from turso_sync.primary.streams import (
    StreamForbidden,
    StreamGone,
    StreamLimits,
    StreamRegistry,
    StreamsExhausted,
    TooManyStreams,
    token_digest,
)

A, B = token_digest("Bearer a"), token_digest("Bearer b")


def opened(registry: StreamRegistry, client: str = "c1", token: bytes = A, database: str = "default") -> Any:
    assert registry.reserve(client)
    return registry.add(
        object(),  # type: ignore[arg-type]
        object(),  # type: ignore[arg-type]
        database=database,
        client=client,
        token=token,
        read_only=False,
        bytes_in=10,
    )


def test_a_baton_is_good_for_one_request_of_its_token_and_database() -> None:
    registry = StreamRegistry(StreamLimits())
    stream = opened(registry)
    first = stream.baton
    assert len(first) >= 32
    with pytest.raises(StreamForbidden):
        registry.take(first, B, "default")
    with pytest.raises(StreamGone):
        registry.take(first, A, "other-db")
    assert registry.take(first, A, "default") is stream and stream.running
    with pytest.raises(StreamGone):
        registry.take(first, A, "default")  # spent
    second = registry.put_back(stream)
    assert second != first and not stream.running
    registry.drop(stream)
    with pytest.raises(StreamGone):
        registry.take(second, A, "default")
    assert len(registry) == 0 and registry.open_for("c1") == 0


def test_bounds_per_client_and_in_all() -> None:
    registry = StreamRegistry(StreamLimits(max_per_client=2, max_total=3))
    opened(registry)
    opened(registry)
    assert isinstance(registry.refusal("c1"), TooManyStreams) and not registry.reserve("c1")
    assert registry.reserve("c2")  # a reservation counts against the total too
    assert isinstance(registry.refusal("c3"), StreamsExhausted)
    registry.unreserve("c2")
    assert registry.refusal("c3") is None


def test_expired_streams_are_idle_or_old_and_never_running() -> None:
    registry = StreamRegistry(StreamLimits(idle_timeout_s=10, max_age_s=100))
    idle, busy, old = opened(registry), opened(registry, "c2"), opened(registry, "c3")
    registry.take(busy.baton, A, "default")
    busy.last_used = idle.last_used = idle.last_used - 20
    old.opened -= 200
    assert set(registry.expired()) == {idle, old}


def pages_of(tmp_path: Path, key: str | None) -> tuple[LocalDatabase, Any, Any, EnginePages]:
    engine = LocalDatabase(tmp_path / "db", encryption_key=key, reserved_bytes=28)
    conn = engine.connect(isolation_level=None, timeout=0)
    writer = engine.connect(isolation_level=None, timeout=0)
    waiting = [False]
    return engine, conn, writer, (EnginePages(engine, conn, writer_waiting=lambda: waiting[0]), waiting)


@pytest.mark.parametrize("key", [None, KEY256])
def test_pages_read_beside_an_open_write_are_the_committed_ones(tmp_path: Path, key: str | None) -> None:
    engine, conn, writer, (pages, waiting) = pages_of(tmp_path, key)
    db = writer.apsw_connection
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    for i in range(3):
        db.execute("INSERT INTO t VALUES (?, randomblob(3000))", (i,))
    middle = engine.current_seq()
    db.execute("UPDATE t SET v = randomblob(3000) WHERE id = 1")
    locked = {
        "all": engine.snapshot(None),
        "since": engine.snapshot(middle),
        "pinned": engine.snapshot_at(middle),
        "pinned_since": engine.snapshot_at(middle, None, 1),
    }
    # an open write transaction that spilled pages into the WAL, as a stream's between requests
    wal = Path(str(tmp_path / "db") + "-wal")
    committed_wal = wal.stat().st_size if wal.exists() else 0
    db.execute("PRAGMA cache_size = 2")
    db.execute("BEGIN IMMEDIATE")
    for i in range(100, 400):
        db.execute("INSERT INTO t VALUES (?, randomblob(3000))", (i,))
    assert wal.stat().st_size > committed_wal + 100 * 4096, "the open transaction spilled into the WAL"
    with pytest.raises(apsw.BusyError):
        conn.apsw_connection.execute("BEGIN IMMEDIATE")  # the engine's own snapshot would wait here
    waiting[0] = True
    unlocked = {
        "all": pages.snapshot(None),
        "since": pages.snapshot(middle),
        "pinned": pages.snapshot_at(middle),
        "pinned_since": pages.snapshot_at(middle, None, 1),
    }
    for name, snap in locked.items():
        other = unlocked[name]
        assert (other.seq, other.db_size) == (snap.seq, snap.db_size), name
        assert other.pages == snap.pages, name
    db.execute("ROLLBACK")
    for c in (conn, writer):
        c.close()
    engine.close()


def test_a_stream_kept_by_a_cancelled_request_is_rolled_back() -> None:
    from turso_sync.primary.app import _end_orphan
    from turso_sync.primary.database import PipelineRun

    ended: list[object] = []

    class FakeDb:
        def end_stream(self, stream: object) -> None:
            ended.append(stream)

        async def call(self, fn: Any, *args: Any) -> Any:
            return fn(*args)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        kept, plain = loop.create_future(), loop.create_future()
        kept.set_result(PipelineRun([], stream="the-stream"))  # type: ignore[arg-type]
        plain.set_result(PipelineRun([]))
        _end_orphan(FakeDb(), kept)  # type: ignore[arg-type]
        _end_orphan(FakeDb(), plain)  # type: ignore[arg-type]
        await asyncio.gather(*(t for t in asyncio.all_tasks() if t is not asyncio.current_task()))

    asyncio.run(main())
    assert ended == ["the-stream"]
