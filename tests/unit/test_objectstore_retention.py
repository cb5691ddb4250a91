"""Retention against the in-memory store: what compaction deletes, and what stays restorable."""

from __future__ import annotations

import asyncio

import pytest

from turso_sync.primary.objectstore import (
    DatabaseKeys,
    LogWriter,
    MemoryClient,
    Revision,
    RevisionLog,
    RevisionNotStored,
    SnapshotImage,
    WriterLease,
    restore,
    revision_at_time,
)
from turso_sync.primary.objectstore.retention import compact

KEYS = DatabaseKeys("root", "db")
P = 256
DAY = 24 * 3600.0


def _page(n: int) -> bytes:
    return bytes([n % 256]) * P


def test_history_older_than_the_window_is_deleted_down_to_the_snapshot_that_rebuilds_it() -> None:
    async def main() -> None:
        store = MemoryClient()
        now = [0.0]
        store.clock = lambda: now[0]
        lease = WriterLease(store, KEYS.lease, "a", ttl=30)
        await lease.acquire(timeout=0)
        writer = await LogWriter.take_over(RevisionLog(store, KEYS), lease, page_size=P)  # revision 1, day 0
        images = {1: b""}
        for n in range(2, 21):  # revision n stored on day n; snapshots at 5, 10, 15, 20
            now[0] = n * DAY
            await writer.append([Revision(n, 1, {1: _page(n)})])
            images[n] = _page(n)
            if n % 5 == 0:
                assert await writer.write_snapshot(SnapshotImage(n, P, 1, _page(n)))
        # nothing is older than a 30-day window: nothing goes
        assert (await compact(store, KEYS, now=20 * DAY, retention_s=30 * DAY)).base is None
        # a 7-day window from day 20 starts at day 13: snapshot 10 (day 10) is the newest before it
        done = await compact(store, KEYS, now=20 * DAY, retention_s=7 * DAY)
        assert (done.base, done.snapshots_deleted, done.segments_deleted) == (10, 1, 9)
        log = RevisionLog(store, KEYS)
        assert await log.snapshot_revisions() == [10, 15, 20]
        # every revision from the base on restores; the base's time is still known
        for n in range(10, 21):
            assert (await restore(store, KEYS, n)).data == images[n]
        assert await revision_at_time(store, KEYS, 10.5 * DAY) == 10
        assert await revision_at_time(store, KEYS, 13 * DAY) == 13
        for n in (1, 5, 9):
            with pytest.raises(RevisionNotStored, match="older than the stored history, which begins at revision 10"):
                await restore(store, KEYS, n)
        # the writer goes on, and a new writer takes over from what is left
        now[0] = 21 * DAY
        await writer.append([Revision(21, 1, {1: _page(21)})])
        assert (await log.load()).snapshot is not None
        assert (await restore(store, KEYS)).data == _page(21)
        # compacting again with nothing new changes nothing
        again = await compact(store, KEYS, now=20 * DAY, retention_s=7 * DAY)
        assert (again.base, again.snapshots_deleted, again.segments_deleted) == (10, 0, 0)

    asyncio.run(main())
