"""The primary's databases on the in-memory store, without a server: ``DatabaseStore`` with a ``StoreBackend``.

Fast unit tier: pipelines run on real local databases (worker threads, real files), the store
is ``MemoryClient``.  The same paths run against ``weed mini`` and a real ``turso-sync serve``
in tests/integration/test_primary_store_*.py.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import KEY256
from turso_sync.primary.database import HostedDatabase
from turso_sync.primary.durable import StoreBackend, WriterElsewhere
from turso_sync.primary.objectstore import (
    DatabaseKeys,
    Deposed,
    LeaseRecord,
    MemoryClient,
    RevisionLog,
    StoreUnavailable,
    restore,
)
from turso_sync.primary.objectstore.memory import unavailable
from turso_sync.primary.store import DatabaseStore
from turso_sync.wire.hrana import PipelineRequest, encode_pipeline_response


def _pipeline(*sql: str) -> PipelineRequest:
    body = {"baton": None, "requests": [{"type": "execute", "stmt": {"sql": s}} for s in sql]}
    return PipelineRequest.from_bytes(json.dumps(body).encode())


async def _run(db: HostedDatabase, *sql: str) -> list[object]:
    """Run statements as one pipeline and wait until what it shows is durable (what the handler does)."""
    run = await db.call(db.run_pipeline, _pipeline(*sql).requests, False)
    await db.make_durable(run.seq)
    assert run.results is not None
    results: list[object] = json.loads(encode_pipeline_response(run.results))["results"]
    return results


async def _count(db: HostedDatabase) -> int:
    results = await _run(db, "SELECT count(*) FROM notes")
    first = results[0]
    assert isinstance(first, dict), first
    return int(first["response"]["result"]["rows"][0][0]["value"])


@pytest.mark.parametrize("key", [None, KEY256], ids=["plaintext", "encrypted"])
def test_commits_are_durable_and_a_deleted_cache_comes_back_from_the_store(tmp_path: Path, key: str | None) -> None:
    async def main() -> None:
        client = MemoryClient()

        async def open_store() -> DatabaseStore:
            backend = StoreBackend(client, "root", description="memory", lease_ttl=30)
            store = DatabaseStore(str(tmp_path / "data"), encryption_key=key, backend=backend)
            await store.start()
            return store

        store = await open_store()
        db = await store.get("default", create=True)
        await _run(db, "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        for i in range(5):
            await _run(db, f"INSERT INTO notes VALUES ({i}, 'row {i}')")
        local = await db.call(db.local_seq)
        assert db.durable is not None and db.durable.stored == local
        # the store down: the commit happens here, its durability fails, and it stays queued
        client.fault = unavailable
        with pytest.raises(StoreUnavailable):
            await _run(db, "INSERT INTO notes VALUES (5, 'while down')")
        assert db.durable.stored == local
        client.fault = None
        assert await _count(db) == 6  # this answer shows revision local + 1: it waits for (and uploads) it
        assert db.durable.stored == local + 1
        await store.close()  # releases the lease

        shutil.rmtree(tmp_path / "data")
        store = await open_store()
        assert store.names() == ["default"]
        db = await store.get("default", create=False)
        assert await _count(db) == 6
        assert db.durable is not None and db.durable.writer.epoch == 2
        await store.close()
        image = await restore(client, DatabaseKeys("root", "default"))
        assert image.revision == local + 2  # the second writer's takeover revision changes no page

    asyncio.run(main())


def test_a_second_store_is_refused_while_the_first_holds_the_lease(tmp_path: Path) -> None:
    async def main() -> None:
        client = MemoryClient()
        first = DatabaseStore(str(tmp_path / "a"), backend=StoreBackend(client, "", description="memory", lease_ttl=30))
        second = DatabaseStore(
            str(tmp_path / "b"), backend=StoreBackend(client, "", description="memory", lease_ttl=30)
        )
        await first.start()
        await second.start()
        db = await first.get("default", create=True)
        await _run(db, "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        with pytest.raises(WriterElsewhere, match="written by another server"):
            await second.get("default", create=True)
        assert not (tmp_path / "b" / "databases" / "default" / "db").exists()
        await first.close()
        await second.close()
        segments = await RevisionLog(client, DatabaseKeys("", "default")).segments_after(0)
        assert {s.epoch for s in segments} == {1}

    asyncio.run(main())


def test_a_writer_whose_lease_was_taken_stops_serving_its_copy(tmp_path: Path) -> None:
    async def main() -> None:
        client = MemoryClient()
        store = DatabaseStore(str(tmp_path / "a"), backend=StoreBackend(client, "", description="memory", lease_ttl=30))
        await store.start()
        db = await store.get("default", create=True)
        await _run(db, "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        assert db.durable is not None
        # another server takes the lease over (as it would after believing this one dead)
        key = DatabaseKeys("", "default").lease
        current = await client.get(key)
        record = LeaseRecord.from_bytes(key, current.data)
        taken = replace(record, owner="elsewhere", epoch=record.epoch + 1, renewals=0)
        await client.put_if_match(key, taken.to_bytes(), current.etag)
        with pytest.raises(Deposed):
            await db.durable.lease.renew()
        assert db.broken
        with pytest.raises(WriterElsewhere):  # not its stale copy: the next request is refused
            await store.get("default", create=False)
        await store.close()

    asyncio.run(main())
