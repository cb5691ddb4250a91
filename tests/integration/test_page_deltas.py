"""Page deltas against a real ``turso-sync serve``: a replica's pulls bring the changed bytes of
each page against its own copy; a replica whose copy differs falls back to whole pages and ends
right; encrypted replicas too; a request that does not ask gets what it always got."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import turso_sync
from bench.bench_sync import payload
from tests.conftest import KEY256
from tests.servers import primary
from turso_sync.wire import pull as wire_pull
from turso_sync.wire.delimited import DelimitedDecoder
from turso_sync.wire.pull import PageEncoding, PullHeader, PullRequest, PullResponseDecoder


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Counts of delta blocks applied and refused (a base that differs), in this process."""
    counts = {"applied": 0, "refused": 0}
    apply = wire_pull.PageDeltas.apply

    def counting(self: wire_pull.PageDeltas, base):  # type: ignore[no-untyped-def]
        try:
            pages = apply(self, base)
        except wire_pull.DeltaBaseMismatch:
            counts["refused"] += 1
            raise
        counts["applied"] += 1
        return pages

    monkeypatch.setattr(wire_pull.PageDeltas, "apply", counting)
    yield counts


def _rows(conn: turso_sync.Connection) -> list[tuple[object, ...]]:
    return conn.execute("SELECT id, v FROM t ORDER BY id").fetchall()


def _write(conn: turso_sync.Connection, ids: range) -> None:
    for i in ids:
        conn.execute("INSERT INTO t VALUES (?, ?)", (i, payload(i)))
        conn.commit()
        assert conn.push() == 1


def _body(url: str, request: PullRequest) -> bytes:
    return httpx.post(url + "/pull-updates", content=request.to_bytes()).content


def _header(body: bytes) -> PullHeader:
    first = next(iter(DelimitedDecoder(max_message=1 << 20).feed_views(body)))
    return PullHeader.from_message(first.tobytes())


@pytest.mark.parametrize("key", [None, KEY256], ids=["plaintext", "encrypted"])
def test_a_pull_brings_deltas_and_the_same_rows(tmp_path: Path, applied: dict[str, int], key: str | None) -> None:
    with primary(tmp_path / "server") as url:
        writer = turso_sync.connect(tmp_path / "w.db", url)
        reader = turso_sync.connect(tmp_path / "r.db", url, encryption_key=key)
        try:
            writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            writer.commit()
            writer.push()
            _write(writer, range(25))
            assert reader.pull()
            revision = reader.stats().revision
            applied.update(applied=0, refused=0)
            _write(writer, range(25, 28))
            before = reader.stats().network_received_bytes
            assert reader.pull()
            got = reader.stats().network_received_bytes - before
            assert applied == {"applied": 1, "refused": 0}
            # the same pull as whole zstd pages, asked by hand
            whole = _body(url, PullRequest(encoding=PageEncoding.ZSTD, client_revision=revision))
            assert _header(whole).deltas is None
            assert got * 3 < len(whole), (got, len(whole))
            assert _rows(reader) == _rows(writer) == [(i, payload(i)) for i in range(28)]
            assert reader.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            # local changes ride on top, and travel both ways
            reader.execute("INSERT INTO t VALUES (1000, 'local')")
            reader.commit()
            _write(writer, range(28, 30))
            assert reader.pull()
            assert reader.push() == 1
            assert writer.pull()
            assert _rows(reader) == _rows(writer) and len(_rows(writer)) == 31
            assert applied["refused"] == 0 and applied["applied"] >= 2
        finally:
            writer.close()
            reader.close()


