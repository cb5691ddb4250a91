"""The presence bitmap of a partial replica: which pages of the database file hold valid bytes.

A partial replica's database file is created at full size but only some pages are written; the
rest are fetched on first read.  Which pages are valid is recorded here, in ``<db>-present``,
never inferred from file holes, so it works on any file system.

File layout (big-endian): magic ``TSPRES01``, bootstrap size (pages) u32, revision length u16,
the bootstrap revision (UTF-8), lazy counters (requests, pages, bytes; u64 each), bitmap length
u32, the portable RoaringBitmap of 1-based page numbers, crc32 of everything before it.  It is
replaced atomically (write, fsync, rename).
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field

from pyroaring import BitMap

MAGIC = b"TSPRES01"
_HEAD = struct.Struct(">8sIH")
_COUNTERS = struct.Struct(">QQQI")


def presence_path(db_path: str) -> str:
    """Where the bitmap of ``db_path`` lives."""
    return db_path + "-present"


@dataclass
class PresenceMap:
    """Pages present in the database file, and what the bootstrap was."""

    boot_size: int
    revision: str
    present: BitMap = field(default_factory=BitMap)
    requests: int = 0
    pages_fetched: int = 0
    bytes_fetched: int = 0

    def missing(self, pgno: int) -> bool:
        """True if page ``pgno`` of the bootstrap has no valid bytes in the file yet."""
        return pgno <= self.boot_size and pgno not in self.present

    def present_count(self) -> int:
        """Pages of the bootstrap revision present in the file."""
        if self.boot_size == 0:
            return 0
        return int(self.present.range_cardinality(1, self.boot_size + 1))

    def to_bytes(self) -> bytes:
        rev = self.revision.encode()
        bits = self.present.serialize()
        body = (
            _HEAD.pack(MAGIC, self.boot_size, len(rev))
            + rev
            + _COUNTERS.pack(self.requests, self.pages_fetched, self.bytes_fetched, len(bits))
            + bits
        )
        return body + struct.pack(">I", zlib.crc32(body))

    @classmethod
    def from_bytes(cls, data: bytes, path: str = "presence bitmap") -> PresenceMap:
        if len(data) < _HEAD.size + _COUNTERS.size + 4 or data[:8] != MAGIC:
            raise OSError(f"{path}: not a turso_sync presence bitmap")
        (crc,) = struct.unpack_from(">I", data, len(data) - 4)
        if zlib.crc32(data[:-4]) != crc:
            raise OSError(f"{path}: damaged (checksum mismatch)")
        _magic, boot_size, rev_len = _HEAD.unpack_from(data)
        pos = _HEAD.size
        revision = data[pos : pos + rev_len].decode()
        pos += rev_len
        requests, pages, nbytes, bits_len = _COUNTERS.unpack_from(data, pos)
        pos += _COUNTERS.size
        present = BitMap.deserialize(data[pos : pos + bits_len])
        return cls(boot_size, revision, present, requests, pages, nbytes)

    @classmethod
    def load(cls, db_path: str) -> PresenceMap | None:
        """The saved bitmap, or None for a database that is not a partial replica."""
        path = presence_path(db_path)
        try:
            with open(path, "rb") as f:
                return cls.from_bytes(f.read(), path)
        except FileNotFoundError:
            return None

    def save(self, db_path: str) -> None:
        """Replace the bitmap file atomically (the pages it names must already be durable)."""
        path = presence_path(db_path)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(self.to_bytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
