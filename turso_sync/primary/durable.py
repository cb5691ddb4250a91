"""The primary on an object store: each database's revisions made durable there before a push is answered.

With ``serve --store s3://BUCKET/PREFIX`` the store is the database's truth and the data
directory a cache.  Opening a database on this server:

1. take its writer lease (``objectstore.lease``); while another live server holds it, every
   request for the database is answered 503 (``WriterElsewhere``) and this server keeps trying
   in the background, so it takes over within the lease's bound once that server is gone;
2. append the takeover revision (``LogWriter.take_over``), which fences off any older writer;
3. rebuild the local files from the store: the database as of the stored head (latest snapshot
   plus the revisions after it), and a new frame log whose history begins at the takeover
   revision, so local sequence numbers *are* store revisions (the numbers replicas hold stay
   meaningful across machines; a replica behind the takeover gets every page again, as after
   pruned history).  Whatever the old local files held is dropped: anything in them that is not
   in the store was never acknowledged.

Then every job that ran SQL, and every pull, ends with ``HostedDatabase.make_durable(seq)``:
the local commits up to ``seq`` are read from the frame log (raw images, so an encrypted
database stays encrypted in the store), queued in the group commit, and awaited.  Only then
is the answer sent.  A store that fails makes the answer a 503 (the revisions stay queued and
are retried by the next request); a writer that lost its lease is retired and the database
opened again from the store by the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass

from ..local.engine import LocalDatabase
from ..local.framelog import FrameLog
from ..page import PAGE_SIZE
from .objectstore.client import ObjectClient
from .objectstore.errors import ObjectStoreError, StoreUnavailable
from .objectstore.group import GroupCommit
from .objectstore.layout import DatabaseKeys
from .objectstore.lease import WriterLease
from .objectstore.restore import image_of
from .objectstore.retention import DEFAULT_RETENTION_S, compact
from .objectstore.revlog import LogHead, LogWriter, RevisionLog
from .objectstore.segment import Revision, SnapshotImage
from .objectstore.shipping import raw_image, revisions_since

log = logging.getLogger("turso_sync.primary")

#: Page size of a database created on the store (what the primary's databases use).
NEW_PAGE_SIZE = PAGE_SIZE

#: A snapshot of a database is written after this many revisions (or 256 MiB of pages) since the last.
DEFAULT_SNAPSHOT_EVERY = 10_000

#: Default lease time to live: a standby takes over at most about ``1.5 x ttl`` after the writer died.
DEFAULT_LEASE_TTL = 10.0


class WriterElsewhere(ObjectStoreError):  # noqa: N818 - reads as a state
    """Another server holds the database's writer lease: this one answers 503 until it takes over."""


@dataclass(frozen=True)
class StoreSettings:
    """Where the store is and how its leases run (``serve --store``)."""

    url: str
    endpoint_url: str | None = None
    region: str | None = None
    lease_ttl: float = DEFAULT_LEASE_TTL
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY
    retention_s: float = DEFAULT_RETENTION_S
    follow: bool = False  # ``--follow``: a read-only node (``follower.py``), no lease, nothing written
    follow_poll: float = 0.5  # seconds between two looks at a followed database's log


