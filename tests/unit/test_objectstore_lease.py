"""The writer lease against the in-memory store (fast; the same code runs against weed mini in
tests/integration/test_objectstore_s3.py).  Time is a fake clock each process owns."""

from __future__ import annotations

import asyncio

import pytest

from turso_sync.primary.objectstore.errors import Deposed, NotWriter, StoreUnavailable
from turso_sync.primary.objectstore.lease import LeaseRecord, WriterLease
from turso_sync.primary.objectstore.memory import MemoryClient

KEY = "databases/db/lease"


class Clock:
    """A monotonic clock a test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lease(client: MemoryClient, owner: str, clock: Clock, ttl: float = 10.0) -> WriterLease:
    return WriterLease(client, KEY, owner, ttl=ttl, clock=clock, wall=lambda: 1.7e9)


def test_first_holder_gets_epoch_1_and_a_standby_waits_a_ttl_of_its_own_clock() -> None:
    async def main() -> None:
        store = MemoryClient()
        ca, cb = Clock(), Clock()
        a, b = lease(store, "a", ca), lease(store, "b", cb)
        assert await a.try_acquire()
        assert a.epoch == 1 and a.held()
        assert not await b.try_acquire()  # b starts watching the body it saw
        cb.now += 9.9
        assert not await b.try_acquire()
        cb.now += 0.2  # unchanged for a whole ttl on b's clock: expired
        assert await b.try_acquire()
        assert b.epoch == 2
        # a still believes it holds the lease (its clock did not move), but the store says no
        assert a.held()
        with pytest.raises(Deposed):
            await a.renew()
        with pytest.raises(Deposed):
            a.check()

    asyncio.run(main())


def test_renewals_keep_a_standby_out_and_never_repeat_the_body() -> None:
    async def main() -> None:
        store = MemoryClient()
        ca, cb = Clock(), Clock()
        a, b = lease(store, "a", ca), lease(store, "b", cb)
        await a.acquire()
        etags = {(await store.get(KEY)).etag}
        for _ in range(5):
            ca.now += 3
            cb.now += 3
            await a.renew()
            etags.add((await store.get(KEY)).etag)
            assert not await b.try_acquire()
        assert len(etags) == 6  # every body differs, so an old ETag can never match again (ABA)
        assert LeaseRecord.from_bytes(KEY, store.objects[KEY]).renewals == 5

    asyncio.run(main())


def test_the_holder_stops_before_the_ttl_it_promised() -> None:
    async def main() -> None:
        store = MemoryClient()
        ca = Clock()
        a = lease(store, "a", ca)
        await a.acquire()
        ca.now += 10 * 0.9 + 0.01
        assert not a.held()
        with pytest.raises(NotWriter, match="does not hold an unexpired writer lease"):
            a.check()

    asyncio.run(main())


def test_a_released_lease_is_taken_at_once_with_the_next_epoch() -> None:
    async def main() -> None:
        store = MemoryClient()
        a, b = lease(store, "a", Clock()), lease(store, "b", Clock())
        await a.acquire()
        await a.release()
        assert not a.held()
        assert await b.try_acquire()
        assert b.epoch == 2

    asyncio.run(main())


def test_contenders_for_an_expired_lease_have_exactly_one_winner() -> None:
    async def main() -> None:
        for round_ in range(50):
            store = MemoryClient()
            old = lease(store, "old", Clock())
            await old.acquire()
            clocks = [Clock() for _ in range(8)]
            contenders = [lease(store, f"c{i}", c) for i, c in enumerate(clocks)]
            assert not any(await asyncio.gather(*(c.try_acquire() for c in contenders)))
            for c in clocks:
                c.now += 11
            won = await asyncio.gather(*(c.try_acquire() for c in contenders))
            assert sum(won) == 1, f"round {round_}: {won}"
            assert LeaseRecord.from_bytes(KEY, store.objects[KEY]).epoch == 2

    asyncio.run(main())


def test_a_corrupt_lease_names_its_key() -> None:
    async def main() -> None:
        store = MemoryClient()
        store.objects[KEY] = b"not json"
        with pytest.raises(Exception, match="databases/db/lease"):
            await lease(store, "a", Clock()).try_acquire()

    asyncio.run(main())


def lose_answers(store: MemoryClient, op: str) -> None:
    """Make the next ``op`` land in the store but answer StoreUnavailable (a lost response)."""
    original = getattr(store, op)

    async def lands_then_fails(*args: object) -> str:
        setattr(store, op, original)
        await original(*args)
        raise StoreUnavailable("answer lost")

    setattr(store, op, lands_then_fails)


def test_a_lease_write_whose_answer_was_lost_is_recognised() -> None:
    async def main() -> None:
        store = MemoryClient()
        a = lease(store, "a", Clock())
        lose_answers(store, "put_if_absent")
        assert await a.try_acquire()  # it landed: ours, not a stranger's lease to wait out
        assert a.epoch == 1 and a.held()

    asyncio.run(main())


def test_a_renewal_whose_answer_was_lost_does_not_depose_the_holder() -> None:
    async def main() -> None:
        store = MemoryClient()
        clock = Clock()
        a = lease(store, "a", clock)
        await a.acquire()
        lose_answers(store, "put_if_match")
        with pytest.raises(StoreUnavailable):
            await a.renew()  # landed, answer lost: a still holds the old ETag
        await a.renew()  # 412 on its own write: recognised by the epoch, not a deposition
        assert a.held() and LeaseRecord.from_bytes(KEY, store.objects[KEY]).renewals == 2

    asyncio.run(main())


def test_a_lease_that_ran_out_during_an_outage_is_renewed_in_place_if_nobody_took_it() -> None:
    async def main() -> None:
        store = MemoryClient()
        clock = Clock()
        a = lease(store, "a", clock)
        await a.acquire()
        clock.now += 20  # renewals failed for a while: the holder stopped counting on its lease
        with pytest.raises(NotWriter):
            a.check()
        await a.renew()  # the store is back and nobody took the lease: same epoch, held again
        assert a.held() and a.epoch == 1

    asyncio.run(main())


def test_a_lease_that_ran_out_and_was_taken_cannot_be_renewed() -> None:
    async def main() -> None:
        store = MemoryClient()
        ca, cb = Clock(), Clock()
        a, b = lease(store, "a", ca), lease(store, "b", cb)
        await a.acquire()
        await b.try_acquire()
        ca.now += 20
        cb.now += 20
        assert await b.try_acquire()
        with pytest.raises(Deposed):
            await a.renew()
        assert not a.held() and b.held()

    asyncio.run(main())
