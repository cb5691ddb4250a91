"""Makes the entropy tables of compact page deltas (``turso_sync/wire/delta_tables.py``): a tool,
not a benchmark.

A fleet's pulls bring a few table leaves and the push marks' page, each changed by some rows: the
zstd frame of such an answer spends 20-30 of its 300-400 bytes describing its own Huffman and
FSE tables.  Tables both sides hold already cost nothing on the wire.  This runs the fleet
benchmark's rows on a fresh primary (``REPLICAS`` replicas commit and push one row each, in
turn), takes the images of the pages every ``ROWS`` rows change, has zstd train a dictionary on
them, and prints the dictionary's tables (its content is dropped: a pull's content is its bases)
with the dictionary id ``TABLES_ID``, as the source of ``delta_tables.py`` (then ``ruff format`` it).

    python -m bench.delta_tables > turso_sync/wire/delta_tables.py
"""

from __future__ import annotations

import tempfile
import textwrap
from pathlib import Path

import httpx
import zstandard
from pyroaring import BitMap

import turso_sync
from bench.bench_sync import TABLE_SQL, payload
from tests.servers import primary
from turso_sync.wire import pull_updates_pb2 as pb
from turso_sync.wire.delimited import DelimitedDecoder
from turso_sync.wire.pull import PageEncoding, PullHeader, PullRequest

REPLICAS, ROWS, PULLS = 20, 4, 120
TABLES_ID = 1  # one byte in a frame header
# zstd writes the repeat offsets 1, 4, 8 last of a dictionary's tables; its content follows
_REPEAT_OFFSETS = b"".join(n.to_bytes(4, "little") for n in (1, 4, 8))


def samples() -> list[bytes]:
    """The new images of the pages each pull brings, over ``PULLS`` pulls of ``ROWS`` rows."""
    out: list[bytes] = []
    with tempfile.TemporaryDirectory() as tmp, primary(Path(tmp) / "server") as url:
        first = turso_sync.connect(Path(tmp) / "r0.db", url)
        first.execute(TABLE_SQL)
        first.commit()
        first.push()
        conns = [first] + [turso_sync.connect(Path(tmp) / f"r{n}.db", url) for n in range(1, REPLICAS)]
        rev = _revision(url)
        for row in range(PULLS * ROWS):
            conn = conns[row % REPLICAS]
            conn.execute("INSERT INTO t VALUES (?, ?)", (row, payload(row)))
            conn.commit()
            conn.push()
            if row % ROWS == ROWS - 1:
                ask = PullRequest(encoding=PageEncoding.ZSTD, client_revision=rev)
                body = httpx.post(url + "/pull-updates", content=ask.to_bytes()).content
                messages = list(DelimitedDecoder(max_message=1 << 20).feed_views(body))
                rev = PullHeader.from_message(messages[0].tobytes()).server_revision
                ids = BitMap(_page_id(m.tobytes()) for m in messages[1:])
                out.extend(_raw_pages(url, rev, ids))
        for conn in conns:
            conn.close()
    return out


def tables(pages: list[bytes]) -> bytes:
    """A trained dictionary's header and tables, its id set to ``TABLES_ID``, its content cut."""
    trained = zstandard.train_dictionary(16384, pages, level=1).as_bytes()
    end = trained.find(_REPEAT_OFFSETS)
    assert end > 0, "no repeat offsets in the trained dictionary"
    return trained[:4] + TABLES_ID.to_bytes(4, "little") + trained[8 : end + len(_REPEAT_OFFSETS)]


def _revision(url: str) -> str:
    body = httpx.post(url + "/pull-updates", content=PullRequest(encoding=PageEncoding.ZSTD).to_bytes()).content
    first = next(iter(DelimitedDecoder(max_message=1 << 20).feed_views(body)))
    return PullHeader.from_message(first.tobytes()).server_revision


def _page_id(message: bytes) -> int:
    rec = pb.PageData()
    rec.ParseFromString(message)
    return rec.page_id


def _raw_pages(url: str, rev: str, ids: BitMap) -> list[bytes]:
    body = httpx.post(url + "/pull-updates", content=PullRequest(server_revision=rev, page_ids=ids).to_bytes()).content
    out = []
    for m in list(DelimitedDecoder(max_message=1 << 20).feed_views(body))[1:]:
        rec = pb.PageData()
        rec.ParseFromString(m.tobytes())
        out.append(rec.encoded_page)
    return out


def main() -> None:
    data = tables(samples())
    hexed = textwrap.wrap(data.hex(), 96)
    print(f'"""{_MODULE_DOC}"""\n')
    print("#: The dictionary id the tables carry, and a frame made with them names (one byte).")
    print(f"TABLES_ID = {TABLES_ID}\n")
    print("#: A zstd dictionary without content: its magic, id, Huffman and FSE tables and repeat offsets.")
    print("TABLES = bytes.fromhex(")
    for line in hexed:
        print(f'    "{line}"')
    print(")")


_MODULE_DOC = """The entropy tables of compact page deltas (docs/protocol.md, "Page deltas"), made by
``python -m bench.delta_tables`` from the fleet benchmark's pages; pure data.

A compact frame made with them names ``TABLES_ID`` in its header; its dictionary is these tables
followed by the bases.  They never change: other tables would be another id."""


if __name__ == "__main__":
    main()
