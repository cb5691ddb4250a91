"""The revision log, its fencing, group commit and restore, against the in-memory store.

Fast unit tier: ``MemoryClient`` stands in for S3 here only; the same scenarios run against a
real ``weed mini`` in tests/integration/test_objectstore_s3.py.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from turso_sync.primary.objectstore import (
    DatabaseKeys,
    Deposed,
    GroupCommit,
    LogWriter,
    MemoryClient,
    NotWriter,
    Revision,
    RevisionLog,
    RevisionNotStored,
    SnapshotImage,
    StoreUnavailable,
    WriterLease,
    restore,
)
from turso_sync.primary.objectstore.segment import decode_segment

P = 256
KEYS = DatabaseKeys("root", "db")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Model:
    """The database image a sequence of revisions should produce, computed the obvious way."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.pages: list[bytes] = []
        self.images: dict[int, bytes] = {0: b""}

    def next(self, number: int) -> Revision:
        size = len(self.pages)
        new_size = max(1, size + self.rng.choice([-2, -1, 0, 0, 1, 3]))
        written: dict[int, bytes] = {}
        for pgno in range(size + 1, new_size + 1):
            written[pgno] = self.rng.randbytes(P)
        for pgno in self.rng.sample(range(1, new_size + 1), k=min(new_size, self.rng.randint(0, 3))):
            written[pgno] = self.rng.randbytes(P)
        self.pages = (self.pages + [b""] * new_size)[:new_size]
        for pgno, img in written.items():
            self.pages[pgno - 1] = img
        self.images[number] = b"".join(self.pages)
        return Revision(number, new_size, written)

    def note_empty(self, number: int) -> None:
        """A takeover revision changes nothing."""
        self.images[number] = b"".join(self.pages)


async def writer_on(store: MemoryClient, owner: str, clock: Clock, ttl: float = 10.0) -> LogWriter:
    lease = WriterLease(store, KEYS.lease, owner, ttl=ttl, clock=clock)
    await lease.acquire(timeout=0)
    return await LogWriter.take_over(RevisionLog(store, KEYS), lease, page_size=P)


def test_first_writer_appends_after_its_takeover_revision() -> None:
    async def main() -> None:
        store = MemoryClient()
        w = await writer_on(store, "a", Clock())
        assert (w.previous_head, w.head.revision, w.epoch) == (0, 1, 1)
        await w.append([Revision(2, 1, {1: b"x" * P}), Revision(3, 2, {2: b"y" * P})])
        assert w.head.revision == 3
        assert sorted(store.objects) == [KEYS.lease, KEYS.segment(1), KEYS.segment(2)]
        with pytest.raises(ValueError, match="does not follow the stored head 3"):
            await w.append([Revision(5, 1, {})])

    asyncio.run(main())


def test_restore_matches_the_model_at_every_revision_with_and_without_snapshots() -> None:
    async def main() -> None:
        store = MemoryClient()
        model = Model(7)
        w = await writer_on(store, "a", Clock())
        model.note_empty(1)
        n = 1
        snapshots = []
        for step in range(40):
            batch = [model.next(n + i + 1) for i in range(1 + step % 3)]  # groups of 1-3 revisions
            n += len(batch)
            await w.append(batch)
            if step in (10, 25):
                assert await w.write_snapshot(SnapshotImage(n, P, len(model.pages), model.images[n]))
                snapshots.append(n)
        assert await RevisionLog(store, KEYS).snapshot_revisions() == snapshots
        for at in range(0, n + 1):
            image = await restore(store, KEYS, at)
            assert (image.revision, image.data) == (at, model.images[at]), f"revision {at}"
        assert (await restore(store, KEYS)).data == model.images[n]
        with pytest.raises(RevisionNotStored, match=f"newest is {n}"):
            await restore(store, KEYS, n + 1)

    asyncio.run(main())


def test_history_before_the_oldest_snapshot_is_not_restorable_once_compacted() -> None:
    async def main() -> None:
        store = MemoryClient()
        model = Model(3)
        w = await writer_on(store, "a", Clock())
        model.note_empty(1)
        for n in range(2, 8):
            await w.append([model.next(n)])
        await w.write_snapshot(SnapshotImage(7, P, len(model.pages), model.images[7]))
        for n in range(1, 8):
            await store.delete(KEYS.segment(n))  # what retention will do
        assert (await restore(store, KEYS, 7)).data == model.images[7]
        with pytest.raises(RevisionNotStored, match="older than the stored history, which begins at revision 7"):
            await restore(store, KEYS, 5)

    asyncio.run(main())


