"""Page deltas (our extension): the codec, its refusals, and who asks for them and who gets them."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pytest
import zstandard

from turso_sync.errors import DatabaseError, ProtocolError
from turso_sync.local.engine import LocalDatabase, RevisionGone, Snapshot
from turso_sync.primary.database import EnginePages
from turso_sync.primary.pull import MAX_DELTA_PAGES, delta_bases, select_pages, wants_deltas
from turso_sync.sync.remote import PulledPages, decode_pull, fetch_pages
from turso_sync.sync.state import SyncState
from turso_sync.sync.transport import HttpResponse
from turso_sync.wire import pull as wire_pull
from turso_sync.wire import pull_updates_pb2 as pb
from turso_sync.wire.delimited import delimit, read_varint
from turso_sync.wire.delta_tables import TABLES, TABLES_ID
from turso_sync.wire.pull import (
    COMPACT_DELTAS_VERSION,
    PAGE_SIZE,
    DeltaBaseMismatch,
    PageCompressor,
    PageDeltas,
    PageEncoding,
    PullHeader,
    PullRequest,
    PullResponseDecoder,
    encode_page,
)


def _leaf(rows: int, seed: int = 0) -> bytes:
    """A page that looks like a table leaf: a header, cell pointers, hex cells from the end."""
    page = bytearray(PAGE_SIZE)
    page[0] = 13
    end = PAGE_SIZE
    for i in range(rows):
        cell = bytes([110, i % 128, 3, 1]) + os.urandom(50).hex().encode() if seed else bytes([110, i % 128, 3, 1])
        cell += f"{seed}:{i:04d}".encode() * 10
        end -= len(cell)
        page[end : end + len(cell)] = cell
        page[8 + 2 * i : 10 + 2 * i] = end.to_bytes(2, "big")
    page[3:5] = rows.to_bytes(2, "big")
    return bytes(page)


def _pages() -> tuple[dict[int, bytes], dict[int, bytes]]:
    """(new images, bases), 0-based ids: a leaf that gained rows, page 0 with a changed counter."""
    base0 = bytes(range(256)) * 16
    new0 = base0[:24] + b"\x00\x00\x00\x09" + base0[28:]
    return {0: new0, 5: _leaf(12)}, {0: base0, 5: _leaf(10)}


def _header_body(header: PullHeader) -> bytes:
    return header.to_bytes()


# --- the codec ---------------------------------------------------------------------------------------


def test_deltas_round_trip_through_the_header() -> None:
    pages, bases = _pages()
    block = PageDeltas.make(pages, bases)
    assert block.page_ids == (0, 5)
    assert len(block.frame) < 300  # against some 8 KiB of pages: only the change travels
    body = PullHeader("7", 9, PageEncoding.ZSTD, deltas=block).to_bytes() + encode_page(
        2, PageCompressor().compress(_leaf(3))
    )
    decoder = PullResponseDecoder()
    whole = decoder.feed(body)
    decoder.close()
    assert [p.page_id for p in whole] == [2]
    assert decoder.header is not None and decoder.header.deltas == block
    assert block.apply(bases.__getitem__) == pages


def test_a_wrong_base_is_detected_before_anything_is_decoded() -> None:
    pages, bases = _pages()
    block = PageDeltas.make(pages, bases)
    damaged = dict(bases)
    damaged[5] = bases[5][:100] + b"\xff" + bases[5][101:]
    with pytest.raises(DeltaBaseMismatch, match="pull again without deltas"):
        block.apply(damaged.__getitem__)
    assert issubclass(DeltaBaseMismatch, ProtocolError)


def test_a_corrupt_frame_is_a_protocol_error() -> None:
    pages, bases = _pages()
    block = PageDeltas.make(pages, bases)
    flipped = bytearray(block.frame)
    flipped[len(flipped) // 2] ^= 0x40
    for frame in (bytes(flipped), block.frame[:-3], b"not zstd at all"):
        bad = PageDeltas(block.page_ids, block.digest, frame)
        with pytest.raises(ProtocolError) as info:
            bad.apply(bases.__getitem__)
        assert not isinstance(info.value, DeltaBaseMismatch)
    # a frame holding another number of pages than it names
    dictionary = zstandard.ZstdCompressionDict(bases[0] + bases[5], dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    one_page = zstandard.ZstdCompressor(dict_data=dictionary, write_checksum=True).compress(pages[0])
    with pytest.raises(ProtocolError, match="bytes for 2 pages"):
        PageDeltas((0, 5), block.digest, one_page).apply(bases.__getitem__)


def _raw_header(**deltas: object) -> bytes:
    msg = pb.PullUpdatesRespProtoBody(server_revision="3", db_size=4, protocol=pb.PROTO_PAGES)
    msg.zstd_encoding.level = 1
    msg.page_deltas.page_ids.extend(deltas.get("ids", [1]))  # type: ignore[arg-type]
    msg.page_deltas.frame = b"x"
    return delimit(msg.SerializeToString())


@pytest.mark.parametrize("ids", [[2, 1], [1, 1], [4], []])
def test_malformed_delta_page_ids_are_refused(ids: list[int]) -> None:
    with pytest.raises(ProtocolError, match="page deltas name pages"):
        PullResponseDecoder().feed(_raw_header(ids=ids))


def test_deltas_in_a_raw_answer_or_beside_the_same_page_whole_are_refused() -> None:
    msg = pb.PullUpdatesRespProtoBody(server_revision="3", db_size=4)
    msg.raw_encoding.SetInParent()
    msg.page_deltas.page_ids.append(1)
    with pytest.raises(ProtocolError, match="raw-encoded"):
        PullResponseDecoder().feed(delimit(msg.SerializeToString()))
    pages, bases = _pages()
    header = PullHeader("3", 9, PageEncoding.ZSTD, deltas=PageDeltas.make(pages, bases)).to_bytes()
    with pytest.raises(ProtocolError, match="both whole and as a delta"):
        PullResponseDecoder().feed(header + encode_page(5, PageCompressor().compress(_leaf(1))))


# --- negotiation: the client -------------------------------------------------------------------------


def _asked(state: SyncState, deltas: bool, since: str = "4") -> PullRequest:
    steps = fetch_pages(state, since, 1.0, deltas=deltas)
    request = next(steps)
    steps.close()
    return PullRequest.from_bytes(request.body)


def test_the_client_asks_for_deltas_only_from_a_server_known_to_speak_our_extension() -> None:
    state = SyncState("http://x", "c")
    assert state.zstd is None
    assert not _asked(state, True).page_deltas  # not known yet (a bootstrap tells)
    state.zstd = False  # tursodb: refused zstd
    assert not _asked(state, True).page_deltas
    state.zstd = True  # our primary
    assert _asked(state, True).page_deltas
    assert not _asked(state, False).page_deltas  # a pinned read, a selector, a partial replica
    assert not _asked(state, True, since="").page_deltas  # a bootstrap has no base
    # and the request without the field is byte for byte what it was
    assert b"\xc8\x3e" not in PullRequest(encoding=PageEncoding.ZSTD, client_revision="4").to_bytes()


def test_deltas_the_client_did_not_ask_for_are_a_protocol_error() -> None:
    pages, bases = _pages()
    body = PullHeader("3", 9, PageEncoding.ZSTD, deltas=PageDeltas.make(pages, bases)).to_bytes()
    state = SyncState("http://x", "c", zstd=True)
    with pytest.raises(ProtocolError, match="did not ask"):
        decode_pull(body, state)
    got = decode_pull(body, state, deltas=True)
    assert got.deltas is not None and got.count == 2
    assert got.resolved(lambda pgno: bases[pgno - 1]) == {p + 1: v for p, v in pages.items()}


def test_an_answer_to_a_delta_request_may_hold_none() -> None:
    steps = fetch_pages(SyncState("http://x", "c", zstd=True), "4", 1.0, deltas=True)
    next(steps)
    body = PullHeader("5", 2, PageEncoding.ZSTD).to_bytes() + encode_page(1, PageCompressor().compress(_leaf(2)))
    with pytest.raises(StopIteration) as done:
        steps.send(HttpResponse(200, body))
    result = done.value.value
    assert result.deltas is None and result.resolved(lambda pgno: b"") == {2: _leaf(2)}


# --- negotiation: the server --------------------------------------------------------------------------


class HistoryPages:
    """A page source with history: revision n's images, {pgno: image} per revision."""

    def __init__(self, history: list[dict[int, bytes]], kept_from: int = 0) -> None:
        self.history = history
        self.kept_from = kept_from

    def _state(self, seq: int) -> dict[int, bytes]:
        pages: dict[int, bytes] = {}
        for txn in self.history[: seq + 1]:
            pages.update(txn)
        return pages

    def current_seq(self) -> int:
        return len(self.history) - 1

    def page_count(self) -> int:
        return max(self._state(self.current_seq()))

    def snapshot(self, since: int | None = None, pgnos: Iterable[int] | None = None) -> Snapshot:
        now = self._state(self.current_seq())
        if since is None:
            changed = set(now)
        else:
            if since < self.kept_from:
                raise RevisionGone(str(since))
            changed = {p for txn in self.history[since + 1 :] for p in txn}
        if pgnos is not None:
            changed &= set(pgnos)
        return Snapshot(self.current_seq(), self.page_count(), {p: now[p] for p in changed})

    def snapshot_at(self, seq: int, pgnos: Iterable[int] | None = None, since: int | None = None) -> Snapshot:
        if seq < self.kept_from:
            raise RevisionGone(str(seq))
        then = self._state(seq)
        wanted = set(then) if pgnos is None else set(pgnos) & set(then)
        return Snapshot(seq, max(then), {p: then[p] for p in wanted})


