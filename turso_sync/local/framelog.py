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

File layout (big-endian): a 48-byte header, then records.
  header: magic ``TSFRMLG1``, version, page size, base db size (pages), base seq,
          (salt1, salt2, commit frame) of the last transaction folded into the base, crc32.
  record: magic ``TSFR``, seq u64, salt1, salt2, commit frame, db size, db size before,
          page count, body length u32, crc32 of header+body; then per page:
          pgno u32, flag u8 (1 = pre-image follows, 2 = no post-image: the commit cut the page
          off, 4 = the pre-image was never fetched: a partial replica's page still missing from the
          database file, whose image is the bootstrap revision's), [pre-image], [post-image].
A record whose crc does not match is a torn append and is cut off when the log is next opened.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

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


class RevisionGone(Exception):  # noqa: N818 - reads as a state, like StopIteration
    """The asked-for sequence number is older than the history kept, or newer than the database."""


@dataclass
class TxnPage:
    """One page of one transaction: its image after, and before (None: it did not exist)."""

    pgno: int
    post: bytes
    pre: bytes | None
    pre_missing: bool = False  # partial replica: the pre-image is the bootstrap image, not local


@dataclass
class Txn:
    """One committed transaction, with raw (as stored on disk) page images."""

    seq: int
    salts: tuple[int, int]
    commit_frame: int
    db_size: int
    size_before: int
    pages: list[TxnPage] = field(default_factory=list)


@dataclass
class _Index:
    seq: int
    offset: int
    salts: tuple[int, int]
    commit_frame: int
    db_size: int
    size_before: int
    pgnos: tuple[int, ...]


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
        scan = committed_wal(self.db_path)
        hdr, committed = scan.header, scan.txns
        if hdr is None or not committed:
            return []
        last_seq, (ls1, ls2, lframe), last_size = self._last()
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
                    if db_fd is None:
                        # never a descriptor of our own: closing it would drop SQLite's locks
                        db_fd = stack.enter_context(file_descriptor(self.db_path))
                    out.append(self._txn_from_wal(seq, wtxn, latest, db_fd, size_before))
                    size_before = wtxn.db_size
                for frame in wtxn.frames:
                    latest[frame.pgno] = frame.body
        return out

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
            blob = bytearray()
            for txn in txns:
                blob += self._encode(txn)
            os.pwrite(fd, bytes(blob), self._end)
            os.fsync(fd)
            self._refresh(fd, repair=False)
            return len(txns)

    def _encode(self, txn: Txn) -> bytes:
        body = bytearray()
        for page in txn.pages:
            flag = (1 if page.pre is not None else 0) | (0 if page.post else 2) | (4 if page.pre_missing else 0)
            body += struct.pack(">IB", page.pgno, flag)
            if page.pre is not None:
                body += page.pre
            body += page.post
        head = _REC.pack(
            REC_MAGIC,
            txn.seq,
            txn.salts[0],
            txn.salts[1],
            txn.commit_frame,
            txn.db_size,
            txn.size_before,
            len(txn.pages),
            len(body),
        )
        crc = zlib.crc32(bytes(body), zlib.crc32(head))
        return head + struct.pack(">I", crc) + bytes(body)

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
            if flag & 1:
                pre = body[p : p + P]
                p += P
            post = b""
            if not flag & 2:
                post = body[p : p + P]
                p += P
            txn.pages.append(TxnPage(pgno, post, pre, pre_missing=bool(flag & 4)))
        return txn

    def current_seq(self) -> int:
        """Sequence number of the newest committed transaction (0 when there is none)."""
        with self._locked(exclusive=False):
            wal = self._wal_txns()
            return wal[-1].seq if wal else self._last()[0]

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
            wal = self._wal_txns()
            newest = wal[-1].seq if wal else self._last()[0]
            if since < self.base_seq or since > newest:
                raise RevisionGone(f"revision {since} is not available: history covers {self.base_seq}..{newest}")
            archived: list[Txn] = []
            for rec in self._index:
                if rec.seq <= since:
                    continue
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
        yield from archived
        for txn in wal:
            if txn.seq > since:
                yield txn

    def first_touches(self, since: int, pgnos: Iterable[int] | None) -> tuple[dict[int, TxnPage], int | None]:
        """For each page (of ``pgnos``, or any) changed after ``since``: its entry in the first
        transaction after ``since`` that touched it (whose ``pre`` is the image at ``since``);
        and the database size at ``since`` (None when nothing happened after it).

        Reads only the records that hold a wanted page.  Raises RevisionGone like ``history``.
        """
        wanted = set(pgnos) if pgnos is not None else None
        found: dict[int, TxnPage] = {}
        size_at: int | None = None
        with self._locked(exclusive=False) as fd:
            wal = self._wal_txns()
            newest = wal[-1].seq if wal else self._last()[0]
            if since < self.base_seq or since > newest:
                raise RevisionGone(f"revision {since} is not available: history covers {self.base_seq}..{newest}")
            for rec in self._index:
                if rec.seq <= since:
                    continue
                if size_at is None:
                    size_at = rec.size_before
                if any(p not in found and (wanted is None or p in wanted) for p in rec.pgnos):
                    for page in self._read_record(fd, rec).pages:
                        if page.pgno not in found and (wanted is None or page.pgno in wanted):
                            found[page.pgno] = page
        for txn in wal:
            if txn.seq <= since:
                continue
            if size_at is None:
                size_at = txn.size_before
            for page in txn.pages:
                if page.pgno not in found and (wanted is None or page.pgno in wanted):
                    found[page.pgno] = page
        return found, size_at

    def size_at(self, seq: int) -> int:
        """Database size in pages right after transaction ``seq``."""
        if seq == self.base_seq:
            return self.base_size
        for txn in self.history(seq - 1, with_images=False):
            return txn.db_size
        raise RevisionGone(f"revision {seq} is not available")

    def prune(self, upto: int) -> None:
        """Forget history up to and including ``upto`` (it can no longer be undone or replayed)."""
        with self._locked(exclusive=True) as fd:
            keep = [rec for rec in self._index if rec.seq > upto]
            dropped = [rec for rec in self._index if rec.seq <= upto]
            if not dropped:
                return
            last = dropped[-1]
            header = self._header_bytes(last.db_size, last.seq, (last.salts[0], last.salts[1], last.commit_frame))
            tmp = self.path + ".tmp"
            with open(tmp, "wb") as out:
                out.write(header)
                if keep:
                    start = keep[0].offset
                    out.write(os.pread(fd, self._end - start, start))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
            fsync_dir(self.path)
            self._identity = None

    def decrypt(self, raw: bytes, pgno: int) -> bytes:
        """A stored image as plaintext."""
        if self.codec is None:
            return raw
        return self.codec.decrypt(raw, pgno, "frame log")


def fsync_dir(path: str) -> None:
    """Make a rename, creation or removal of ``path`` durable: fsync the folder that holds it."""
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
