"""The preset-dictionary coding of Hrana answers (our client <-> our primary): round trip,
refusals, who asks for it."""

from __future__ import annotations

import gzip
import zlib

import pytest

from turso_sync.errors import ProtocolError
from turso_sync.sync import transport
from turso_sync.wire import answer_coding
from turso_sync.wire.answer_coding import CODING, DICTIONARY, accepts, decode, encode

# a one-row push's answer, as our primary writes it
PUSH_ANSWER = (
    b'{"baton":null,"base_url":null,"results":[{"type":"ok","response":{"type":"batch","result":{"step_results":['
    b'{"cols":[],"rows":[],"affected_row_count":0,"last_insert_rowid":null,"replication_index":null},'
    b'{"cols":[],"rows":[],"affected_row_count":1,"last_insert_rowid":"17","replication_index":null},'
    b'{"cols":[],"rows":[],"affected_row_count":1,"last_insert_rowid":"1234","replication_index":null},'
    b'{"cols":[{"name":"ok","decltype":null}],"rows":[],"affected_row_count":0,"last_insert_rowid":null,'
    b'"replication_index":null},{"cols":[],"rows":[],"affected_row_count":0,"last_insert_rowid":null,'
    b'"replication_index":null},null],"step_errors":[null,null,null,null,null,null],"replication_index":null}}}]}'
)


def test_round_trip_and_size() -> None:
    packed = encode(PUSH_ANSWER)
    assert decode(packed, len(PUSH_ANSWER)) == PUSH_ANSWER
    assert len(packed) * 4 < len(gzip.compress(PUSH_ANSWER)), len(packed)
    assert decode(encode(b""), 0) == b""
    big = b'{"rows":[' + b",".join(b'[{"type":"integer","value":"%d"}]' % i for i in range(5000)) + b"]}"
    assert decode(encode(big), len(big)) == big


def test_bad_streams_are_protocol_errors() -> None:
    packed = encode(PUSH_ANSWER)
    other = zlib.compressobj(6, zlib.DEFLATED, 15, zdict=DICTIONARY + b" ")
    flipped = bytearray(packed)
    flipped[len(flipped) // 2] ^= 0x10
    cases = {
        "another dictionary": other.compress(PUSH_ANSWER) + other.flush(),
        "corrupt": bytes(flipped),
        "cut short": packed[:-5],
        "trailing bytes": packed + b"x",
        "gzip": gzip.compress(PUSH_ANSWER),
    }
    for what, data in cases.items():
        with pytest.raises(ProtocolError, match=CODING):
            decode(data, 1 << 20)
            pytest.fail(what)
    with pytest.raises(ProtocolError, match="more than 100 bytes"):
        decode(packed, 100)
    # a zlib stream made without the dictionary reads as what it holds (nothing to misread)
    assert decode(zlib.compress(PUSH_ANSWER), 1 << 20) == PUSH_ANSWER


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        (CODING, True),
        (f"{CODING}, gzip", True),
        (f"gzip, {CODING.upper()};q=0.5", True),
        ("", False),
        ("gzip, deflate, br, zstd", False),
        ("*", False),  # only a client that names it: its dictionary must be ours
        (f"{CODING};q=0", False),
        (f"{CODING};q=x", False),
        (f"{CODING}-2", False),
    ],
)
def test_accepts(header: str, accepted: bool) -> None:
    assert accepts(header) is accepted


def test_our_client_asks_for_it_on_json_requests_only() -> None:
    assert accepts(transport._request_headers("application/json")["accept-encoding"])
    assert not accepts(transport._request_headers("application/protobuf")["accept-encoding"])


def _headers(coding: str | None) -> dict[str, str]:
    """An answer's headers as the transports hand them to ``_decoded``."""
    return {"content-encoding": coding} if coding else {}


def test_the_transport_decodes_it_and_refuses_a_bad_one() -> None:
    packed = encode(PUSH_ANSWER)
    assert transport._decoded(packed, _headers(CODING)) == PUSH_ANSWER
    assert transport._decoded(PUSH_ANSWER, _headers(None)) == PUSH_ANSWER
    with pytest.raises(ProtocolError):
        transport._decoded(packed[:-1], _headers(CODING))
    assert answer_coding.CODING == "x-turso-sync-hrana-1"  # the name is the dictionary's version: never reuse it
