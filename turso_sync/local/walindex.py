"""SQLite's wal-index header (in ``-shm``): which WAL frames SQLite itself counts as committed.

A connection trusts the wal-index while its header is initialised, its two copies agree and its
checksum holds; it then reads frames up to ``mxFrame`` only, and its next write starts right
after ``mxFrame``, overwriting whatever lies beyond.  Frames past ``mxFrame`` with a valid
checksum chain can exist: an install (``install.py``) killed after syncing its frames but before
marking the wal-index stale leaves exactly that.  They are not committed, so the engine must not
count them either: ``committed_wal`` scans the WAL with the wal-index's limit.  When the header is
not trusted (marked stale by an install, or no ``-shm``), SQLite recovers from the file alone,
and so does the scan.

Layout (native byte order, two identical 48-byte copies at offsets 0 and 48): iVersion u32,
unused u32, iChange u32, isInit u8, bigEndCksum u8, szPage u16, mxFrame u32, nPage u32,
aFrameCksum u32[2], aSalt u32[2] (the WAL header's bytes 16..24 as stored), aCksum u32[2] over the
first 40 bytes.
"""

from __future__ import annotations

import os
import struct
import sys

from ..crypto.envelope import OVERHEAD, is_envelope
from .vfs import file_descriptor, registry
from .walformat import WalScan, scan_wal, wal_checksum

_VERSION = 3007000
_NATIVE = "<" if sys.byteorder == "little" else ">"
_READS = 100  # a writer updates the two copies one after the other: read again while they differ


def wal_index_limit(db_path: str) -> tuple[int, bytes] | None:
    """``(mxFrame, salts)`` from a trusted wal-index header, or None when SQLite would recover."""
    try:
        with file_descriptor(db_path, "-shm") as fd:
            for _ in range(_READS):
                raw = os.pread(fd, 96, 0)
                if len(raw) < 96:
                    return None
                if raw[:48] == raw[48:]:
                    break
            else:
                return None
    except FileNotFoundError:
        return None
    head = raw[:48]
    if not _trusted(head):
        return None
    (mx_frame,) = struct.unpack_from(_NATIVE + "I", head, 16)
    return mx_frame, bytes(head[32:40])


# SQLite's wal-index (``wal.c``): the first 32 KiB region of ``-shm`` holds the two headers and the
# checkpoint info (136 bytes), then the page number of frames 1..4062 (u32 each), then a hash table
# of 8,192 u16 slots from byte 16,384: page P's search starts at slot (P * 383) mod 8,192 and
# probes forward; a slot holds a frame number (1-based) whose entry in the page numbers is P.
_REGION = 32768
_FIRST_ENTRY = 136
_HASH_AT = 16384
_FRAMES_IN_FIRST = (_HASH_AT - _FIRST_ENTRY) // 4
_SLOTS = 8192
_HASH_MULTIPLIER = 383


class IndexedCommit:
    """One transaction an install has just appended to the WAL (and synced), as the wal-index records it.

    ``first`` is its first frame's number, ``pgnos`` the page of each of its frames in order,
    ``db_size`` the database size after it, ``salts`` the WAL header's salts as stored, and
    ``chain`` the checksum pair after its last frame in the domain SQLite checksums (for an
    encrypted WAL, the plaintext one: what SQLite's own recovery would compute, and where its
    next writer continues the chain from).
    """

    __slots__ = ("chain", "db_size", "first", "pgnos", "salts")

    def __init__(self, first: int, pgnos: list[int], db_size: int, salts: bytes, chain: tuple[int, int]) -> None:
        self.first, self.pgnos, self.db_size, self.salts, self.chain = first, pgnos, db_size, salts, chain


