"""The durable revision log of one database: reading it, and appending to it as the single writer.

The log is a chain of immutable segment objects (see ``layout`` and ``segment``): the segment
at key F holds revisions F..L, and the next one is at key L+1.  Every segment is written with
``If-None-Match: *`` at exactly the key after the last revision its writer knows is stored,
so two writers aiming at the same place can never both succeed, and a writer whose view is
stale always aims at a key that is already taken: the log is one linear history by
construction, never a fork.

A writer holds the lease (``lease.WriterLease``) and, before anything else, appends a
*takeover revision*: a revision with no pages, numbered one past the head it found, under
its own epoch.  From that moment a deposed writer, which can only aim at a key at or below
that number, fails on its next append (412), even if its lease clock says it still holds
the lease.  If the deposed writer's append lands first, the takeover fails instead; the new
writer reads the log again, keeps that revision (it was acknowledged, so it must not be
lost) and tries one further on.

Snapshots (the whole database at a revision) are written at segment ends, so reading
always continues at the key after a snapshot's revision.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from ...page import PAGE_SIZE
from .client import ObjectClient
from .errors import (
    CorruptObject,
    Deposed,
    ObjectNotFound,
    PreconditionFailed,
    RevisionNotStored,
    StoreUnavailable,
)
from .layout import DatabaseKeys
from .lease import WriterLease
from .segment import (
    Revision,
    Segment,
    SnapshotImage,
    decode_segment,
    decode_snapshot,
    encode_segment,
    encode_snapshot,
)

log = logging.getLogger("turso_sync.primary.objectstore")

#: Default page size of a database that has no snapshot and no segment yet.
DEFAULT_PAGE_SIZE = PAGE_SIZE

#: Segments read at once while walking the log.
_READ_AHEAD = 8


@dataclass(frozen=True)
class LogHead:
    """The newest stored revision: its number, the database size then, and the epoch that wrote it."""

    revision: int
    db_size: int
    epoch: int
    page_size: int


@dataclass
class LogState:
    """What a walk of the log found: the snapshot it started from (None: revision 0, empty) and the
    segments after it, in order."""

    snapshot: SnapshotImage | None
    segments: list[Segment]
    head: LogHead

    def extended(self, more: list[Segment]) -> LogState:
        """This state with ``more`` segments (read after its head) appended."""
        if not more:
            return self
        last = more[-1]
        head = LogHead(last.last, last.revisions[-1].db_size, last.epoch, last.page_size)
        return LogState(self.snapshot, self.segments + more, head)


class RevisionLog:
    """Read access to one database's log and snapshots (any process; no lease needed)."""

    def __init__(self, client: ObjectClient, keys: DatabaseKeys) -> None:
        self.client = client
        self.keys = keys

    async def snapshot_revisions(self) -> list[int]:
        """The revisions that have a snapshot, oldest first."""
        infos = await self.client.list(self.keys.snapshot_prefix)
        out = []
        for info in infos:
            try:
                out.append(self.keys.snapshot_number(info.key))
            except ValueError:
                log.warning("ignoring %s: not a snapshot name", info.key)
        return out

    async def read_snapshot(self, revision: int) -> SnapshotImage:
        """The snapshot at ``revision``; ObjectNotFound if there is none."""
        key = self.keys.snapshot(revision)
        snap = decode_snapshot(key, (await self.client.get(key)).data)
        if snap.revision != revision:
            raise CorruptObject(key, f"it holds revision {snap.revision}")
        return snap

    async def segments_after(self, revision: int, upto: int | None = None) -> list[Segment]:
        """The chain of segments from revision ``revision + 1`` on (to the head, or until one reaches ``upto``).

        ``revision`` must be a segment end or a snapshot's revision (or 0).  Raises
        CorruptObject if the stored chain has a gap or a stray object.
        """
        start_after = self.keys.segment(revision) if revision > 0 else None
        infos = await self.client.list(self.keys.log_prefix, start_after)
        firsts: list[int] = []
        for info in infos:
            try:
                firsts.append(self.keys.segment_number(info.key))
            except ValueError:
                log.warning("ignoring %s: not a segment name", info.key)
        segments: list[Segment] = []
        expected = revision + 1
        i = 0
        while i < len(firsts) and (upto is None or expected <= upto):
            batch = firsts[i : i + _READ_AHEAD]
            read = await asyncio.gather(*(self.read_segment(first) for first in batch))
            for first, seg in zip(batch, read, strict=True):
                if upto is not None and expected > upto:
                    break
                if first != expected:
                    raise CorruptObject(
                        self.keys.segment(first),
                        f"the log has a gap or a stray segment: expected revision {expected} next, found {first}",
                    )
                segments.append(seg)
                expected = seg.last + 1
            i += len(batch)
        return segments

    async def read_segment(self, first: int) -> Segment:
        """The segment whose first revision is ``first``; ObjectNotFound if there is none."""
        key = self.keys.segment(first)
        seg = decode_segment(key, (await self.client.get(key)).data)
        if seg.first != first:
            raise CorruptObject(key, f"it starts at revision {seg.first}")
        return seg

    async def load(self, at: int | None = None) -> LogState:
        """The latest snapshot at or before ``at`` (or the head) and every segment after it up to ``at``.

        Raises RevisionNotStored if ``at`` is after the head or before the oldest stored history.
        """
        every = await self.snapshot_revisions()
        snaps = [r for r in every if at is None or r <= at]
        snapshot = await self.read_snapshot(snaps[-1]) if snaps else None
        base = snapshot.revision if snapshot is not None else 0
        # read at least one segment, so that restoring revision 0 still checks the history starts at 1
        try:
            segments = await self.segments_after(base, None if at is None else max(at, base + 1))
        except CorruptObject:
            if snapshot is None and every:  # the segments before the oldest snapshot were compacted away
                raise RevisionNotStored(
                    f"database {self.keys.name}: revision {at} is older than the stored history, which begins "
                    f"at revision {every[0]}; restore a later revision"
                ) from None
            raise
        if snapshot is None and ((segments and segments[0].first != 1) or (not segments and every)):
            oldest = every[0] if every else segments[0].first
            raise RevisionNotStored(
                f"database {self.keys.name}: revision {at} is older than the stored history, which begins at "
                f"revision {oldest}; restore a later revision"
            )
        if at is not None:
            segments = [seg for seg in segments if seg.first <= at]
        if segments:
            last = segments[-1]
            db_size = next(r.db_size for r in reversed(last.revisions) if at is None or r.number <= at)
            head = LogHead(min(last.last, at) if at is not None else last.last, db_size, last.epoch, last.page_size)
        elif snapshot is not None:
            head = LogHead(snapshot.revision, snapshot.db_size, 0, snapshot.page_size)
        else:
            head = LogHead(0, 0, 0, DEFAULT_PAGE_SIZE)
        if at is not None and head.revision < at:
            raise RevisionNotStored(
                f"database {self.keys.name}: revision {at} is not stored (the newest is {head.revision})"
            )
        return LogState(snapshot, segments, head)


