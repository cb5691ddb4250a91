"""The frame log: every committed transaction of a database, numbered, kept across WAL resets.

SQLite's WAL holds committed frames only until a checkpoint copies them into the database
file and a later writer starts the WAL over.  The frame log (``<db>-frames``) archives each
committed transaction just before any checkpoint may copy it (the VFS calls ``archive`` on
``SQLITE_FCNTL_CKPT_START``), so nothing is lost to a reset.  Transactions still in the WAL
are read straight from it; together they form one history with a persistent, strictly
increasing sequence number per transaction.

Each archived transaction keeps, per page, the image it committed and the image the page had
before it (or "absent").  Post-images rebuild any later state from an earlier copy; pre-images
undo every transaction after a watermark.  Images are stored exactly as on disk, so an
encrypted database's log is encrypted with the same key.

A log with ``post_images`` off (the primary's: it serves current pages, and pinned reads from
pre-images) stores the pre-image alone: one image per page written, not two.  A post-image
is not lost by that: it is the pre-image of the next transaction that touched the page, or the
page as it is now, and ``history`` puts it back when asked for images.

Lookups by sequence number bisect the index (sorted by seq), so reading the history after a
revision costs what lies after it, not the length of the history kept.

File layout (big-endian): a 48-byte header, then records.
  header: magic ``TSFRMLG1``, version, page size, base db size (pages), base seq,
          (salt1, salt2, commit frame) of the last transaction folded into the base, crc32.
  record: magic ``TSFR``, seq u64, salt1, salt2, commit frame, db size, db size before,
          page count, body length u32, crc32 of header+body; then per page:
          pgno u32, flag u8 (1 = pre-image follows, 2 = no post-image follows: the commit cut the
          page off, or with 8 it was not kept; 4 = the pre-image was never fetched: a partial
          replica's page still missing from the database file, whose image is the bootstrap
          revision's; 8 = the post-image was not kept, see above), [pre-image], [post-image].
          (A reader that knows flags 1 and 2 only still finds every image: 8 comes with 2.)
A record whose crc does not match is a torn append and is cut off when the log is next opened.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import attrgetter
from typing import BinaryIO

from ..crypto.page_codec import PageCodec
from ..page import PAGE_SIZE
from .vfs import file_descriptor
from .walformat import WalTxn
from .walindex import committed_wal

LOG_MAGIC = b"TSFRMLG1"
REC_MAGIC = b"TSFR"
_HEADER = struct.Struct(">8sIIIQIII")  # magic, version, page size, base size, base seq, salts, frame
_HEADER_SIZE = 48
_REC = struct.Struct(">4sQIIIIIII")  # magic, seq, salt1, salt2, frame, db size, size before, npages, body len
_REC_SIZE = _REC.size + 4  # + crc32
_PAGE_HEAD = struct.Struct(">IB")  # a record's page: pgno, flags
_COPY_CHUNK = 1 << 20  # a prune copies the kept records this many bytes at a time

# page flags of a record
_PRE = 1  # a pre-image follows
_NO_POST = 2  # no post-image follows
_PRE_MISSING = 4  # a partial replica's page never fetched: its pre-image is the bootstrap's
_POST_DROPPED = 8  # (with _NO_POST) the post-image was not kept: see post_images


class RevisionGone(Exception):  # noqa: N818 - reads as a state, like StopIteration
    """The asked-for sequence number is older than the history kept, or newer than the database."""


@dataclass
class TxnPage:
    """One page of one transaction: its image after, and before (None: it did not exist)."""

    pgno: int
    post: bytes
    pre: bytes | None
    pre_missing: bool = False  # partial replica: the pre-image is the bootstrap image, not local
    post_dropped: bool = False  # the log did not keep ``post`` (``post_images`` off): b"" until filled


@dataclass
class Txn:
    """One committed transaction, with raw (as stored on disk) page images."""

    seq: int
    salts: tuple[int, int]
    commit_frame: int
    db_size: int
    size_before: int
    pages: list[TxnPage] = field(default_factory=list)


@dataclass(slots=True)
class _Index:
    seq: int
    offset: int
    salts: tuple[int, int]
    commit_frame: int
    db_size: int
    size_before: int
    pgnos: tuple[int, ...]


@dataclass
class PrunePlan:
    """A prune prepared by ``FrameLog.prepare_prune``: the kept records copied so far into ``tmp``."""

    upto: int
    identity: tuple[int, int]
    head: bytes
    start: int  # offset in the log of the first kept record
    copied_to: int  # offset in the log up to which records are copied
    tmp: str
    header: bytes

    def discard(self) -> None:
        """Remove the copy (a prune not finished)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