@pytest.fixture
def source() -> HistoryPages:
    return HistoryPages([{1: b"a1", 2: b"a2"}, {2: b"b2"}, {2: b"c2", 3: b"c3"}])


def _ask(**kw: object) -> PullRequest:
    fields: dict[str, object] = {"encoding": PageEncoding.ZSTD, "client_revision": "1", "page_deltas": True}
    fields.update(kw)
    return PullRequest(**fields)  # type: ignore[arg-type]


def test_the_server_gives_bases_for_the_pages_that_existed_at_the_client_revision(source: HistoryPages) -> None:
    request = _ask()
    snap = select_pages(source, request)
    assert snap.pages == {2: b"c2", 3: b"c3"}
    assert delta_bases(source, request, snap) == {2: b"b2"}  # page 3 is new: it goes whole


@pytest.mark.parametrize(
    "request_",
    [
        _ask(page_deltas=False),  # not asked: Turso's clients, older ones of ours
        _ask(encoding=PageEncoding.RAW),  # deltas ride on zstd only
        _ask(server_revision="2"),  # a pinned read
        _ask(page_ids=__import__("pyroaring").BitMap([1])),  # a selector (a partial replica)
        _ask(client_revision=""),  # a bootstrap
    ],
)
def test_the_server_gives_no_bases_unless_asked_for_a_plain_incremental_pull(
    source: HistoryPages, request_: PullRequest
) -> None:
    snap = select_pages(source, request_)
    assert delta_bases(source, request_, snap) == {}


