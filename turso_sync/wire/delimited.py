"""Varint length-delimited framing of protobuf messages (the body of a /pull-updates response).

Each message is preceded by its length as a protobuf varint (the framing of protobuf's
``writeDelimitedTo`` and prost's ``encode_length_delimited``).  Pure code: bytes in, bytes out.
"""

from __future__ import annotations

from ..errors import ProtocolError

#: A varint never needs more than ten bytes for a 64-bit value.
_MAX_VARINT_BYTES = 10


def encode_varint(value: int) -> bytes:
    """The protobuf varint encoding of a non-negative integer below 2**64."""
    if 0 <= value < 0x4000:  # one or two bytes: lengths and page numbers of most records
        return bytes((value,)) if value < 0x80 else bytes((value & 0x7F | 0x80, value >> 7))
    if value < 0 or value >= 1 << 64:
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(data: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int] | None:
    """``(value, next position)`` of the varint at ``pos``, or None if ``data`` ends inside it.

    Raises ProtocolError for a varint longer than ten bytes.
    """
    value = 0
    shift = 0
    for i in range(pos, min(len(data), pos + _MAX_VARINT_BYTES)):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    if len(data) - pos >= _MAX_VARINT_BYTES:
        raise ProtocolError("length prefix is not a valid varint (longer than 10 bytes)")
    return None


def read_varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """``decode_varint`` for a hot loop: ``(value, next position)``, with ``(0, -1)`` when ``data``
    ends inside the varint (no tuple to test for None; one- and two-byte varints take no loop)."""
    first = data[pos]
    if first < 0x80:
        return first, pos + 1
    if pos + 1 < len(data) and data[pos + 1] < 0x80:
        return (first & 0x7F) | (data[pos + 1] << 7), pos + 2
    head = decode_varint(data, pos)
    return (0, -1) if head is None else head


def delimit(message: bytes) -> bytes:
    """``message`` preceded by its length."""
    return encode_varint(len(message)) + message


class DelimitedDecoder:
    """Splits a stream of length-delimited messages; feed it chunks as they arrive.

    ``max_message`` bounds a single message so a corrupt length cannot make it buffer forever.
    """

    def __init__(self, max_message: int = 1 << 24) -> None:
        self._buf = bytearray()
        self._max = max_message

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return every message completed by them, in order."""
        return [view.tobytes() for view in self.feed_views(data)]

    def feed_views(self, data: bytes) -> list[memoryview]:
        """``feed`` without copying: views of the messages into ``data`` (or into the bytes left
        over from earlier chunks joined with it).  The hot loop of a pull: each page is copied
        once, by whoever keeps it."""
        if self._buf:
            buf = bytes(self._buf) + data
            self._buf.clear()
        else:
            buf = data
        view = memoryview(buf)
        out: list[memoryview] = []
        pos, size, limit = 0, len(buf), self._max
        while pos < size:
            length, start = read_varint(buf, pos)
            if start < 0:
                break
            if length > limit:
                raise ProtocolError(f"message of {length} bytes exceeds the limit of {limit}")
            end = start + length
            if end > size:
                break
            out.append(view[start:end])
            pos = end
        if pos < size:
            self._buf += view[pos:]
        return out

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a whole message."""
        return len(self._buf)

    def close(self) -> None:
        """Declare the end of the stream; raises ProtocolError if it stopped inside a message."""
        if self._buf:
            raise ProtocolError(f"stream ended inside a message ({len(self._buf)} bytes left over)")
