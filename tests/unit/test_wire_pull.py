"""The /pull-updates messages: request, header, page records, zstd pages, page selectors."""

from __future__ import annotations

import os

import pytest
from pyroaring import BitMap

from turso_sync.errors import ProtocolError
from turso_sync.wire import pull_updates_pb2 as pb
from turso_sync.wire.delimited import DelimitedDecoder
from turso_sync.wire.pull import (
    PAGE_SIZE,
    PageCompressor,
    PageEncoding,
    PullHeader,
    PullRequest,
    PullResponseDecoder,
    StreamKind,
    decode_page_selector,
    decode_zstd_page,
    encode_page,
)


def test_empty_body_is_a_full_bootstrap_request() -> None:
    req = PullRequest.from_bytes(b"")
    assert req == PullRequest()
    assert req.page_ids is None and req.client_revision == "" and req.encoding == PageEncoding.RAW


def test_request_as_pyturso_sends_it() -> None:
    # captured from pyturso 0.8.3: client_revision "h-6059aff6e8005ad0", long_poll_timeout_ms 1500
    body = bytes.fromhex("1a12682d36303539616666366538303035616430") + bytes.fromhex("20dc0b")
    req = PullRequest.from_bytes(body)
    assert req.client_revision == "h-6059aff6e8005ad0"
    assert req.long_poll_timeout_ms == 1500


def test_request_round_trip_with_selector() -> None:
    req = PullRequest(
        encoding=PageEncoding.ZSTD,
        server_revision="7",
        client_revision="3",
        long_poll_timeout_ms=250,
        page_ids=BitMap([0, 5, 99]),
    )
    assert PullRequest.from_bytes(req.to_bytes()) == req


def test_malformed_requests_raise_protocol_errors() -> None:
    for body in (b"\xff\xff\xff", b"\x0a\x05ab", os.urandom(0) + b"\x1a\x10short"):
        with pytest.raises(ProtocolError):
            PullRequest.from_bytes(body)
    with pytest.raises(ProtocolError, match="encoding"):
        PullRequest.from_bytes(pb.PullUpdatesReqProtoBody(encoding=7).SerializeToString())  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="RoaringBitmap"):
        PullRequest.from_bytes(pb.PullUpdatesReqProtoBody(server_pages_selector=b"\x01\x02junk").SerializeToString())


def test_unknown_fields_are_ignored() -> None:
    body = pb.PullUpdatesReqProtoBody(client_revision="4").SerializeToString() + b"\xf8\x06\x01"  # field 111
    assert PullRequest.from_bytes(body).client_revision == "4"


def test_selector_in_portable_format_without_runs() -> None:
    # cookie 12346, one container (key 0, cardinality 3) with an offset header, then 1, 2, 3
    data = bytes.fromhex("3a300000010000000000020010000000010002000300")
    assert list(decode_page_selector(data)) == [1, 2, 3]


def test_header_bytes_match_the_reference_server() -> None:
    header = PullHeader("3", 2).to_bytes()
    # tursodb 0.7.0 sends 07 0a 01 33 10 02 1a 00; we also state protocol = PAGES (field 8)
    assert header == bytes.fromhex("090a013310021a004001")
    msg = pb.PullUpdatesRespProtoBody.FromString(header[1:])
    assert msg.HasField("raw_encoding") and not msg.HasField("zstd_encoding")


def test_zstd_header_announces_zstd_instead_of_raw() -> None:
    header = PullHeader("9", 4, PageEncoding.ZSTD, zstd_level=5).to_bytes()
    msg = pb.PullUpdatesRespProtoBody.FromString(DelimitedDecoder().feed(header)[0])
    assert msg.HasField("zstd_encoding") and not msg.HasField("raw_encoding")
    assert msg.zstd_encoding.level == 5 and list(msg.zstd_encoding.pages_dict) == []


@pytest.mark.parametrize("page_id", [0, 1, 127, 128, 16384, 2**31])
def test_hand_encoded_page_records_match_protobuf(page_id: int) -> None:
    page = os.urandom(PAGE_SIZE)
    record = encode_page(page_id, page)
    (message,) = DelimitedDecoder().feed(record)
    assert message == pb.PageData(page_id=page_id, encoded_page=page).SerializeToString()


def _response(encoding: PageEncoding, pages: dict[int, bytes], db_size: int) -> bytes:
    compressor = PageCompressor()
    body = PullHeader("12", db_size, encoding).to_bytes()
    for page_id, data in sorted(pages.items()):
        encoded = compressor.compress(data) if encoding == PageEncoding.ZSTD else data
        body += encode_page(page_id, encoded)
    return body


@pytest.mark.parametrize("encoding", [PageEncoding.RAW, PageEncoding.ZSTD])
def test_response_decoder_round_trip_in_small_chunks(encoding: PageEncoding) -> None:
    pages = {i: (bytes([i]) * 100 + os.urandom(50)).ljust(PAGE_SIZE, b"\0") for i in range(5)}
    body = _response(encoding, pages, 5)
    decoder = PullResponseDecoder()
    got = {}
    for i in range(0, len(body), 777):
        got.update({p.page_id: p.data for p in decoder.feed(body[i : i + 777])})
    decoder.close()
    assert decoder.header == PullHeader("12", 5, encoding, decoder.header.zstd_level if decoder.header else 0)
    assert got == pages


def test_zstd_pages_are_independent_frames_and_smaller() -> None:
    page = (b"row data " * 200).ljust(PAGE_SIZE, b"\0")
    frame = PageCompressor().compress(page)
    assert frame[:4] == b"\x28\xb5\x2f\xfd"  # zstd magic: a complete frame per page
    assert len(frame) < len(page) // 4
    assert decode_zstd_page(frame) == page
    with pytest.raises(ProtocolError):
        decode_zstd_page(b"not zstd")
    with pytest.raises(ProtocolError, match="not 4096"):
        decode_zstd_page(PageCompressor().compress(b"short"))


def test_response_decoder_rejects_bad_streams() -> None:
    with pytest.raises(ProtocolError, match="no header"):
        PullResponseDecoder().close()
    both = pb.PullUpdatesRespProtoBody(server_revision="1", db_size=1)
    both.raw_encoding.SetInParent()
    both.zstd_encoding.SetInParent()
    with pytest.raises(ProtocolError, match="exactly one"):
        PullResponseDecoder().feed(bytes([len(both.SerializeToString())]) + both.SerializeToString())
    decoder = PullResponseDecoder()
    with pytest.raises(ProtocolError, match="not 4096"):
        decoder.feed(PullHeader("1", 1).to_bytes() + encode_page(0, b"tiny"))
    decoder = PullResponseDecoder()
    with pytest.raises(ProtocolError, match="beyond"):
        decoder.feed(PullHeader("1", 1).to_bytes() + encode_page(3, bytes(PAGE_SIZE)))


def test_stream_kind_values() -> None:
    assert StreamKind.PAGES == 0 and StreamKind.MVCC_LOGICAL_LOG == 1