class StoreBackend:
    """One object store shared by every database of this process: the client, the root, this process's name.

    ``owner`` names this process in leases (host, pid and a random part: unique per process),
    never anything secret.
    """

    def __init__(
        self,
        client: ObjectClient,
        root: str,
        *,
        description: str,
        lease_ttl: float,
        snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
        retention_s: float = DEFAULT_RETENTION_S,
        follow: bool = False,
        follow_poll: float = 0.5,
    ) -> None:
        if follow_poll <= 0:
            raise ValueError(f"follow poll interval {follow_poll} s must be positive")
        self.follow = follow
        self.follow_poll = follow_poll
        if retention_s < 0:
            raise ValueError(f"retention {retention_s} s must not be negative")
        self.retention_s = retention_s
        if lease_ttl <= 0:
            raise ValueError(f"lease ttl {lease_ttl} must be positive")
        if snapshot_every < 1:
            raise ValueError(f"snapshot interval {snapshot_every} must be at least 1 revision")
        self.snapshot_every = snapshot_every
        self.client = client
        self.root = root
        self.description = description
        self.lease_ttl = lease_ttl
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._waiting: dict[str, WriterLease] = {}  # leases another server holds, which we wait for
        self._acquirers: dict[str, asyncio.Task[None]] = {}

    def keys(self, name: str) -> DatabaseKeys:
        """The keys of database ``name``."""
        return DatabaseKeys(self.root, name)

    async def names(self) -> set[str]:
        """Every database the store holds (one listing of the whole root)."""
        base = DatabaseKeys(self.root, "x").base[: -len("x/")]
        found = set()
        for info in await self.client.list(base):
            name = info.key[len(base) :].split("/", 1)[0]
            if name:
                found.add(name)
        return found

    async def take_lease(self, name: str) -> WriterLease:
        """The writer lease of ``name``, held and renewing; WriterElsewhere while another server holds it.

        A lease found held is watched in the background (``WriterLease.acquire``): it is taken
        once it stays unchanged for a TTL, and the next request for the database goes ahead.
        """
        lease = self._waiting.get(name)
        if lease is None:
            lease = WriterLease(self.client, self.keys(name).lease, self.owner, ttl=self.lease_ttl)
        task = self._acquirers.get(name)
        watching = task is not None and not task.done()  # then it alone writes the lease
        if lease.held() or (not watching and await lease.try_acquire()):
            self._waiting.pop(name, None)
            task = self._acquirers.pop(name, None)
            if task is not None and not task.done():
                task.cancel()
            lease.start_renewing()
            return lease
        self._waiting[name] = lease
        if not watching:
            self._acquirers[name] = asyncio.get_running_loop().create_task(self._acquire(name, lease))
        raise WriterElsewhere(
            f"database '{name}' is written by another server (its writer lease {lease.key} in "
            f"{self.description} is held); this server takes over if that one stops renewing it, within "
            f"about {1.5 * self.lease_ttl:g} s; try again shortly"
        )

    async def _acquire(self, name: str, lease: WriterLease) -> None:
        try:
            await lease.acquire(poll=max(0.05, self.lease_ttl / 10))
            lease.start_renewing()  # held from now on: the next request opens the database at once
            log.info("database %s: took over the writer lease from another server", name)
        except ObjectStoreError as exc:
            log.warning("database %s: waiting for the writer lease stopped: %s", name, exc)

    async def close(self) -> None:
        """Stop waiting for leases; release those taken in the background but never used."""
        for task in self._acquirers.values():
            task.cancel()
        for task in self._acquirers.values():
            with contextlib.suppress(BaseException):  # cancelled or failed: nothing to keep
                await task
        self._acquirers.clear()
        for lease in self._waiting.values():
            try:
                await lease.release()
            except ObjectStoreError as exc:
                log.warning("writer lease %s not released: %s", lease.key, exc)
        self._waiting.clear()