def test_a_replica_whose_copy_differs_falls_back_to_whole_pages(tmp_path: Path, applied: dict[str, int]) -> None:
    with primary(tmp_path / "server") as url:
        writer = turso_sync.connect(tmp_path / "w.db", url)
        path = tmp_path / "r.db"
        reader = turso_sync.connect(path, url)
        try:
            writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            writer.commit()
            writer.push()
            _write(writer, range(5))
            assert reader.pull()
            leaf = int(reader.execute("SELECT rootpage FROM sqlite_schema WHERE name = 't'").fetchone()[0])
            reader.close()
            # damage a byte the b-tree does not use (the leaf's free space): SQLite reads the same
            # rows, but the page is not the image the primary holds for the replica's revision
            with sqlite3.connect(path) as raw:
                raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            with open(path, "r+b") as f:
                f.seek((leaf - 1) * 4096 + 2000)
                assert f.read(1) == b"\x00"
                f.seek((leaf - 1) * 4096 + 2000)
                f.write(b"\x5a")
            reader = turso_sync.connect(path, url)
            assert _rows(reader) == _rows(writer)
            applied.update(applied=0, refused=0)
            _write(writer, range(5, 8))
            assert reader.pull()
            assert applied == {"applied": 0, "refused": 1}
            assert _rows(reader) == _rows(writer) == [(i, payload(i)) for i in range(8)]
            assert reader.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            with open(path, "rb") as f:  # the leaf came whole: the primary's image replaced the damaged one
                reader.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                f.seek((leaf - 1) * 4096 + 2000)
                assert f.read(1) == b"\x00"
            # the next pull uses deltas again
            _write(writer, range(8, 9))
            assert reader.pull()
            assert applied == {"applied": 1, "refused": 1}
            assert _rows(reader) == _rows(writer)
        finally:
            writer.close()
            reader.close()


def test_a_request_that_does_not_ask_gets_what_it_always_got(tmp_path: Path) -> None:
    with primary(tmp_path / "server") as url:
        writer = turso_sync.connect(tmp_path / "w.db", url)
        try:
            writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            writer.commit()
            writer.push()
            revision = _header(_body(url, PullRequest(client_revision="1"))).server_revision
            _write(writer, range(3))
            for encoding in (PageEncoding.RAW, PageEncoding.ZSTD):
                plain = PullRequest(encoding=encoding, client_revision=revision)
                body = _body(url, plain)
                decoder = PullResponseDecoder()
                pages = decoder.feed(body)
                decoder.close()
                assert decoder.header is not None and decoder.header.deltas is None
                assert pages  # every changed page whole, as before
                # the header, as Turso's clients parse it, holds no field of the extension
                assert not _header(body).deltas and b"\xd2\x3e" not in body[: len(body) - sum(4096 for _ in pages)]
            asked = _body(url, PullRequest(encoding=PageEncoding.RAW, client_revision=revision, page_deltas=True))
            assert _header(asked).deltas is None  # deltas ride on zstd only
            asked = _body(url, PullRequest(encoding=PageEncoding.ZSTD, client_revision=revision, page_deltas=True))
            assert _header(asked).deltas is not None
        finally:
            writer.close()


def test_a_primary_started_with_no_page_deltas_sends_whole_pages(tmp_path: Path, applied: dict[str, int]) -> None:
    with primary(tmp_path / "server", "--no-page-deltas") as url:
        writer = turso_sync.connect(tmp_path / "w.db", url)
        reader = turso_sync.connect(tmp_path / "r.db", url)
        try:
            writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            writer.commit()
            writer.push()
            assert reader.pull()
            revision = reader.stats().revision
            _write(writer, range(3))
            asked = _body(url, PullRequest(encoding=PageEncoding.ZSTD, client_revision=revision, page_deltas=True))
            assert _header(asked).deltas is None
            assert reader.pull()
            assert applied == {"applied": 0, "refused": 0}
            assert _rows(reader) == _rows(writer) == [(i, payload(i)) for i in range(3)]
        finally:
            writer.close()
            reader.close()


