"""Pull: fetch the remote's changed pages, rebase the pending local changes on them, install.

``pull`` is a sans-IO step (``exchange.py``).  The fetch (with its long poll) happens without
the sync lock; the rest under it: when a push may still be on its way it is fenced off first
(``fence_pushes``), a fetch made stale by another agent is repeated, and ``install`` applies the
pages.  ``install`` is local work only: under SQLite's write lock (readers keep reading) it
rebuilds the synced base, lays the pulled pages over it, replays the outbox on top in memory
(``rebase.py``), and installs the page difference as one atomic transaction.  A failure at any
step before the install leaves the database untouched.
"""

from __future__ import annotations

import contextlib
import os
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from .. import errors
from ..crypto.page_codec import PageCodec
from ..local.engine import LocalDatabase
from ..wire.pull import DeltaBaseMismatch
from . import push as push_mod
from .bootstrap import wal_mode_page
from .exchange import Steps
from .outbox import read_pending
from .overlay import OverlayImage
from .rebase import Conflict, Rebaser, Resolver
from .remote import PulledPages, fetch_pages, run_batch
from .state import (
    INLINE_REVERT_PAGES,
    SyncState,
    drop_reverts,
    inline_revert,
    read_inline_revert,
    read_revert,
    swept_reverts,
    write_revert,
)

SCHEMA_COOKIE = 40  # header offset of the schema cookie
WAL_BOUND = 1 << 20  # checkpoint once the WAL passes this many bytes after a pull
COMPARE_BATCH = 1024  # pages an install reads back at a time to compare with what it would write (4 MiB)
COMPARE_ALONE = 16  # up to this many pages to compare are read one by one
#: Of more pages to compare than COMPARE_ALONE, this many (spread evenly) are read back first.  If
#: every one of them differs, the answer is taken for one of changed pages (an incremental answer
#: that touched every page, as a table dropped and filled again does) and all are installed
#: without reading the rest back: installing an unchanged page is correct, it only costs a frame.
#: A full resend in which a share u of the pages is unchanged then installs u(1-u)^16 of them in
#: expectation, at most 2.2% of the pages (u = 1/17); one unchanged page in the sample and all
#: are compared, as before.
COMPARE_SAMPLE = 16
REPIN_INTERVAL = 60.0  # seconds between moves of a partial replica's pin (see advance_pin)


class PullContext(Protocol):
    """What a pull needs of its replica (``Replica`` is one)."""

    path: str
    state: SyncState
    db: LocalDatabase
    policy: str | Resolver
    request_timeout: float

    def exclusive(self) -> AbstractContextManager[None]:
        """The sync lock, with ``state`` freshly read."""
        ...

    def count_bytes(self) -> None:
        """Move the transport's byte counts into ``state``."""
        ...


@dataclass
class PullOutcome:
    """What one pull did: the revision reached, pages received, conflicts the rebase met."""

    changed: bool
    revision: str
    pages_received: int = 0
    conflicts: list[Conflict] = field(default_factory=list)


def pull(replica: PullContext, long_poll_ms: int) -> Steps[PullOutcome]:
    """Fetch and install the remote's changes since the synced revision."""
    fresh = SyncState.load(replica.path) or replica.state
    since, forgotten = fresh.synced_revision, fresh.forgotten
    received = 0
    deltas = replica.db.lazy is None  # page deltas (fleet hook): a partial replica lacks most bases
    try:
        result = yield from fetch_pages(
            replica.state, since, replica.request_timeout, long_poll_ms if since else 0, deltas=deltas
        )
    except errors.Error:
        with replica.exclusive():
            replica.state.errors += 1
            replica.count_bytes()
            replica.state.save(replica.path, durable=False)  # counters only
        raise
    received += result.count
    with replica.exclusive():
        state = replica.state
        if state.push_in_doubt:
            # a push batch may still be on its way: fence it off, then fetch what it left
            yield from fence_pushes(replica)
            since = ""
        if since and state.synced_revision == since and state.forgotten != forgotten and result.revision:
            # a push landed since the fetch (the outbox lost changes the fetched revision may not
            # hold yet): fetch what came after the fetched revision, now under the lock (fleet hook)
            later = yield from fetch_pages(state, result.revision, replica.request_timeout, deltas=deltas)
            received += later.count
            result = result.then(later)
        elif state.synced_revision != since or state.forgotten != forgotten:
            # another agent pulled, or pushed (so the outbox lost changes the fetched revision
            # may not hold yet): fetch again, now under the lock
            result = yield from fetch_pages(state, state.synced_revision, replica.request_timeout, deltas=deltas)
            received += result.count
        if result.revision == state.synced_revision and not result.count:
            state.touch_pull()
            replica.count_bytes()
            state.save(replica.path, durable=False)  # counters only (a fence above saved durably)
            return PullOutcome(False, state.synced_revision, received)
        try:
            conflicts = install(replica, result)
        except DeltaBaseMismatch:  # page deltas (fleet hook): nothing was installed; fetch whole pages
            result = yield from fetch_pages(state, state.synced_revision, replica.request_timeout)
            received += result.count
            conflicts = install(replica, result)
        bound_wal(replica.db)
        advance_pin(replica.db, state.synced_revision)
        return PullOutcome(True, result.revision, received, conflicts)


