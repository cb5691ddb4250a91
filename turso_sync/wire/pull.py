"""The /pull-updates messages: request, response header, page records; pure code, no I/O.

Request: one plain protobuf ``PullUpdatesReqProtoBody``.  Response: a length-delimited header
``PullUpdatesRespProtoBody`` followed by one length-delimited ``PageData`` per page (page ids are
0-based).  Pages are 4096-byte raw images, or, when the client asked for ``ENC_ZSTD`` and the
header carries ``zstd_encoding``, one zstd frame per page (our extension, docs/protocol.md).
When the client also asked for ``page_deltas``, the header may carry some pages as deltas: their
change from the images at the client's revision, all in one zstd frame (``PageDeltas``;
docs/protocol.md, "Page deltas"); in version 2 (``page_deltas_version``), the pages that had no
image then (new pages: a split's) come in that frame too, found against the others' old images; in
version 3, in a compact frame (no magic number, content size or checksum: one digest covers the
bases and the decoded images), made with entropy tables both sides hold when they make it shorter.
When the client also asked for ``zstd_frame_pages`` N, one zstd ``PageData`` may hold up to N
consecutive pages (``page_id`` is the first; the frame decodes to a whole number of pages): zstd
builds its entropy tables once per frame instead of once per page (docs/protocol.md, "Frames of
several pages").
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import zstandard
from google.protobuf.message import DecodeError
from pyroaring import BitMap

from ..errors import ProtocolError
from ..page import PAGE_SIZE
from . import pull_updates_pb2 as pb
from .delimited import DelimitedDecoder, delimit, encode_varint, read_varint
from .delta_tables import TABLES

#: Default zstd level.  Within one 4 KiB page the higher levels find little more to match: on the
#: sync benchmark's pages (text rows) level 3 made them 0.565 of raw and level 1 0.569, at 1.6x
#: the compression time (and 1.3x the decompression time).
DEFAULT_ZSTD_LEVEL = 1

#: The BLAKE2b digest size that names the bases of a ``PageDeltas`` (field ``base_digest``, fixed64).
BASE_DIGEST_SIZE = 8

#: The page deltas this code speaks: 1, only pages with a base in the frame; 2, new pages too;
#: 3, a compact frame (request field ``page_deltas_version``; absent or 0 means 1).
PAGE_DELTAS_VERSION = 3

#: The first version whose answers may carry a compact frame (``PageDeltas.compact``).
COMPACT_DELTAS_VERSION = 3

#: The most consecutive pages one zstd ``PageData`` frame may hold: what our client asks for
#: (request field ``zstd_frame_pages``) and the most our primary puts in one frame.  16 pages
#: (64 KiB) keep a frame within one zstd block, where its tables are described once; larger
#: frames gain little more (docs/protocol.md).
ZSTD_FRAME_PAGES = 16


class PageEncoding(enum.IntEnum):
    """How page images travel (request field ``encoding``)."""

    RAW = pb.ENC_RAW
    ZSTD = pb.ENC_ZSTD


class StreamKind(enum.IntEnum):
    """What follows the response header (request field 8, response field 5)."""

    PAGES = pb.STREAM_PAGES
    MVCC_LOGICAL_LOG = pb.STREAM_MVCC_LOGICAL_LOG


@dataclass(frozen=True)
class PullRequest:
    """A decoded ``PullUpdatesReqProtoBody``.

    ``page_ids`` is the server page selector: 0-based page ids, or None for every page.
    """

    encoding: PageEncoding = PageEncoding.RAW
    server_revision: str = ""
    client_revision: str = ""
    long_poll_timeout_ms: int = 0
    page_ids: BitMap | None = None
    query_selector: str = ""
    stream_kind: StreamKind = StreamKind.PAGES
    page_deltas: bool = False
    page_deltas_version: int = 0
    zstd_frame_pages: int = 0

    @classmethod
    def from_bytes(cls, body: bytes) -> PullRequest:
        """Decode a request body; raises ProtocolError naming what is wrong."""
        msg = pb.PullUpdatesReqProtoBody()
        try:
            msg.ParseFromString(body)
        except (DecodeError, ValueError, RuntimeError) as exc:
            raise ProtocolError(f"pull-updates request is not a valid PullUpdatesReqProtoBody: {exc}") from None
        try:
            encoding = PageEncoding(msg.encoding)
        except ValueError:
            raise ProtocolError(f"pull-updates request: unknown page encoding {msg.encoding}") from None
        try:
            stream_kind = StreamKind(msg.stream_kind)
        except ValueError:
            raise ProtocolError(f"pull-updates request: unknown stream_kind {msg.stream_kind}") from None
        page_ids: BitMap | None = None
        if msg.server_pages_selector:
            page_ids = decode_page_selector(msg.server_pages_selector)
        return cls(
            encoding=encoding,
            server_revision=msg.server_revision,
            client_revision=msg.client_revision,
            long_poll_timeout_ms=msg.long_poll_timeout_ms,
            page_ids=page_ids,
            query_selector=msg.server_query_selector,
            stream_kind=stream_kind,
            page_deltas=msg.page_deltas,
            page_deltas_version=msg.page_deltas_version,
            zstd_frame_pages=msg.zstd_frame_pages,
        )

    def to_bytes(self) -> bytes:
        """The request body (not length-delimited)."""
        msg = pb.PullUpdatesReqProtoBody(
            encoding=int(self.encoding),  # type: ignore[arg-type]
            server_revision=self.server_revision,
            client_revision=self.client_revision,
            long_poll_timeout_ms=self.long_poll_timeout_ms,
            server_query_selector=self.query_selector,
            stream_kind=int(self.stream_kind),  # type: ignore[arg-type]
            page_deltas=self.page_deltas,
            page_deltas_version=self.page_deltas_version if self.page_deltas else 0,
            zstd_frame_pages=self.zstd_frame_pages,
        )
        if self.page_ids is not None:
            msg.server_pages_selector = encode_page_selector(self.page_ids)
        return msg.SerializeToString()


def decode_page_selector(data: bytes) -> BitMap:
    """A portable-format RoaringBitmap of 0-based page ids (what Rust's ``roaring`` writes)."""
    try:
        return BitMap.deserialize(data)
    except (ValueError, IndexError, OverflowError, MemoryError) as exc:
        raise ProtocolError(f"server_pages_selector is not a serialized RoaringBitmap: {exc}") from None


def encode_page_selector(page_ids: Iterable[int]) -> bytes:
    """Serialize 0-based page ids as a portable RoaringBitmap."""
    bitmap = page_ids if isinstance(page_ids, BitMap) else BitMap(page_ids)
    return bitmap.serialize()


def base_digest(bases: Iterable[bytes]) -> bytes:
    """What names the bases of a ``PageDeltas``: BLAKE2b-64 of the images concatenated in order."""
    digest = hashlib.blake2b(digest_size=BASE_DIGEST_SIZE)
    for base in bases:
        digest.update(base)
    return digest.digest()


def _raw_dictionary(bases: list[bytes]) -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(b"".join(bases), dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def _tables_dictionary(bases: list[bytes]) -> zstandard.ZstdCompressionDict:
    """``TABLES`` with the bases as content: a frame made with it names ``TABLES_ID``."""
    return zstandard.ZstdCompressionDict(TABLES + b"".join(bases), dict_type=zstandard.DICT_TYPE_FULLDICT)


def _compact_frame(data: bytes, dictionary: zstandard.ZstdCompressionDict, level: int) -> bytes:
    """A zstd frame without magic number, content size or checksum; the dictionary's id if it has one."""
    params = zstandard.ZstdCompressionParameters.from_level(
        level,
        source_size=len(data),
        dict_size=len(dictionary),
        format=zstandard.FORMAT_ZSTD1_MAGICLESS,
        write_checksum=False,
        write_content_size=False,
        write_dict_id=True,
    )
    return zstandard.ZstdCompressor(dict_data=dictionary, compression_params=params).compress(data)


def content_digest(bases: Iterable[bytes], images: Iterable[bytes]) -> bytes:
    """What a compact ``PageDeltas`` carries: BLAKE2b-64 of the bases, then the new images, concatenated."""
    digest = hashlib.blake2b(digest_size=BASE_DIGEST_SIZE)
    for data in (*bases, *images):
        digest.update(data)
    return digest.digest()


class DeltaBaseMismatch(ProtocolError):  # noqa: N818 - reads as what happened
    """The replica's images of some pages are not the ones the server made its deltas against.

    Nothing was applied; pull again without deltas (``PullRequest.page_deltas`` False).
    """


@dataclass(frozen=True)
class PageDeltas:
    """Pages of a pull response sent as their change from their images at the client's revision.

    ``page_ids`` (0-based, ascending), ``digest`` (``base_digest`` of the bases in that order),
    ``frame``: one zstd frame of the new images concatenated, made with the bases concatenated as
    a raw-content dictionary (so each page finds its old image at one fixed distance), with the
    content size and a checksum written.  ``new_ids`` (version 2; 0-based, ascending, none of
    ``page_ids``): pages without a base, whose images follow in the frame; a page a split made
    finds the rows it took over in the old image of the page they came from.

    ``compact`` (version 3): the frame has no magic number, content size or checksum, and
    ``digest`` is ``content_digest`` (the bases, then the images it decodes to): one check of
    both, after decoding.  Its dictionary is ``TABLES`` then the bases if its header names
    ``TABLES_ID``, else the bases alone (the server sends the shorter).
    """

    page_ids: tuple[int, ...]
    digest: bytes
    frame: bytes
    new_ids: tuple[int, ...] = ()
    compact: bool = False

    @classmethod
    def make(
        cls,
        pages: Mapping[int, bytes],
        bases: Mapping[int, bytes],
        level: int = DEFAULT_ZSTD_LEVEL,
        compact: bool = False,
    ) -> PageDeltas:
        """The deltas of ``pages`` (0-based id to new image) against ``bases``: every page of
        ``pages`` with no image in ``bases`` is one of ``new_ids`` (version 2); ``compact``:
        in a compact frame (version 3)."""
        ids = tuple(sorted(i for i in pages if i in bases))
        new_ids = tuple(sorted(i for i in pages if i not in bases))
        old = [bases[i] for i in ids]
        if compact:
            images = [pages[i] for i in ids + new_ids]
            data = b"".join(images)
            # the fixed tables fit the rows they were made from and may fit others badly: the shorter goes
            frame = min(
                _compact_frame(data, _tables_dictionary(old), level),
                _compact_frame(data, _raw_dictionary(old), level),
                key=len,
            )
            return cls(ids, content_digest(old, images), frame, new_ids, compact=True)
        compressor = zstandard.ZstdCompressor(
            level=level,
            dict_data=_raw_dictionary(old),
            write_checksum=True,
            write_content_size=True,
            write_dict_id=False,
        )
        frame = compressor.compress(b"".join(pages[i] for i in ids + new_ids))
        return cls(ids, base_digest(old), frame, new_ids)

    @property
    def all_ids(self) -> tuple[int, ...]:
        """Every page in the frame, in its order: those with a base, then the new ones."""
        return self.page_ids + self.new_ids

    def apply(self, base: Callable[[int], bytes]) -> dict[int, bytes]:
        """The new images (0-based id to image), given ``base(page_id)``: the replica's images.

        DeltaBaseMismatch if those are not the images the server used (their digest differs),
        and nothing is returned; ProtocolError if the frame is corrupt (zstd or its checksum
        refuses it) or does not hold exactly the pages named.  A compact frame is checked after
        decoding: a digest that differs may also mean a frame damaged in a way zstd cannot see,
        and is a DeltaBaseMismatch too (pulling again without deltas is the answer to both).
        """
        old = [base(i) for i in self.page_ids]
        if self.compact:
            return self._apply_compact(old)
        if base_digest(old) != self.digest:
            first = self.page_ids[0] + 1 if self.page_ids else 0
            raise DeltaBaseMismatch(
                f"pages {first}.. ({len(self.page_ids)} deltas): this replica's synced images differ from those "
                "the server's deltas are made against; pull again without deltas"
            )
        size = len(self.all_ids) * PAGE_SIZE
        try:
            data = zstandard.ZstdDecompressor(dict_data=_raw_dictionary(old)).decompress(
                self.frame, max_output_size=size
            )
        except zstandard.ZstdError as exc:
            raise ProtocolError(f"page deltas: not a valid zstd frame ({exc})") from None
        if len(data) != size:
            raise ProtocolError(f"page deltas: {len(data)} bytes for {len(self.all_ids)} pages")
        return {page_id: data[n * PAGE_SIZE : (n + 1) * PAGE_SIZE] for n, page_id in enumerate(self.all_ids)}

    def _apply_compact(self, old: list[bytes]) -> dict[int, bytes]:
        size = len(self.all_ids) * PAGE_SIZE
        if not self.frame:
            raise ProtocolError("page deltas: the compact frame is empty")
        # a magic-less frame starts with its header's descriptor; its low two bits: a dictionary id
        # follows (zstd refuses a frame whose id is not the tables' TABLES_ID)
        dictionary = _tables_dictionary(old) if self.frame[0] & 3 else _raw_dictionary(old)
        try:
            data = zstandard.ZstdDecompressor(dict_data=dictionary, format=zstandard.FORMAT_ZSTD1_MAGICLESS).decompress(
                self.frame, max_output_size=size
            )
        except zstandard.ZstdError as exc:
            raise ProtocolError(f"page deltas: not a valid compact zstd frame ({exc})") from None
        if len(data) != size:
            raise ProtocolError(f"page deltas: {len(data)} bytes for {len(self.all_ids)} pages")
        images = [data[n * PAGE_SIZE : (n + 1) * PAGE_SIZE] for n in range(len(self.all_ids))]
        if content_digest(old, images) != self.digest:
            first = self.all_ids[0] + 1
            raise DeltaBaseMismatch(
                f"pages {first}.. ({len(self.all_ids)} in a compact delta frame): what they decode to against this "
                "replica's synced images is not what the server sent (those images differ, or the frame was "
                "damaged); pull again without deltas"
            )
        return dict(zip(self.all_ids, images, strict=True))


@dataclass(frozen=True)
class PullHeader:
    """The response header: the revision the pages bring the client to, and the size in pages.

    ``deltas`` (zstd only, and only in answers to a request that asked for them): pages sent as
    deltas; they come as no ``PageData`` record.  With compact deltas (version 3) the header
    leaves out what only restates the obvious to the client that asked: the zstd level (it is
    informational) and ``protocol`` (pages).
    """

    server_revision: str
    db_size: int
    encoding: PageEncoding = PageEncoding.RAW
    zstd_level: int = DEFAULT_ZSTD_LEVEL
    deltas: PageDeltas | None = None

    def to_bytes(self) -> bytes:
        """The header, length-delimited, as it starts a response body."""
        compact = self.deltas is not None and self.deltas.compact
        msg = pb.PullUpdatesRespProtoBody(
            server_revision=self.server_revision,
            db_size=self.db_size,
            stream_kind=pb.STREAM_PAGES,
            apply_mode=pb.APPLY_INCREMENTAL,
            protocol=pb.PROTO_UNSPECIFIED if compact else pb.PROTO_PAGES,
        )
        if self.encoding == PageEncoding.ZSTD:
            msg.zstd_encoding.SetInParent()
            if not compact:
                msg.zstd_encoding.level = self.zstd_level
            if self.deltas is not None:
                msg.page_deltas.page_ids.extend(self.deltas.page_ids)
                digest = int.from_bytes(self.deltas.digest, "little")
                if compact:
                    msg.page_deltas.content_digest = digest
                    msg.page_deltas.compact_frame = self.deltas.frame
                else:
                    msg.page_deltas.base_digest = digest
                    msg.page_deltas.frame = self.deltas.frame
                msg.page_deltas.new_page_ids.extend(self.deltas.new_ids)
        else:
            # Turso's clients require this field to be present (as an empty message)
            msg.raw_encoding.SetInParent()
        return delimit(msg.SerializeToString())

    @classmethod
    def from_message(cls, data: bytes) -> PullHeader:
        """Decode a header message (without its length prefix)."""
        msg = pb.PullUpdatesRespProtoBody()
        try:
            msg.ParseFromString(data)
        except (DecodeError, ValueError, RuntimeError) as exc:
            raise ProtocolError(f"pull-updates response header is malformed: {exc}") from None
        raw, zstd = msg.HasField("raw_encoding"), msg.HasField("zstd_encoding")
        if raw == zstd:
            raise ProtocolError("pull-updates response header must carry exactly one of raw_encoding, zstd_encoding")
        if msg.stream_kind != pb.STREAM_PAGES:
            raise ProtocolError("pull-updates response is not a page stream")
        if msg.apply_mode != pb.APPLY_INCREMENTAL:
            raise ProtocolError("pull-updates response asks for a replace-base apply, which page replicas cannot do")
        if zstd and msg.zstd_encoding.pages_dict:
            raise ProtocolError("pull-updates response uses a zstd dictionary, which this client does not support")
        encoding = PageEncoding.ZSTD if zstd else PageEncoding.RAW
        deltas = None
        if msg.HasField("page_deltas"):
            if not zstd:
                raise ProtocolError("pull-updates response carries page deltas in a raw-encoded answer")
            ids = tuple(msg.page_deltas.page_ids)
            new_ids = tuple(msg.page_deltas.new_page_ids)
            # at least one page with a base (else there is no dictionary); new pages are optional
            _check_page_ids("page deltas", ids, msg.db_size, required=True)
            _check_page_ids("page deltas' new pages", new_ids, msg.db_size)
            if set(ids) & set(new_ids):
                raise ProtocolError("pull-updates response: page deltas name a page both with and without a base")
            deltas = _deltas_of(msg.page_deltas, ids, new_ids)
        level = msg.zstd_encoding.level if zstd else 0
        return cls(msg.server_revision, msg.db_size, encoding, level, deltas)


def _deltas_of(msg: pb.PageDeltasProto, ids: tuple[int, ...], new_ids: tuple[int, ...]) -> PageDeltas:
    """The ``PageDeltas`` of a header's field: a frame (versions 1, 2) or a compact frame (3), not both."""
    if msg.HasField("compact_frame"):
        if msg.frame or msg.base_digest:
            raise ProtocolError("pull-updates response: page deltas carry both a frame and a compact frame")
        digest = msg.content_digest.to_bytes(BASE_DIGEST_SIZE, "little")
        return PageDeltas(ids, digest, msg.compact_frame, new_ids, compact=True)
    return PageDeltas(ids, msg.base_digest.to_bytes(BASE_DIGEST_SIZE, "little"), msg.frame, new_ids)


def _check_page_ids(what: str, ids: tuple[int, ...], db_size: int, required: bool = False) -> None:
    """ProtocolError unless ``ids`` ascend without repeats below ``db_size`` (and, if ``required``, name some page)."""
    bad = (list(ids) != sorted(set(ids)) or ids[-1] >= db_size) if ids else required
    if bad:
        raise ProtocolError(
            f"pull-updates response: {what} name pages {list(ids)[:8]}, not ascending ids "
            f"below the database size {db_size}"
        )


def encode_page(page_id: int, encoded_page: bytes) -> bytes:
    """One length-delimited ``PageData`` record (hand-encoded: this is the hot loop of a pull).

    Byte-for-byte what protobuf produces: field 1 omitted when 0 (proto3 default), then field 2.
    """
    return page_record_prefix(page_id, len(encoded_page)) + encoded_page


def page_record_prefix(page_id: int, length: int) -> bytes:
    """Everything of a ``PageData`` record before its page bytes (so a sender can avoid copying pages)."""
    id_field = b"\x08" + encode_varint(page_id) if page_id else b""
    page_head = b"\x12" + encode_varint(length)
    return encode_varint(len(id_field) + len(page_head) + length) + id_field + page_head


class PageCompressor:
    """Compresses page images for the zstd encoding: one independent zstd frame per page."""

    def __init__(self, level: int = DEFAULT_ZSTD_LEVEL) -> None:
        self.level = level
        self._compressor = zstandard.ZstdCompressor(level=level, write_content_size=True)

    def compress(self, page: bytes) -> bytes:
        """The zstd frame of one page (or of several consecutive pages, concatenated)."""
        return self._compressor.compress(page)


def frame_runs(pgnos: list[int], most: int) -> list[list[int]]:
    """``pgnos`` (ascending) cut into runs of consecutive page numbers, each of at most ``most``
    pages: the pages that share one zstd frame when the client asked for ``zstd_frame_pages``."""
    runs: list[list[int]] = []
    for pgno in pgnos:
        if runs and pgno == runs[-1][-1] + 1 and len(runs[-1]) < most:
            runs[-1].append(pgno)
        else:
            runs.append([pgno])
    return runs


def decode_zstd_page(frame: bytes | memoryview, decompressor: zstandard.ZstdDecompressor | None = None) -> bytes:
    """The page image inside one zstd frame; raises ProtocolError unless it is exactly 4096 bytes.

    Pass a ``decompressor`` to reuse across pages (one per thread): making one costs about 15x the
    decompression of a page.
    """
    try:
        page = (decompressor or zstandard.ZstdDecompressor()).decompress(frame, max_output_size=PAGE_SIZE)
    except zstandard.ZstdError as exc:
        raise ProtocolError(f"page is not a valid zstd frame: {exc}") from None
    if len(page) != PAGE_SIZE:
        raise ProtocolError(f"zstd page decompresses to {len(page)} bytes, not {PAGE_SIZE}")
    return page


def decode_zstd_pages(frame: bytes | memoryview, decompressor: zstandard.ZstdDecompressor, most: int) -> bytes:
    """The images inside one zstd frame of up to ``most`` consecutive pages, concatenated; raises
    ProtocolError unless it decodes to a whole number of pages, at least one and at most ``most``."""
    try:
        # a content size written in the frame header is what zstd allocates: bound it before decoding
        if zstandard.frame_content_size(frame) > most * PAGE_SIZE:
            raise zstandard.ZstdError("its header announces more")
        data = decompressor.decompress(frame, max_output_size=most * PAGE_SIZE)
    except zstandard.ZstdError as exc:
        raise ProtocolError(f"page frame is not a valid zstd frame of at most {most} pages: {exc}") from None
    if len(data) > most * PAGE_SIZE:
        raise ProtocolError(f"page frame is not a valid zstd frame of at most {most} pages: it holds more")
    if not data or len(data) % PAGE_SIZE:
        raise ProtocolError(f"zstd page frame decompresses to {len(data)} bytes, not a whole number of pages")
    return data


def split_page_record(message: memoryview) -> tuple[int, memoryview] | None:
    """``(page_id, encoded_page)`` of a ``PageData`` message in the layout ``encode_page`` writes
    (and prost does: field 1 unless 0, then field 2, nothing else); None for any other layout.

    The hot loop of a pull: a protobuf parse per page costs more than the rest of the decoding.
    """
    pos, page_id, size = 0, 0, len(message)
    if size and message[0] == 0x08:
        page_id, pos = read_varint(message, 1)
    if pos < 0 or pos >= size or message[pos] != 0x12:
        return None
    length, start = read_varint(message, pos + 1)
    if start < 0 or start + length != size:
        return None
    return page_id, message[start:]


@dataclass(frozen=True)
class Page:
    """One page of a pull response: 0-based id and its plaintext image."""

    page_id: int
    data: bytes


class PullResponseDecoder:
    """Decodes a /pull-updates response body as it streams in (the client side).

    ``feed`` returns the pages completed by each chunk; ``header`` is set once the first
    message arrived.  Call ``close`` at the end of the body.
    """

    def __init__(self, frame_pages: int = 1) -> None:
        """``frame_pages``: what the request asked as ``zstd_frame_pages`` (1: one page per frame);
        a zstd frame of more pages than that is a ProtocolError."""
        self._frames = DelimitedDecoder(max_message=1 << 20)
        self.header: PullHeader | None = None
        self._delta_ids: frozenset[int] = frozenset()
        self._zstd = zstandard.ZstdDecompressor()  # one per response: reused for every page
        self._frame_pages = max(1, frame_pages)

    def feed(self, data: bytes) -> list[Page]:
        """Add body bytes; return the pages they completed."""
        pages: list[Page] = []
        for message in self._frames.feed_views(data):
            if self.header is None:
                self.header = PullHeader.from_message(message.tobytes())
                if self.header.deltas is not None:
                    self._delta_ids = frozenset(self.header.deltas.all_ids)
                continue
            page = self._page(message)
            if len(page.data) == PAGE_SIZE:
                pages.append(page)
            else:  # a frame of several consecutive pages (zstd_frame_pages)
                pages.extend(self._split(page))
        return pages

    def _split(self, frame: Page) -> list[Page]:
        assert self.header is not None
        data, first = frame.data, frame.page_id
        count = len(data) // PAGE_SIZE
        if first + count > self.header.db_size:
            raise ProtocolError(
                f"page frame {first}..{first + count - 1} reaches beyond the database size {self.header.db_size}"
            )
        for page_id in range(first + 1, first + count):
            if page_id in self._delta_ids:
                raise ProtocolError(f"page id {page_id} comes both whole and as a delta")
        return [Page(first + n, data[n * PAGE_SIZE : (n + 1) * PAGE_SIZE]) for n in range(count)]

    def _page(self, message: memoryview) -> Page:
        assert self.header is not None
        split = split_page_record(message)
        if split is None:  # not the canonical layout (fields reordered, repeated or unknown): protobuf decides
            msg = pb.PageData()
            try:
                msg.ParseFromString(message.tobytes())
            except (DecodeError, ValueError, RuntimeError) as exc:
                raise ProtocolError(f"pull-updates response: malformed PageData: {exc}") from None
            page_id, encoded = msg.page_id, memoryview(msg.encoded_page)
        else:
            page_id, encoded = split
        if self.header.encoding == PageEncoding.ZSTD and self._frame_pages > 1:
            data = decode_zstd_pages(encoded, self._zstd, self._frame_pages)
        elif self.header.encoding == PageEncoding.ZSTD:
            data = decode_zstd_page(encoded, self._zstd)
        elif len(encoded) != PAGE_SIZE:
            raise ProtocolError(f"page {page_id} has {len(encoded)} bytes, not {PAGE_SIZE}")
        else:
            data = encoded.tobytes()
        if page_id >= self.header.db_size:
            raise ProtocolError(f"page id {page_id} is beyond the database size {self.header.db_size}")
        if page_id in self._delta_ids:
            raise ProtocolError(f"page id {page_id} comes both whole and as a delta")
        return Page(page_id, data)

    def close(self) -> None:
        """End of body: raises ProtocolError if it was empty or cut inside a message."""
        self._frames.close()
        if self.header is None:
            raise ProtocolError("pull-updates response has no header")
