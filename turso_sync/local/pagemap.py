"""The page map of a hardened database: which image of each page the database file must hold.

The hardened format binds every page to its number, its file and its key epoch, but an older
image of the same page, in the same file and epoch, verifies as well as the current one: a
page rolled back on disk would be read without an error.  The page map closes that gap for
the database file.  ``<db>-pagemap`` records, for every page of the database file, 8 bytes of
the AEAD tag of the image last written there; the VFS compares the tag of every image it reads
from the database file with it and refuses an image that is not the last one written, naming
the page.  A tag cannot be chosen without the key, and every image has its own (its nonce is
random), so an older image of the page does not match.

The map is authenticated (HMAC-SHA256 under a key derived from the data key of the write epoch
and the file id, ``HardenedCodec.map_mac_key``), so it cannot be edited to match an older
image; it is replaced whole (written to a temporary file, synced, renamed), so a reader sees
the old map or the new one.  Files this version creates say in page 1 that they keep a map
(``FileParams.page_map``, authenticated with page 1), so a deleted map is refused, never
rebuilt from whatever is on disk.

Writes.  Every write to the database file happens in a *cycle* (``begin`` .. ``finish``), one
per checkpoint (or per journal-mode write while SQLite creates the file, or per batch of pages
a partial replica fetches), under an exclusive lock on ``<db>-pagemap.lock`` (one cycle at a
time across processes).  ``finish`` syncs the database file, records the tags of the images
written and saves the map, before SQLite counts the checkpoint done.  Until then nobody reads
those images: a checkpoint writes only pages whose newer frames are in the WAL, where every
reader reads them, and a checkpoint killed before ``finish`` leaves them there, to be written
again (and recorded) by the next one; a partial replica marks a fetched page present only after
``finish``.  A write that fails half-way leaves its pages *pending* (any image that
authenticates is accepted); the next cycle records whatever image is then on disk.

Readers in other processes keep the map as they last read it and read it again when an image
does not match (another process's checkpoint, or a cycle in progress).  One read escapes the WAL:
SQLite reads page 1 from the file on a connection's first read when it found no WAL yet, and
another process's checkpoint may be writing it then; that read waits for the cycle to end
(``wait_for_cycles``) before it is refused (``vfs.EncryptedDBFile.xRead``).  What this does not
catch is written in docs/encryption.md: the whole database (and its map) replaced by an older
copy; pages whose image the map does not know yet (a partial replica's pages not fetched yet);
a pending page; and images in the WAL, whose frames are bound to the WAL but not to their place
in it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable
from hashlib import sha256

from .. import errors
from ..crypto.hardened import MAP_TAG_SIZE, HardenedAuthError, HardenedCodec
from .framelog import write_atomically

MAP_SUFFIX = "-pagemap"
LOCK_SUFFIX = "-pagemap.lock"
MAGIC = b"TSPMAP01"
_HEAD = struct.Struct(">8s8sHQII")  # magic, file id, mac epoch, seq, pages, pending count
MAC_SIZE = 32
_ZERO = bytes(MAP_TAG_SIZE)


class PageMapError(errors.EncryptionError):
    """The page map of a hardened database is missing, changed on disk, or not this file's."""


