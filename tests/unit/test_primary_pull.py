"""Which pages answer a pull: bootstrap, incremental, selector, pinned revisions, bad revisions."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
from pyroaring import BitMap

from turso_sync.errors import ProtocolError
from turso_sync.local.engine import LocalDatabase, RevisionGone, Snapshot
from turso_sync.primary.database import EnginePages
from turso_sync.primary.pull import RevisionUnavailable, SnapshotMoved, select_pages, select_slices
from turso_sync.wire.pull import PullRequest, StreamKind


class FakePages:
    """History as a list of {pgno: image} per revision; revision 0 is the base."""

    def __init__(self, history: list[dict[int, bytes]], kept_from: int = 0) -> None:
        self.history = history
        self.kept_from = kept_from

    def state(self) -> dict[int, bytes]:
        pages: dict[int, bytes] = {}
        for txn in self.history:
            pages.update(txn)
        return pages

    def current_seq(self) -> int:
        return len(self.history) - 1

    def page_count(self) -> int:
        return max(self.state())

    def snapshot(self, since: int | None = None, pgnos: Iterable[int] | None = None) -> Snapshot:
        state = self.state()
        if since is None:
            changed = set(state)
        else:
            if since < self.kept_from or since > self.current_seq():
                raise RevisionGone(str(since))
            changed = {p for txn in self.history[since + 1 :] for p in txn}
        if pgnos is not None:
            changed &= set(pgnos)
        return Snapshot(self.current_seq(), self.page_count(), {p: state[p] for p in changed})


@pytest.fixture
def source() -> FakePages:
    return FakePages([{1: b"a1", 2: b"a2", 3: b"a3"}, {2: b"b2"}, {3: b"c3", 4: b"c4"}])


def test_bootstrap_sends_every_page(source: FakePages) -> None:
    snap = select_pages(source, PullRequest())
    assert (snap.seq, snap.db_size, snap.pages) == (2, 4, {1: b"a1", 2: b"b2", 3: b"c3", 4: b"c4"})


def test_incremental_sends_pages_changed_after_the_client_revision(source: FakePages) -> None:
    assert select_pages(source, PullRequest(client_revision="1")).pages == {3: b"c3", 4: b"c4"}
    assert select_pages(source, PullRequest(client_revision="0")).pages == {2: b"b2", 3: b"c3", 4: b"c4"}
    assert select_pages(source, PullRequest(client_revision="2")).pages == {}


def test_selector_filters_and_is_bounded_by_the_database(source: FakePages) -> None:
    everything = BitMap()
    everything.add_range(0, 2**32)  # 4 billion ids must not turn into 4 billion page numbers
    assert set(select_pages(source, PullRequest(page_ids=everything)).pages) == {1, 2, 3, 4}
    assert set(select_pages(source, PullRequest(page_ids=BitMap([0, 3, 999]))).pages) == {1, 4}


def test_pruned_history_falls_back_to_a_full_resend() -> None:
    pruned = FakePages([{1: b"a"}, {1: b"b"}, {2: b"c"}], kept_from=1)
    assert set(select_pages(pruned, PullRequest(client_revision="0")).pages) == {1, 2}


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (PullRequest(client_revision="3"), "newer than this database"),
        (PullRequest(client_revision="h-abc"), "client_revision"),
        (PullRequest(server_revision="-4"), "server_revision"),
        (PullRequest(server_revision="9"), "newer than this database"),
        (PullRequest(stream_kind=StreamKind.MVCC_LOGICAL_LOG), "page streams only"),
    ],
)
def test_bad_revisions_are_protocol_errors(source: FakePages, request_: PullRequest, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        select_pages(source, request_)


def test_pinned_revision(source: FakePages) -> None:
    latest = select_pages(source, PullRequest(server_revision="2", page_ids=BitMap([0])))
    assert (latest.seq, latest.pages) == (2, {1: b"a1"})
    # page 1 (id 0) did not change after revision 1, nor did anything else: answer as of 1
    older = FakePages([{1: b"a1", 2: b"a2"}, {2: b"b2"}, {}])
    pinned = select_pages(older, PullRequest(server_revision="1", page_ids=BitMap([0, 1])))
    assert (pinned.seq, pinned.pages) == (1, {1: b"a1", 2: b"b2"})
    with pytest.raises(RevisionUnavailable, match="changed after revision 1"):
        select_pages(source, PullRequest(server_revision="1", page_ids=BitMap([2])))


class _Engine:
    def __init__(self, path: Path) -> None:
        self.db = LocalDatabase(path, reserved_bytes=28)
        self.conn = self.db.connect(isolation_level=None)
        self.pages = EnginePages(self.db, self.conn)

    def sql(self, *statements: str) -> None:
        for s in statements:
            self.conn.apsw_connection.execute(s)

    def close(self) -> None:
        self.conn.close()
        self.db.close()


def test_against_the_real_engine(tmp_path: Path) -> None:
    engine = _Engine(tmp_path / "db")
    try:
        boot = select_pages(engine.pages, PullRequest())
        assert boot.seq == 0 and boot.db_size == 1 and set(boot.pages) == {1}
        assert boot.pages[1][20] == 28  # reserved bytes per page, for remote-encryption replicas
        engine.sql("CREATE TABLE t(x)", "INSERT INTO t VALUES (randomblob(20000))")
        full = select_pages(engine.pages, PullRequest())
        assert full.seq == 2 and full.db_size == len(full.pages) > 5
        engine.sql("INSERT INTO t VALUES (1)")
        delta = select_pages(engine.pages, PullRequest(client_revision="2"))
        assert delta.seq == 3 and 0 < len(delta.pages) <= 2 and delta.db_size == full.db_size
        assert all(delta.pages[p] != full.pages.get(p) for p in delta.pages)
    finally:
        engine.close()


def test_bootstrap_in_slices_covers_every_page_once(source: FakePages) -> None:
    slices = list(select_slices(source, PullRequest(), slice_pages=3))
    assert [sorted(s.pages) for s in slices] == [[1, 2, 3], [4]]
    assert {(s.seq, s.db_size) for s in slices} == {(2, 4)}
    assert [sorted(s.pages) for s in select_slices(source, PullRequest(page_ids=BitMap([1, 3])), 1)] == [[2], [4]]
    (only,) = select_slices(source, PullRequest(page_ids=BitMap([50])), 3)  # nothing selected: a header
    assert only.pages == {} and only.seq == 2
    (delta,) = select_slices(source, PullRequest(client_revision="1"), 1)  # not a bootstrap: one piece
    assert sorted(delta.pages) == [3, 4]


def test_a_write_between_slices_is_detected(source: FakePages) -> None:
    slices = select_slices(source, PullRequest(), slice_pages=2)
    next(slices)
    source.history.append({1: b"outside writer"})
    with pytest.raises(SnapshotMoved, match="during a bootstrap"):
        next(slices)


def _insert_blobs(count: int) -> str:
    return (
        f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count}) "
        "INSERT INTO t SELECT randomblob(3000) FROM n"
    )


def test_commits_between_slices_leave_every_slice_at_the_first_revision(tmp_path: Path) -> None:
    """Slices are read by separate worker jobs, so commits may land between them (bounded memory)."""
    engine = _Engine(tmp_path / "db")
    try:
        engine.sql(
            "CREATE TABLE t(x)",
            _insert_blobs(40),
        )
        expected = select_pages(engine.pages, PullRequest())
        slices = select_slices(engine.pages, PullRequest(), slice_pages=4)
        got = dict(next(slices).pages)
        # every page of the table changes, and the database grows, before the next slices are read
        engine.sql(
            "UPDATE t SET x = randomblob(3000)",
            _insert_blobs(9),
        )
        rest = list(slices)
        for snap in rest:
            assert (snap.seq, snap.db_size) == (expected.seq, expected.db_size)
            got.update(snap.pages)
        assert got == expected.pages
        assert select_pages(engine.pages, PullRequest()).pages != expected.pages  # the commits did move it
    finally:
        engine.close()
