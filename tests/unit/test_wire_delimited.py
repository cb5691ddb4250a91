"""Varint length-delimited framing (the /pull-updates response body)."""

from __future__ import annotations

import pytest
from google.protobuf.internal.decoder import _DecodeVarint  # type: ignore[attr-defined]
from google.protobuf.internal.encoder import _VarintBytes  # type: ignore[attr-defined]

from turso_sync.errors import ProtocolError
from turso_sync.wire.delimited import DelimitedDecoder, decode_varint, delimit, encode_varint


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 4096, 2**32, 2**63, 2**64 - 1])
def test_varint_matches_protobuf(value: int) -> None:
    assert encode_varint(value) == _VarintBytes(value)
    assert decode_varint(encode_varint(value)) == (value, len(encode_varint(value)))
    assert _DecodeVarint(encode_varint(value), 0)[0] == value


def test_varint_range_and_truncation() -> None:
    with pytest.raises(ValueError):
        encode_varint(-1)
    with pytest.raises(ValueError):
        encode_varint(2**64)
    assert decode_varint(b"\x80\x80") is None  # ends inside the varint
    with pytest.raises(ProtocolError):
        decode_varint(b"\xff" * 11)


def test_decoder_splits_messages_fed_byte_by_byte() -> None:
    messages = [b"", b"a", b"x" * 200, bytes(range(256)) * 20]
    stream = b"".join(delimit(m) for m in messages)
    decoder = DelimitedDecoder()
    got = []
    for i in range(len(stream)):
        got.extend(decoder.feed(stream[i : i + 1]))
    decoder.close()
    assert got == messages


def test_decoder_refuses_oversized_and_truncated_streams() -> None:
    with pytest.raises(ProtocolError, match="exceeds"):
        DelimitedDecoder(max_message=10).feed(delimit(b"y" * 11))
    decoder = DelimitedDecoder()
    assert decoder.feed(delimit(b"hello")[:-1]) == []
    assert decoder.pending == 5
    with pytest.raises(ProtocolError, match="inside a message"):
        decoder.close()
