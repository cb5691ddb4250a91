"""The pull decoder's hand-parsed page records agree with protobuf on every layout (wire/pull.py)."""

from __future__ import annotations

import os

import pytest

from turso_sync.errors import ProtocolError
from turso_sync.page import PAGE_SIZE
from turso_sync.wire import pull_updates_pb2 as pb
from turso_sync.wire.delimited import DelimitedDecoder, delimit, encode_varint, read_varint
from turso_sync.wire.pull import (
    PageCompressor,
    PageEncoding,
    PullHeader,
    PullResponseDecoder,
    encode_page,
    split_page_record,
)


def _field(number: int, wire_type: int) -> bytes:
    return bytes([number << 3 | wire_type])


def _len_field(number: int, data: bytes) -> bytes:
    return _field(number, 2) + delimit(data)


@pytest.mark.parametrize("page_id", [0, 1, 127, 128, 16383, 16384, 2**31, 2**63])
def test_canonical_records_split_without_protobuf(page_id: int) -> None:
    page = os.urandom(PAGE_SIZE)
    (message,) = DelimitedDecoder().feed_views(encode_page(page_id, page))
    split = split_page_record(message)
    assert split is not None
    assert split[0] == page_id and split[1].tobytes() == page


def _odd_layouts(page_id: int, page: bytes) -> list[bytes]:
    """PageData messages protobuf reads as (page_id, page) that are not in encode_page's layout."""
    canonical = pb.PageData(page_id=page_id, encoded_page=page).SerializeToString()
    reordered = _len_field(2, page) + pb.PageData(page_id=page_id).SerializeToString()
    unknown_after = canonical + _len_field(9, b"future field")
    repeated = _len_field(2, b"overwritten") + canonical  # the last value of a field wins
    padded_id = b"\x08" + bytes([0x80 | page_id, 0x00]) + _len_field(2, page)  # a varint in two bytes
    return [reordered, unknown_after, repeated, padded_id]


@pytest.mark.parametrize("encoding", [PageEncoding.RAW, PageEncoding.ZSTD])
def test_other_layouts_decode_as_protobuf_reads_them(encoding: PageEncoding) -> None:
    page = (b"a row " * 300).ljust(PAGE_SIZE, b"\0")
    encoded = PageCompressor().compress(page) if encoding == PageEncoding.ZSTD else page
    for page_id in (0, 3):
        for message in _odd_layouts(page_id, encoded):
            reference = pb.PageData.FromString(message)
            assert (reference.page_id, reference.encoded_page) == (page_id, encoded)
            decoder = PullResponseDecoder()
            (got,) = decoder.feed(PullHeader("7", 9, encoding).to_bytes() + delimit(message))
            decoder.close()
            assert (got.page_id, got.data) == (page_id, page)


def test_truncated_or_malformed_records_are_refused() -> None:
    page = bytes(PAGE_SIZE)
    record = pb.PageData(page_id=300, encoded_page=page).SerializeToString()
    # the inner length claims more than the message holds: protobuf decides, and refuses
    cut = record[: len(record) - 10]
    assert split_page_record(memoryview(cut)) is None
    with pytest.raises(ProtocolError, match="malformed PageData"):
        PullResponseDecoder().feed(PullHeader("1", 400).to_bytes() + delimit(cut))
    # a page id whose varint never ends
    endless = b"\x08" + b"\xff" * 12
    with pytest.raises(ProtocolError):
        PullResponseDecoder().feed(PullHeader("1", 400).to_bytes() + delimit(endless))


def test_views_stay_valid_across_chunks() -> None:
    """Messages split over feeds come back whole, and views handed out earlier keep their bytes."""
    messages = [os.urandom(n) for n in (0, 1, 127, 128, 4200, 70_000)]
    stream = b"".join(delimit(m) for m in messages)
    for step in (1, 3, 129, 4096, 65_536, len(stream)):
        decoder = DelimitedDecoder(max_message=1 << 20)
        views = []
        for i in range(0, len(stream), step):
            views.extend(decoder.feed_views(stream[i : i + step]))
        decoder.close()
        assert [v.tobytes() for v in views] == messages


def test_read_varint_matches_the_encoder() -> None:
    for value in (0, 1, 127, 128, 300, 16383, 16384, 2**35, 2**64 - 1):
        encoded = encode_varint(value)
        assert read_varint(b"\x99" + encoded + b"\x01", 1) == (value, 1 + len(encoded))
        if len(encoded) > 1:
            assert read_varint(encoded[:-1], 0) == (0, -1)  # ends inside the varint
