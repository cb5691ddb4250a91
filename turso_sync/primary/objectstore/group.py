"""Group commit: revisions that arrive while an upload is in flight go out together, as one segment.

Each committed revision is handed to ``GroupCommit.commit`` and its caller waits until it is
durable in the store (that is when a push may be acknowledged).  One upload runs at a time;
everything that queued meanwhile (up to ``max_bytes`` of pages or ``max_revisions``) forms the
next segment.  So at low rates every revision is its own object with one round trip of
latency, and under load the number of objects, requests and their cost stays bounded while
latency grows by at most one upload.

When an upload fails with StoreUnavailable, its waiters and those of every revision queued
behind it get that error, and the revisions stay at the head of the queue: they are retried
first by the next upload (a write that had landed is recognised, see ``LogWriter.append``).
A waiter told StoreUnavailable therefore does not know whether its revision will end up
stored; the primary answers 503 and the client retries its push, which must be idempotent.
Deposed and NotWriter fail every waiter, now and later.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from .errors import NotWriter, StoreUnavailable
from .revlog import LogWriter
from .segment import Revision


@dataclass
class _Waiting:
    revision: Revision
    done: asyncio.Future[None]


class GroupCommit:
    """Ships one database's revisions through its ``LogWriter``, grouping those that arrive together."""

    def __init__(self, writer: LogWriter, *, max_bytes: int = 8 * 1024 * 1024, max_revisions: int = 1000) -> None:
        self.writer = writer
        self.max_bytes = max_bytes
        self.max_revisions = max_revisions
        self._queue: list[_Waiting] = []
        self._uploading: asyncio.Task[None] | None = None
        self._failed: NotWriter | None = None
        self._last_queued = writer.head.revision
        self.uploads = 0

    @property
    def failed(self) -> NotWriter | None:
        """The error that stopped this writer for good (deposed, or its lease ran out), else None."""
        return self._failed

    @property
    def last_queued(self) -> int:
        """The newest revision handed to ``enqueue`` (stored or not)."""
        return self._last_queued

    async def commit(self, revision: Revision) -> None:
        """Queue ``revision`` (the next number after the last one queued) and wait until it is stored."""
        done = self.enqueue(revision)
        await asyncio.shield(done)  # a cancelled waiter does not cancel the upload others share

    def enqueue(self, revision: Revision) -> asyncio.Future[None]:
        """Queue ``revision`` (the next number after the last one queued) without waiting; the
        future is settled by the upload that stores it (see ``wait_stored`` for a waiter that may
        outlive a failed upload)."""
        if self._failed is not None:
            raise self._failed
        if revision.number != self._last_queued + 1:
            raise ValueError(
                f"database {self.writer.keys.name}: revision {revision.number} does not follow revision "
                f"{self._last_queued} (revisions are shipped in order, each once)"
            )
        self._last_queued = revision.number
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiting(revision, done))
        self._kick()
        return done

    async def wait_stored(self, number: int) -> None:
        """Return once revision ``number`` (queued already) is stored, uploading it again if an
        earlier upload of it failed; raises that upload's error (StoreUnavailable: not known to be
        stored, call again later) or the writer's (NotWriter, Deposed)."""
        if number > self._last_queued:
            raise ValueError(f"database {self.writer.keys.name}: revision {number} was never queued")
        while self.writer.head.revision < number:
            if self._failed is not None:
                raise self._failed
            item = next((i for i in self._queue if i.revision.number >= number), None)
            if item is None:  # cannot happen (a queued revision leaves the queue once stored): yield, look again
                await asyncio.sleep(0)
                continue
            self._kick()
            await asyncio.shield(item.done)

    def _kick(self) -> None:
        if self._queue and (self._uploading is None or self._uploading.done()):
            self._uploading = asyncio.get_running_loop().create_task(self._upload())

    async def _upload(self) -> None:
        batch: list[_Waiting] = []
        size = 0
        for item in self._queue:
            if batch and (len(batch) >= self.max_revisions or size + item.revision.nbytes > self.max_bytes):
                break
            batch.append(item)
            size += item.revision.nbytes
        try:
            await self.writer.append([item.revision for item in batch])
        except NotWriter as exc:  # Deposed too: nothing more can be stored by this writer
            self._failed = exc
            waiting, self._queue = self._queue, []
            for item in waiting:
                _settle(item.done, exc)
            return
        except Exception as exc:  # StoreUnavailable, or anything unforeseen: no waiter may hang
            # A batch may go out as several segments, and the first ones can be stored before one
            # fails (a write whose answer was lost is recognised on the retry, then the next segment
            # fails): those revisions are acknowledged and leave the queue, or the next upload would
            # start below the head and fail for good.  The rest stay queued, and what queued behind
            # them cannot be stored before them: every waiter hears the error now (none is left
            # waiting on an upload that nobody starts; a retried push starts one through ``wait_stored``).
            self._settle_stored()
            for item in self._queue:
                _settle(item.done, exc)
                item.done = asyncio.get_running_loop().create_future()
            return
        self.uploads += 1
        self._settle_stored()
        # what queued during the upload goes next, together.  This task is still running, so
        # ``_kick`` would see an upload in flight and start nothing: it lets go of itself first
        # (without that the last revision to queue behind an upload waited for the next push)
        self._uploading = None
        self._kick()

    def _settle_stored(self) -> None:
        """Acknowledge and drop the queued revisions the writer has stored (the queue is in order)."""
        head = self.writer.head.revision
        stored = 0
        while stored < len(self._queue) and self._queue[stored].revision.number <= head:
            stored += 1
        done, self._queue = self._queue[:stored], self._queue[stored:]
        for item in done:
            _settle(item.done, None)

    async def flush(self) -> None:
        """Upload whatever is queued now (a retry after StoreUnavailable); raises if it could not."""
        while self._queue:
            if self._failed is not None:
                raise self._failed
            before = self.writer.head.revision
            self._kick()
            assert self._uploading is not None
            await self._uploading
            if self._failed is not None:
                raise self._failed
            if self.writer.head.revision == before:
                raise StoreUnavailable(
                    f"database {self.writer.keys.name}: revisions from {before + 1} could not be stored; retry later"
                )

    async def close(self) -> None:
        """Stop after the upload in flight (queued revisions stay unacknowledged)."""
        task = self._uploading
        if task is not None:
            with contextlib.suppress(Exception):
                await task


def _settle(fut: asyncio.Future[None], exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)
        fut.exception()  # retrieved here: a waiter that went away must not log "never retrieved"
