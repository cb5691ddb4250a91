"""Makes the entropy tables of compact page deltas (``turso_sync/wire/delta_tables.py``): a tool,
not a benchmark.

A fleet's pulls bring a few table leaves and the push marks' page, each changed by some rows: the
zstd frame of such an answer spends 20-30 of its 300-400 bytes describing its own Huffman and
FSE tables.  Tables both sides hold already cost nothing on the wire.  This runs rows of a
generic application table (a UUID, a few words, an ISO timestamp, integers, a price, a small JSON
object: ``generic_row``; deliberately *not* the benchmarks' rows, so that no benchmark measures
tables fitted to its own data) on a fresh primary (``REPLICAS`` replicas commit and push one row
each, in turn), takes the images of the pages every ``ROWS`` rows change, has zstd train a
dictionary on them, and prints the dictionary's tables (its content is dropped: a pull's content
is its bases) with the dictionary id ``TABLES_ID``, as the source of ``delta_tables.py`` (then
``ruff format`` it).

    python -m bench.delta_tables > turso_sync/wire/delta_tables.py
"""

from __future__ import annotations

import json
import random
import tempfile
import textwrap
import uuid
from pathlib import Path

import httpx
import zstandard
from pyroaring import BitMap

import turso_sync
from tests.servers import primary
from turso_sync.wire import pull_updates_pb2 as pb
from turso_sync.wire.delimited import DelimitedDecoder
from turso_sync.wire.pull import PageEncoding, PullHeader, PullRequest

REPLICAS, ROWS, PULLS = 20, 4, 120
GENERIC_SQL = (
    "CREATE TABLE items(id INTEGER PRIMARY KEY, uid TEXT NOT NULL, name TEXT NOT NULL, created TEXT NOT NULL,"
    " qty INTEGER NOT NULL, price REAL NOT NULL, attrs TEXT NOT NULL)"
)
_WORDS = [
    "order",
    "note",
    "task",
    "item",
    "user",
    "team",
    "blue",
    "green",
    "red",
    "small",
    "large",
    "new",
    "old",
    "first",
    "last",
    "open",
    "closed",
    "done",
    "draft",
    "report",
    "invoice",
    "meeting",
    "project",
    "review",
    "update",
    "photo",
    "file",
    "list",
    "city",
    "street",
    "north",
    "south",
    "paid",
    "pending",
    "shipped",
    "returned",
    "alpha",
    "beta",
    "home",
    "work",
    "phone",
    "email",
]
TABLES_ID = 1  # one byte in a frame header
# zstd writes the repeat offsets 1, 4, 8 last of a dictionary's tables; its content follows
_REPEAT_OFFSETS = b"".join(n.to_bytes(4, "little") for n in (1, 4, 8))


def samples() -> list[bytes]:
    """The new images of the pages each pull brings, over ``PULLS`` pulls of ``ROWS`` rows."""
    out: list[bytes] = []
    with tempfile.TemporaryDirectory() as tmp, primary(Path(tmp) / "server") as url:
        first = turso_sync.connect(Path(tmp) / "r0.db", url)
        first.execute(GENERIC_SQL)
        rng = random.Random(12)
        first.commit()
        first.push()
        conns = [first] + [turso_sync.connect(Path(tmp) / f"r{n}.db", url) for n in range(1, REPLICAS)]
        rev = _revision(url)
        for row in range(PULLS * ROWS):
            conn = conns[row % REPLICAS]
            conn.execute("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?)", generic_row(rng, row))
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


def generic_row(rng: random.Random, row: int) -> tuple[object, ...]:
    """One row of an ordinary application table (not any benchmark's)."""
    name = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 4)))
    created = (
        f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z"
    )
    attrs = json.dumps({"status": rng.choice(_WORDS), "n": rng.randint(0, 999), "ok": rng.random() < 0.5})
    uid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return (row, uid, name, created, rng.randint(0, 50), round(rng.uniform(0, 500), 2), attrs)


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
``python -m bench.delta_tables`` from the pages of a generic application table (not a
benchmark's rows); pure data.

A compact frame made with them names ``TABLES_ID`` in its header; its dictionary is these tables
followed by the bases.  They never change: other tables would be another id."""


if __name__ == "__main__":
    main()
