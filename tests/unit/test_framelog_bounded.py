"""The frame log bounded: lookups by bisect, prunes in two steps, pre-images only, the primary's window.

Real database files and frame logs; the primary's ``HostedDatabase`` runs its worker thread but
no server.  The cost of a lookup is counted in index records touched, never timed.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import KEY256
from turso_sync.cli.main import build_parser, main
from turso_sync.cli.serve import history_from
from turso_sync.local.engine import LocalDatabase, RevisionGone
from turso_sync.local.framelog import FrameLog
from turso_sync.primary.database import HostedDatabase
from turso_sync.primary.durable import StoreBackend
from turso_sync.primary.objectstore import MemoryClient, restore
from turso_sync.primary.objectstore.memory import unavailable
from turso_sync.primary.revision import HistoryBounds, HistoryWindow
from turso_sync.primary.store import DatabaseStore
from turso_sync.wire.hrana import PipelineRequest

P = 4096


def _commits(db: LocalDatabase, n: int, *, start: int = 0, size: int = 200) -> None:
    """``n`` small transactions (one row each), all in the WAL until the caller checkpoints."""
    conn = db.connect()
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.commit()
    for i in range(start, start + n):
        conn.execute("INSERT INTO t VALUES (?, ?)", (i, f"{i:08d}" * (size // 8)))
        conn.commit()
    conn.close()


class _Watched:
    """An index record that notes every read of it (the cost of a lookup, in records touched)."""

    def __init__(self, rec: Any, touched: list[int]) -> None:
        object.__setattr__(self, "_rec", rec)
        object.__setattr__(self, "_touched", touched)

    def __getattr__(self, name: str) -> Any:
        self._touched.append(self._rec.seq)
        return getattr(self._rec, name)


def _watch_before(log: FrameLog, since: int) -> list[int]:
    """Make the records up to ``since`` note their reads; returns the list of reads."""
    touched: list[int] = []
    log.current_seq()  # loads the index
    log._index = [_Watched(r, touched) if r.seq <= since else r for r in log._index]  # type: ignore[misc]
    return touched


def test_lookups_after_a_revision_touch_only_a_logarithm_of_the_older_records(tmp_path: Path) -> None:
    db = LocalDatabase(tmp_path / "db")
    _commits(db, 400)
    db.checkpoint()
    log = FrameLog(db.path, None, db.page_size)  # a view of its own, so its index can be watched
    newest = log.current_seq()
    since = newest - 3
    touched = _watch_before(log, since)
    assert [t.seq for t in log.history(since)] == [newest - 2, newest - 1, newest]
    assert [t.seq for t in log.history(since, with_images=False)] == [newest - 2, newest - 1, newest]
    firsts, size_at = log.first_touches(since, None)
    assert firsts and size_at == log.size_at(since)
    assert log.size_at(newest) == db._conn.apsw_connection.execute("PRAGMA page_count").get
    # a scan from the start would read all ~400 older records, each lookup again; a bisect ~9 each
    assert len(touched) <= 5 * 12, len(touched)
    with pytest.raises(RevisionGone):
        log.history(newest + 1).__next__()
    db.close()


def test_a_pinned_read_of_a_few_pages_stops_at_their_first_touches(tmp_path: Path) -> None:
    db = LocalDatabase(tmp_path / "db")
    _commits(db, 300)
    db.checkpoint()
    log = FrameLog(db.path, None, db.page_size)
    since = log.base_seq + 10
    (first,) = log.history(since, with_images=False).__next__().pages[:1]
    size_then = log.size_at(since)
    touched: list[int] = []
    log._index = [_Watched(r, touched) if r.seq > since + 1 else r for r in log._index]  # type: ignore[misc]
    firsts, size_at = log.first_touches(since, [first.pgno])
    assert list(firsts) == [first.pgno] and firsts[first.pgno].pre is not None
    assert size_at == size_then
    assert len(touched) <= 12, len(touched)  # the bisect's probes only: no scan of the ~290 later records
    db.close()


def test_a_prune_in_two_steps_keeps_what_was_archived_between_them(tmp_path: Path) -> None:
    db = LocalDatabase(tmp_path / "db")
    _commits(db, 50)
    db.checkpoint()
    log = db.log
    before = {t.seq: t for t in log.history(None)}
    size_before = log.size_bytes()
    upto = min(before) + 30
    plan = log.prepare_prune(upto)
    assert plan is not None
    assert log.prepare_prune(upto) is None  # one prune at a time
    _commits(db, 10, start=1000)  # archived while the copy waits for its last step
    db.checkpoint()
    newest = log.current_seq()
    assert log.finish_prune(plan)
    assert log.base_seq == upto
    assert not os.path.exists(plan.tmp)
    assert log.size_bytes() == os.path.getsize(log.path)
    kept = list(log.history(upto))
    assert [t.seq for t in kept] == list(range(upto + 1, newest + 1))
    for txn in kept:
        if txn.seq in before:  # same images, read from the moved records
            assert [(p.pgno, p.pre, p.post) for p in txn.pages] == [
                (p.pgno, p.pre, p.post) for p in before[txn.seq].pages
            ]
    with pytest.raises(RevisionGone):
        log.history(upto - 1).__next__()
    # another process reading the new file finds exactly the index the pruning one moved in memory
    fresh = FrameLog(db.path, None, db.page_size)
    assert fresh.current_seq() == newest
    assert [(r.seq, r.offset, r.pgnos) for r in fresh._index] == [(r.seq, r.offset, r.pgnos) for r in log._index]
    assert log.size_bytes() < size_before + 10 * 3 * P
    db.close()


def test_a_prune_whose_log_was_replaced_meanwhile_changes_nothing(tmp_path: Path) -> None:
    db = LocalDatabase(tmp_path / "db")
    _commits(db, 20)
    db.checkpoint()
    plan = db.log.prepare_prune(5)
    assert plan is not None
    FrameLog(db.path, None, db.page_size).prune(10)  # another process prunes first
    assert not db.log.finish_prune(plan)
    assert not os.path.exists(plan.tmp)
    assert db.log.base_seq == 10
    db.log.prune(12)  # and the lock is free again
    assert db.log.base_seq == 12
    db.close()


def test_prune_point_finds_the_oldest_revision_that_fits_the_bytes(tmp_path: Path) -> None:
    db = LocalDatabase(tmp_path / "db")
    _commits(db, 60)
    db.checkpoint()
    log = db.log
    size = log.size_bytes()
    assert log.prune_point(size) == log.base_seq
    bound = size // 3
    upto = log.prune_point(bound)
    assert log.seq_bytes_after(upto) <= bound < log.seq_bytes_after(upto - 1)
    log.prune(upto)
    assert os.path.getsize(log.path) <= bound
    assert log.prune_point(1) == log.current_seq()  # no record fits: every one goes
    db.close()


@pytest.mark.parametrize("key", [None, KEY256], ids=["plaintext", "encrypted"])
def test_without_post_images_a_record_holds_one_image_per_page_and_history_gives_them_back(
    tmp_path: Path, key: str | None
) -> None:
    db = LocalDatabase(tmp_path / "db", encryption_key=key)
    db.log.post_images = False
    conn = db.connect()
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    conn.commit()
    db.checkpoint()

    def plain(txns: list[Any]) -> list[tuple[int, dict[int, bytes]]]:
        return [(t.seq, {p.pgno: db.log.decrypt(p.post, p.pgno) for p in t.pages if p.post}) for t in txns]

    expected: list[tuple[int, dict[int, bytes]]] = []
    base = db.current_seq()
    for phase in range(3):
        mark = db.current_seq()
        for i in range(12):
            conn.execute("INSERT INTO t VALUES (?, randomblob(700))", (phase * 100 + i,))
            conn.commit()
        if phase == 1:  # a shrink: pages cut off, then written again
            conn.execute("DELETE FROM t WHERE id % 2 = 0")
            conn.commit()
            conn.execute("VACUUM")
            conn.execute("INSERT INTO t VALUES (999, randomblob(3000))")
            conn.commit()
        expected += plain(list(db.log.history(mark)))  # still in the WAL: the committed images themselves
        size = db.log.size_bytes()
        pages = sum(len(t.pages) for t in db.log.history(mark, with_images=False))
        db.checkpoint()
        # one image (the pre-image, when there was one) per page, not two
        assert db.log.size_bytes() - size <= pages * (P + 5) + 12 * 60 * 2
        # archived without post-images, yet history has every one back: from the next pre-image or the file
        assert plain(list(db.log.history(base))) == expected
    with db.log._locked(exclusive=False) as fd:  # as stored: no post-image in the records
        stored = [page for rec in db.log._index for page in db.log._read_record(fd, rec).pages]
    assert stored and not any(page.post for page in stored)
    assert sum(page.post_dropped for page in stored) >= len(stored) // 2
    conn.close()
    db.close()


def test_history_window_keeps_the_last_seconds_and_halves_past_the_bytes() -> None:
    window = HistoryWindow(HistoryBounds(seconds=10, max_bytes=1000))
    sizes = {0: 1000, 5: 600, 8: 400, 20: 100}  # bytes a prune up to a revision leaves

    def after(seq: int) -> int:
        return min(v for k, v in sizes.items() if k <= seq)

    def point(limit: int) -> int:
        return min(k for k, v in sizes.items() if v <= limit)

    window.note(0.0, 5)
    window.note(0.5, 6)  # within a second of the last note: not noted
    window.note(4.0, 8)
    window.note(12.0, 20)
    assert window.aged_out(12.0) == 5  # noted 12 s ago; revision 8 was noted only 8 s ago
    assert window.aged_out(15.0) == 8
    # under the byte bound, a prune by age waits until it drops half the file
    kw: dict[str, Any] = {"bytes_point": point, "bytes_after": after}
    assert window.prune_to(12.0, base=0, size=1000, **kw) is None  # 1000 -> 600: not half
    assert window.prune_to(15.0, base=0, size=1000, **kw) == 8  # 1000 -> 400
    # past the byte bound: down to half of it, whatever the age
    window2 = HistoryWindow(HistoryBounds(seconds=3600, max_bytes=900))
    window2.note(0.0, 0)
    assert window2.prune_to(1.0, base=0, size=1000, **kw) == 8  # leaves 400 <= 900 / 2
    # on a store, never past what is stored
    assert window2.prune_to(1.0, base=0, size=1000, stored=5, **kw) == 5
    assert window2.prune_to(1.0, base=0, size=1000, stored=0, **kw) is None
    with pytest.raises(ValueError):
        HistoryBounds(seconds=-1)


def _pipeline(*sql: str) -> PipelineRequest:
    body = {"baton": None, "requests": [{"type": "execute", "stmt": {"sql": s}} for s in sql]}
    return PipelineRequest.from_bytes(json.dumps(body).encode())


async def _wait_pruned(db: HostedDatabase, count: int) -> None:
    # a commit's checkpoint and the history's measure that may start a prune are the worker's
    # next job (the answer does not wait for them): let the jobs queued so far run first
    await db.call(lambda: None)
    async with asyncio.timeout(30):
        while db.prunes < count or db._prune_due:
            await asyncio.sleep(0.01)


def test_the_primary_keeps_its_frame_log_under_the_bound_and_pre_images_only(tmp_path: Path) -> None:
    bound = 64 * 1024

    async def main() -> None:
        store = DatabaseStore(str(tmp_path / "data"), history=HistoryBounds(seconds=3600, max_bytes=bound))
        await store.start()
        db = await store.get("default", create=True)
        await db.call(db.run_pipeline, _pipeline("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)").requests, False)
        frames = store.path_of("default") + "-frames"
        largest = 0
        for i in range(120):
            run = await db.call(
                db.run_pipeline, _pipeline(f"INSERT INTO t VALUES ({i}, randomblob(1500))").requests, False
            )
            assert run.committed
            # a commit that took the log past the bound has started its prune once the job after it ended
            await _wait_pruned(db, 0)
            largest = max(largest, os.path.getsize(frames))
        assert db.prunes >= 1
        # 120 pushes of a 1500-byte row each wrote more than twice the bound, yet it held
        assert 120 * 1500 > 2 * bound and largest <= bound, largest
        engine = db._engine
        assert engine is not None and not engine.log.post_images
        newest = await db.call(db.local_seq)
        assert engine.log.base_seq > 0
        # a client behind the window gets every page; one within it gets what changed
        snap = await db.call(db.select_pages, _pull(engine.log.base_seq - 1))
        assert snap.seq == newest and len(snap.pages) == snap.db_size
        snap = await db.call(db.select_pages, _pull(newest - 1))
        assert snap.seq == newest and 0 < len(snap.pages) < snap.db_size
        await store.close()

    asyncio.run(main())


def _pull(client_revision: int) -> Any:
    from turso_sync.wire.pull import PullRequest, StreamKind

    return PullRequest(client_revision=str(client_revision), stream_kind=StreamKind.PAGES)


def test_on_a_store_nothing_unstored_is_pruned_and_the_store_gets_every_image(tmp_path: Path) -> None:
    bound = 32 * 1024

    async def main() -> None:
        client = MemoryClient()
        backend = StoreBackend(client, "root", description="memory", lease_ttl=30)
        store = DatabaseStore(
            str(tmp_path / "data"), backend=backend, history=HistoryBounds(seconds=0, max_bytes=bound)
        )
        await store.start()
        db = await store.get("default", create=True)
        assert db.durable is not None

        async def run(sql: str) -> None:
            r = await db.call(db.run_pipeline, _pipeline(sql).requests, False)
            await db.make_durable(r.seq)

        await run("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
        for i in range(20):
            await run(f"INSERT INTO t VALUES ({i}, randomblob(1500))")
        await _wait_pruned(db, 1)
        stored = db.durable.stored
        # the store down: commits go on locally, none of them may be pruned before it is stored
        client.fault = unavailable
        for i in range(20, 60):
            r = await db.call(
                db.run_pipeline, _pipeline(f"INSERT INTO t VALUES ({i}, randomblob(1500))").requests, False
            )
            assert r.committed
        engine = db._engine
        assert engine is not None
        await _wait_pruned(db, db.prunes)
        assert engine.log.base_seq <= stored
        assert engine.log.size_bytes() > bound  # over the bound rather than losing what is not stored
        client.fault = None
        await db.make_durable(await db.call(db.local_seq))
        await run("INSERT INTO t VALUES (1000, 'after')")
        await _wait_pruned(db, db.prunes)
        local = await db.call(lambda: engine._conn.apsw_connection.serialize("main"))
        await store.close()
        # the store rebuilt from the shipped revisions (post-images put back from pre-images) is the database
        image = await restore(client, backend.keys("default"))
        assert image.data == local[: len(image.data)] and len(image.data) == len(local)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--history-bytes", "0"], "--history-bytes must be positive (got 0)"),
        (["--history-seconds", "-1"], "--history-seconds must be 0 or more (got -1)"),
    ],
)
def test_serve_refuses_a_history_bound_it_cannot_keep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    status = main(["serve", "--data-dir", str(tmp_path / "d"), *options])
    assert status == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_serve_history_options_reach_the_server_config() -> None:
    args = build_parser().parse_args(["serve", "--data-dir", "d", "--history-seconds", "90", "--history-bytes", "4096"])
    assert history_from(args) == HistoryBounds(seconds=90, max_bytes=4096)
    defaults = build_parser().parse_args(["serve", "--data-dir", "d"])
    assert history_from(defaults) == HistoryBounds()
