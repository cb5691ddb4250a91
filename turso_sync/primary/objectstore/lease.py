"""The writer lease of one database: who may append, until when, and under which epoch.

The lease is one small JSON object, ``{"owner", "epoch", "renewals", "expires_at", "ttl",
"released"}``, only ever replaced with ``If-Match`` on the ETag last read (or created with
``If-None-Match``), so two processes can never both win it.  ``epoch`` grows by one at every
change of holder and ``renewals`` at every renewal: the body never repeats, so an old ETag
(the MD5 of the body) can never match again (the ABA problem of a CAS on content hashes).

Time: each side judges expiry on its own monotonic clock, never by comparing wall clocks.
The holder counts its lease valid until ``ttl * (1 - margin)`` after it *sent* its last
successful renewal; a standby counts the lease expired once the same lease body (ETag) has
stayed unchanged for ``ttl`` since it first saw it.  The renewal was sent before the standby
could see it, so with clocks that run at about the same rate the holder stops before the
standby starts.  ``expires_at`` (wall clock) is written for operators to read, not trusted.

The lease keeps the hand-over orderly; it is not what prevents a forked history.  That is
the revision log's job (``revlog``): every append is a create-only write of the next
revision number, and a new writer first appends a takeover revision, so a deposed writer's
append fails even if its lease clock is wrong.  A released lease (clean shutdown) is taken
over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from .client import ObjectClient
from .errors import CorruptObject, Deposed, NotWriter, ObjectNotFound, PreconditionFailed, StoreUnavailable

log = logging.getLogger("turso_sync.primary.objectstore")

#: Part of the TTL the holder gives up, against clocks that run at slightly different rates.
SAFETY_MARGIN = 0.1


@dataclass(frozen=True)
class LeaseRecord:
    """The lease object's body."""

    owner: str
    epoch: int
    renewals: int
    expires_at: float
    ttl: float
    released: bool = False

    def to_bytes(self) -> bytes:
        """The JSON body."""
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, key: str, data: bytes) -> LeaseRecord:
        """The record in ``data``; CorruptObject naming ``key`` if it is not one."""
        try:
            raw = json.loads(data)
            return cls(
                str(raw["owner"]),
                int(raw["epoch"]),
                int(raw["renewals"]),
                float(raw["expires_at"]),
                float(raw["ttl"]),
                bool(raw.get("released", False)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptObject(key, f"it is not a lease record ({exc})") from None


class WriterLease:
    """This process's side of one database's writer lease: acquire, renew, release, check.

    ``clock`` (monotonic seconds) and ``wall`` (Unix time) can be replaced in tests.
    """

    def __init__(
        self,
        client: ObjectClient,
        key: str,
        owner: str,
        *,
        ttl: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"lease ttl {ttl} must be positive")
        self.client = client
        self.key = key
        self.owner = owner
        self.ttl = ttl
        self._clock = clock
        self._wall = wall
        self.record: LeaseRecord | None = None  # ours, while we hold it
        self._etag: str | None = None
        self._valid_until = float("-inf")
        self._lost = False
        self._seen: tuple[str, float] | None = None  # (etag, when first seen) of another's lease
        self._renewer: asyncio.Task[None] | None = None

    # --- state -----------------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The epoch of the lease we hold (0 if none)."""
        return self.record.epoch if self.record is not None else 0

    @property
    def lost(self) -> bool:
        """True once another writer took the lease from us (seen by a renewal or by the log)."""
        return self._lost

    def held(self) -> bool:
        """True while we hold an unexpired lease (by our own clock) that we have not seen lost."""
        return self.record is not None and not self._lost and self._clock() < self._valid_until

    def remaining(self) -> float:
        """Seconds of validity left (0 when not held)."""
        return max(0.0, self._valid_until - self._clock()) if self.held() else 0.0

    def check(self) -> None:
        """Raise unless ``held()``: Deposed if another writer took the lease, else NotWriter."""
        if self._lost:
            raise Deposed(f"the writer lease {self.key} was taken by another writer; this one is deposed")
        if not self.held():
            raise NotWriter(
                f"this process does not hold an unexpired writer lease ({self.key}); "
                "the store may be unreachable: writes are refused until it renews"
            )

    def mark_deposed(self) -> None:
        """Record that another writer took over (seen by the revision log): never valid again."""
        self._lost = True
        self._valid_until = float("-inf")

    # --- acquiring ---------------------------------------------------------------------------------

    def _new_record(self, epoch: int, renewals: int, released: bool = False) -> LeaseRecord:
        return LeaseRecord(self.owner, epoch, renewals, self._wall() + self.ttl, self.ttl, released)

    async def try_acquire(self) -> bool:
        """One attempt to take the lease; True if we hold it now.

        Takes it when there is none, when it is released, or when its body has not changed
        for a TTL of our clock since we first saw it.  Raises StoreUnavailable.
        """
        if self.held():
            return True
        if self._lost:
            return False
        try:
            current = await self.client.get(self.key)
        except ObjectNotFound:
            return await self._install(None, self._new_record(1, 0))
        other = LeaseRecord.from_bytes(self.key, current.data)
        now = self._clock()
        if self._seen is None or self._seen[0] != current.etag:
            self._seen = (current.etag, now)
        unchanged_for = now - self._seen[1]
        # an owner name is unique to one process (see ``durable.StoreBackend``): a lease that names
        # us was left by this process's own earlier writer, which stopped appending before letting go
        ours = other.owner == self.owner
        if not other.released and not ours and unchanged_for < max(self.ttl, other.ttl):
            return False
        return await self._install(current.etag, self._new_record(other.epoch + 1, 0))

    async def _install(self, etag: str | None, record: LeaseRecord) -> bool:
        sent = self._clock()
        body = record.to_bytes()
        new_etag: str | None
        try:
            if etag is None:
                new_etag = await self.client.put_if_absent(self.key, body)
            else:
                new_etag = await self.client.put_if_match(self.key, body, etag)
        except PreconditionFailed:
            self._seen = None  # someone else changed it (or our own retried write did): look again
            new_etag = await self._ours(body)
            if new_etag is None:
                return False
        except StoreUnavailable:
            new_etag = await self._ours(body)  # the write may have landed and only its answer was lost
            if new_etag is None:
                raise
        assert new_etag is not None
        self.record, self._etag = record, new_etag
        self._valid_until = sent + record.ttl * (1 - SAFETY_MARGIN)
        self._seen = None
        log.info("writer lease %s taken by %s, epoch %d", self.key, self.owner, record.epoch)
        return True

    async def _ours(self, body: bytes) -> str | None:
        """The ETag of the lease if it holds exactly ``body`` (a write of ours that landed), else None."""
        try:
            current = await self.client.get(self.key)
        except (ObjectNotFound, StoreUnavailable):
            return None
        return current.etag if current.data == body else None

    async def acquire(self, timeout: float | None = None, poll: float | None = None) -> None:
        """Wait until we hold the lease (``try_acquire`` every ``poll`` seconds, default ttl/4).

        Raises TimeoutError after ``timeout`` seconds; StoreUnavailable errors are retried.
        """
        poll = self.ttl / 4 if poll is None else poll
        deadline = None if timeout is None else self._clock() + timeout
        while True:
            try:
                if await self.try_acquire():
                    return
            except StoreUnavailable as exc:
                log.warning("writer lease %s: %s", self.key, exc)
            if deadline is not None and self._clock() >= deadline:
                raise TimeoutError(f"the writer lease {self.key} stayed held by another writer for {timeout}s")
            await asyncio.sleep(poll)  # the lease is another process's: nothing to wake us but time

    # --- holding ---------------------------------------------------------------------------------

    async def renew(self) -> None:
        """Extend the lease by a TTL; Deposed if it was taken, StoreUnavailable if the store failed.

        After a StoreUnavailable the lease stays valid until its time runs out.  A lease that ran
        out on our clock (the store was unreachable) but that nobody took is renewed in place,
        under the same epoch: the write is conditional on the ETag we last wrote, so it fails
        if anyone changed the lease meanwhile.
        """
        if self._lost:
            self.check()
        if self.record is None or self._etag is None:
            raise NotWriter(f"this process never took the writer lease {self.key}, or released it")
        record = self._new_record(self.record.epoch, self.record.renewals + 1)
        sent = self._clock()
        try:
            etag = await self.client.put_if_match(self.key, record.to_bytes(), self._etag)
        except PreconditionFailed:
            # a renewal whose answer was lost may have landed: the lease is still ours if it
            # carries our epoch (only we write it); then the next renewal starts from there
            try:
                current = await self.client.get(self.key)
            except ObjectNotFound:
                self.mark_deposed()
                raise Deposed(f"the writer lease {self.key} was deleted while we held it") from None
            found = LeaseRecord.from_bytes(self.key, current.data)
            if found.epoch != self.record.epoch or found.owner != self.owner or found.released:
                self.mark_deposed()
                raise Deposed(f"the writer lease {self.key} was taken by another writer while we held it") from None
            self.record, self._etag = found, current.etag
            return await self.renew()
        self.record, self._etag = record, etag
        self._valid_until = sent + record.ttl * (1 - SAFETY_MARGIN)

    def start_renewing(self, interval: float | None = None) -> None:
        """Renew in the background every ``interval`` seconds (default ttl/3) until lost or released."""
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_loop(interval or self.ttl / 3))

    async def _renew_loop(self, interval: float) -> None:
        while self.record is not None and not self._lost:
            await asyncio.sleep(interval)  # a period, not a wait for a condition
            try:
                await self.renew()
            except Deposed:
                log.error("writer lease %s lost to another writer: appends stop", self.key)
                return
            except NotWriter:
                return  # released meanwhile
            except StoreUnavailable as exc:
                # appends stop by themselves once the time runs out; keep trying to renew
                log.warning("writer lease %s not renewed (%.1fs left): %s", self.key, self.remaining(), exc)

    async def stop_renewing(self) -> None:
        """Stop the background renewals (the lease runs out by itself unless released)."""
        task, self._renewer = self._renewer, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def release(self) -> None:
        """Give the lease up (clean shutdown), so a standby takes over at once; a lost lease is left alone."""
        await self.stop_renewing()
        if self.record is None or self._lost or self._etag is None:
            return
        record = self._new_record(self.record.epoch, self.record.renewals + 1, released=True)
        self._valid_until = float("-inf")  # stop appending before the store hears of it
        with contextlib.suppress(PreconditionFailed):
            await self.client.put_if_match(self.key, record.to_bytes(), self._etag)
        self.record = None
        self._etag = None