class LogWriter:
    """The single writer of one database's log; create with ``await LogWriter.take_over(...)``.

    Appends are serialized; each is refused unless the lease is held and unexpired, and each
    is a create-only write, so a writer deposed behind its back fails on its next append.
    """

    def __init__(self, revlog: RevisionLog, lease: WriterLease, head: LogHead, previous_head: int) -> None:
        self.log = revlog
        self.lease = lease
        self.head = head
        #: the head before our takeover revision: the state a new writer must start from
        self.previous_head = previous_head
        self._lock = asyncio.Lock()
        self._segment_ends: deque[int] = deque([head.revision], maxlen=4096)
        self.revisions_since_snapshot = 0
        self.bytes_since_snapshot = 0
        self.segments_written = 0
        self.loaded: LogState | None = None

    @property
    def keys(self) -> DatabaseKeys:
        return self.log.keys

    @property
    def epoch(self) -> int:
        return self.lease.epoch

    @classmethod
    async def take_over(
        cls,
        revlog: RevisionLog,
        lease: WriterLease,
        *,
        page_size: int | None = None,
        known: LogState | None = None,
    ) -> LogWriter:
        """Become the writer: the lease must be held; append the takeover revision after the stored head.

        Retries (reading the log again) while a deposed writer's appends keep landing first;
        raises Deposed if a newer writer took over meanwhile.  ``loaded`` of the result is the
        stored state the takeover revision follows (what a new writer rebuilds its database from).
        ``known``: the state a standby already read (a follower keeping up with the log); only
        the segments after it are read, which keeps a failover short however long the history.
        """
        name = revlog.keys.name
        lease.check()
        if known is None:
            state = await revlog.load()
        else:
            state = known.extended(await revlog.segments_after(known.head.revision))
        while True:
            head = state.head
            if head.epoch > lease.epoch:
                lease.mark_deposed()
                raise Deposed(f"database {name}: writer epoch {head.epoch} is newer than ours ({lease.epoch})")
            size = page_size if page_size is not None and head.revision == 0 else head.page_size
            marker = Segment(lease.epoch, size, [Revision(head.revision + 1, head.db_size)], takeover=True)
            lease.check()
            try:
                await revlog.client.put_if_absent(revlog.keys.segment(marker.first), encode_segment(marker))
            except PreconditionFailed:
                # one GET, not a new listing: a deposed writer still appending must not outrun us
                try:
                    found = await revlog.read_segment(marker.first)
                except ObjectNotFound:
                    continue  # a racing write that did not land (AWS 409): try again
                if found.epoch > lease.epoch:
                    lease.mark_deposed()
                    raise Deposed(f"database {name}: a newer writer took over during our takeover") from None
                if not (found.epoch == lease.epoch and found.takeover):
                    state = state.extended([found])  # the old writer appended meanwhile: keep its revisions
                    continue
                marker = found  # our own earlier attempt landed (its answer was lost and botocore retried)
            writer = cls(revlog, lease, LogHead(marker.first, head.db_size, lease.epoch, size), head.revision)
            writer.loaded = state
            log.info("database %s: writer epoch %d took over at revision %d", name, lease.epoch, marker.first)
            return writer

    async def append(self, revisions: Sequence[Revision]) -> LogHead:
        """Store ``revisions`` (numbered from head + 1, consecutive) as one segment; return the new head.

        Once this returns they are durable in the store.  Raises NotWriter (lease expired),
        Deposed (another writer took over: never retry), StoreUnavailable (nothing is known to
        be stored: call again with the same revisions; a write that did land is recognised).
        """
        if not revisions:
            return self.head
        async with self._lock:
            pending = list(revisions)
            while pending:
                if pending[0].number != self.head.revision + 1:
                    raise ValueError(
                        f"database {self.keys.name}: revision {pending[0].number} does not follow the stored head "
                        f"{self.head.revision}"
                    )
                self.lease.check()
                seg = Segment(self.epoch, self.head.page_size, pending)
                key = self.keys.segment(seg.first)
                try:
                    await self.log.client.put_if_absent(key, encode_segment(seg))
                except PreconditionFailed:
                    seg = await self._landed(seg.first)  # ours (an attempt whose answer was lost), or deposed
                self._stored(seg)
                pending = [r for r in pending if r.number > seg.last]
            return self.head

    async def _landed(self, first: int) -> Segment:
        """The segment already stored at ``first``: ours (an earlier attempt landed) or another writer's (Deposed)."""
        try:
            found = await self.log.read_segment(first)
        except ObjectNotFound:
            # AWS answers 409 to a write racing another: nothing is there yet; the caller retries
            key = self.keys.segment(first)
            raise StoreUnavailable(f"segment {key} was contended but is not stored; retry") from None
        if found.epoch != self.epoch:
            self.lease.mark_deposed()
            raise Deposed(
                f"database {self.keys.name}: revision {found.first} was written by writer epoch {found.epoch}; "
                f"this writer (epoch {self.epoch}) is deposed and its unstored revisions are not acknowledged"
            )
        return found

    def _stored(self, seg: Segment) -> None:
        self.head = LogHead(seg.last, seg.revisions[-1].db_size, self.epoch, self.head.page_size)
        self._segment_ends.append(seg.last)
        self.revisions_since_snapshot += len(seg.revisions)
        self.bytes_since_snapshot += sum(r.nbytes for r in seg.revisions)
        self.segments_written += 1

    def snapshot_due(self, every_revisions: int = 10_000, every_bytes: int = 256 * 1024 * 1024) -> bool:
        """True when enough was appended since the last snapshot that a new one should be written."""
        return self.revisions_since_snapshot >= every_revisions or self.bytes_since_snapshot >= every_bytes

    async def write_snapshot(self, image: SnapshotImage) -> bool:
        """Store the whole database at ``image.revision`` (a stored segment end); False if it already exists."""
        if image.revision not in self._segment_ends:
            raise ValueError(
                f"database {self.keys.name}: a snapshot at revision {image.revision} must be at the end of a "
                f"segment this writer stored (recent ends: {list(self._segment_ends)[-3:]})"
            )
        try:
            await self.log.client.put_if_absent(self.keys.snapshot(image.revision), encode_snapshot(image))
        except PreconditionFailed:
            return False
        if image.revision == self.head.revision:
            self.revisions_since_snapshot = self.bytes_since_snapshot = 0
        return True