def test_the_server_gives_no_bases_past_its_history_or_its_bound(source: HistoryPages) -> None:
    source.kept_from = 2  # the client's revision 1 is gone: a full resend
    request = _ask()
    assert delta_bases(source, request, select_pages(source, request)) == {}
    many = HistoryPages(
        [dict.fromkeys(range(1, MAX_DELTA_PAGES + 3), b"a"), dict.fromkeys(range(1, MAX_DELTA_PAGES + 2), b"b")]
    )
    request = _ask(client_revision="0")
    assert len(select_pages(many, request).pages) > MAX_DELTA_PAGES
    assert delta_bases(many, request, select_pages(many, request)) == {}
    assert wants_deltas(request)


def test_engine_bases_are_the_images_at_the_client_revision(tmp_path: Path) -> None:
    engine = LocalDatabase(tmp_path / "p.db")
    try:
        conn = engine.connect()
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        conn.commit()
        client = engine.current_seq()
        at_client = engine.snapshot(None).pages
        conn.execute("INSERT INTO t VALUES (1, 'one')")
        conn.commit()
        conn.close()
        pages = EnginePages(engine, engine.connect())
        request = _ask(client_revision=str(client))
        snap = select_pages(pages, request)
        bases = delta_bases(pages, request, snap)
        assert bases and set(bases) <= set(snap.pages)
        for pgno, base in bases.items():
            assert base == at_client[pgno]
        block = PageDeltas.make({p - 1: snap.pages[p] for p in bases}, {p - 1: b for p, b in bases.items()})
        assert block.apply(lambda page_id: at_client[page_id + 1]) == {p - 1: snap.pages[p] for p in bases}
    finally:
        engine.close()