def test_a_snapshot_must_sit_at_a_stored_segment_end() -> None:
    async def main() -> None:
        store = MemoryClient()
        w = await writer_on(store, "a", Clock())
        await w.append([Revision(2, 1, {1: b"a" * P}), Revision(3, 1, {1: b"b" * P})])
        with pytest.raises(ValueError, match="end of a segment"):
            await w.write_snapshot(SnapshotImage(2, P, 1, b"a" * P))
        assert await w.write_snapshot(SnapshotImage(3, P, 1, b"b" * P))
        assert not await w.write_snapshot(SnapshotImage(3, P, 1, b"b" * P))  # already there

    asyncio.run(main())


def test_a_deposed_writer_that_still_believes_in_its_lease_cannot_append() -> None:
    async def main() -> None:
        store = MemoryClient()
        ca, cb = Clock(), Clock()
        a = await writer_on(store, "a", ca)
        await a.append([Revision(2, 1, {1: b"a" * P})])
        lease_b = WriterLease(store, KEYS.lease, "b", ttl=10, clock=cb)
        assert not await lease_b.try_acquire()
        cb.now += 11  # a is paused (its clock does not move): b sees the lease expire
        assert await lease_b.try_acquire()
        b = await LogWriter.take_over(RevisionLog(store, KEYS), lease_b)
        assert a.lease.held()  # a has no idea
        with pytest.raises(Deposed, match="written by writer epoch 2"):
            await a.append([Revision(3, 1, {1: b"z" * P})])
        with pytest.raises(Deposed):
            await a.append([Revision(3, 1, {1: b"z" * P})])  # and stays deposed, without asking the store
        await b.append([Revision(4, 1, {1: b"b" * P})])
        assert (await restore(store, KEYS)).data == b"b" * P

    asyncio.run(main())


def test_an_old_writers_append_that_lands_first_is_kept_by_the_takeover() -> None:
    async def main() -> None:
        store = MemoryClient()
        ca, cb = Clock(), Clock()
        a = await writer_on(store, "a", ca)
        lease_b = WriterLease(store, KEYS.lease, "b", ttl=10, clock=cb)
        await lease_b.try_acquire()
        cb.now += 11
        await lease_b.try_acquire()
        # a's append lands after b read the head but before b's takeover write
        original = store.put_if_absent
        raced = False

        async def put_if_absent(key: str, data: bytes) -> str:
            nonlocal raced
            if not raced and key == KEYS.segment(2) and decode_segment(key, data).epoch == 2:
                raced = True
                store.put_if_absent = original  # type: ignore[method-assign]
                await a.append([Revision(2, 1, {1: b"a" * P})])  # acknowledged to a's client
            return await original(key, data)

        store.put_if_absent = put_if_absent  # type: ignore[method-assign]
        b = await LogWriter.take_over(RevisionLog(store, KEYS), lease_b)
        assert raced and b.previous_head == 2 and b.head.revision == 3
        assert (await restore(store, KEYS, 2)).data == b"a" * P  # a's acknowledged revision survived

    asyncio.run(main())


def test_a_write_whose_answer_was_lost_is_recognised_on_retry() -> None:
    async def main() -> None:
        store = MemoryClient()
        w = await writer_on(store, "a", Clock())
        original = store.put_if_absent

        async def lands_then_fails(key: str, data: bytes) -> str:
            await original(key, data)
            raise StoreUnavailable("answer lost")

        store.put_if_absent = lands_then_fails  # type: ignore[method-assign]
        with pytest.raises(StoreUnavailable):
            await w.append([Revision(2, 1, {1: b"a" * P})])
        assert w.head.revision == 1  # not acknowledged
        store.put_if_absent = original  # type: ignore[method-assign]
        # the retry carries one more revision; the first is found stored, the second goes next
        await w.append([Revision(2, 1, {1: b"a" * P}), Revision(3, 1, {1: b"b" * P})])
        assert w.head.revision == 3
        assert (await restore(store, KEYS)).data == b"b" * P

    asyncio.run(main())


def test_an_expired_lease_refuses_appends_before_touching_the_store() -> None:
    async def main() -> None:
        store = MemoryClient()
        clock = Clock()
        w = await writer_on(store, "a", clock)
        clock.now += 9.5
        before = store.requests
        with pytest.raises(NotWriter):
            await w.append([Revision(2, 1, {1: b"a" * P})])
        assert store.requests == before

    asyncio.run(main())


