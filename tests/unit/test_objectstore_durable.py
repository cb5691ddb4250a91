"""What ``serve --store`` adds to the object-store layer, against the in-memory store (no server).

Waiting for a revision across a failed upload (``GroupCommit.wait_stored``), a lease left by
this process's own earlier writer, the revision durable at a time (``revision_at_time``), and
the store backend's refusal while another server holds a database's lease.
"""

from __future__ import annotations

import asyncio

import pytest

from turso_sync.primary.durable import StoreBackend, WriterElsewhere
from turso_sync.primary.objectstore import (
    DatabaseKeys,
    Deposed,
    GroupCommit,
    LogWriter,
    MemoryClient,
    Revision,
    RevisionLog,
    RevisionNotStored,
    StoreUnavailable,
    WriterLease,
    revision_at_time,
)
from turso_sync.primary.objectstore.memory import unavailable

KEYS = DatabaseKeys("root", "db")


def _page(n: int) -> bytes:
    return bytes([n % 256]) * 256


async def _writer(store: MemoryClient, owner: str = "a") -> LogWriter:
    lease = WriterLease(store, KEYS.lease, owner, ttl=30)
    await lease.acquire(timeout=0)
    return await LogWriter.take_over(RevisionLog(store, KEYS), lease, page_size=256)


def test_wait_stored_uploads_again_what_a_failed_upload_left_queued() -> None:
    async def main() -> None:
        store = MemoryClient()
        writer = await _writer(store)
        group = GroupCommit(writer)
        store.fault = unavailable
        first = group.enqueue(Revision(2, 1, {1: _page(2)}))
        with pytest.raises(StoreUnavailable):
            await first
        with pytest.raises(StoreUnavailable):
            await group.wait_stored(2)  # still down: the retry fails too, and says so
        assert writer.head.revision == 1
        store.fault = None
        group.enqueue(Revision(3, 1, {1: _page(3)}))
        await group.wait_stored(2)  # a later caller, waiting for the earlier revision: uploads both
        await group.wait_stored(3)
        assert writer.head.revision == 3
        segs = await RevisionLog(store, KEYS).segments_after(0)
        assert [r.number for s in segs for r in s.revisions] == [1, 2, 3]
        with pytest.raises(ValueError, match="never queued"):
            await group.wait_stored(4)

    asyncio.run(main())


def test_a_lease_left_by_this_process_is_taken_back_at_once_and_fences_the_old_writer() -> None:
    async def main() -> None:
        store = MemoryClient()
        old = await _writer(store, "host:1:ab")
        await old.append([Revision(2, 1, {1: _page(2)})])
        # the same process opens the database again (its old writer gave up): no TTL to wait
        again = WriterLease(store, KEYS.lease, "host:1:ab", ttl=30)
        assert await again.try_acquire()
        new = await LogWriter.take_over(RevisionLog(store, KEYS), again)
        assert (new.epoch, new.previous_head) == (old.epoch + 1, 2)
        with pytest.raises(Deposed):
            await old.append([Revision(3, 1, {1: _page(3)})])
        # another process does wait
        other = WriterLease(store, KEYS.lease, "host:2:cd", ttl=30)
        assert not await other.try_acquire()

    asyncio.run(main())


def test_revision_at_time_is_the_newest_stored_by_then() -> None:
    async def main() -> None:
        store = MemoryClient()
        now = [1000.0]
        store.clock = lambda: now[0]
        writer = await _writer(store)  # the takeover revision 1, at 1000
        for n in range(2, 6):
            now[0] += 10  # revisions 2..5 at 1010, 1020, 1030, 1040
            await writer.append([Revision(n, 1, {1: _page(n)})])
        assert await revision_at_time(store, KEYS, 1000) == 1
        assert await revision_at_time(store, KEYS, 1025) == 3
        assert await revision_at_time(store, KEYS, 1040) == 5
        assert await revision_at_time(store, KEYS, 9999) == 5
        with pytest.raises(RevisionNotStored, match="nothing was stored at or before 1970-01-01T00:16:39Z"):
            await revision_at_time(store, KEYS, 999)

    asyncio.run(main())


def test_the_backend_refuses_a_database_another_server_writes_and_takes_it_once_released() -> None:
    async def main() -> None:
        store = MemoryClient()
        holder = WriterLease(store, KEYS.lease, "elsewhere", ttl=30)
        await holder.acquire(timeout=0)
        backend = StoreBackend(store, "root", description="s3://bucket/root", lease_ttl=0.5)
        with pytest.raises(WriterElsewhere, match="database 'db' is written by another server"):
            await backend.take_lease("db")
        with pytest.raises(WriterElsewhere):
            await backend.take_lease("db")  # still held: the background watch has not taken it
        await holder.release()
        lease = None
        for _ in range(1000):  # the watch polls the lease; let it run until it holds it
            try:
                lease = await backend.take_lease("db")
                break
            except WriterElsewhere:
                await asyncio.sleep(0.01)
        assert lease is not None and lease.held() and lease.epoch == 2
        assert await backend.names() == {"db"}
        await lease.release()
        await backend.close()

    asyncio.run(main())
