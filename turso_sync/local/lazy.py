"""Lazy pages of a partial replica: a missing page is fetched on first read, then kept.

The VFS asks ``missing(pgno)`` before reading a page of the database file; for a missing page it
calls ``ensure(pgno)``, which fetches the page's aligned segment (and, when the page is a B-tree
interior page, its children) from the remote *at the bootstrap revision*, writes the pages into
the file (encrypted like every other page), syncs them, and then marks them present in the
bitmap (``presence.py``).

Why the bootstrap revision is right for every reader: a page that changed after the bootstrap
reaches this replica through the WAL (pulls install there, local writes go there), so SQLite
never reads the database file for it until a checkpoint has copied the newer image, which marks
it present.  A page still missing from the file therefore holds its bootstrap image for every
snapshot.

One lock (a thread lock plus ``flock`` on ``<db>-present.lock``) covers "check missing, write,
mark present" here and "write, mark present" in the checkpoint's backfill, so a lazy write never
overwrites a page a checkpoint wrote meanwhile.  Concurrent readers of one missing page share a
single fetch.

The network side is a fetcher registered per database path by the sync layer (``local`` never
imports ``sync``); without one the replica is offline and a missing page raises.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from .. import errors
from ..crypto.page_codec import PageCodec
from ..page import PAGE_SIZE
from .presence import PresenceMap, presence_path
from .vfs import file_descriptor, registry

#: Lazily fetched pages are marked durable at most this often (seconds); see ``release``.
SOFT_SAVE_INTERVAL = 0.5

#: (1-based page numbers, bootstrap revision) -> plaintext images of those pages at that revision
Fetcher = Callable[[list[int], str], dict[int, bytes]]

_fetchers: dict[str, Fetcher] = {}
_fetchers_lock = threading.Lock()


def set_fetcher(db_path: str, fetcher: Fetcher) -> None:
    """Let the lazy pages of ``db_path`` (in this process) be fetched with ``fetcher``."""
    with _fetchers_lock:
        _fetchers[db_path] = fetcher


def clear_fetcher(db_path: str, fetcher: Fetcher) -> None:
    """Forget ``fetcher`` (if it is still the one registered): the replica goes offline."""
    with _fetchers_lock:
        if _fetchers.get(db_path) is fetcher:
            del _fetchers[db_path]


def _fetcher(db_path: str) -> Fetcher | None:
    with _fetchers_lock:
        return _fetchers.get(db_path)


def btree_children(page: bytes, pgno: int) -> list[int]:
    """Child page numbers of a B-tree interior page (table 0x05, index 0x02); [] for any other page."""
    h = 100 if pgno == 1 else 0
    if len(page) < h + 12 or page[h] not in (0x02, 0x05):
        return []
    ncells = int.from_bytes(page[h + 3 : h + 5], "big")
    out = []
    for i in range(ncells):
        at = h + 12 + 2 * i
        if at + 2 > len(page):
            return []
        cell = int.from_bytes(page[at : at + 2], "big")
        if cell + 4 > len(page):
            return []
        out.append(int.from_bytes(page[cell : cell + 4], "big"))
    out.append(int.from_bytes(page[h + 8 : h + 12], "big"))
    return [c for c in out if c > 0]


class LazyPages:
    """The missing pages of one partial replica, within one process."""

    def __init__(
        self, db_path: str, codec: PageCodec | None, presence: PresenceMap, page_size: int = PAGE_SIZE
    ) -> None:
        self.db_path = db_path
        self.codec = codec
        self.page_size = page_size
        self.map = presence
        self.segment_pages = 32
        self.prefetch = True
        #: an interior page with more children than this is not prefetched (they are leaves,
        #: mostly: loading them all would turn a point query into a scan)
        self.prefetch_limit = 64
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._lock_fd: int | None = None
        self._seen: tuple[int, int, int] | None = self._stamp()
        self._dirty = False  # marks that must be durable at release (checkpoint backfill, truncation)
        # marks that may wait (lazily fetched pages hold bootstrap images either way: losing the
        # mark only means fetching them again) and counters: saved at most every SOFT_SAVE_INTERVAL
        self._soft = False
        self._saved_at = 0.0
        self._inflight: dict[int, threading.Event] = {}
        self._inflight_lock = threading.Lock()
        #: when the sync layer last tried to move the pin (``sync/pull.py`` ``advance_pin``)
        self.repinned_at = float("-inf")

    @classmethod
    def open(cls, db_path: str, codec: PageCodec | None, page_size: int = PAGE_SIZE) -> LazyPages | None:
        """The lazy pages of ``db_path``, or None when it is not a partial replica."""
        presence = PresenceMap.load(db_path)
        return None if presence is None else cls(db_path, codec, presence, page_size)

    # --- the lock ------------------------------------------------------------------------------

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(presence_path(self.db_path))
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def acquire(self) -> None:
        """Take the presence lock (re-entrant); the bitmap is re-read if another process changed it."""
        self._thread_lock.acquire()
        self._depth += 1
        if self._depth > 1:
            return
        try:
            fd = os.open(presence_path(self.db_path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_fd = fd
            stamp = self._stamp()
            if stamp != self._seen:
                fresh = PresenceMap.load(self.db_path)
                if fresh is not None:
                    fresh.present |= self.map.present  # what this process marked but did not save yet
                    self.map = fresh
                self._seen = stamp
        except BaseException:
            self._release_fd()
            self._depth -= 1
            self._thread_lock.release()
            raise

    def release(self) -> None:
        """Drop the presence lock, saving the bitmap first if it changed."""
        try:
            due = self._soft and time.monotonic() - self._saved_at > SOFT_SAVE_INTERVAL
            if self._depth == 1 and (self._dirty or due):
                self.map.save(self.db_path)
                self._dirty = self._soft = False
                self._saved_at = time.monotonic()
                self._seen = self._stamp()
        finally:
            if self._depth == 1:
                self._release_fd()
            self._depth -= 1
            self._thread_lock.release()

    def flush(self) -> None:
        """Make every mark durable now (the last connection of this process is closing)."""
        with self.locked():
            if self._soft:
                self._dirty = True

    def _release_fd(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # drops the flock
            self._lock_fd = None

    @contextmanager
    def locked(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()

    # --- presence ------------------------------------------------------------------------------

    def missing(self, pgno: int) -> bool:
        """True if the page has no valid bytes in the file (as far as this process knows).

        Presence only grows, so "present" is always right; "missing" is re-checked under the lock.
        """
        return self.map.missing(pgno)

    def missing_now(self, pgno: int) -> bool:
        """``missing``, checked against the bitmap on disk (under the lock)."""
        with self.locked():
            return self.map.missing(pgno)

    def mark_written(self, first_pgno: int, count: int) -> None:
        """SQLite wrote these pages into the file (checkpoint backfill): they are present."""
        with self.locked():
            end = first_pgno + count
            if self.map.present.range_cardinality(first_pgno, end) != count or self._soft:
                # durable before the lock is released: a page a checkpoint wrote must never be
                # fetched again (that would put its bootstrap image over newer content), and a
                # page marked only in memory (soft) may be one of them
                self.map.present.add_range(first_pgno, end)
                self._dirty = True

    def mark_truncated(self, size_pages: int) -> None:
        """The file was cut to ``size_pages``: pages past it hold nothing to fetch any more.

        A page past the new end only comes back through the WAL (and a checkpoint writes it),
        so its bootstrap image must never be fetched again.
        """
        with self.locked():
            if size_pages < self.map.boot_size:
                before = len(self.map.present)
                self.map.present.add_range(size_pages + 1, self.map.boot_size + 1)
                self._dirty = self._dirty or len(self.map.present) != before

    def repin(self, revision: str) -> None:
        """Fetch missing pages at ``revision`` from now on (the caller has made sure it is safe).

        Safe when every page the remote changed between the current pin and ``revision`` is
        present in the file and no reader can still see a state older than ``revision``: a
        pull installed those pages and a complete (TRUNCATE) checkpoint wrote them into the
        file since.  A page still missing then has the same image at both revisions, so readers
        see no difference; but the remote must keep serving only the newer one, which matters
        once it prunes its history (``serve --history-seconds``).
        """
        with self.locked():
            if self.map.revision != revision:
                self.map.revision = revision
                self._dirty = True

    # --- fetching ------------------------------------------------------------------------------

    def _fetch(self, pgnos: list[int], reason: int) -> dict[int, bytes]:
        fetcher = _fetcher(self.db_path)
        if fetcher is None:
            raise errors.NetworkError(
                f"{self.db_path}: page {reason} is not yet local and the replica is offline "
                "(opened without its remote; open it with turso_sync.connect(path, remote_url))"
            )
        try:
            pages = fetcher(pgnos, self.map.revision)
        except errors.NetworkError as exc:
            raise errors.NetworkError(
                f"{self.db_path}: page {reason} is not yet local and the replica is offline ({exc}); "
                "queries over pages already present keep working"
            ) from None
        except errors.Error as exc:
            raise type(exc)(f"{self.db_path}: page {reason} is not yet local and could not be fetched: {exc}") from None
        with self.locked():
            self.map.requests += 1
            self.map.pages_fetched += len(pages)
            self.map.bytes_fetched += len(pages) * self.page_size
            self._soft = True
        return pages

    def ensure(self, pgno: int) -> None:
        """Make page ``pgno`` present in the file: fetch its segment (and children) if missing."""
        while self.missing(pgno):
            with self._inflight_lock:
                waiting = self._inflight.get(pgno)
                claimed: list[int] = []
                if waiting is None:
                    with self.locked():
                        if not self.map.missing(pgno):
                            return
                        first = (pgno - 1) // self.segment_pages * self.segment_pages + 1
                        last = min(first + self.segment_pages, self.map.boot_size + 1)
                        claimed = [
                            p
                            for p in range(first, last)
                            if p == pgno or (self.map.missing(p) and p not in self._inflight)
                        ]
                    done = threading.Event()
                    for p in claimed:
                        self._inflight[p] = done
            if waiting is not None:
                waiting.wait()
                continue
            try:
                self._load(claimed, pgno)
            finally:
                with self._inflight_lock:
                    for p in claimed:
                        self._inflight.pop(p, None)
                done.set()
            return

    def _load(self, pgnos: list[int], pgno: int) -> None:
        pages = self._fetch(pgnos, pgno)
        if pgno not in pages:
            raise errors.ProtocolError(f"{self.db_path}: the remote did not send page {pgno} of {self.map.revision}")
        self._store(pages)
        if not self.prefetch:
            return
        children = [
            c
            for c in btree_children(pages[pgno], pgno)
            if c not in pages and self.missing(c) and c not in self._inflight
        ]
        if 0 < len(children) <= self.prefetch_limit:
            with contextlib.suppress(errors.Error):  # a prefetch is only a guess; the page itself is in
                self._store(self._fetch(children, pgno))

    def _store(self, pages: dict[int, bytes]) -> None:
        """Write fetched bootstrap images of still-missing pages, sync, then mark them present.

        Each goes to its place on disk: ``(p - 1) * slot``, where a slot is the page, or in the
        envelope layout the page's ``P + 32``-byte envelope (the file is already of full size).
        """
        S = self.codec.slot_size if self.codec is not None else self.page_size
        with self.locked():
            todo = sorted(p for p in pages if self.map.missing(p))
            if not todo:
                return
            state = registry.get(self.db_path)
            page_map = state.map_of(self.codec) if state is not None and self.codec is not None else None
            opened = page_map.begin() if page_map is not None else False  # recorded before marked present
            try:
                # the process's shared descriptor: closing one of our own would drop SQLite's locks
                with file_descriptor(self.db_path) as fd:
                    for p in todo:
                        image = pages[p]
                        if self.codec is not None:
                            image = self.codec.encrypt(image, p)
                        try:
                            os.pwrite(fd, image, (p - 1) * S)
                        except BaseException:
                            if page_map is not None:
                                page_map.unsure([p])
                            raise
                        if page_map is not None:
                            page_map.wrote(p, image)
                    os.fsync(fd)
            finally:
                if page_map is not None and opened:
                    page_map.finish()  # the images written become the map's (``pagemap.py``)
            for p in todo:
                self.map.present.add(p)
            self._soft = True

    def bootstrap_images(self, pgnos: Iterable[int]) -> dict[int, bytes]:
        """Plaintext images of ``pgnos`` at the bootstrap revision (fetched; missing ones are kept)."""
        wanted = sorted(set(pgnos))
        if not wanted:
            return {}
        pages = self._fetch(wanted, wanted[0])
        absent = [p for p in wanted if p not in pages]
        if absent:
            raise errors.ProtocolError(f"{self.db_path}: the remote did not send page {absent[0]}")
        self._store(pages)
        return {p: pages[p] for p in wanted}