def test_racing_writers_never_both_append_and_lose_no_acknowledged_revision() -> None:
    """Two writers both convinced they hold the lease, racing appends; many rounds, random delays."""

    async def round_(seed: int) -> None:
        rng = random.Random(seed)
        store = MemoryClient()
        ca, cb = Clock(), Clock()
        a = await writer_on(store, "a", ca)
        lease_b = WriterLease(store, KEYS.lease, "b", ttl=10, clock=cb)
        await lease_b.try_acquire()
        cb.now += 11
        assert await lease_b.try_acquire()
        acked: list[tuple[int, bytes]] = []

        took_over = asyncio.Event()

        async def append(w: LogWriter, name: str) -> bool:
            for _ in range(rng.randint(0, 4)):
                await asyncio.sleep(0)
            n = w.head.revision + 1
            body = f"{name}{n}".encode().ljust(P, b".")
            try:
                await w.append([Revision(n, 1, {1: body})])
            except Deposed:
                return False
            acked.append((n, body))
            return True

        async def run_a() -> None:
            # a appends on, unaware, until it is refused or b has appended a while
            after = 0
            for _ in range(500):
                if not await append(a, "a"):
                    return
                after += took_over.is_set()
                if after >= 6:
                    return

        async def run_b() -> None:
            for _ in range(rng.randint(0, 12)):  # b's takeover starts somewhere among a's appends
                await asyncio.sleep(0)
            b = await LogWriter.take_over(RevisionLog(store, KEYS), lease_b)
            took_over.set()
            for _ in range(6):
                assert await append(b, "b")

        await asyncio.gather(run_a(), run_b())
        state = await RevisionLog(store, KEYS).load()
        stored = {r.number: (seg.epoch, r.pages.get(1)) for seg in state.segments for r in seg.revisions}
        numbers = sorted(stored)
        assert numbers == list(range(1, numbers[-1] + 1))  # one linear history
        assert len({n for n, _ in acked}) == len(acked), f"seed {seed}: a revision number acknowledged twice"
        for n, body in acked:
            assert stored[n][1] == body, f"seed {seed}: acknowledged revision {n} lost"
        epochs = [stored[n][0] for n in numbers]
        assert epochs == sorted(epochs), f"seed {seed}: epoch 1 wrote after epoch 2 took over: {epochs}"

    async def main() -> None:
        for seed in range(200):
            await round_(seed)

    asyncio.run(main())


def test_group_commit_ships_revisions_that_arrive_together_as_few_objects() -> None:
    async def main() -> None:
        store = MemoryClient()
        w = await writer_on(store, "a", Clock())
        group = GroupCommit(w)
        await asyncio.gather(*(group.commit(Revision(n, 1, {1: bytes([n]) * P})) for n in range(2, 52)))
        assert w.head.revision == 51
        assert group.uploads < 10  # 50 revisions, queued at once
        assert (await restore(store, KEYS)).data == bytes([51]) * P
        with pytest.raises(ValueError, match="does not follow revision 51"):
            await group.commit(Revision(53, 1, {}))

    asyncio.run(main())


class _Outage:
    """Makes ``store``'s conditional writes fail with StoreUnavailable while ``down`` is set (from the start)."""

    def __init__(self, store: MemoryClient) -> None:
        self.down = True
        store.fault = self._fault

    def _fault(self, op: str, key: str) -> None:
        if self.down and op == "put_if_absent":
            raise StoreUnavailable("down")


def test_group_commit_keeps_revisions_queued_while_the_store_is_down() -> None:
    async def main() -> None:
        store = MemoryClient()
        w = await writer_on(store, "a", Clock())
        group = GroupCommit(w)
        outage = _Outage(store)
        with pytest.raises(StoreUnavailable):
            await group.commit(Revision(2, 1, {1: b"a" * P}))
        with pytest.raises(StoreUnavailable):
            await group.flush()
        outage.down = False
        await group.commit(Revision(3, 1, {1: b"b" * P}))  # ships 2 and 3 together
        assert w.head.revision == 3
        assert (await restore(store, KEYS, 2)).data == b"a" * P

    asyncio.run(main())


def test_group_commit_fails_every_waiter_once_deposed() -> None:
    async def main() -> None:
        store = MemoryClient()
        a = await writer_on(store, "a", Clock())
        group = GroupCommit(a)
        clock_b = Clock()
        lease_b = WriterLease(store, KEYS.lease, "b", ttl=10, clock=clock_b)
        await lease_b.try_acquire()
        clock_b.now += 11
        await lease_b.try_acquire()
        await LogWriter.take_over(RevisionLog(store, KEYS), lease_b)
        results = await asyncio.gather(
            *(group.commit(Revision(n, 1, {1: b"a" * P})) for n in range(2, 6)), return_exceptions=True
        )
        assert all(isinstance(r, Deposed) for r in results)
        with pytest.raises(Deposed):
            await group.commit(Revision(6, 1, {}))

    asyncio.run(main())