def fence_pushes(replica: PullContext) -> Steps[None]:
    """Move the push epoch on, so no push batch sent before can commit any more.

    A rebase replays every pending change the remote has not recorded; a batch that was
    sent, whose answer never came, and that commits after the rebase, would put those
    changes there a second time.  Once the remote holds the new epoch, such a batch fails
    its fence guard; and whatever it committed before is in the state the pull fetches next.
    """
    state = replica.state
    epoch = (state.push_epoch or 0) + 1
    fence = push_mod.fence_batch(state.client_id, epoch)
    try:
        result = yield from run_batch(fence.steps, replica.request_timeout)
    finally:
        replica.count_bytes()
    refused = [error.message for error in result.step_errors[:-1] if error is not None]
    if refused:
        raise errors.SyncError(
            f"{replica.path}: the remote refused to record the push fence ({'; '.join(refused)}); "
            "nothing was pulled, try again"
        )
    state.push_epoch = epoch
    state.push_in_doubt = False
    state.save(replica.path)


def install(replica: PullContext, result: PulledPages) -> list[Conflict]:
    """Apply pulled pages under the pending local changes, as one atomic transaction (local work).

    Returns the conflicts the rebase met (they are journaled in the database too).
    """
    state, db = replica.state, replica.db
    codec = db.codec
    page1 = result.pages.get(1)
    if codec is not None and page1 is not None and page1[20] != codec.reserved:
        raise errors.EncryptionError(
            f"the remote database reserves {page1[20]} bytes per page; an encrypted replica needs {codec.reserved}"
        )
    with db.write_lock() as conn:
        current = db.page_reader()
        current_size = int(db.query("PRAGMA page_count")[0][0])
        base_pages, base_size = synced_base_pages(db, state, replica.path, codec)
        # page deltas (fleet hook): a delta is applied to the page's synced image
        resolved = result.resolved(lambda pgno: base_pages.get(pgno) or current(pgno))
        pulled = {p: wal_mode_page(v, p) for p, v in resolved.items()}

        def remote_page(pgno: int) -> bytes:
            page = pulled.get(pgno) or base_pages.get(pgno)
            return page if page is not None else current(pgno)

        def base_image() -> OverlayImage:
            return OverlayImage(lambda p: base_pages.get(p) or current(p), base_size)

        pending = read_pending(db)
        remote = OverlayImage(remote_page, result.db_size)
        rebaser = Rebaser(
            remote,
            client_id=state.client_id,
            policy=replica.policy,
            revision=result.revision,
            base_image=base_image,
            reserved=current(1)[20] if current_size else 0,
        )
        outcome = rebaser.run(pending.rows, pending.meta, pending.conflicts)
        final = outcome.image
        final_size = final.size

        def final_page(pgno: int) -> bytes:
            written = final.written.get(pgno)
            return wal_mode_page(written, pgno) if written is not None else remote_page(pgno)

        # a full resend (the remote's history no longer reaches our revision) holds every page,
        # most of them unchanged: then every page is compared with its current image
        incremental = len(pulled) < result.db_size
        changed: dict[int, bytes] = {}
        compared: dict[int, bytes] = {}  # images to install only if they differ from the current ones
        for pgno in sorted({1, *pulled, *base_pages, *final.written}):
            if pgno > final_size:
                continue
            image = final_page(pgno)
            if pgno == 1:
                # a new schema cookie makes every other connection re-read the schema (so page 1 differs)
                cookie = max(_u32(current(1), SCHEMA_COOKIE) if current_size else 0, _u32(image, SCHEMA_COOKIE))
                image = image[:SCHEMA_COOKIE] + (cookie + 1).to_bytes(4, "big") + image[SCHEMA_COOKIE + 4 :]
                changed[pgno] = image
            elif pgno > current_size or (incremental and pgno not in base_pages and pgno not in final.written):
                # a page only the remote changed: its current image is the synced one, which the
                # remote has changed since (reading it back to compare would cost more than it saves)
                changed[pgno] = image
            else:
                compared[pgno] = image
        if len(compared) <= COMPARE_ALONE:
            # a few pages (an incremental pull's rebased ones): the reader made above, no new WAL look
            changed.update((pgno, image) for pgno, image in compared.items() if image != current(pgno))
        else:
            ordered = list(compared)  # ascending, as filled above
            sampled = db.current_pages(ordered[:: len(ordered) // COMPARE_SAMPLE][:COMPARE_SAMPLE])
            differ = [pgno for pgno, now in sampled.items() if compared[pgno] != now]
            if len(differ) == len(sampled):  # every sampled page differs: install them all (see COMPARE_SAMPLE)
                changed.update(compared)
            else:
                changed.update((pgno, compared[pgno]) for pgno in differ)
                rest = [pgno for pgno in ordered if pgno not in sampled]  # each page read back once
                # read back in runs (one pread for pages next to each other), a bounded number at a time
                for start in range(0, len(rest), COMPARE_BATCH):
                    batch = rest[start : start + COMPARE_BATCH]
                    for pgno, now in db.current_pages(batch).items():
                        if compared[pgno] != now:
                            changed[pgno] = compared[pgno]
        seq = db.install_locked(conn, changed, final_size)

        def installed(pgno: int) -> bytes:
            return changed.get(pgno) or final_page(pgno)

        # the pure remote state = what was installed, with these pages put back
        revert = {
            pgno: remote_page(pgno)
            for pgno in sorted({1, *final.written, *range(final_size + 1, result.db_size + 1)})
            if pgno <= result.db_size and (pgno > final_size or installed(pgno) != remote_page(pgno))
        }
        # a small revert travels in the state file (one durable write); a larger one is a file whose
        # rename the state's save below makes durable, syncing the same folder (one sync of the
        # folder per pull, not two); until then nothing refers to the file
        had_file = state.revert_seq is not None and state.revert_inline is None
        wrote_file = len(revert) > INLINE_REVERT_PAGES
        if wrote_file:
            write_revert(replica.path, seq, revert, codec, sync_folder=False)
            state.revert_inline = None
        else:
            state.revert_inline = inline_revert(seq, revert, codec)
        state.synced_revision = result.revision
        state.synced_seq = seq
        state.synced_db_size = result.db_size
        state.revert_seq = seq
        state.touch_pull()
        replica.count_bytes()
        state.save(replica.path)
        if had_file or wrote_file or replica.path not in swept_reverts:
            # the old file once the state no longer names it; the first pull of each process also
            # removes what a killed one may have left (a file that no state names)
            drop_reverts(replica.path, seq if wrote_file else None)
            swept_reverts.add(replica.path)
    db.prune_history(seq)  # nothing before the new synced base is needed any more
    return outcome.conflicts


def synced_base_pages(
    db: LocalDatabase, state: SyncState, path: str, codec: PageCodec | None
) -> tuple[dict[int, bytes], int]:
    """Images that turn the current state back into the synced remote state, and its size."""
    pages, _size = db.images_at(state.synced_seq)
    if state.revert_inline is not None:
        pages.update(read_inline_revert(path, state, codec))
    elif state.revert_seq is not None:  # a revert file (a large revert, or a state from before revert_inline)
        pages.update(read_revert(path, state.revert_seq, codec))
    return pages, state.synced_db_size


def bound_wal(db: LocalDatabase, limit: int = WAL_BOUND) -> None:
    """Checkpoint once the WAL passes ``limit`` bytes.

    Every pull reads the committed WAL (to rebuild the synced base and to install), and a
    replica that only pulls small changes never reaches SQLite's autocheckpoint, so without
    this each pull would cost more than the last.  Busy readers just postpone it.
    """
    try:
        size = os.path.getsize(db.path + "-wal")
    except FileNotFoundError:
        return
    if size > limit:
        with contextlib.suppress(errors.OperationalError):
            db.checkpoint()


def advance_pin(db: LocalDatabase, revision: str, interval: float | None = None) -> bool:
    """Move a partial replica's pin (the revision its missing pages are fetched at) to ``revision``.

    A remote that bounds its history stops serving the bootstrap revision after a while, and a
    replica pinned there could read none of its missing pages any more.  After a pull, every
    page the remote changed up to ``revision`` has been installed; once a complete (TRUNCATE)
    checkpoint has written them all into the file and left no reader on an older state, a page
    still missing has the same image at ``revision`` as at the old pin (``LazyPages.repin``).
    At most once per ``interval`` seconds (a checkpoint each time); returns True if it moved.
    """
    lazy = db.lazy
    if lazy is None or not revision or lazy.map.revision == revision:
        return False
    now = time.monotonic()
    if now - lazy.repinned_at < (REPIN_INTERVAL if interval is None else interval):
        return False
    lazy.repinned_at = now
    try:
        db.checkpoint()
    except errors.OperationalError:
        return False  # a reader or writer is busy: next time
    try:
        emptied = os.path.getsize(db.path + "-wal") == 0
    except FileNotFoundError:
        emptied = True
    if not emptied:
        return False  # a local commit came in between: its state may be the only one some reader sees
    lazy.repin(revision)
    return True


def _u32(image: bytes | bytearray, offset: int) -> int:
    return int.from_bytes(image[offset : offset + 4], "big")
