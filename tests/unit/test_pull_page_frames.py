"""zstd frames of several consecutive pages (request field ``zstd_frame_pages``; docs/protocol.md).

A client that asks for frames of up to N pages accepts a ``PageData`` whose zstd frame decodes to
k whole pages (1 <= k <= N), pages ``page_id`` .. ``page_id + k - 1``; a client that did not ask,
and every bound a frame could break, refuses it.  Our primary's records group only runs of
consecutive pages, and only for a request that asked.
"""

from __future__ import annotations

import pytest

from turso_sync.errors import ProtocolError
from turso_sync.local.engine import Snapshot
from turso_sync.page import PAGE_SIZE
from turso_sync.primary.app import _zstd_records
from turso_sync.wire.pull import (
    ZSTD_FRAME_PAGES,
    PageCompressor,
    PageDeltas,
    PageEncoding,
    PullHeader,
    PullRequest,
    PullResponseDecoder,
    encode_page,
    frame_runs,
)


def _page(n: int) -> bytes:
    return (f"row {n} ".encode() * 700)[:PAGE_SIZE]


def _frame(first: int, count: int) -> bytes:
    """A PageData record holding pages ``first`` .. ``first + count - 1`` (0-based) in one zstd frame."""
    return encode_page(first, PageCompressor().compress(b"".join(_page(first + n) for n in range(count))))


def _decode(body: bytes, frame_pages: int) -> dict[int, bytes]:
    decoder = PullResponseDecoder(frame_pages)
    pages = {page.page_id: page.data for page in decoder.feed(body)}
    decoder.close()
    return pages


def test_the_request_field_round_trips_and_is_absent_by_default() -> None:
    asked = PullRequest(encoding=PageEncoding.ZSTD, zstd_frame_pages=ZSTD_FRAME_PAGES)
    assert PullRequest.from_bytes(asked.to_bytes()).zstd_frame_pages == ZSTD_FRAME_PAGES
    plain = PullRequest(encoding=PageEncoding.ZSTD)
    assert PullRequest.from_bytes(plain.to_bytes()).zstd_frame_pages == 0
    assert plain.to_bytes() == b"\x08\x01"  # nothing more on the wire than before the field existed


def test_a_frame_of_several_pages_decodes_to_each_page() -> None:
    header = PullHeader("9", 40, PageEncoding.ZSTD).to_bytes()
    body = header + _frame(3, 5) + _frame(10, 1) + _frame(20, 16)
    pages = _decode(body, 16)
    assert sorted(pages) == [*range(3, 8), 10, *range(20, 36)]
    assert all(pages[n] == _page(n) for n in pages)


def test_a_client_that_did_not_ask_refuses_a_frame_of_several_pages() -> None:
    header = PullHeader("9", 40, PageEncoding.ZSTD).to_bytes()
    with pytest.raises(ProtocolError, match="not 4096"):
        _decode(header + _frame(3, 2), 1)


def test_a_frame_of_more_pages_than_asked_is_refused() -> None:
    header = PullHeader("9", 40, PageEncoding.ZSTD).to_bytes()
    with pytest.raises(ProtocolError, match="at most 4 pages"):
        _decode(header + _frame(3, 5), 4)


def test_a_frame_reaching_past_the_database_size_is_refused() -> None:
    header = PullHeader("9", 10, PageEncoding.ZSTD).to_bytes()
    with pytest.raises(ProtocolError, match="beyond the database size"):
        _decode(header + _frame(8, 3), 16)


def test_a_frame_of_part_of_a_page_is_refused() -> None:
    header = PullHeader("9", 40, PageEncoding.ZSTD).to_bytes()
    record = encode_page(3, PageCompressor().compress(_page(3) + _page(4)[:100]))
    with pytest.raises(ProtocolError, match="not a whole number of pages"):
        _decode(header + record, 16)


def test_a_page_of_a_frame_that_also_comes_as_a_delta_is_refused() -> None:
    deltas = PageDeltas.make({5: _page(5)}, {5: _page(6)}, 1)
    header = PullHeader("9", 40, PageEncoding.ZSTD, 1, deltas).to_bytes()
    with pytest.raises(ProtocolError, match="both whole and as a delta"):
        _decode(header + _frame(3, 4), 16)


def test_runs_are_consecutive_and_bounded() -> None:
    assert frame_runs([1, 2, 3, 5, 6, 9], 2) == [[1, 2], [3], [5, 6], [9]]
    assert frame_runs([1, 2, 3], 1) == [[1], [2], [3]]
    assert frame_runs([], 16) == []