def test_a_standby_that_kept_up_reads_only_what_came_after_it() -> None:
    async def main() -> None:
        store = MemoryClient()
        ca, cb = Clock(), Clock()
        a = await writer_on(store, "a", ca)
        for n in range(2, 30):
            await a.append([Revision(n, 1, {1: bytes([n]) * P})])
        known = await RevisionLog(store, KEYS).load()  # the standby follows the log
        for n in range(30, 33):
            await a.append([Revision(n, 1, {1: bytes([n]) * P})])
        lease_b = WriterLease(store, KEYS.lease, "b", ttl=10, clock=cb)
        await lease_b.try_acquire()
        cb.now += 11
        await lease_b.try_acquire()
        gets: list[str] = []
        store.fault = lambda op, key: gets.append(key) if op == "get" else None
        b = await LogWriter.take_over(RevisionLog(store, KEYS), lease_b, known=known)
        assert b.previous_head == 32 and b.head.revision == 33
        assert sorted(gets) == [KEYS.segment(n) for n in (30, 31, 32)]
        assert b.loaded is not None and b.loaded.segments[-1].last == 32

    asyncio.run(main())


def test_group_commit_hands_an_unforeseen_error_to_its_waiters_instead_of_hanging() -> None:
    async def main() -> None:
        store = MemoryClient()
        w = await writer_on(store, "a", Clock())
        group = GroupCommit(w)
        store.objects[KEYS.segment(2)] = b"garbage"  # what a foreign tool might leave

        with pytest.raises(Exception, match="corrupt"):
            await asyncio.wait_for(group.commit(Revision(2, 1, {1: b"a" * P})), 10)
        del store.objects[KEYS.segment(2)]
        await asyncio.wait_for(group.commit(Revision(3, 1, {1: b"b" * P})), 10)
        assert w.head.revision == 3

    asyncio.run(main())


def _gated(writer: LogWriter) -> asyncio.Event:
    """Hold every ``writer.append`` until the returned event is set (an upload kept in flight)."""
    gate = asyncio.Event()
    append = writer.append

    async def held(revisions: list[Revision]) -> None:
        await gate.wait()
        await append(revisions)

    writer.append = held  # type: ignore[method-assign,assignment]
    return gate


@pytest.mark.parametrize("waiting", ["commit", "wait_stored"])
def test_a_revision_queued_behind_an_upload_is_stored_with_no_later_push(waiting: str) -> None:
    """The last revision to queue while an upload is in flight goes out when that upload ends,
    not when some later revision arrives (there may be none: it was the last push)."""

    async def main() -> None:
        store = MemoryClient()
        w = await writer_on(store, "a", Clock())
        group = GroupCommit(w)
        gate = _gated(w)
        first = asyncio.ensure_future(group.commit(Revision(2, 1, {1: b"a" * P})))
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the upload of 2 is in flight, held at the gate
        if waiting == "commit":
            second = asyncio.ensure_future(group.commit(Revision(3, 1, {1: b"b" * P})))
        else:
            group.enqueue(Revision(3, 1, {1: b"b" * P}))
            second = asyncio.ensure_future(group.wait_stored(3))
        await asyncio.sleep(0)
        assert not first.done() and not second.done()
        gate.set()
        await asyncio.wait_for(asyncio.gather(first, second), 10)
        assert w.head.revision == 3
        assert group.uploads == 2  # 2 alone (in flight when 3 came), then 3
        assert (await restore(store, KEYS)).data == b"b" * P

    asyncio.run(main())


def test_a_failed_upload_fails_the_revisions_queued_behind_it_too() -> None:
    """A waiter whose revision queued behind a failing upload hears the error (a 503 its client
    retries) instead of waiting for an upload nobody starts; the retry stores both."""

    async def main() -> None:
        store = MemoryClient()
        w = await writer_on(store, "a", Clock())
        group = GroupCommit(w)
        outage = _Outage(store)
        gate = _gated(w)
        first = asyncio.ensure_future(group.commit(Revision(2, 1, {1: b"a" * P})))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        second = asyncio.ensure_future(group.commit(Revision(3, 1, {1: b"b" * P})))
        await asyncio.sleep(0)
        gate.set()
        results = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), 10)
        assert [type(r) for r in results] == [StoreUnavailable, StoreUnavailable]
        assert w.head.revision == 1
        outage.down = False
        await asyncio.wait_for(group.wait_stored(3), 10)  # the retried push
        assert w.head.revision == 3
        assert (await restore(store, KEYS, 2)).data == b"a" * P

    asyncio.run(main())
