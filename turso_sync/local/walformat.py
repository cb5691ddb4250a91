"""SQLite's WAL file format: headers, frames and the Fibonacci-style checksum.

The checksum is a linear recurrence over 32-bit word pairs, ``s1 += x + s2; s2 += y + s1``.
Written as ``S' = M S + v`` with ``M = [[1, 1], [1, 2]]`` it becomes two dot products against
precomputed powers of ``M``, which numpy does in microseconds instead of the ~140 µs a Python loop
takes per 4 KiB page.  The dot products run on the 32-bit words as they are, with coefficients
reduced modulo 2**32: unsigned 32-bit arithmetic wraps modulo 2**32, which is the checksum's own
arithmetic, so no widened copy of the data is made (one per frame written or verified).

Where the optional compiled helper ``turso_sync._speedups`` was built (``setup.py``), its C loop
does the same in well under a microsecond per frame and ``wal_checksum`` is that function; the
numpy version stays as its fallback, used when the module is absent or refused by
``TURSO_SYNC_PURE_PYTHON=1`` (``CHECKSUM_IMPLEMENTATION`` says which one is in use).  numpy is
imported only when that fallback first runs: importing it costs about 0.1 s of every process's
start, and its OpenBLAS threads spin for another ~0.1 s of CPU after the import.
"""

from __future__ import annotations

import os
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from .._compiled import speedups

if TYPE_CHECKING:
    import numpy as np

WAL_HEADER_SIZE = 32
FRAME_HEADER_SIZE = 24
WAL_MAGIC_LE = 0x377F0682  # checksums over little-endian words
WAL_MAGIC_BE = 0x377F0683
WAL_VERSION = 3007000
_MASK = 0xFFFFFFFF

_WAL_HEADER = struct.Struct(">IIIIIIII")
_FRAME_HEADER = struct.Struct(">IIIIII")