def index_commit(db_path: str, commit: IndexedCommit) -> bool:
    """Record ``commit`` in the wal-index as SQLite's own writer does, so no connection needs a recovery.

    The caller holds SQLite's WAL write lock (``BEGIN IMMEDIATE``), so no other writer changes
    the wal-index meanwhile, and the frames are durable.  As ``walIndexAppend`` does, each frame's
    page number and hash slot are written first (readers ignore entries past the ``mxFrame`` they
    read); then, as ``walIndexWriteHdr`` does, the header with the new ``mxFrame``, size, checksum
    chain and change counter, the second copy before the first, so that a reader that finds the
    copies different or the checksum broken retries.  Every connection whose cached header then
    differs from it (all but the caller's, whose ``ROLLBACK`` copies it: see
    ``engine._install_locked``) drops its page cache at its next read, as after any commit.

    Returns False, having changed nothing, unless the wal-index is trusted and ends exactly where
    the commit starts (same salts, at least one frame before it) and the commit fits in the first
    region; the caller then marks the wal-index stale instead.  An ``OSError`` may leave entries
    past ``mxFrame``, as an interrupted SQLite writer does: marking it stale then is still right.
    """
    last = commit.first + len(commit.pgnos) - 1
    if commit.first < 2 or not commit.pgnos or last > _FRAMES_IN_FIRST:
        return False
    try:
        with file_descriptor(db_path, "-shm") as fd:
            region = bytearray(os.pread(fd, _REGION, 0))
            if len(region) < _REGION:
                return False
            head = bytes(region[:48])
            if head != region[48:96] or not _trusted(head):
                return False
            (mx_frame,) = struct.unpack_from(_NATIVE + "I", head, 16)
            if mx_frame != commit.first - 1 or head[32:40] != commit.salts:
                return False
            write_from = _FIRST_ENTRY + 4 * mx_frame
            with (
                memoryview(region) as view,
                view[_FIRST_ENTRY:_HASH_AT].cast("I") as pgno_of,
                view[_HASH_AT:].cast("H") as slots,
            ):
                if pgno_of[mx_frame]:
                    # entries past mxFrame: a writer died before its commit (walCleanupHash)
                    for slot in range(_SLOTS):
                        if slots[slot] > mx_frame:
                            slots[slot] = 0
                    for n in range(mx_frame, _FRAMES_IN_FIRST):
                        pgno_of[n] = 0
                for n, pgno in enumerate(commit.pgnos):
                    frame = commit.first + n
                    slot = (pgno * _HASH_MULTIPLIER) & (_SLOTS - 1)
                    probes = frame
                    while slots[slot]:
                        if probes == 0:
                            return False  # a full table is corruption to SQLite: let its recovery judge
                        probes -= 1
                        slot = (slot + 1) & (_SLOTS - 1)
                    pgno_of[frame - 1] = pgno
                    slots[slot] = frame
            # the page numbers from the first new frame on and the hash table: bytes only writers change
            os.pwrite(fd, region[write_from:], write_from)
            header = bytearray(head)
            (change,) = struct.unpack_from(_NATIVE + "I", header, 8)
            struct.pack_into(_NATIVE + "I", header, 8, (change + 1) & 0xFFFFFFFF)
            header[12] = 1
            struct.pack_into(_NATIVE + "IIII", header, 16, last, commit.db_size, *commit.chain)
            struct.pack_into(_NATIVE + "II", header, 40, *wal_checksum(bytes(header[:40]), big_endian=_NATIVE == ">"))
            os.pwrite(fd, header, 48)
            os.pwrite(fd, header, 0)
    except FileNotFoundError:
        return False
    return True


def _trusted(head: bytes) -> bool:
    """Whether SQLite trusts the wal-index header copy ``head`` (48 bytes)."""
    (version,) = struct.unpack_from(_NATIVE + "I", head, 0)
    if version != _VERSION or not head[12]:
        return False
    return wal_checksum(head[:40], big_endian=_NATIVE == ">") == struct.unpack_from(_NATIVE + "II", head, 40)


def committed_wal(db_path: str) -> WalScan:
    """The committed transactions of ``db_path``'s WAL, as SQLite's connections count them.

    Frame bodies come back as stored: in the envelope layout each is a slot of ``P + 32`` bytes.
    """
    return scan_wal(db_path + "-wal", wal_index_limit(db_path), disk_slot_size(db_path))


def disk_slot_size(db_path: str) -> int | None:
    """Bytes one page takes on disk in ``db_path``'s files when it is not the page size (the envelope
    layout), else None.  The codec of a database open in this process says it; otherwise page 1's
    marker does (``crypto/envelope.py``)."""
    state = registry.get(db_path)
    if state is not None and state.codec is not None:
        codec = state.codec
        return codec.slot_size if codec.slot_size != codec.page_size else None
    try:
        with file_descriptor(db_path) as fd:
            head = os.pread(fd, 100, 0)
    except FileNotFoundError:
        return None
    if not is_envelope(head):
        return None
    page_size = int.from_bytes(head[16:18], "big")
    return (65536 if page_size == 1 else page_size) + OVERHEAD