def test_an_answer_continued_by_a_later_one_resolves_against_the_first() -> None:
    # revision 1 -> 2 (page 6 changed, page 3 new), then 2 -> 3 (page 6 again, page 3 whole, size 5)
    base = {1: bytes(PAGE_SIZE), 6: _leaf(4)}
    at2 = {6: _leaf(6), 3: _leaf(1, seed=3)}
    at3 = {6: _leaf(9), 3: _leaf(2, seed=3)}
    first = PulledPages("2", 7, {3: at2[3]}, PageDeltas.make({5: at2[6]}, {5: base[6]}))
    later = PulledPages("3", 6, {3: at3[3]}, PageDeltas.make({5: at3[6]}, {5: at2[6]}))
    both = first.then(later)
    assert (both.revision, both.db_size, both.count) == ("3", 6, 4)
    assert both.resolved(base.__getitem__) == {3: at3[3], 6: at3[6]}
    # the later deltas are made against the first answer's images, not the replica's
    with pytest.raises(DeltaBaseMismatch):
        PulledPages("3", 6, {}, later.deltas).resolved(base.__getitem__)
    # a page past the later size is dropped
    shrunk = first.then(PulledPages("3", 5, {}, None))
    assert shrunk.resolved(base.__getitem__) == {3: at2[3]}


def test_a_page_the_replica_cannot_read_is_a_base_that_differs() -> None:
    pages, bases = _pages()
    answer = PulledPages("3", 9, {}, PageDeltas.make(pages, bases))

    def short_file(pgno: int) -> bytes:
        if pgno == 6:
            raise DatabaseError("r.db: page 6 is missing")
        return bases[pgno - 1]

    with pytest.raises(DeltaBaseMismatch, match="no synced image"):
        answer.resolved(short_file)