def encode(codec: HardenedCodec, seq: int, tags: bytes | bytearray, pending: Iterable[int]) -> bytes:
    """The bytes of a map file, authenticated under the codec's write epoch."""
    params = codec.params
    assert params is not None
    epoch, key = codec.map_mac_key()
    pend = sorted(set(pending))
    body = (
        _HEAD.pack(MAGIC, params.file_id, epoch, seq, len(tags) // MAP_TAG_SIZE, len(pend))
        + struct.pack(f">{len(pend)}I", *pend)
        + bytes(tags)
    )
    return body + hmac.new(key, body, sha256).digest()


def decode(path: str, codec: HardenedCodec, raw: bytes) -> tuple[int, bytearray, set[int]]:
    """(seq, tags, pending) of a map file's bytes; PageMapError when it is not authentic."""
    if len(raw) < _HEAD.size + MAC_SIZE or raw[:8] != MAGIC:
        raise PageMapError(f"{path}{MAP_SUFFIX}: not a page map (changed on disk?)")
    _magic, file_id, epoch, seq, pages, npending = _HEAD.unpack_from(raw)
    params = codec.params
    if params is None or file_id != params.file_id:
        raise PageMapError(f"{path}{MAP_SUFFIX}: the page map of another file")
    try:
        _epoch, key = codec.map_mac_key(epoch)
    except KeyError:
        codec.load_ring()  # a key rotation's newer epoch
        try:
            _epoch, key = codec.map_mac_key(epoch)
        except KeyError:
            raise PageMapError(
                f"{path}{MAP_SUFFIX}: the page map was written under key epoch {epoch}, whose key this process "
                "does not hold"
            ) from None
    body, mac = raw[:-MAC_SIZE], raw[-MAC_SIZE:]
    expected_len = _HEAD.size + 4 * npending + MAP_TAG_SIZE * pages
    if len(body) != expected_len or not hmac.compare_digest(hmac.new(key, body, sha256).digest(), mac):
        raise PageMapError(f"{path}{MAP_SUFFIX}: the page map failed authentication (changed on disk, or cut short)")
    off = _HEAD.size
    pending = set(struct.unpack_from(f">{npending}I", raw, off))
    off += 4 * npending
    return seq, bytearray(raw[off : off + MAP_TAG_SIZE * pages]), pending


def write_file(path: str, data: bytes) -> None:
    """Replace ``path``'s map with ``data``: a temporary file, synced, renamed over it."""
    write_atomically(path + MAP_SUFFIX, data)


def write_new(path: str, codec: HardenedCodec, images: dict[int, bytes]) -> None:
    """The map of a database file written outside SQLite (a bootstrap): ``images`` as on disk."""
    if not codec.keeps_page_map:
        return
    count = max(images, default=0)
    tags = bytearray(MAP_TAG_SIZE * count)
    for pgno, enc in images.items():
        tags[(pgno - 1) * MAP_TAG_SIZE : pgno * MAP_TAG_SIZE] = codec.map_tag(enc)
    write_file(path, encode(codec, 1, tags, ()))


class PageMap:
    """One database's page map in this process: checks reads, runs write cycles.

    ``read_slot(pgno)`` reads a page's image from the database file as stored (used to resolve
    the pending marks of a cycle that was killed); ``sync_db()`` syncs the database file.
    """

    def __init__(
        self,
        path: str,
        codec: HardenedCodec,
        read_slot: Callable[[int], bytes],
        sync_db: Callable[[], None],
    ) -> None:
        self.path = path
        self.codec = codec
        self._read_slot = read_slot
        self._sync_db = sync_db
        self._lock = threading.RLock()  # the in-memory map
        self._cycle_lock = threading.Lock()  # one cycle at a time in this process
        self._loaded = False
        self._seq = 0
        self._tags = bytearray()
        self._pending: set[int] = set()
        self._lock_fd: int | None = None
        self._cycle_owner: int | None = None
        self._written: dict[int, bytes] = {}  # the open cycle's tags
        self._unsure: set[int] = set()  # pages whose write failed: left pending for the next cycle

    # --- reading --------------------------------------------------------------------------------

    def _entry(self, pgno: int) -> bytes:
        start = (pgno - 1) * MAP_TAG_SIZE
        return bytes(self._tags[start : start + MAP_TAG_SIZE])

    def _accepts(self, pgno: int, tag: bytes) -> bool:
        if pgno in self._pending:
            return True
        written = self._written.get(pgno)
        if written is not None:
            return written == tag
        entry = self._entry(pgno)
        return entry == tag or entry in (b"", _ZERO)  # a page the map holds no image of yet

    def _load(self) -> None:
        try:
            with open(self.path + MAP_SUFFIX, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise PageMapError(
                f"{self.path}{MAP_SUFFIX}: the page map of this database is missing (page 1 says the file keeps "
                "one); without it a rolled-back page cannot be told from the current one. Restore the file, or "
                "copy the data into a new database"
            ) from None
        self._seq, self._tags, pending = decode(self.path, self.codec, raw)
        # this process's own open cycle keeps its pending marks whatever the file says
        self._pending = pending | (set(self._written) if self._cycle_owner is not None else set())
        self._loaded = True

    def check(self, pgno: int, enc: bytes) -> None:
        """Refuse ``enc`` (read from the database file as page ``pgno``) unless it is the image last
        written there; HardenedAuthError naming the page."""
        tag = self.codec.map_tag(enc)
        with self._lock:
            if self._loaded and self._accepts(pgno, tag):
                return
            if self._cycle_owner == threading.get_ident():
                if self._accepts(pgno, tag):
                    return
            else:
                self._load()  # another process may have written since this one last read the map
                if self._accepts(pgno, tag):
                    return
        raise HardenedAuthError(
            pgno,
            "database",
            "it is not the image last written there (an older image of the page was put back, or the page "
            f"map {os.path.basename(self.path)}{MAP_SUFFIX} is not this file's)",
        )

    def wait_for_cycles(self, timeout: float) -> bool:
        """Wait until no write cycle holds the map's lock in another process (or another thread of
        this one), for at most ``timeout`` seconds; True when none does now.

        A reader that met an image the map does not hold may have read it while a checkpoint
        elsewhere had written it and not yet saved the map; once that cycle is over the map says
        so (``check`` reads it again on a mismatch).  Never from this thread's own cycle.
        """
        if self._cycle_owner == threading.get_ident():
            return False
        try:
            fd = os.open(self.path + LOCK_SUFFIX, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return False
        try:
            deadline = time.monotonic() + timeout
            pause = 0.0005
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    return True  # (closing the descriptor below releases it)
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        return False
                    time.sleep(pause)
                    pause = min(pause * 2, 0.05)
        finally:
            os.close(fd)

    # --- write cycles -----------------------------------------------------------------------------

    @property
    def in_cycle(self) -> bool:
        """True when this thread has a cycle open."""
        return self._cycle_owner == threading.get_ident()

    def begin(self) -> bool:
        """Open a cycle for this thread if none is open (taking the cross-process lock and reading
        the map afresh); True when it opened one (the caller then ends it with ``finish``).

        Nothing is saved here.  Until ``finish`` records them, the images a cycle writes are read
        by nobody: a checkpoint writes only pages whose newer frames are in the WAL, where every
        reader reads them until SQLite counts the checkpoint done (after ``finish``, at
        SQLITE_FCNTL_CKPT_DONE), and a killed checkpoint leaves them there for the next one to
        write again; a partial replica marks a fetched page present only after ``finish``, and a
        killed fetch leaves it missing, to be fetched and written again.
        """
        if self._cycle_owner == threading.get_ident():
            return False
        self._cycle_lock.acquire()
        fd: int | None = None
        try:
            fd = os.open(self.path + LOCK_SUFFIX, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            with self._lock:
                self._lock_fd, fd = fd, None
                self._cycle_owner = threading.get_ident()
                self._written = {}
                self._open_cycle()
        except BaseException:
            if fd is not None:
                os.close(fd)
            with self._lock:
                if self._cycle_owner == threading.get_ident():
                    self._end_cycle()  # releases the locks
                else:
                    self._cycle_lock.release()
            raise
        return True

    def _open_cycle(self) -> None:
        """Read the map afresh under the lock; resolve the pages an earlier cycle left pending (a write
        that failed half-way): the images now on disk are recorded."""
        if self._has_pages():
            self._load()  # raises when the map of an existing file is missing
        else:
            # a new file, its first cycle (a map left by an earlier file at this path is replaced)
            self._seq, self._tags, self._pending = 0, bytearray(), set()
            self._loaded = True
        if self._pending:
            for pgno in sorted(self._pending):
                enc = self._read_slot(pgno)
                self._set(pgno, self.codec.map_tag(enc) if enc else _ZERO)
            self._pending = set()
            self._save()

    def _has_pages(self) -> bool:
        try:
            return bool(self._read_slot(1))
        except OSError:
            return False

    def wrote(self, pgno: int, enc: bytes) -> None:
        """Record the image just written as page ``pgno`` (inside this thread's cycle)."""
        with self._lock:
            self._written[pgno] = self.codec.map_tag(enc)

    def unsure(self, pgnos: Iterable[int]) -> None:
        """Pages whose write failed half-way: they stay pending when the cycle ends, and the next
        cycle records whatever image is then on disk."""
        with self._lock:
            for pgno in pgnos:
                self._unsure.add(pgno)
                self._written.pop(pgno, None)

    def finish(self) -> None:
        """Close this thread's cycle: sync the database file, record the images written, save the
        map without their pending marks, release the lock.  Does nothing when no cycle is open."""
        if self._cycle_owner != threading.get_ident():
            return
        try:
            self._sync_db()
            with self._lock:
                for pgno, tag in self._written.items():
                    self._set(pgno, tag)
                self._pending = set(self._unsure)
                self._written = {}
                self._unsure = set()
                self._save()  # synced and renamed before SQLite counts the checkpoint done
        finally:
            with self._lock:
                self._end_cycle()

    def _end_cycle(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        self._written = {}
        if self._cycle_owner is not None:
            self._cycle_owner = None
            self._cycle_lock.release()
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # releases the flock

    def _set(self, pgno: int, tag: bytes) -> None:
        end = pgno * MAP_TAG_SIZE
        if len(self._tags) < end:
            self._tags.extend(bytes(end - len(self._tags)))
        self._tags[end - MAP_TAG_SIZE : end] = tag

    def _save(self) -> None:
        self._seq += 1
        write_file(self.path, encode(self.codec, self._seq, self._tags, self._pending))

    def reseal(self) -> None:
        """Save the map again under the codec's write epoch (before an older epoch is retired)."""
        opened = self.begin()
        try:
            with self._lock:
                self._save()
        finally:
            if opened:
                self.finish()

    def reload(self) -> None:
        """Read the map file now (PageMapError when it is missing or not authentic)."""
        with self._lock:
            self._load()

    def accepts(self, pgno: int, enc: bytes) -> bool:
        """Whether the map, as last read, takes ``enc`` as page ``pgno``'s image (``verify``)."""
        with self._lock:
            return self._accepts(pgno, self.codec.map_tag(enc))

    def unknown_pages(self, count: int) -> list[int]:
        """Pages ``1..count`` the map, as last read, records no image of."""
        with self._lock:
            return [p for p in range(1, count + 1) if self._entry(p) in (b"", _ZERO)]

    @property
    def pending(self) -> frozenset[int]:
        """Pages the map, as last read, leaves open (a cycle under way, or one that was killed)."""
        with self._lock:
            return frozenset(self._pending)


__all__ = ["LOCK_SUFFIX", "MAP_SUFFIX", "PageMap", "PageMapError", "write_new"]
