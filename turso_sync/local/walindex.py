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
    (version,) = struct.unpack_from(_NATIVE + "I", head, 0)
    if version != _VERSION or not head[12]:
        return None
    if wal_checksum(head[:40], big_endian=_NATIVE == ">") != struct.unpack_from(_NATIVE + "II", head, 40):
        return None
    (mx_frame,) = struct.unpack_from(_NATIVE + "I", head, 16)
    return mx_frame, bytes(head[32:40])


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