class DurableLog:
    """One database's link to the store: its lease, its writer, the group commit, what is queued.

    ``queued`` is the newest local revision handed to the group commit; it is read and moved on
    the event loop under ``reading``, while the revisions are read on the database's worker.
    """

    def __init__(
        self,
        name: str,
        lease: WriterLease,
        writer: LogWriter,
        group: GroupCommit,
        snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
        retention_s: float = DEFAULT_RETENTION_S,
    ) -> None:
        self.name = name
        self.retention_s = retention_s
        self.lease = lease
        self.writer = writer
        self.group = group
        self.queued = writer.head.revision
        self.reading = asyncio.Lock()
        self.snapshot_every = snapshot_every
        #: the snapshot being taken and written in the background, if any
        self.snapshotting: asyncio.Task[None] | None = None
        #: local files reused at open: the local revision the takeover revision must become (else None)
        self.catch_up_to: int | None = None
        self.path: str | None = None  # the database file (for the clean-stop stamp)

    def snapshot_due(self) -> bool:
        """True when a snapshot should be written (and none is being written)."""
        busy = self.snapshotting is not None and not self.snapshotting.done()
        return not busy and not self.failed and self.writer.snapshot_due(every_revisions=self.snapshot_every)

    async def write_snapshot(self, image: SnapshotImage) -> None:
        """Store ``image`` (the local database at a stored revision) as a snapshot, once it is stored.

        A snapshot must sit at the end of a segment; when group commit put the image's revision
        inside one, it is skipped (the next revision stored will ask again).
        """
        await self.group.wait_stored(image.revision)
        try:
            if not await self.writer.write_snapshot(image):
                return
        except ValueError as exc:
            log.debug("database %s: snapshot skipped: %s", self.name, exc)
            return
        log.info("database %s: snapshot at revision %d (%d pages)", self.name, image.revision, image.db_size)
        # ages are the store's dates against this machine's clock: a skew of seconds against a window of days
        await compact(self.writer.log.client, self.writer.keys, now=time.time(), retention_s=self.retention_s)

    @classmethod
    async def open(cls, backend: StoreBackend, name: str, path: str) -> DurableLog:
        """Take the lease and the log over and rebuild the local files at ``path`` from the store.

        Raises WriterElsewhere while another server holds the lease, StoreUnavailable when the
        store fails (the lease is released again).
        """
        lease = await backend.take_lease(name)
        try:
            writer = await LogWriter.take_over(
                RevisionLog(backend.client, backend.keys(name)), lease, page_size=NEW_PAGE_SIZE
            )
            loaded = writer.loaded
            assert loaded is not None
            writer.loaded = None  # every segment since the snapshot: not kept for the database's lifetime
            reuse = await asyncio.to_thread(cache_matches, path, loaded.head)
            if not reuse:
                image = image_of(loaded)
                base = writer.head.revision  # the takeover revision: local history starts there
                await asyncio.to_thread(rebuild_files, path, image.data, image.page_size, image.db_size, base)
        except BaseException:
            await _release(lease)
            raise
        durable = cls(name, lease, writer, GroupCommit(writer), backend.snapshot_every, backend.retention_s)
        durable.path = path
        if reuse:
            durable.catch_up_to = writer.head.revision
            log.info(
                "database %s: writer epoch %d, the local files (left at revision %d by a clean stop) reused",
                name,
                writer.epoch,
                writer.previous_head,
            )
            return durable
        log.info(
            "database %s: writer epoch %d, rebuilt from the store at revision %d (%d pages): snapshot %s, %d segments",
            name,
            writer.epoch,
            writer.previous_head,
            image.db_size,
            loaded.snapshot.revision if loaded.snapshot is not None else "none",
            len(loaded.segments),
        )
        return durable

    @property
    def stored(self) -> int:
        """The newest revision durable in the store."""
        return self.writer.head.revision

    @property
    def failed(self) -> bool:
        """True once this writer can store nothing more (deposed, or its lease ran out): retire it.

        A lease seen taken by a renewal counts at once, so a deposed writer stops serving its
        local copy (stale from then on) before any push reaches it."""
        return self.group.failed is not None or self.lease.lost

    def read_revisions(self, engine: LocalDatabase) -> list[Revision]:
        """The local commits after ``queued``, as revisions (worker thread; the caller holds ``reading``)."""
        return revisions_since(engine, self.queued)

    def read_image(self, engine: LocalDatabase) -> SnapshotImage:
        """The whole local database as stored on disk, at its current revision (worker thread)."""
        return raw_image(engine)

    def enqueue(self, revisions: list[Revision]) -> None:
        """Hand ``revisions`` (read by ``read_revisions``) to the group commit (event loop, under ``reading``)."""
        for rev in revisions:
            self.group.enqueue(rev)
            self.queued = rev.number

    async def close(self, local_seq: int | None = None) -> None:
        """Finish the upload and the snapshot in flight, release the lease (a standby takes over at once).

        ``local_seq``: the local files' revision after they were closed; when everything up to it
        is stored, a stamp says so, and the next writer of this data dir reuses them.
        """
        if self.snapshotting is not None:
            with contextlib.suppress(Exception):
                await self.snapshotting
        await self.group.close()
        if local_seq is not None and local_seq == self.stored and not self.failed and self.path is not None:
            await asyncio.to_thread(_write_stamp, self.path, self.writer.epoch, local_seq)
        await _release(self.lease)


async def _release(lease: WriterLease) -> None:
    try:
        await lease.release()
    except StoreUnavailable as exc:
        log.warning("writer lease %s not released (another server takes it once it runs out): %s", lease.key, exc)


def rebuild_files(path: str, data: bytes, page_size: int, db_size: int, base_seq: int) -> None:
    """Replace the database's local files with ``data`` and a frame log whose history begins at
    ``base_seq`` (writer and follower)."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    stem = os.path.basename(path)
    for entry in os.listdir(folder):
        if entry.startswith(stem):
            os.unlink(os.path.join(folder, entry))
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    # the codec only decrypts history; creating the log writes its header alone
    FrameLog(path, None, page_size).create(db_size, base_seq)


#: Beside the database file: "the local files are exactly revision R, as stored by writer epoch E",
#: written by a clean stop only.  Its name starts like the database's, so a rebuild deletes it.
STAMP_SUFFIX = "-stored"


def _write_stamp(path: str, epoch: int, revision: int) -> None:
    tmp = path + STAMP_SUFFIX + ".tmp"
    with open(tmp, "w", encoding="ascii") as f:
        json.dump({"epoch": epoch, "revision": revision}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path + STAMP_SUFFIX)


def cache_matches(path: str, head: LogHead) -> bool:
    """True if the local files are exactly the store's ``head`` (so they need no rebuild); the stamp is used up.

    They are when a clean stop stamped them at that very revision and epoch (nobody appended
    since: the store's head is still that writer's last segment) and their frame log ends there.
    """
    stamp = path + STAMP_SUFFIX
    try:
        with open(stamp, encoding="ascii") as f:
            raw = json.load(f)
        os.unlink(stamp)  # good for one open only: from now on the files move on
        epoch, revision = int(raw["epoch"]), int(raw["revision"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if (epoch, revision) != (head.epoch, head.revision) or not os.path.exists(path):
        return False
    try:
        return FrameLog(path, None, head.page_size).current_seq() == revision
    except (OSError, ValueError):
        return False