def test_a_base_the_history_cannot_give_means_whole_pages(
    source: HistoryPages, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreadable(seq: int, pgnos: Iterable[int] | None = None, since: int | None = None) -> Snapshot:
        raise DatabaseError("p.db: pages [2] were never fetched and this is not a partial replica")

    monkeypatch.setattr(source, "snapshot_at", unreadable)
    request = _ask()
    assert delta_bases(source, request, select_pages(source, request)) == {}


# --- version 2: new pages in the frame -------------------------------------------------------------


def _split() -> tuple[dict[int, bytes], dict[int, bytes]]:
    """(new images, bases), 0-based: leaf 5 split, half its rows moved to page 7, which is new."""
    full = _leaf(24, seed=1)
    cells = full[PAGE_SIZE - 1800 :]  # the rows nearest the end move to the new page
    moved = bytearray(PAGE_SIZE)
    moved[0] = 13
    moved[PAGE_SIZE - len(cells) :] = cells
    kept = full[: PAGE_SIZE - 1800] + bytes(1800)
    return {5: kept, 7: bytes(moved)}, {5: full}


def test_new_pages_ride_in_the_frame_against_the_old_images() -> None:
    pages, bases = _split()
    block = PageDeltas.make(pages, bases)
    assert (block.page_ids, block.new_ids, block.all_ids) == ((5,), (7,), (5, 7))
    # the moved rows are found in page 5's old image: far less than the page zstd-compressed alone
    assert len(block.frame) < len(PageCompressor().compress(pages[7])) // 4
    body = PullHeader("7", 9, PageEncoding.ZSTD, deltas=block).to_bytes()
    decoder = PullResponseDecoder()
    assert decoder.feed(body) == []
    decoder.close()
    assert decoder.header is not None and decoder.header.deltas == block
    assert block.apply(bases.__getitem__) == pages
    answer = PulledPages("7", 9, {}, block)
    assert answer.count == 2
    assert answer.resolved(lambda pgno: bases[pgno - 1]) == {6: pages[5], 8: pages[7]}


def test_a_wrong_base_with_new_pages_is_still_detected() -> None:
    pages, bases = _split()
    block = PageDeltas.make(pages, bases)
    damaged = {5: bases[5][:4000] + b"\x01" + bases[5][4001:]}
    with pytest.raises(DeltaBaseMismatch):
        block.apply(damaged.__getitem__)
    # a frame that names fewer pages than it holds (an answer read as version 1) is refused
    with pytest.raises(ProtocolError, match="bytes for 1 pages"):
        PageDeltas(block.page_ids, block.digest, block.frame).apply(bases.__getitem__)


@pytest.mark.parametrize(
    ("ids", "new_ids", "match"),
    [
        ([1], [3, 2], "new pages name pages"),
        ([1], [4], "new pages name pages"),
        ([1], [1], "both with and without a base"),
        ([], [2], "page deltas name pages"),
    ],
)
def test_malformed_new_page_ids_are_refused(ids: list[int], new_ids: list[int], match: str) -> None:
    msg = pb.PullUpdatesRespProtoBody(server_revision="3", db_size=4, protocol=pb.PROTO_PAGES)
    msg.zstd_encoding.level = 1
    msg.page_deltas.page_ids.extend(ids)
    msg.page_deltas.new_page_ids.extend(new_ids)
    msg.page_deltas.frame = b"x"
    with pytest.raises(ProtocolError, match=match):
        PullResponseDecoder().feed(delimit(msg.SerializeToString()))


def test_a_new_page_sent_whole_and_in_the_frame_is_refused() -> None:
    pages, bases = _split()
    header = PullHeader("3", 9, PageEncoding.ZSTD, deltas=PageDeltas.make(pages, bases)).to_bytes()
    with pytest.raises(ProtocolError, match="both whole and as a delta"):
        PullResponseDecoder().feed(header + encode_page(7, PageCompressor().compress(pages[7])))


def test_the_client_asks_for_version_3_and_the_request_round_trips() -> None:
    asked = _asked(SyncState("http://x", "c", zstd=True), True)
    assert asked.page_deltas and asked.page_deltas_version == 3 == COMPACT_DELTAS_VERSION
    assert not _asked(SyncState("http://x", "c", zstd=True), False).page_deltas_version
    request = _ask(page_deltas_version=2)
    assert PullRequest.from_bytes(request.to_bytes()) == request
    # a version without the ask is not sent: the request stays byte for byte what it was
    assert PullRequest(page_deltas_version=2).to_bytes() == PullRequest().to_bytes()


# --- version 3: compact frames ------------------------------------------------------------------------


def _fleet_pages() -> tuple[dict[int, bytes], dict[int, bytes]]:
    """(new images, bases), 0-based ids: a leaf that gained rows of 100 hex characters (the fleet
    benchmark's), the push marks' page with a counter changed."""
    marks = _leaf(3, seed=1)
    leaf = _leaf(6, seed=2)
    grown = bytearray(leaf)
    end = int.from_bytes(leaf[8 + 2 * 5 : 10 + 2 * 5], "big")
    for i in range(6, 11):
        cell = bytes([110, i, 3, 1]) + os.urandom(50).hex().encode()
        end -= len(cell)
        grown[end : end + len(cell)] = cell
        grown[8 + 2 * i : 10 + 2 * i] = end.to_bytes(2, "big")
    grown[3:5] = (11).to_bytes(2, "big")
    return {1: marks[:200] + b"\x07" + marks[201:], 5: bytes(grown)}, {1: marks, 5: leaf}


def test_the_tables_are_a_zstd_dictionary_with_their_id() -> None:
    dictionary = zstandard.ZstdCompressionDict(TABLES + bytes(PAGE_SIZE), dict_type=zstandard.DICT_TYPE_FULLDICT)
    assert dictionary.dict_id() == TABLES_ID < 256  # one byte in a frame header


def test_a_compact_frame_round_trips_shorter_than_a_version_2_frame() -> None:
    pages, bases = _fleet_pages()
    v2 = PageDeltas.make(pages, bases)
    block = PageDeltas.make(pages, bases, compact=True)
    assert block.compact and block.frame[:4] != b"\x28\xb5\x2f\xfd"  # no magic number
    header = PullHeader("7", 9, PageEncoding.ZSTD, deltas=block).to_bytes()
    old_header = PullHeader("7", 9, PageEncoding.ZSTD, deltas=v2).to_bytes()
    # 4 magic + 4 checksum + 1 content size + level + protocol, less the tables' id if they are used
    assert len(header) <= len(old_header) - 9, (len(header), len(old_header))
    # the server sends the shorter of the two frames, with the shared tables and without
    data = b"".join(pages[i] for i in block.all_ids)
    old = [bases[i] for i in block.page_ids]
    with_tables = wire_pull._compact_frame(data, wire_pull._tables_dictionary(old), wire_pull.DEFAULT_ZSTD_LEVEL)
    without = wire_pull._compact_frame(data, wire_pull._raw_dictionary(old), wire_pull.DEFAULT_ZSTD_LEVEL)
    assert len(block.frame) == min(len(with_tables), len(without))
    assert bool(block.frame[0] & 3) == (len(with_tables) < len(without))
    decoder = PullResponseDecoder()
    assert decoder.feed(header) == []
    decoder.close()
    assert decoder.header is not None and decoder.header.deltas == block
    assert block.apply(bases.__getitem__) == pages
    msg = pb.PullUpdatesRespProtoBody()
    msg.ParseFromString(header[read_varint(header, 0)[1] :])
    assert not msg.page_deltas.frame and not msg.page_deltas.base_digest
    assert msg.protocol == pb.PROTO_UNSPECIFIED and msg.zstd_encoding.level == 0
    # a version 2 answer (an older primary) still decodes as before
    decoder = PullResponseDecoder()
    decoder.feed(old_header)
    assert decoder.header is not None and decoder.header.deltas == v2 and not v2.compact


def test_a_compact_frame_goes_without_the_tables_when_they_do_not_fit() -> None:
    bases = {0: os.urandom(PAGE_SIZE), 3: os.urandom(PAGE_SIZE)}
    pages = {0: os.urandom(1000) + bases[0][1000:], 3: bases[3], 4: os.urandom(PAGE_SIZE)}
    block = PageDeltas.make(pages, bases, compact=True)
    assert not block.frame[0] & 3  # random bytes: the bases alone
    assert block.all_ids == (0, 3, 4)
    assert block.apply(bases.__getitem__) == pages
    assert len(block.frame) < 1000 + PAGE_SIZE + 100


def test_a_wrong_base_under_a_compact_frame_is_a_base_mismatch() -> None:
    pages, bases = _fleet_pages()
    block = PageDeltas.make(pages, bases, compact=True)
    damaged = dict(bases)
    damaged[5] = bases[5][:3000] + b"\xff" + bases[5][3001:]
    with pytest.raises(DeltaBaseMismatch, match="pull again without deltas"):
        block.apply(damaged.__getitem__)


def test_a_damaged_compact_frame_is_refused() -> None:
    pages, bases = _fleet_pages()
    block = PageDeltas.make(pages, bases, compact=True)
    # zstd sees it (cut short, not a frame, empty): a protocol error
    for frame in (block.frame[:-3], b"\x00not zstd at all", b""):
        bad = PageDeltas(block.page_ids, block.digest, frame, compact=True)
        with pytest.raises(ProtocolError) as info:
            bad.apply(bases.__getitem__)
        assert not isinstance(info.value, DeltaBaseMismatch)
    # zstd cannot see it (no checksum): a flipped bit is caught by the digest over the decoded images,
    # or it changed nothing they decode to (a bit the encoding does not depend on); never wrong pages
    refused = 0
    for pos in range(1, len(block.frame)):
        flipped = bytearray(block.frame)
        flipped[pos] ^= 0x10
        try:
            decoded = PageDeltas(block.page_ids, block.digest, bytes(flipped), compact=True).apply(bases.__getitem__)
        except ProtocolError:
            refused += 1
        else:
            assert decoded == pages, f"a flip at byte {pos} decoded to other pages and was not refused"
    assert refused >= len(block.frame) - 1 - 3, refused  # nearly every flip changes what it decodes to
    # a frame holding another number of pages than it names
    one_page = wire_pull._compact_frame(pages[1], wire_pull._raw_dictionary([bases[1], bases[5]]), 1)
    with pytest.raises(ProtocolError, match="bytes for 2 pages"):
        PageDeltas((1, 5), block.digest, one_page, compact=True).apply(bases.__getitem__)


def test_a_header_with_both_frames_is_refused() -> None:
    msg = pb.PullUpdatesRespProtoBody(server_revision="3", db_size=4)
    msg.zstd_encoding.SetInParent()
    msg.page_deltas.page_ids.append(1)
    msg.page_deltas.frame = b"x"
    msg.page_deltas.compact_frame = b"y"
    with pytest.raises(ProtocolError, match="both a frame and a compact frame"):
        PullResponseDecoder().feed(delimit(msg.SerializeToString()))


def test_the_client_asking_version_3_reads_an_older_primarys_answer() -> None:
    """An older primary ignores the version it does not speak and answers as version 2 (or 1):
    the client applies that frame as before."""
    pages, bases = _fleet_pages()
    for block in (PageDeltas.make(pages, bases), PageDeltas.make(pages, bases, compact=True)):
        steps = fetch_pages(SyncState("http://x", "c", zstd=True), "4", 1.0, deltas=True)
        asked = PullRequest.from_bytes(next(steps).body)
        assert asked.page_deltas_version == 3
        with pytest.raises(StopIteration) as done:
            steps.send(HttpResponse(200, PullHeader("5", 9, PageEncoding.ZSTD, deltas=block).to_bytes()))
        result = done.value.value
        assert result.deltas == block
        assert result.resolved(lambda pgno: bases[pgno - 1]) == {p + 1: v for p, v in pages.items()}