@lru_cache(maxsize=16)
def _coefficients(npairs: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Interleaved coefficients (2*npairs, 2) so that ``words @ C`` gives both sums, and M**npairs."""
    import numpy as np  # (only the fallback needs numpy; see the module's docstring)

    powers = np.empty((npairs + 1, 4), dtype=np.uint64)
    a, b, c, d = 1, 0, 0, 1  # identity
    wrap = 0xFFFFFFFFFFFFFFFF
    for k in range(npairs + 1):
        powers[k] = (a, b, c, d)
        # left-multiply by M = [[1, 1], [1, 2]]
        a, b, c, d = (a + c) & wrap, (b + d) & wrap, (a + 2 * c) & wrap, (b + 2 * d) & wrap
    rev = powers[npairs - 1 :: -1] if npairs > 0 else powers[:0]
    coef = np.empty((2 * npairs, 2), dtype=np.uint64)
    with np.errstate(over="ignore"):
        coef[0::2, 0] = rev[:, 0] + rev[:, 1]  # x_j into s1
        coef[0::2, 1] = rev[:, 2] + rev[:, 3]  # x_j into s2
    coef[1::2, 0] = rev[:, 1]  # y_j into s1
    coef[1::2, 1] = rev[:, 3]  # y_j into s2
    last = [int(v) for v in powers[npairs]]
    return coef, (last[0], last[1], last[2], last[3])


@lru_cache(maxsize=16)
def _word_coefficients(nwords: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """For ``nwords`` words: the coefficient of each word in s1 and in s2 (uint32), and M**(nwords/2)."""
    import numpy as np

    coef, last = _coefficients(nwords // 2)
    into_s1 = np.ascontiguousarray(coef[:, 0] & _MASK).astype(np.uint32)
    into_s2 = np.ascontiguousarray(coef[:, 1] & _MASK).astype(np.uint32)
    return into_s1, into_s2, last


def wal_checksum_numpy(data: bytes, s1: int = 0, s2: int = 0, big_endian: bool = False) -> tuple[int, int]:
    """SQLite's WAL checksum of ``data`` (a multiple of 8 bytes) continuing from (s1, s2), with numpy."""
    import numpy as np

    words = np.frombuffer(data, dtype=">u4" if big_endian else "<u4")  # a ValueError unless 4 divides the size
    if len(words) % 2:
        raise ValueError(f"wal_checksum: data must be a multiple of 8 bytes, not {4 * len(words)}")
    into_s1, into_s2, (p00, p01, p10, p11) = _word_coefficients(len(words))
    c1 = int(words.dot(into_s1))  # uint32 dot products wrap modulo 2**32, which is what we want
    c2 = int(words.dot(into_s2))
    return (p00 * s1 + p01 * s2 + c1) & _MASK, (p10 * s1 + p11 * s2 + c2) & _MASK


wal_checksum = wal_checksum_numpy
#: "c" when ``wal_checksum`` is the compiled helper's, "numpy" when it is the fallback above.
CHECKSUM_IMPLEMENTATION = "numpy"
_compiled = speedups()
if _compiled is not None:
    wal_checksum = _compiled.wal_checksum
    CHECKSUM_IMPLEMENTATION = "c"


def wal_checksum_slow(data: bytes, s1: int = 0, s2: int = 0, big_endian: bool = False) -> tuple[int, int]:
    """Reference implementation, used by the tests to check ``wal_checksum``."""
    fmt = ">" if big_endian else "<"
    for x, y in struct.iter_unpack(fmt + "II", data):
        s1 = (s1 + x + s2) & _MASK
        s2 = (s2 + y + s1) & _MASK
    return s1, s2


@dataclass(frozen=True)
class WalHeader:
    """The 32-byte WAL header."""

    magic: int
    version: int
    page_size: int
    checkpoint_seq: int
    salt1: int
    salt2: int
    cksum1: int
    cksum2: int

    @property
    def big_endian(self) -> bool:
        return self.magic == WAL_MAGIC_BE

    @property
    def salts(self) -> tuple[int, int]:
        return (self.salt1, self.salt2)

    @classmethod
    def parse(cls, raw: bytes) -> WalHeader | None:
        """Parse and validate a WAL header; None when it is not a valid one."""
        if len(raw) < WAL_HEADER_SIZE:
            return None
        hdr = cls(*_WAL_HEADER.unpack_from(raw))
        if hdr.magic not in (WAL_MAGIC_LE, WAL_MAGIC_BE):
            return None
        if wal_checksum(raw[:24], big_endian=hdr.big_endian) != (hdr.cksum1, hdr.cksum2):
            return None
        return hdr

    @classmethod
    def build(cls, page_size: int, checkpoint_seq: int, salt1: int, salt2: int) -> bytes:
        """A fresh little-endian-checksum header."""
        head = struct.pack(">IIIIII", WAL_MAGIC_LE, WAL_VERSION, page_size, checkpoint_seq, salt1, salt2)
        c1, c2 = wal_checksum(head)
        return head + struct.pack(">II", c1, c2)


@dataclass(frozen=True)
class FrameHeader:
    """The 24-byte header in front of every WAL frame."""

    pgno: int
    db_size: int  # non-zero on a commit frame: database size in pages after the commit
    salt1: int
    salt2: int
    cksum1: int
    cksum2: int

    @classmethod
    def parse(cls, raw: bytes) -> FrameHeader:
        return cls(*_FRAME_HEADER.unpack_from(raw))

    @staticmethod
    def build(pgno: int, db_size: int, salts: tuple[int, int], cksum: tuple[int, int]) -> bytes:
        return _FRAME_HEADER.pack(pgno, db_size, salts[0], salts[1], cksum[0], cksum[1])


def frame_offset(index: int, page_size: int) -> int:
    """Byte offset of frame ``index`` (1-based) in the WAL file."""
    return WAL_HEADER_SIZE + (index - 1) * (page_size + FRAME_HEADER_SIZE)


def frame_index(offset: int, page_size: int) -> tuple[int, int]:
    """(1-based frame index, offset inside that frame) for a WAL byte offset past the header."""
    rel = offset - WAL_HEADER_SIZE
    size = page_size + FRAME_HEADER_SIZE
    return rel // size + 1, rel % size


@dataclass
class WalFrame:
    """One valid frame read back from a WAL file (body exactly as stored on disk)."""

    index: int
    pgno: int
    db_size: int
    body: bytes


@dataclass
class WalTxn:
    """The frames of one committed transaction, in WAL order."""

    salts: tuple[int, int]
    commit_frame: int
    db_size: int
    frames: list[WalFrame]
    cksum: tuple[int, int] = (0, 0)  # checksum chain value right after the commit frame


def read_committed(raw: bytes, slot_size: int | None = None) -> tuple[WalHeader | None, list[WalTxn]]:
    """Every committed transaction of a WAL image, the way SQLite's recovery finds them.

    Frames count only while their salts match the header and the checksum chain holds; a
    transaction counts only once its commit frame does.  Checksums are over the bytes as
    stored, which for an encrypted database is the ciphertext (Turso's rule).  ``slot_size``
    is the bytes of a frame's body on disk when it differs from the header's page size (the
    envelope layout, ``crypto/envelope.py``).
    """
    hdr = WalHeader.parse(raw)
    if hdr is None:
        return None, []
    txns, _end, _cksum = _parse_frames(hdr, raw, WAL_HEADER_SIZE, 1, (hdr.cksum1, hdr.cksum2), slot_size)
    return hdr, txns


def _disk_frame(hdr: WalHeader, slot_size: int | None) -> int:
    """Bytes of one frame on disk: its header and its body (the page, or the envelope's slot)."""
    return (slot_size or hdr.page_size) + FRAME_HEADER_SIZE


def _parse_frames(
    hdr: WalHeader, raw: bytes, offset: int, index: int, cksum: tuple[int, int], slot_size: int | None = None
) -> tuple[list[WalTxn], int, tuple[int, int]]:
    """Committed transactions in ``raw`` from ``offset`` (frame ``index``), continuing ``cksum``.

    Returns them with the offset just past the last commit frame and the checksum there.
    """
    frame_size = _disk_frame(hdr, slot_size)
    s1, s2 = cksum
    txns: list[WalTxn] = []
    pending: list[WalFrame] = []
    committed_end, committed_cksum = offset, cksum
    while offset + frame_size <= len(raw):
        fh = FrameHeader.parse(raw[offset : offset + FRAME_HEADER_SIZE])
        if (fh.salt1, fh.salt2) != hdr.salts or fh.pgno == 0:
            break
        body = raw[offset + FRAME_HEADER_SIZE : offset + frame_size]
        s1, s2 = wal_checksum(raw[offset : offset + 8] + body, s1, s2, hdr.big_endian)
        if (s1, s2) != (fh.cksum1, fh.cksum2):
            break
        pending.append(WalFrame(index, fh.pgno, fh.db_size, body))
        index += 1
        offset += frame_size
        if fh.db_size:
            txns.append(WalTxn(hdr.salts, index - 1, fh.db_size, pending, (s1, s2)))
            pending = []
            committed_end, committed_cksum = offset, (s1, s2)
    return txns, committed_end, committed_cksum


@dataclass
class WalScan:
    """The committed part of a WAL file: header, transactions, and where the next frame goes."""

    header: WalHeader | None
    txns: list[WalTxn]
    end: int  # byte offset just past the last committed frame
    cksum: tuple[int, int]  # checksum chain value after the last committed frame


#: The last scan of each WAL (path -> (file identity, header, scan)): a cache, least recently
#: used first.  Bounded, and a database's entry is dropped when its last connection in this
#: process closes (``forget_wal``): a server that opens thousands of databases in turn would
#: otherwise keep every one's last WAL frames for the life of the process.
_scans: OrderedDict[str, tuple[tuple[int, int, int], bytes, WalScan]] = OrderedDict()
_scans_lock = threading.Lock()
SCANS_KEPT = 64


def forget_wal(path: str) -> None:
    """Drop the cached scan of the WAL at ``path`` (its database's last connection closed)."""
    with _scans_lock:
        _scans.pop(path, None)


def remember_scan(path: str, fd: int, scan: WalScan, slot_size: int | None = None) -> None:
    """Record ``scan`` as the committed part of the WAL at ``path`` that ``fd`` has open.

    For a writer that has just appended (and synced) a committed transaction it built itself
    (``install.py``): the scan is exactly what reading the file back would find, so the next
    ``scan_wal`` need not read and checksum those frames again.  The file's identity and header
    are taken from ``fd`` now, so the entry is reused only while both are unchanged (see
    ``scan_wal``); ``slot_size`` must be what ``scan_wal`` is called with, or it is not reused.
    """
    st = os.fstat(fd)
    head = os.pread(fd, WAL_HEADER_SIZE, 0)
    if scan.header is None or scan.end > st.st_size or WalHeader.parse(head) != scan.header:
        return  # not the file the scan describes: leave the cache to read it
    _cache_scan(path, (st.st_ino, st.st_dev, slot_size or 0), head, scan)


def _cache_scan(path: str, identity: tuple[int, int, int], head: bytes, scan: WalScan) -> None:
    """Keep ``scan`` as the last one of the WAL at ``path`` (the most recently used; the cache stays bounded)."""
    with _scans_lock:
        _scans[path] = (identity, head, scan)
        _scans.move_to_end(path)
        while len(_scans) > SCANS_KEPT:
            _scans.popitem(last=False)


def scan_wal(path: str, limit: tuple[int, bytes] | None = None, slot_size: int | None = None) -> WalScan:
    """The committed transactions of the WAL at ``path``, parsing only what is new since last time.

    ``limit`` is the wal-index's view, ``(mxFrame, salts as stored)`` (``walindex.py``): while it
    is trusted, a frame after ``mxFrame`` is not committed whatever its checksum says (a killed
    installer may have left durable frames SQLite never indexed, and the next writer overwrites
    them).  Without it, the file alone decides, the way SQLite's recovery does.

    Committed frames never change until SQLite starts the WAL over, and starting over always
    writes a new header (new salts); frames after the last commit are never cached, since SQLite
    may still overwrite them in place.  So a cached prefix is reused while the file is the same
    (inode) and its header is unchanged, and only the frames after it are read and verified.
    Callers must treat the returned lists as read-only.  ``slot_size``: see ``read_committed``.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return WalScan(None, [], 0, (0, 0))
    try:
        st = os.fstat(fd)
        identity = (st.st_ino, st.st_dev, slot_size or 0)
        head = os.pread(fd, WAL_HEADER_SIZE, 0)
        max_frame = _max_frame(head, limit)
        with _scans_lock:
            cached = _scans.get(path)
        if cached is not None and cached[0] == identity and cached[1] == head and cached[2].end <= st.st_size:
            base = _trimmed(cached[2], max_frame, slot_size)
            tail = os.pread(fd, st.st_size - base.end, base.end) if st.st_size > base.end else b""
            assert base.header is not None
            first_index = (base.end - WAL_HEADER_SIZE) // _disk_frame(base.header, slot_size) + 1
            more, end, cksum = _parse_frames(base.header, tail, 0, first_index, base.cksum, slot_size)
            scan = WalScan(base.header, base.txns + more, base.end + end, cksum) if more else base
        else:
            raw = os.pread(fd, st.st_size, 0) if st.st_size else b""
            hdr = WalHeader.parse(raw)
            if hdr is None:
                return WalScan(None, [], 0, (0, 0))
            txns, end, cksum = _parse_frames(hdr, raw, WAL_HEADER_SIZE, 1, (hdr.cksum1, hdr.cksum2), slot_size)
            scan = WalScan(hdr, txns, end, cksum)
        scan = _trimmed(scan, max_frame, slot_size)  # never cache a frame the wal-index does not cover
        _cache_scan(path, identity, head, scan)
        return scan
    finally:
        os.close(fd)


def _max_frame(head: bytes, limit: tuple[int, bytes] | None) -> int | None:
    """The last committed frame the wal-index allows for the WAL whose header is ``head`` (None: any)."""
    if limit is None or len(head) < WAL_HEADER_SIZE:
        return None
    mx_frame, salts = limit
    if head[16:24] == salts:
        return mx_frame
    # another generation: a writer that starts the WAL over indexes the new salts (mxFrame 0)
    # before it rewrites the file's header; every frame of the old one was checkpointed
    return 0 if mx_frame == 0 else None


def _trimmed(scan: WalScan, max_frame: int | None, slot_size: int | None = None) -> WalScan:
    """``scan`` without the transactions that end after ``max_frame``."""
    if max_frame is None or not scan.txns or scan.txns[-1].commit_frame <= max_frame:
        return scan
    assert scan.header is not None
    txns = [t for t in scan.txns if t.commit_frame <= max_frame]
    if txns:
        last = txns[-1]
        end = WAL_HEADER_SIZE + last.commit_frame * _disk_frame(scan.header, slot_size)
        return WalScan(scan.header, txns, end, last.cksum)
    return WalScan(scan.header, [], WAL_HEADER_SIZE, (scan.header.cksum1, scan.header.cksum2))