@pytest.mark.parametrize("frame_pages", [1, 16])
def test_the_primarys_records_decode_to_the_same_pages(frame_pages: int) -> None:
    pgnos = [*range(1, 41), 50, 52, 53]
    snap = Snapshot(7, 60, {pgno: _page(pgno) for pgno in pgnos})
    body = PullHeader("7", 60, PageEncoding.ZSTD).to_bytes() + b"".join(_zstd_records(snap, pgnos, 1, frame_pages))
    decoder = PullResponseDecoder(frame_pages)
    pages = decoder.feed(body)
    decoder.close()
    assert {page.page_id + 1: page.data for page in pages} == snap.pages
    # one record per frame: a request that did not ask gets one per page, as before the field existed
    records = PullResponseDecoder()._frames.feed(body)[1:]
    assert len(records) == (len(pgnos) if frame_pages == 1 else len(frame_runs(pgnos, frame_pages)))


def test_each_thread_keeps_one_compressor_per_level_and_answers_are_the_same() -> None:
    """The primary reuses a thread's zstd compressor across answers (a new one's first frame
    costs its tables' set-up); another thread gets its own (a compressor is not thread-safe),
    and a reused one compresses exactly as a new one does."""
    import threading

    from turso_sync.primary.app import _compressor

    first = _compressor(1)
    assert _compressor(1) is first and _compressor(3) is not first
    elsewhere: list[object] = []
    thread = threading.Thread(target=lambda: elsewhere.append(_compressor(1)))
    thread.start()
    thread.join()
    assert elsewhere and elsewhere[0] is not first
    pages = {pgno: bytes([pgno % 7]) * 100 + bytes(range(256)) * 15 + bytes(PAGE_SIZE - 3940) for pgno in range(1, 40)}
    snap = Snapshot(9, 39, pages)
    once = _zstd_records(snap, sorted(pages), 1, 16)
    assert _zstd_records(snap, sorted(pages), 1, 16) == once
    assert PageCompressor(1).compress(b"".join(pages[p] for p in range(1, 17))) in once[0]


@pytest.mark.parametrize("frame_pages", [1, 3, 16])
@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_an_answer_cut_into_shares_compresses_to_the_same_records(frame_pages: int, count: int) -> None:
    """The primary compresses a large answer's shares on several threads (``_encode``); cut where the
    frames' runs end, the shares' records, one after the other, are the whole answer's."""
    import asyncio

    from turso_sync.primary import app

    pgnos = sorted({*range(2, 70), *range(75, 77), 90, *range(100, 190, 2), *range(200, 260)})
    snap = Snapshot(5, 260, {pgno: _page(pgno) for pgno in pgnos})
    shares = app._shares(pgnos, frame_pages, count)
    assert [p for share in shares for p in share] == pgnos and len(shares) == count
    assert all(share for share in shares)
    runs = frame_runs(pgnos, frame_pages)
    assert all(any(share[-1] == run[-1] for run in runs) for share in shares)  # each ends where a run ends
    sizes = [len(share) for share in shares]
    assert max(sizes) - min(sizes) <= frame_pages + len(pgnos) // (count * 2)  # about as many pages each
    whole = b"".join(app._zstd_records(snap, pgnos, 1, frame_pages))
    assert b"".join(c for share in shares for c in app._zstd_records(snap, share, 1, frame_pages)) == whole

    calls: list[int] = []
    real = app._zstd_records

    def counted(snap: Snapshot, share: list[int], level: int, frame_pages: int = 1) -> list[bytes]:
        calls.append(len(share))
        return real(snap, share, level, frame_pages)

    old_shares, app._ZSTD_SHARES = app._ZSTD_SHARES, count
    app._zstd_records = counted  # type: ignore[assignment]
    try:
        chunks = asyncio.run(app._encode(snap, PageEncoding.ZSTD, 1, frame_pages))
    finally:
        app._zstd_records, app._ZSTD_SHARES = real, old_shares  # type: ignore[assignment]
    assert b"".join(chunks) == whole
    assert calls == [len(share) for share in app._shares(pgnos, frame_pages, min(count, len(pgnos) // 48))]
    body = PullHeader("5", 260, PageEncoding.ZSTD).to_bytes() + b"".join(chunks)
    assert _decode(body, frame_pages) == {pgno - 1: _page(pgno) for pgno in pgnos}