def test_a_split_brings_its_new_page_in_the_delta_frame(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Version 2: the page a split makes comes in the frame, found against the split page's old
    image; a request of version 1 (an older client of ours) gets that page whole, as before."""
    frames: list[wire_pull.PageDeltas] = []
    apply = wire_pull.PageDeltas.apply

    def recording(self: wire_pull.PageDeltas, base):  # type: ignore[no-untyped-def]
        frames.append(self)
        return apply(self, base)

    monkeypatch.setattr(wire_pull.PageDeltas, "apply", recording)
    with primary(tmp_path / "server") as url:
        writer = turso_sync.connect(tmp_path / "w.db", url)
        reader = turso_sync.connect(tmp_path / "r.db", url)
        try:
            writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            writer.commit()
            writer.push()
            for i in range(0, 60, 2):  # one leaf, nearly full: 30 rows of some 110 bytes
                writer.execute("INSERT INTO t VALUES (?, ?)", (i, payload(i)))
            writer.commit()
            writer.push()
            assert reader.pull()
            revision = reader.stats().revision
            frames.clear()
            for i in range(1, 20, 2):  # rows in the middle: the leaf splits, its rows shared with a new page
                writer.execute("INSERT INTO t VALUES (?, ?)", (i, payload(i)))
            writer.commit()
            writer.push()
            before = reader.stats().network_received_bytes
            assert reader.pull()
            got = reader.stats().network_received_bytes - before
            assert len(frames) == 1 and frames[0].new_ids, frames
            expected = sorted((i, payload(i)) for i in [*range(0, 60, 2), *range(1, 20, 2)])
            assert _rows(reader) == _rows(writer) == expected
            assert reader.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            # version 1 (page_deltas without a version): the new pages come whole, beside the frame
            v1 = _body(url, PullRequest(encoding=PageEncoding.ZSTD, client_revision=revision, page_deltas=True))
            decoder = PullResponseDecoder()
            whole = decoder.feed(v1)
            decoder.close()
            assert decoder.header is not None and decoder.header.deltas is not None
            assert decoder.header.deltas.new_ids == ()
            assert {p.page_id for p in whole} == set(frames[0].new_ids)
            assert got * 2 < len(v1), (got, len(v1))
        finally:
            writer.close()
            reader.close()


def _images(body: bytes, bases: dict[int, bytes] | None = None) -> tuple[PullHeader, dict[int, bytes]]:
    """An answer's header, and every page it brings (its deltas applied to ``bases``), 0-based."""
    decoder = PullResponseDecoder()
    pages = {page.page_id: page.data for page in decoder.feed(body)}
    decoder.close()
    assert decoder.header is not None
    if decoder.header.deltas is not None:
        assert bases is not None
        pages.update(decoder.header.deltas.apply(bases.__getitem__))
    return decoder.header, pages


def test_a_fleet_pull_decodes_to_the_same_pages_in_every_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 3 (compact frames) against versions 1 and 2 on one answer: an older client of ours
    asking 1 or 2 gets the frame it always got; ours gets a compact one, shorter, with the same
    pages; a replica that pulls gets the same rows."""
    frames: list[wire_pull.PageDeltas] = []
    apply = wire_pull.PageDeltas.apply

    def recording(self: wire_pull.PageDeltas, base):  # type: ignore[no-untyped-def]
        frames.append(self)
        return apply(self, base)

    with primary(tmp_path / "server") as url:
        writers = [turso_sync.connect(tmp_path / f"w{n}.db", url) for n in range(3)]
        reader = turso_sync.connect(tmp_path / "r.db", url)
        try:
            writers[0].execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            writers[0].commit()
            writers[0].push()
            for n, writer in enumerate(writers):  # each has pushed: its push mark's row exists
                writer.pull()
                _write(writer, range(n, n + 1))
            assert reader.pull()
            revision = reader.stats().revision
            for i in range(3, 8):  # a fleet's pull: rows from several replicas, their marks
                _write(writers[i % 3], range(i, i + 1))
            _, bases = _images(_body(url, PullRequest(server_revision=revision)))
            sizes = {}
            for version in (0, 2, 3):
                ask = PullRequest(
                    encoding=PageEncoding.ZSTD, client_revision=revision, page_deltas=True, page_deltas_version=version
                )
                body = _body(url, ask)
                header, pages = _images(body, bases)
                assert header.deltas is not None and header.deltas.compact == (version == 3)
                _, expected = _images(_body(url, PullRequest(server_revision=header.server_revision, page_ids=None)))
                assert pages == {i: expected[i] for i in pages} and len(pages) >= 2
                sizes[version] = len(body)
            assert sizes[3] < sizes[2] - 10, sizes
            monkeypatch.setattr(wire_pull.PageDeltas, "apply", recording)
            assert reader.pull()
            assert [f.compact for f in frames] == [True]
            assert _rows(reader) == [(i, payload(i)) for i in range(8)]
            assert reader.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            for writer in writers:
                writer.close()
            reader.close()