_seq_of = attrgetter("seq")
_commit_frame_of = attrgetter("commit_frame")


class FrameLog:
    """The frame log of one database file."""

    def __init__(self, db_path: str, codec: PageCodec | None, page_size: int = PAGE_SIZE) -> None:
        self.db_path = db_path
        self.wal_path = db_path + "-wal"
        self.path = db_path + "-frames"
        self.codec = codec
        self.page_size = page_size
        self._lock = threading.RLock()
        self._index: list[_Index] = []
        self._end = _HEADER_SIZE
        self._identity: tuple[int, int] | None = None
        self._head = b""
        self.base_size = 0
        self.base_seq = 0
        self.base_marker: tuple[int, int, int] = (0, 0, 0)
        #: partial replicas: tells whether a page of the database file was never fetched
        self.is_missing: Callable[[int], bool] | None = None
        #: False: records keep pre-images only (the primary sets it; see the module docstring)
        self.post_images = True
        self._pruning = threading.Lock()  # one prune at a time in this process

    # --- creation and loading ---------------------------------------------------------------

    @staticmethod
    def exists(db_path: str) -> bool:
        return os.path.exists(db_path + "-frames")

    def create(self, base_size: int, base_seq: int = 0, marker: tuple[int, int, int] = (0, 0, 0)) -> None:
        """Start a new log whose history begins at the database's current state."""
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(self._header_bytes(base_size, base_seq, marker))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path)

    def _header_bytes(self, base_size: int, base_seq: int, marker: tuple[int, int, int]) -> bytes:
        head = _HEADER.pack(LOG_MAGIC, 1, self.page_size, base_size, base_seq, *marker)
        return (head + struct.pack(">I", zlib.crc32(head))).ljust(_HEADER_SIZE, b"\0")

    @contextmanager
    def _locked(self, exclusive: bool) -> Iterator[int]:
        with self._lock:
            fd = self._open_locked(exclusive)
            try:
                self._refresh(fd, repair=exclusive)
                yield fd
            finally:
                os.close(fd)  # closing drops the flock

    def _open_locked(self, exclusive: bool) -> int:
        """A descriptor of the log file now at ``self.path``, flocked.

        ``prune`` (in any process) replaces the file; a process that opened the old one and
        waited for the lock would otherwise append to an unlinked file, and every transaction
        it archived would be lost from history.  So after the lock, the name must still lead to
        the locked file; if not, open the new one.
        """
        while True:
            fd = os.open(self.path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
                held = os.fstat(fd)
                now = os.stat(self.path)
            except BaseException:
                os.close(fd)
                raise
            if (held.st_ino, held.st_dev) == (now.st_ino, now.st_dev):
                return fd
            os.close(fd)  # replaced while we waited: lock the file that bears the name now

    def _refresh(self, fd: int, repair: bool) -> None:
        st = os.fstat(fd)
        identity = (st.st_ino, st.st_dev)
        head = os.pread(fd, _HEADER_SIZE, 0)
        # the header too: a pruned log's inode number is soon reused by the next prune's file, and
        # every prune writes a new base into the header
        if identity != self._identity or head != self._head or st.st_size < self._end:
            magic, _version, page_size, base_size, base_seq, s1, s2, frame = _HEADER.unpack_from(head)
            (crc,) = struct.unpack_from(">I", head, _HEADER.size)
            if magic != LOG_MAGIC or crc != zlib.crc32(head[: _HEADER.size]):
                raise OSError(f"{self.path}: not a turso_sync frame log (bad header)")
            self.page_size = page_size
            self.base_size, self.base_seq, self.base_marker = base_size, base_seq, (s1, s2, frame)
            self._index = []
            self._end = _HEADER_SIZE
            self._identity = identity
            self._head = head
        size = st.st_size
        pos = self._end
        while pos + _REC_SIZE <= size:
            head = os.pread(fd, _REC_SIZE, pos)
            magic, seq, s1, s2, frame, db_size, before, npages, body_len = _REC.unpack_from(head)
            (crc,) = struct.unpack_from(">I", head, _REC.size)
            if magic != REC_MAGIC or pos + _REC_SIZE + body_len > size:
                break
            body = os.pread(fd, body_len, pos + _REC_SIZE)
            if zlib.crc32(body, zlib.crc32(head[: _REC.size])) != crc:
                break
            pgnos = []
            p = 0
            P = self.page_size
            for _ in range(npages):
                pgno, flag = struct.unpack_from(">IB", body, p)
                pgnos.append(pgno)
                p += 5 + P * ((flag & 1) + (0 if flag & 2 else 1))
            self._index.append(_Index(seq, pos, (s1, s2), frame, db_size, before, tuple(pgnos)))
            pos += _REC_SIZE + body_len
        if pos < size and repair:
            os.ftruncate(fd, pos)  # a torn append from a crash: drop it
            os.fsync(fd)
        self._end = pos

    # --- the history --------------------------------------------------------------------------

    def _last(self) -> tuple[int, tuple[int, int, int], int]:
        """(seq, (salt1, salt2, commit frame), db size) of the newest archived transaction."""
        if self._index:
            rec = self._index[-1]
            return rec.seq, (rec.salts[0], rec.salts[1], rec.commit_frame), rec.db_size
        return self.base_seq, self.base_marker, self.base_size

    def _wal_txns(self) -> list[Txn]:
        """Transactions still in the WAL and not archived yet, numbered and with pre-images."""
        return self._wal_state()[0]

    def _wal_state(self, after: int | None = None) -> tuple[list[Txn], dict[int, bytes], int]:
        """``_wal_txns`` (only those with seq > ``after`` when given: the others are numbered and
        their frames counted, but not built), the newest committed WAL image of each page the WAL
        holds, and the newest transaction's seq (archived or not)."""
        scan = committed_wal(self.db_path)
        hdr, committed = scan.header, scan.txns
        last_seq, (ls1, ls2, lframe), last_size = self._last()
        if hdr is None or not committed:
            return [], {}, last_seq
        same_generation = (ls1, ls2) == hdr.salts
        latest: dict[int, bytes] = {}
        out: list[Txn] = []
        size_before = last_size
        seq = last_seq
        db_fd: int | None = None
        with contextlib.ExitStack() as stack:
            for wtxn in committed:
                archived = same_generation and wtxn.commit_frame <= lframe
                if not archived:
                    seq += 1
                    if after is None or seq > after:
                        if db_fd is None:
                            # never a descriptor of our own: closing it would drop SQLite's locks
                            db_fd = stack.enter_context(file_descriptor(self.db_path))
                        out.append(self._txn_from_wal(seq, wtxn, latest, db_fd, size_before))
                    size_before = wtxn.db_size
                for frame in wtxn.frames:
                    latest[frame.pgno] = frame.body
        return out, latest, seq

    def _txn_from_wal(self, seq: int, wtxn: WalTxn, latest: dict[int, bytes], db_fd: int, size_before: int) -> Txn:
        P = self.page_size
        txn = Txn(seq, wtxn.salts, wtxn.commit_frame, wtxn.db_size, size_before)
        posts: dict[int, bytes] = {}
        for frame in wtxn.frames:
            posts[frame.pgno] = frame.body  # a later frame of the same page wins
        # pages cut off by a shrinking commit have no new image, but must keep the old one
        cut = [p for p in range(wtxn.db_size + 1, size_before + 1) if p not in posts]
        for pgno in sorted([*posts, *cut]):
            pre = latest.get(pgno)
            if pre is None and pgno <= size_before:
                if self.is_missing is not None and self.is_missing(pgno):
                    # never fetched (SQLite can overwrite a free page without reading it): the
                    # file holds no image of it, so record that instead of its bytes
                    txn.pages.append(TxnPage(pgno, posts.get(pgno, b""), None, pre_missing=True))
                    continue
                pre = os.pread(db_fd, P, (pgno - 1) * P)
                if len(pre) < P:
                    pre = None
            txn.pages.append(TxnPage(pgno, posts.get(pgno, b""), pre))
        return txn

    def archive(self) -> int:
        """Append every committed, not yet archived WAL transaction; return how many.

        A log that was deleted under a running process raises (FileNotFoundError): the VFS then
        refuses the checkpoint's backfill, so the WAL keeps every frame rather than history
        silently losing them (``ReplicaFiles`` names the missing log on the next open).
        """
        with self._locked(exclusive=True) as fd:
            txns = self._wal_txns()
            if not txns:
                return 0
            # the records' pieces, joined once: no copy of the images per record, and the
            # index entries are the ones a read of these records would make (no read back)
            parts: list[bytes] = []
            index: list[_Index] = []
            end = self._end
            for txn in txns:
                body_len = self._encode_into(txn, parts)
                pgnos = tuple(page.pgno for page in txn.pages)
                index.append(_Index(txn.seq, end, txn.salts, txn.commit_frame, txn.db_size, txn.size_before, pgnos))
                end += _REC_SIZE + body_len
            data = b"".join(parts)
            written = os.pwrite(fd, data, self._end)
            if written != len(data):
                # a short write (the disk filled up): the records are not all there, so the WAL
                # must keep its frames; the torn tail is cut when the log is next locked to write
                raise OSError(errno.ENOSPC, f"{self.path}: {written} of {len(data)} bytes of history written")
            os.fsync(fd)
            self._index.extend(index)
            self._end = end
            return len(txns)

    def _encode_into(self, txn: Txn, parts: list[bytes]) -> int:
        """Append one record's pieces to ``parts`` (header, checksum, body); return its body's length."""
        body: list[bytes] = []
        for page in txn.pages:
            post = page.post if self.post_images else b""
            flag = (_PRE if page.pre is not None else 0) | (0 if post else _NO_POST)
            if page.pre_missing:
                flag |= _PRE_MISSING
            if page.post and not post:
                flag |= _POST_DROPPED
            body.append(_PAGE_HEAD.pack(page.pgno, flag))
            if page.pre is not None:
                body.append(page.pre)
            if post:
                body.append(post)
        body_len = sum(map(len, body))
        head = _REC.pack(
            REC_MAGIC,
            txn.seq,
            txn.salts[0],
            txn.salts[1],
            txn.commit_frame,
            txn.db_size,
            txn.size_before,
            len(txn.pages),
            body_len,
        )
        crc = zlib.crc32(head)
        for piece in body:
            crc = zlib.crc32(piece, crc)
        parts.append(head)
        parts.append(struct.pack(">I", crc))
        parts.extend(body)
        return body_len

    def _read_record(self, fd: int, rec: _Index) -> Txn:
        head = os.pread(fd, _REC_SIZE, rec.offset)
        body_len = _REC.unpack_from(head)[8]
        body = os.pread(fd, body_len, rec.offset + _REC_SIZE)
        P = self.page_size
        txn = Txn(rec.seq, rec.salts, rec.commit_frame, rec.db_size, rec.size_before)
        p = 0
        for _ in rec.pgnos:
            pgno, flag = struct.unpack_from(">IB", body, p)
            p += 5
            pre = None
            if flag & _PRE:
                pre = body[p : p + P]
                p += P
            post = b""
            if not flag & _NO_POST:
                post = body[p : p + P]
                p += P
            txn.pages.append(
                TxnPage(pgno, post, pre, pre_missing=bool(flag & _PRE_MISSING), post_dropped=bool(flag & _POST_DROPPED))
            )
        return txn

    def _after(self, since: int) -> int:
        """Position in the index of the first record with seq > ``since`` (a bisect: the index is sorted)."""
        return bisect.bisect_right(self._index, since, key=_seq_of)

    def _fill_posts(self, txns: list[Txn], latest: dict[int, bytes]) -> None:
        """Put back the post-images a log without ``post_images`` did not keep (caller holds the lock).

        Walking from the newest transaction back, a page's image after a transaction is the
        pre-image of the next one that touched it, else the page now: the newest committed WAL
        image (``latest``), else the database file.
        """
        if not any(page.post_dropped for txn in txns for page in txn.pages):
            return
        after: dict[int, bytes | None] = {}
        with contextlib.ExitStack() as stack:
            db_fd: int | None = None
            for txn in reversed(txns):
                for page in txn.pages:
                    if page.post_dropped:
                        if page.pgno in after:
                            image = after[page.pgno]
                        else:
                            image = latest.get(page.pgno)
                            if image is None:
                                if db_fd is None:
                                    db_fd = stack.enter_context(file_descriptor(self.db_path))
                                image = os.pread(db_fd, self.page_size, (page.pgno - 1) * self.page_size)
                        if image is None or len(image) != self.page_size:
                            raise OSError(
                                f"{self.path}: no image of page {page.pgno} after transaction {txn.seq}: "
                                "the frame log does not match the database"
                            )
                        page.post = image
                        page.post_dropped = False
                    after[page.pgno] = page.pre

    def oldest_seq(self) -> int:
        """The oldest sequence number the history still reaches (its base: a prune moves it on)."""
        with self._locked(exclusive=False):
            return self.base_seq

    def current_seq(self) -> int:
        """Sequence number of the newest committed transaction (0 when there is none).

        Counts the WAL's transactions not archived yet; it builds none of them (no page images,
        no reads of the database file), so it costs the WAL scan alone.
        """
        with self._locked(exclusive=False):
            return self._last()[0] + self._wal_unarchived()

    def _wal_unarchived(self) -> int:
        """How many committed WAL transactions are not archived yet (what ``_wal_txns`` numbers)."""
        scan = committed_wal(self.db_path)
        if scan.header is None or not scan.txns:
            return 0
        _seq, (ls1, ls2, lframe), _size = self._last()
        if (ls1, ls2) != scan.header.salts:
            return len(scan.txns)  # another generation: none of them was archived
        # commit frames grow along the WAL: the archived ones are a prefix
        return len(scan.txns) - bisect.bisect_right(scan.txns, lframe, key=_commit_frame_of)

    def history(self, since: int | None, with_images: bool = True) -> Iterator[Txn]:
        """Every committed transaction with seq > ``since``, oldest first (``None``: all kept).

        Raises RevisionGone if ``since`` is older than the history kept or newer than the newest
        transaction.  Without images, pages carry empty bytes (cheap: reads only the index).
        ``None`` reads the base under the same lock, so a prune by another process meanwhile
        cannot make it stale.
        """
        with self._locked(exclusive=False) as fd:
            if since is None:
                since = self.base_seq
            # the WAL's transactions up to ``since`` are numbered, not built (their pages unread)
            wal, latest, newest = self._wal_state(since)
            if since < self.base_seq or since > newest:
                raise RevisionGone(f"revision {since} is not available: history covers {self.base_seq}..{newest}")
            archived: list[Txn] = []
            for rec in self._index[self._after(since) :]:
                if with_images:
                    archived.append(self._read_record(fd, rec))
                else:
                    archived.append(
                        Txn(
                            rec.seq,
                            rec.salts,
                            rec.commit_frame,
                            rec.db_size,
                            rec.size_before,
                            [TxnPage(p, b"", None) for p in rec.pgnos],
                        )
                    )
            if with_images:
                self._fill_posts(archived + wal, latest)
        yield from archived
        yield from wal

    def first_touches(self, since: int, pgnos: Iterable[int] | None) -> tuple[dict[int, TxnPage], int | None]:
        """For each page (of ``pgnos``, or any) changed after ``since``: its entry in the first
        transaction after ``since`` that touched it (whose ``pre`` is the image at ``since``);
        and the database size at ``since`` (None when nothing happened after it).

        Reads only the records that hold a wanted page, and stops once every wanted page is
        found.  Raises RevisionGone like ``history``.
        """
        wanted = set(pgnos) if pgnos is not None else None
        found: dict[int, TxnPage] = {}
        size_at: int | None = None
        with self._locked(exclusive=False) as fd:
            wal, _latest, newest = self._wal_state(since)
            if since < self.base_seq or since > newest:
                raise RevisionGone(f"revision {since} is not available: history covers {self.base_seq}..{newest}")
            for rec in self._index[self._after(since) :]:
                if size_at is None:
                    size_at = rec.size_before
                if wanted is not None and len(found) == len(wanted):
                    break  # every wanted page has its first touch (the size is taken above)
                if any(p not in found and (wanted is None or p in wanted) for p in rec.pgnos):
                    for page in self._read_record(fd, rec).pages:
                        if page.pgno not in found and (wanted is None or page.pgno in wanted):
                            found[page.pgno] = page
        for txn in wal:  # only those after ``since``
            if size_at is None:
                size_at = txn.size_before
            for page in txn.pages:
                if page.pgno not in found and (wanted is None or page.pgno in wanted):
                    found[page.pgno] = page
        return found, size_at

    def size_at(self, seq: int) -> int:
        """Database size in pages right after transaction ``seq``."""
        with self._locked(exclusive=False):
            if seq == self.base_seq:
                return self.base_size
            if seq > self.base_seq:
                i = self._after(seq - 1)
                if i < len(self._index) and self._index[i].seq == seq:
                    return self._index[i].db_size
                for txn in self._wal_state(seq - 1)[0]:
                    if txn.seq == seq:
                        return txn.db_size
        raise RevisionGone(f"revision {seq} is not available")

    # --- bounding the history -----------------------------------------------------------------

    def size_bytes(self) -> int:
        """Bytes of the log file: its header and every archived record."""
        with self._locked(exclusive=False):
            return self._end

    @property
    def known_size(self) -> int:
        """``size_bytes`` as this process last saw it (its last archive, prune or look under the lock),
        without looking again: exact where this process is the only one that archives and prunes
        (the primary's), and never more than the file holds."""
        return self._end

    def prune_point(self, max_bytes: int) -> int:
        """The oldest ``upto`` whose prune leaves at most ``max_bytes`` in the log file (the base if it holds).

        Only whole records go: with none small enough, every archived record.
        """
        with self._locked(exclusive=False):
            if self._end <= max_bytes or not self._index:
                return self.base_seq
            # the kept bytes fall as the first kept record moves on: bisect on its offset
            cut = self._end + _HEADER_SIZE - max_bytes  # the first kept record must start at or after this
            i = bisect.bisect_left(self._index, cut, key=attrgetter("offset"))
            return self._index[i - 1].seq if i > 0 else self.base_seq

    def seq_bytes_after(self, seq: int) -> int:
        """Bytes the log file would keep after a prune up to ``seq``."""
        with self._locked(exclusive=False):
            i = self._after(seq)
            start = self._index[i].offset if i < len(self._index) else self._end
            return _HEADER_SIZE + self._end - start

    def prune(self, upto: int) -> None:
        """Forget history up to and including ``upto`` (it can no longer be undone or replayed).

        Both steps at once (``prepare_prune``, ``finish_prune``); while a prune of this process
        is under way in another thread, nothing (that one does the job).
        """
        while True:
            plan = self.prepare_prune(upto)
            if plan is None or self.finish_prune(plan):
                return
            # another process replaced the log between the two steps: look again at the new one

    def prepare_prune(self, upto: int) -> PrunePlan | None:
        """First step of a prune: copy the records to keep into a new file (None: nothing to drop).

        The copy holds no lock, so archives and reads go on meanwhile: records already written
        never change while the file keeps its name (``finish_prune`` checks that it did).  Any
        thread may run it; at most one prune runs at a time in a process.
        """
        with self._locked(exclusive=False):
            i = self._after(upto)
            if i == 0:
                return None
            last = self._index[i - 1]
            assert self._identity is not None
            header = self._header_bytes(last.db_size, last.seq, (last.salts[0], last.salts[1], last.commit_frame))
            start = self._index[i].offset if i < len(self._index) else self._end
            plan = PrunePlan(last.seq, self._identity, self._head, start, self._end, self.path + ".prune", header)
        if not self._pruning.acquire(blocking=False):
            return None  # another prune is under way: it does the job
        copied = False
        try:
            with open(self.path, "rb") as src:
                st = os.fstat(src.fileno())
                if (st.st_ino, st.st_dev) == plan.identity:  # else replaced since: whoever did it pruned
                    with open(plan.tmp, "wb") as out:
                        out.write(header)
                        _copy_range(src.fileno(), out, plan.start, plan.copied_to)
                        out.flush()
                        os.fsync(out.fileno())
                    copied = True
        finally:
            if not copied:
                plan.discard()
                self._pruning.release()
        return plan if copied else None

    def abandon_prune(self, plan: PrunePlan) -> None:
        """Drop a prepared prune that will not be finished (its copy goes; another prune may start)."""
        plan.discard()
        self._pruning.release()

    def finish_prune(self, plan: PrunePlan) -> bool:
        """Second step: append what was archived since the copy, and put the new file in place.

        Short: it copies only the records archived after ``prepare_prune`` (under the exclusive
        lock).  False when the log was replaced meanwhile (the copy is dropped, nothing changes).
        """
        try:
            with self._locked(exclusive=True) as fd:
                if (self._identity, self._head) != (plan.identity, plan.head) or self._end < plan.copied_to:
                    return False
                with open(plan.tmp, "ab") as out:
                    _copy_range(fd, out, plan.copied_to, self._end)
                    out.flush()
                    os.fsync(out.fileno())
                    st = os.fstat(out.fileno())
                os.replace(plan.tmp, self.path)
                fsync_dir(self.path)
                # the kept records moved by the same amount: the index follows, no new scan
                shift = plan.start - _HEADER_SIZE
                i = self._after(plan.upto)
                last_dropped, kept = self._index[i - 1], self._index[i:]
                for rec in kept:
                    rec.offset -= shift
                self._index = kept
                self._end -= shift
                self.base_size, self.base_seq = last_dropped.db_size, last_dropped.seq
                self.base_marker = (last_dropped.salts[0], last_dropped.salts[1], last_dropped.commit_frame)
                self._identity = (st.st_ino, st.st_dev)
                self._head = plan.header
                return True
        finally:
            self.abandon_prune(plan)  # the copy was renamed, or is not wanted

    def decrypt(self, raw: bytes, pgno: int) -> bytes:
        """A stored image as plaintext."""
        if self.codec is None:
            return raw
        return self.codec.decrypt(raw, pgno, "frame log")


def _copy_range(fd: int, out: BinaryIO, start: int, end: int) -> None:
    """Copy bytes ``start..end`` of ``fd`` to ``out``, a chunk at a time."""
    pos = start
    while pos < end:
        chunk = os.pread(fd, min(_COPY_CHUNK, end - pos), pos)
        if not chunk:
            raise OSError(f"frame log ended at {pos} while {end} bytes were expected")
        out.write(chunk)
        pos += len(chunk)


def fsync_dir(path: str) -> None:
    """Make a rename, creation or removal of ``path`` durable: fsync the folder that holds it."""
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str, data: bytes, tmp: str | None = None) -> None:
    """Replace ``path`` with ``data``: written to ``tmp`` (``path.tmp``), synced, renamed over it, the rename synced."""
    tmp = tmp or path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path)
