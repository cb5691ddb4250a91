"""A content coding for Hrana answers between our client and our primary: zlib with a preset
dictionary of the answers' JSON (our extension, docs/protocol.md "Our extension: Hrana answers
with a preset dictionary"); pure code, no I/O.

A one-row push's answer is about 700 bytes of JSON, nearly all of it the same keys and nulls in
every answer: gzip, which learns them anew each time, makes it about 200 bytes; zlib, which
finds them in a dictionary both sides hold, about 35.  Only a request that lists ``CODING`` in
its ``Accept-Encoding`` gets it (our client's; Turso's clients never name it).  The zlib
container carries the dictionary's Adler-32 (a client holding another dictionary refuses the
answer rather than misreading it) and the answer's (corruption is detected).  The dictionary
never changes: another one would be another coding name.
"""

from __future__ import annotations

import zlib

from ..errors import ProtocolError

#: The ``Content-Encoding`` name of this coding (version 1 of the dictionary).
CODING = "x-turso-sync-hrana-1"

# What answers to our client's pipelines hold: a batch (a push, a fence, a mark read) with its
# step results and errors, and an execute's result.  The most frequent text comes last (zlib
# codes nearer matches in fewer bits).
DICTIONARY = (
    b'{"type":"error","error":{"message":"SQLite error: integer overflow","code":"SQLITE_ERROR"}},'
    b'{"type":"ok","response":{"type":"execute","result":{"cols":[{"name":"pull_gen","decltype":"INTEGER"},'
    b'{"name":"change_id","decltype":"INTEGER"}],"rows":[[{"type":"integer","value":"0"},'
    b'{"type":"integer","value":"1"}]],"affected_row_count":0,"last_insert_rowid":null,'
    b'"replication_index":null}}},{"type":"text","value":"turso-sync-"},{"type":"null"},'
    b'{"type":"ok","response":{"type":"close"}}'
    b'{"baton":null,"base_url":null,"results":[{"type":"ok","response":{"type":"batch","result":{"step_results":['
    b'{"cols":[],"rows":[],"affected_row_count":0,"last_insert_rowid":null,"replication_index":null},'
    b'{"cols":[{"name":"ok","decltype":null}],"rows":[],"affected_row_count":0,"last_insert_rowid":null,'
    b'"replication_index":null},{"cols":[],"rows":[],"affected_row_count":1,"last_insert_rowid":"1",'
    b'"replication_index":null},{"cols":[],"rows":[],"affected_row_count":0,"last_insert_rowid":null,'
    b'"replication_index":null},null],"step_errors":[null,null,null,null,null,null,null,null],'
    b'"replication_index":null}}}]}'
)


def accepts(header: str) -> bool:
    """Whether an ``Accept-Encoding`` value names ``CODING`` (not with ``q=0``)."""
    for item in header.split(","):
        coding, _, params = item.partition(";")
        if coding.strip().lower() != CODING:
            continue
        quality = params.strip().lower()
        if quality.startswith("q="):
            try:
                return float(quality[2:]) > 0
            except ValueError:
                return False
        return True
    return False


def encode(body: bytes, level: int = 6) -> bytes:
    """``body`` in ``CODING``: one zlib stream made with ``DICTIONARY``."""
    packer = zlib.compressobj(level, zlib.DEFLATED, 15, zdict=DICTIONARY)
    return packer.compress(body) + packer.flush()


def decode(data: bytes, max_size: int) -> bytes:
    """The body ``data`` holds in ``CODING``; ProtocolError if it is not such a stream (another
    dictionary, corrupt, cut short, trailing bytes) or it holds more than ``max_size`` bytes."""
    unpacker = zlib.decompressobj(15, zdict=DICTIONARY)
    try:
        body = unpacker.decompress(data, max_size + 1)
    except zlib.error as exc:
        raise ProtocolError(f"answer in {CODING} is not a valid zlib stream with its dictionary ({exc})") from None
    if len(body) > max_size:
        raise ProtocolError(f"answer in {CODING} holds more than {max_size} bytes")
    if not unpacker.eof or unpacker.unused_data or unpacker.unconsumed_tail:
        raise ProtocolError(f"answer in {CODING} is cut short or has bytes after its end")
    return body
