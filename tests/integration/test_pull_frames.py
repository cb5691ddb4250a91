"""zstd frames of several pages against a real ``turso-sync serve`` (docs/protocol.md, "Frames of
several pages"): a request that asks gets runs of consecutive pages in one frame, the same pages
as page by page; a request that does not ask (an older client of ours; Turso's clients ask for raw
pages) gets exactly what it got before; our client bootstraps and pulls through it.
"""

from __future__ import annotations

from pathlib import Path

import httpx

import turso_sync
from tests.servers import primary
from turso_sync.page import PAGE_SIZE
from turso_sync.wire.delimited import DelimitedDecoder
from turso_sync.wire.pull import ZSTD_FRAME_PAGES, PageEncoding, PullRequest, PullResponseDecoder


def _ask(url: str, request: PullRequest) -> tuple[str, dict[int, bytes], int]:
    """(revision, pages by 0-based id, records) of one /pull-updates answer."""
    body = httpx.post(f"{url}/pull-updates", content=request.to_bytes(), timeout=30).content
    decoder = PullResponseDecoder(request.zstd_frame_pages)
    pages = {page.page_id: page.data for page in decoder.feed(body)}
    decoder.close()
    records = len(DelimitedDecoder(max_message=1 << 20).feed(body)) - 1
    assert decoder.header is not None
    return decoder.header.server_revision, pages, records


def _insert(conn: turso_sync.Connection, first: int, count: int) -> None:
    for i in range(first, first + count):
        conn.execute("INSERT INTO t VALUES (?, ?)", (i, f"row {i:05d} " + "p" * 300))
    conn.commit()
    assert conn.push() == 1


def test_frames_of_several_pages_carry_the_same_pages(tmp_path: Path) -> None:
    with primary(tmp_path / "server") as url:
        writer = turso_sync.connect(tmp_path / "w.db", url)
        try:
            writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            writer.commit()
            assert writer.push() == 1
            base, _, _ = _ask(url, PullRequest(encoding=PageEncoding.RAW))
            _insert(writer, 0, 400)  # some 40 new pages, most of them next to each other
        finally:
            writer.close()
        for since in ("", base):  # a bootstrap and an incremental pull
            rev, raw, raw_records = _ask(url, PullRequest(encoding=PageEncoding.RAW, client_revision=since))
            _, one, one_records = _ask(url, PullRequest(encoding=PageEncoding.ZSTD, client_revision=since))
            asked = PullRequest(encoding=PageEncoding.ZSTD, client_revision=since, zstd_frame_pages=ZSTD_FRAME_PAGES)
            rev_framed, framed, framed_records = _ask(url, asked)
            assert rev_framed == rev and len(raw) > 30
            assert raw == one == framed
            # without the field, one page per record, as before; with it, far fewer records
            assert raw_records == one_records == len(raw)
            assert framed_records < len(raw) / 4


def test_our_client_bootstraps_and_pulls_through_page_frames(tmp_path: Path) -> None:
    with primary(tmp_path / "server") as url:
        writer = turso_sync.connect(tmp_path / "w.db", url)
        reader = None
        try:
            writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            writer.commit()
            assert writer.push() == 1
            _insert(writer, 0, 300)
            reader = turso_sync.connect(tmp_path / "r.db", url)
            assert reader.execute("SELECT count(*) FROM t").fetchone()[0] == 300
            _insert(writer, 300, 500)
            assert reader.pull()
            assert reader.execute("SELECT count(*), sum(length(v)) FROM t").fetchone() == (800, 800 * 310)
            assert reader.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert int(reader.execute("PRAGMA page_count").fetchone()[0]) * PAGE_SIZE > 800 * 310
        finally:
            writer.close()
            if reader is not None:
                reader.close()
