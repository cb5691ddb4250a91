"""The bytes of the revision log's objects: segments (revisions) and snapshots (whole databases).

Pure code: encode and decode, no I/O.  Both are a small uncompressed header, then one zstd
frame with a content checksum, so a torn or altered object fails to decode instead of
restoring wrong pages.

Segment: ``TSREVSG1``, version u16, flags u16 (1 = takeover), page size u32, epoch u64,
first u64, last u64, count u32, crc32 of the header; then zstd of, per revision: number u64,
db size u32 (pages), page count u32, then per page: pgno u32 and the page image.

Snapshot: ``TSSNAPS1``, version u16, flags u16, page size u32, revision u64, db size u32,
crc32; then zstd of the database's pages 1..db size back to back.

Page images are opaque: whatever the writer ships (the primary ships them as they are on its
disk, so an encrypted database stays encrypted in the store).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import zstandard

from .errors import CorruptObject

SEGMENT_MAGIC = b"TSREVSG1"
SNAPSHOT_MAGIC = b"TSSNAPS1"
_SEG_HEAD = struct.Struct(">8sHHIQQQI")
_SNAP_HEAD = struct.Struct(">8sHHIQI")
_CRC = struct.Struct(">I")
_REV = struct.Struct(">QII")
_PGNO = struct.Struct(">I")
FLAG_TAKEOVER = 1

#: zstd level: 3 is zstd's default, fast enough that compression is not the ack path's cost.
ZSTD_LEVEL = 3


@dataclass
class Revision:
    """One committed transaction: its number, the database size after it (pages) and the pages it wrote."""

    number: int
    db_size: int
    pages: dict[int, bytes] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes of page images it carries."""
        return sum(len(p) for p in self.pages.values())


@dataclass
class Segment:
    """Revisions ``first..last`` written by the writer of ``epoch`` as one object."""

    epoch: int
    page_size: int
    revisions: list[Revision]
    takeover: bool = False

    @property
    def first(self) -> int:
        return self.revisions[0].number

    @property
    def last(self) -> int:
        return self.revisions[-1].number


def encode_segment(seg: Segment) -> bytes:
    """The object bytes of ``seg``; ValueError if its revisions are not consecutive or a page has the wrong size."""
    if not seg.revisions:
        raise ValueError("a segment holds at least one revision")
    body = bytearray()
    expected = seg.first
    for rev in seg.revisions:
        if rev.number != expected:
            raise ValueError(f"revision {rev.number} follows {expected - 1} in a segment (must be consecutive)")
        expected += 1
        # a page the transaction wrote and its commit then cut off is not part of the database
        kept = sorted(p for p in rev.pages if p <= rev.db_size)
        body += _REV.pack(rev.number, rev.db_size, len(kept))
        for pgno in kept:
            image = rev.pages[pgno]
            if len(image) != seg.page_size or pgno < 1:
                raise ValueError(f"revision {rev.number}: page {pgno} has {len(image)} bytes, not {seg.page_size}")
            body += _PGNO.pack(pgno)
            body += image
    flags = FLAG_TAKEOVER if seg.takeover else 0
    head = _SEG_HEAD.pack(SEGMENT_MAGIC, 1, flags, seg.page_size, seg.epoch, seg.first, seg.last, len(seg.revisions))
    return head + _CRC.pack(zlib.crc32(head)) + _compress(bytes(body))


def decode_segment(key: str, data: bytes) -> Segment:
    """The segment in ``data`` (read from ``key``); CorruptObject naming the key if it does not decode."""
    _magic, _version, flags, page_size, epoch, first, last, count = _header(key, data, _SEG_HEAD, SEGMENT_MAGIC)
    body = _decompress(key, data[_SEG_HEAD.size + _CRC.size :])
    revisions: list[Revision] = []
    pos = 0
    try:
        for _ in range(count):
            number, db_size, npages = _REV.unpack_from(body, pos)
            pos += _REV.size
            pages: dict[int, bytes] = {}
            for _ in range(npages):
                (pgno,) = _PGNO.unpack_from(body, pos)
                pos += _PGNO.size
                pages[pgno] = body[pos : pos + page_size]
                pos += page_size
            revisions.append(Revision(number, db_size, pages))
    except struct.error:
        raise CorruptObject(key, "the segment body is shorter than its header says") from None
    if pos != len(body) or not revisions:
        raise CorruptObject(key, "the segment body does not match its header")
    if revisions[0].number != first or revisions[-1].number != last or last - first + 1 != count:
        raise CorruptObject(key, f"the header says revisions {first}..{last} but the body holds others")
    return Segment(epoch, page_size, revisions, bool(flags & FLAG_TAKEOVER))


@dataclass
class SnapshotImage:
    """The whole database at ``revision``: ``db_size`` pages of ``page_size`` bytes."""

    revision: int
    page_size: int
    db_size: int
    data: bytes


def encode_snapshot(snap: SnapshotImage) -> bytes:
    """The object bytes of a snapshot; ValueError if the image is not ``db_size`` whole pages."""
    if len(snap.data) != snap.db_size * snap.page_size:
        raise ValueError(
            f"snapshot at revision {snap.revision}: {len(snap.data)} bytes is not {snap.db_size} pages "
            f"of {snap.page_size}"
        )
    head = _SNAP_HEAD.pack(SNAPSHOT_MAGIC, 1, 0, snap.page_size, snap.revision, snap.db_size)
    return head + _CRC.pack(zlib.crc32(head)) + _compress(snap.data)


def decode_snapshot(key: str, data: bytes) -> SnapshotImage:
    """The snapshot in ``data`` (read from ``key``); CorruptObject naming the key if it does not decode."""
    _magic, _version, _flags, page_size, revision, db_size = _header(key, data, _SNAP_HEAD, SNAPSHOT_MAGIC)
    image = _decompress(key, data[_SNAP_HEAD.size + _CRC.size :])
    if len(image) != db_size * page_size:
        raise CorruptObject(key, f"the image has {len(image)} bytes, not {db_size} pages of {page_size}")
    return SnapshotImage(revision, page_size, db_size, image)


def _header(key: str, data: bytes, shape: struct.Struct, magic: bytes) -> tuple[Any, ...]:
    if len(data) < shape.size + _CRC.size or data[:8] != magic:
        raise CorruptObject(key, f"it does not start with {magic.decode()}")
    fields = shape.unpack_from(data)
    (crc,) = _CRC.unpack_from(data, shape.size)
    if crc != zlib.crc32(data[: shape.size]):
        raise CorruptObject(key, "its header checksum does not match")
    if fields[1] != 1:
        raise CorruptObject(key, f"format version {fields[1]} is newer than this turso-sync reads (1); upgrade")
    return tuple(fields)


def _compress(body: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True, write_content_size=True).compress(body)


def _decompress(key: str, blob: bytes) -> bytes:
    try:
        return zstandard.ZstdDecompressor().decompress(blob)
    except zstandard.ZstdError as exc:
        raise CorruptObject(key, f"its compressed body does not decode ({exc})") from None
