"""Folded inserts (issue 12's offline backlog): consecutive inserts into one table go as one
multi-row upsert and one guard, and the batch means exactly what the per-row guards meant.

Each batch is run by the primary's own Hrana executor on a file database standing in for the
remote, and read back as the client reads it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from turso_sync.primary.hrana import PipelineExecutor
from turso_sync.sync import push, remote
from turso_sync.sync.rebase import OutboxRow
from turso_sync.wire.hrana import encode_pipeline_response

CLIENT = "client-1"
SCHEMA = "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE); CREATE TABLE u (k TEXT PRIMARY KEY, n INTEGER)"


class Local:
    """A local database whose transactions become outbox rows, one per ``commit``."""

    def __init__(self) -> None:
        self.db = apsw.Connection(":memory:")
        self.db.execute(SCHEMA)
        self.rows: list[OutboxRow] = []

    def commit(self, sql: str, *args: object, ddl: list[str] | None = None) -> None:
        for statement in ddl or []:
            self.db.execute(statement)
        session = apsw.Session(self.db, "main")
        session.attach()
        self.db.execute(sql, args)
        self.rows.append(OutboxRow(len(self.rows) + 1, 0, ddl or [], session.changeset()))
        session.close()

    def columns(self, table: str) -> list[tuple[str, int]]:
        return [(r[1], r[5]) for r in self.db.execute(f"PRAGMA table_info({table})")]

    def batch(self) -> push.PushBatch:
        return push.build_batch(self.rows, self.columns, CLIENT, 0, mark=push.NO_MARK, fold=True)

    def dump(self, table: str = "t") -> list[tuple[object, ...]]:
        return self.db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()


@pytest.fixture
def remote_db(tmp_path: Path) -> Iterator[apsw.Connection]:
    db = apsw.Connection(str(tmp_path / "remote.db"))
    db.execute(SCHEMA)
    yield db
    db.close()


def run(db: apsw.Connection, batch: push.PushBatch) -> tuple[push.Step | None, str] | None:
    executor = PipelineExecutor(db)
    answer = encode_pipeline_response(executor.execute([batch.request], executor.new_stream(False)))
    return push.batch_failure(remote.batch_result(answer), batch)


def backlog(n: int) -> Local:
    local = Local()
    for i in range(1, n + 1):
        local.commit("INSERT INTO t VALUES (?, ?)", i, f"row {i}")
    return local


def test_a_backlog_of_inserts_is_one_statement_and_one_guard(remote_db: apsw.Connection) -> None:
    local = backlog(300)
    batch = local.batch()
    guards = [s for s in batch.sources if s is not None and s.guard]
    assert len(guards) == 1 and (guards[0].outbox_id, guards[0].outbox_last) == (1, 300)
    assert len(batch.request.steps) == 7  # BEGIN, the mark table, its move, upsert, guard, COMMIT, ROLLBACK
    assert run(remote_db, batch) is None
    assert remote_db.execute("SELECT * FROM t ORDER BY id").fetchall() == local.dump()
    assert remote_db.execute(push.LAST_CHANGE_SELECT, (CLIENT,)).fetchall() == [(0, 300)]


def test_a_folded_guard_fails_when_one_remote_row_differs_and_nothing_commits(remote_db: apsw.Connection) -> None:
    local = backlog(300)
    remote_db.execute("INSERT INTO t VALUES (150, 'theirs')")
    failure = run(remote_db, local.batch())
    assert failure is not None
    source, message = failure
    assert source is not None and source.guard and (source.outbox_id, source.outbox_last) == (1, 300)
    assert "integer overflow" in message
    assert remote_db.execute("SELECT * FROM t").fetchall() == [(150, "theirs")]
    assert remote_db.execute("SELECT name FROM sqlite_schema WHERE name = 'turso_sync_last_change_id'").fetchall() == []


def test_a_remote_row_equal_to_the_inserted_one_passes_as_the_per_row_guard_lets_it(
    remote_db: apsw.Connection,
) -> None:
    local = backlog(50)
    remote_db.execute("INSERT INTO t VALUES (7, 'row 7')")
    assert run(remote_db, local.batch()) is None
    assert remote_db.execute("SELECT * FROM t ORDER BY id").fetchall() == local.dump()


def test_a_remote_row_differing_in_null_only_fails_the_guard(remote_db: apsw.Connection) -> None:
    local = Local()
    local.commit("INSERT INTO u VALUES ('a', NULL)")
    local.commit("INSERT INTO u VALUES ('b', 2)")
    remote_db.execute("INSERT INTO u VALUES ('a', 0)")
    failure = run(remote_db, local.batch())
    assert failure is not None and failure[0] is not None and failure[0].guard


def test_a_constraint_on_another_column_is_a_rejection_not_a_conflict(remote_db: apsw.Connection) -> None:
    local = backlog(20)
    remote_db.execute("INSERT INTO t VALUES (1000, 'row 5')")  # v is UNIQUE
    failure = run(remote_db, local.batch())
    assert failure is not None
    source, message = failure
    assert source is not None and not source.guard and "UNIQUE" in message
    assert (source.outbox_id, source.outbox_last) == (1, 20)


def test_folds_keep_the_order_of_changes(remote_db: apsw.Connection) -> None:
    """A folded group never holds one key twice, nor spans another change, DDL or table: the
    remote ends as the local database did, change after change."""
    local = Local()
    for i in range(1, 6):
        local.commit("INSERT INTO t VALUES (?, ?)", i, f"a{i}")
    local.commit("DELETE FROM t WHERE id = 3")
    local.commit("INSERT INTO t VALUES (3, 'again')")
    local.commit("INSERT INTO t VALUES (6, 'a6')")
    local.commit("INSERT INTO u VALUES ('x', 1)")
    local.commit("INSERT INTO u VALUES ('y', 2)")
    local.commit("INSERT INTO t VALUES (7, 'a7')", ddl=["CREATE TABLE w (k INTEGER PRIMARY KEY)"])
    local.commit("INSERT INTO t VALUES (8, 'a8')")
    local.commit("UPDATE t SET v = 'b1' WHERE id = 1")
    batch = local.batch()
    assert run(remote_db, batch) is None
    assert remote_db.execute("SELECT * FROM t ORDER BY id").fetchall() == local.dump("t")
    assert remote_db.execute("SELECT * FROM u ORDER BY k").fetchall() == local.dump("u")
    folded = [(s.outbox_id, s.outbox_last) for s in batch.sources if s is not None and s.guard and s.outbox_last]
    assert folded == [(1, 5), (7, 8), (9, 10), (11, 12)]


def test_one_transaction_inserting_two_keys_folds_and_a_lone_insert_is_folded_alone(
    remote_db: apsw.Connection,
) -> None:
    local = Local()
    local.commit("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    local.commit("UPDATE t SET v = 'c' WHERE id = 1")
    local.commit("INSERT INTO t VALUES (3, 'd')")
    batch = local.batch()
    sources = [s for s in batch.sources if s is not None and not s.mark]
    assert [(s.outbox_id, s.outbox_last, s.guard) for s in sources] == [
        (1, 1, False),
        (1, 1, True),
        (2, None, False),  # the update, its guard folded in (``push.update_steps``)
        (2, None, True),
        (3, 3, False),
        (3, 3, True),
    ]
    assert run(remote_db, batch) is None
    assert remote_db.execute("SELECT * FROM t ORDER BY id").fetchall() == local.dump()


def test_a_lone_insert_meeting_a_different_row_fails_its_guard(remote_db: apsw.Connection) -> None:
    local = Local()
    local.commit("INSERT INTO t VALUES (1, ?)", "x" * 5000)  # over the per-row guard's 1 KiB: compared all the same
    remote_db.execute("INSERT INTO t VALUES (1, ?)", ("y" * 5000,))
    failure = run(remote_db, local.batch())
    assert failure is not None and failure[0] is not None and failure[0].guard
    assert remote_db.execute("SELECT substr(v, 1, 1) FROM t").fetchall() == [("y",)]
    remote_db.execute("UPDATE t SET v = ?", ("x" * 5000,))
    assert run(remote_db, local.batch()) is None, "an equal row is no conflict"


def test_a_folded_statement_stays_within_the_parameter_limit(remote_db: apsw.Connection) -> None:
    local = backlog(1200)
    batch = local.batch()
    upserts = [s for s in batch.sources if s is not None and s.outbox_last is not None and not s.guard]
    assert [len(s.args) for s in upserts] == [998, 998, 404]
    assert all(len(s.args) <= push.FOLD_PARAMS for s in upserts)
    assert run(remote_db, batch) is None
    assert remote_db.execute("SELECT count(*) FROM t").fetchall() == [(1200,)]


def test_a_batch_built_without_folding_guards_each_insert(remote_db: apsw.Connection) -> None:
    """A stream push (one transaction over a request) may end a request between any two steps,
    so it is built without folds: no upsert is ever parted from the guard counting its rows."""
    local = backlog(30)
    batch = push.build_batch(local.rows, local.columns, CLIENT, 0, mark=push.NO_MARK, fold=False)
    guards = [s for s in batch.sources if s is not None and s.guard]
    assert len(guards) == 30 and all(s.outbox_last is None for s in guards)
    assert run(remote_db, batch) is None
    assert remote_db.execute("SELECT * FROM t ORDER BY id").fetchall() == local.dump()
