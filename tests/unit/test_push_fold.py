"""A push batch built on the push mark the replica believes the remote holds (one request per push).

The batch is run by the primary's own Hrana executor on a file database standing in for the
remote: it commits only when the remote's mark (and push epoch) is exactly the expected one,
fails as a whole at its mark step otherwise, before any guard runs, and the client tells that
failure from a conflict by its step (``Step.mark``), never by the error text.
"""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from turso_sync.primary.hrana import PipelineExecutor
from turso_sync.sync import push, remote
from turso_sync.sync.rebase import OutboxRow
from turso_sync.wire.hrana import encode_pipeline_response

CLIENT = "client-1"


def update_changeset() -> bytes:
    """``UPDATE t SET v = 'new' WHERE id = 1`` made on a row holding 'old'."""
    db = apsw.Connection(":memory:")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'old')")
    session = apsw.Session(db, "main")
    session.attach()
    db.execute("UPDATE t SET v = 'new' WHERE id = 1")
    return session.changeset()


def columns(table: str) -> list[tuple[str, int]]:
    return [("id", 1), ("v", 0)]


def remote_db(path: Path, mark: push.Mark | None, epoch: int | None = None, v: str = "old") -> apsw.Connection:
    """The remote: ``t`` with row 1 holding ``v``, this client's mark (None: no mark table) and fence."""
    db = apsw.Connection(str(path))
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, ?)", (v,))
    if mark is not None:
        db.execute(push.LAST_CHANGE_TABLE)
        if mark != push.NO_MARK:
            db.execute("INSERT INTO turso_sync_last_change_id VALUES (?, ?, ?)", (CLIENT, *mark))
        if epoch is not None:
            db.execute("INSERT INTO turso_sync_last_change_id VALUES (?, ?, 0)", (CLIENT + "#fence", epoch))
    return db


def run(db: apsw.Connection, batch: push.PushBatch) -> tuple[push.Step | None, str] | None:
    """Run ``batch`` as our primary would and read the answer as the client does."""
    executor = PipelineExecutor(db)
    answer = encode_pipeline_response(executor.execute([batch.request], executor.new_stream(False)))
    return push.batch_failure(remote.batch_result(answer), batch)


def batch_on(mark: push.Mark, epoch: int | None = None, gen: int = 2, last: int = 9) -> push.PushBatch:
    rows = [OutboxRow(last, gen, [], update_changeset())]
    return push.build_batch(rows, columns, CLIENT, gen, epoch=epoch, mark=mark)


def state(db: apsw.Connection) -> tuple[list[tuple[object, ...]], str]:
    try:
        marks = db.execute(push.LAST_CHANGE_SELECT, (CLIENT,)).fetchall()
    except apsw.SQLError:  # no mark table
        marks = []
    return marks, db.execute("SELECT v FROM t WHERE id = 1").fetchall()[0][0]


@pytest.mark.parametrize(
    ("remote_mark", "believed"),
    [((2, 8), (2, 8)), ((1, 30), (1, 30)), (push.NO_MARK, push.NO_MARK), (None, push.NO_MARK)],
    ids=["same generation", "older generation", "mark table, no mark", "no mark table"],
)
def test_a_batch_built_on_the_remote_mark_commits_and_moves_it(
    tmp_path: Path, remote_mark: push.Mark | None, believed: push.Mark
) -> None:
    db = remote_db(tmp_path / "r.db", remote_mark)
    assert run(db, batch_on(believed)) is None
    assert state(db) == ([(2, 9)], "new")


@pytest.mark.parametrize(
    ("remote_mark", "believed"),
    [
        ((2, 9), (2, 8)),  # a push the replica does not know of committed (a lost answer, a restored copy)
        ((3, 1), (2, 8)),  # a later generation
        ((2, 8), push.NO_MARK),  # the replica believes it never pushed
        ((2, 7), (2, 8)),  # an older mark (a remote restored from a backup: outside the model)
        (None, (2, 8)),  # no mark table (a remote reset under the replica)
    ],
    ids=["later change", "later generation", "believed none", "older mark", "no mark table"],
)
def test_a_batch_built_on_a_wrong_belief_commits_nothing_and_fails_at_its_mark_step(
    tmp_path: Path, remote_mark: push.Mark | None, believed: push.Mark
) -> None:
    db = remote_db(tmp_path / "r.db", remote_mark, v="moved")  # the row guard would fail too
    before = state(db)
    failure = run(db, batch_on(believed))
    assert failure is not None
    step, _message = failure
    assert step is not None and step.mark and not step.guard, "a mark mismatch, not a conflict"
    assert state(db) == before


def test_the_push_epoch_is_checked_at_the_mark_step(tmp_path: Path) -> None:
    db = remote_db(tmp_path / "r.db", (2, 8), epoch=5)
    failure = run(db, batch_on((2, 8), epoch=4))
    assert failure is not None and failure[0] is not None and failure[0].mark
    assert state(db) == ([(2, 8)], "old")
    assert run(db, batch_on((2, 8), epoch=5)) is None
    first = remote_db(tmp_path / "first.db", push.NO_MARK, epoch=5)
    failure = run(first, batch_on(push.NO_MARK, epoch=4))
    assert failure is not None and failure[0] is not None and failure[0].mark
    assert state(first) == ([], "old")


def test_the_mark_is_moved_before_any_guard(tmp_path: Path) -> None:
    """A stale belief is found before a change the remote already holds could fail its guard."""
    batch = batch_on((2, 8))
    kinds = [(s.mark, s.guard) for s in batch.sources if s is not None]
    assert kinds[0] == (True, False), "the step after BEGIN"
    assert all(not mark for mark, _guard in kinds[1:])
    assert batch.request.steps[1].stmt.sql == push.MARK_MOVE
    assert len(batch.request.steps) == 6, "BEGIN, the mark, a guard, the change, COMMIT, ROLLBACK"
    first = batch_on(push.NO_MARK)
    assert [s.stmt.sql for s in first.request.steps[1:3]] == [push.LAST_CHANGE_TABLE, push.MARK_MOVE]
    assert batch.mark == (2, 8) and first.mark == push.NO_MARK


def test_a_remote_reset_under_the_replica_takes_the_batch_and_its_mark(tmp_path: Path) -> None:
    """A remote holding no mark for a client that believes it has one (outside the model: the
    remote was replaced) takes the batch, mark included, as the push that read the mark first did."""
    db = remote_db(tmp_path / "r.db", push.NO_MARK)
    assert run(db, batch_on((2, 8))) is None
    assert state(db) == ([(2, 9)], "new")


def test_a_guard_failure_is_still_a_conflict_when_the_mark_holds(tmp_path: Path) -> None:
    db = remote_db(tmp_path / "r.db", (2, 8), v="moved")
    failure = run(db, batch_on((2, 8)))
    assert failure is not None and failure[0] is not None
    assert failure[0].guard and not failure[0].mark
    assert state(db) == ([(2, 8)], "moved")
