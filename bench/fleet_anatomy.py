"""What one fleet pull answer holds, byte by byte (issue 12): a tool, not a benchmark.

N replicas of one database on a fresh primary (``turso-sync serve``); they commit and push one row
each (an id and a 100-character payload, as ``bench_fleet``), in turn; after every ``ROWS`` rows a
reader asks ``/pull-updates`` by hand, as the daemon does (zstd, page deltas, at its revision), and
the answer is taken apart: body, header fields, the delta frame's parts (zstd frame header,
blocks, checksum), what changed in each page, and the push answers' bodies.

    python -m bench.fleet_anatomy [--replicas N] [--rows R] [--pulls P]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import httpx
from pyroaring import BitMap

import turso_sync
from bench.bench_sync import TABLE_SQL, payload
from tests.servers import primary
from turso_sync.page import PAGE_SIZE
from turso_sync.wire import pull_updates_pb2 as pb
from turso_sync.wire.delimited import DelimitedDecoder
from turso_sync.wire.pull import PAGE_DELTAS_VERSION, PageEncoding, PullHeader, PullRequest


def zstd_frame_parts(frame: bytes, magic: bool = True) -> dict[str, int]:
    """The frame header, the blocks' headers and contents, and the checksum of one zstd frame
    (``magic`` False: a compact frame, without the magic number)."""
    skip = 4 if magic else 0
    fhd = frame[skip]
    fcs_flag, single, checksum, dict_flag = fhd >> 6, (fhd >> 5) & 1, (fhd >> 2) & 1, fhd & 3
    size = skip + 1 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag] + (1 if single else 0, 2, 4, 8)[fcs_flag]
    header, pos, blocks, block_headers = size, size, 0, 0
    while True:
        b = int.from_bytes(frame[pos : pos + 3], "little")
        last, kind, bsize = b & 1, (b >> 1) & 3, b >> 3
        pos += 3
        block_headers += 3
        pos += 1 if kind == 1 else bsize
        blocks += 1 if kind == 1 else bsize
        if last:
            break
    return {"header": header, "block_headers": block_headers, "blocks": blocks, "checksum": 4 * checksum}


def changed_bytes(old: bytes, new: bytes) -> int:
    return sum(1 for a, b in zip(old, new, strict=True) if a != b)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet_anatomy", description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=20)
    parser.add_argument("--rows", type=int, default=5, help="rows written between two pulls")
    parser.add_argument("--pulls", type=int, default=8)
    parser.add_argument("--version", type=int, default=PAGE_DELTAS_VERSION, help="page deltas version asked")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, primary(Path(tmp) / "server") as url:
        first = turso_sync.connect(Path(tmp) / "r0.db", url)
        first.execute(TABLE_SQL)
        first.commit()
        first.push()
        conns = [first] + [turso_sync.connect(Path(tmp) / f"r{n}.db", url) for n in range(1, args.replicas)]
        push_bodies: list[int] = []
        pull_bodies: list[int] = []
        row = 0

        def write(n: int) -> None:
            nonlocal row
            conn = conns[row % len(conns)]
            for _ in range(n):
                conn = conns[row % len(conns)]
                before = conn.stats().network_received_bytes
                conn.execute("INSERT INTO t VALUES (?, ?)", (row, payload(row)))
                conn.commit()
                conn.push()
                push_bodies.append(conn.stats().network_received_bytes - before)
                row += 1

        write(2 * args.replicas)  # every replica has pushed: its mark rows exist
        revision = httpx.post(url + "/pull-updates", content=PullRequest(encoding=PageEncoding.ZSTD).to_bytes())
        rev = _header(revision.content).server_revision
        push_bodies.clear()
        for _ in range(args.pulls):
            write(args.rows)
            ask = PullRequest(
                encoding=PageEncoding.ZSTD,
                client_revision=rev,
                page_deltas=True,
                page_deltas_version=args.version,
            )
            body = httpx.post(url + "/pull-updates", content=ask.to_bytes()).content
            pull_bodies.append(len(body))
            messages = [m.tobytes() for m in DelimitedDecoder(max_message=1 << 20).feed_views(body)]
            header = PullHeader.from_message(messages[0])
            msg = pb.PullUpdatesRespProtoBody()
            msg.ParseFromString(messages[0])
            print(f"pull after {args.rows} rows ({rev} -> {header.server_revision}): body {len(body)} B")
            print(f"  request body {len(ask.to_bytes())} B")
            print(f"  header message {len(messages[0])} B + {len(body) - sum(map(len, messages))} B length prefixes")
            for field, value in msg.ListFields():
                size = len(value.SerializeToString()) if hasattr(value, "SerializeToString") else None
                print(f"    {field.name}: {size if size is not None else value!r}")
            if header.deltas is not None:
                d = header.deltas
                parts = zstd_frame_parts(d.frame, magic=not d.compact)
                print(
                    f"  deltas: pages {[p + 1 for p in d.page_ids]} (new {[p + 1 for p in d.new_ids]}), "
                    f"{'compact frame' if d.compact else 'frame'} {len(d.frame)} B {parts}"
                    + (f", tables {bool(d.frame[0] & 3)}" if d.compact else "")
                )
                old = _pages(url, rev, d.page_ids)
                new = _pages(url, header.server_revision, d.page_ids)
                for p in d.page_ids:
                    print(f"    page {p + 1}: {changed_bytes(old[p], new[p])} bytes differ")
            for m in messages[1:]:
                rec = pb.PageData()
                rec.ParseFromString(m)
                print(f"  whole page {rec.page_id + 1}: {len(m)} B")
            rev = header.server_revision
        print(f"pull bodies: mean {statistics.mean(pull_bodies):.1f} B over {len(pull_bodies)}")
        print(f"push answers: median {statistics.median(push_bodies)} B over {len(push_bodies)}")
        for conn in conns:
            conn.close()


def _header(body: bytes) -> PullHeader:
    first = next(iter(DelimitedDecoder(max_message=1 << 20).feed_views(body)))
    return PullHeader.from_message(first.tobytes())


def _pages(url: str, rev: str, ids: tuple[int, ...]) -> dict[int, bytes]:
    ask = PullRequest(server_revision=rev, page_ids=BitMap(ids))
    body = httpx.post(url + "/pull-updates", content=ask.to_bytes()).content
    out = {}
    for m in list(DelimitedDecoder(max_message=1 << 20).feed_views(body))[1:]:
        rec = pb.PageData()
        rec.ParseFromString(m.tobytes())
        assert len(rec.encoded_page) == PAGE_SIZE
        out[rec.page_id] = rec.encoded_page
    return out


if __name__ == "__main__":
    main()
