"""Compare-and-set guards of a push batch, run on a plain SQLite database standing in for the remote.

A guard is the step before each row change: it must pass when the remote row still holds the
values the change was made against (key and touched columns; for an INSERT, no row with the
key or an equal one) and fail otherwise, so the batch does not commit.
"""

from __future__ import annotations

from typing import Any

import apsw
import pytest

from turso_sync.sync import push
from turso_sync.sync.rebase import OutboxRow


def captured(setup: str, change: str) -> tuple[apsw.Connection, bytes]:
    """A database after ``setup``, and the changeset ``change`` records on it (then undone)."""
    db = apsw.Connection(":memory:")
    db.execute(setup)
    session = apsw.Session(db, "main")
    session.config(apsw.SQLITE_SESSION_OBJCONFIG_ROWID, 1)
    session.attach()
    db.execute("SAVEPOINT s")
    db.execute(change)
    changeset = session.changeset()
    db.execute("ROLLBACK TO s")
    db.execute("RELEASE s")
    session.close()
    return db, changeset


def columns_of(db: apsw.Connection) -> push.Columns:
    return lambda table: [(r[1], r[5]) for r in db.execute(f"PRAGMA table_info({push.quote(table)})")]


def guards(db: apsw.Connection, changeset: bytes) -> list[push.Step]:
    steps = push.change_steps(OutboxRow(7, 0, [], changeset), columns_of(db))
    assert [s.guard for s in steps] == [True, False] * (len(steps) // 2), "a guard before every row change"
    assert all(s.outbox_id == 7 for s in steps)
    return [s for s in steps if s.guard]


def passes(db: apsw.Connection, step: push.Step) -> bool:
    try:
        db.execute(step.sql, step.args).fetchall()
    except apsw.SQLError as exc:
        assert "integer overflow" in str(exc)
        return False
    return True


SETUP = "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, n INTEGER, b BLOB); INSERT INTO t VALUES (1, 'a', 1, x'00');"


@pytest.mark.parametrize(
    ("change", "remote_edit", "ok"),
    [
        ("UPDATE t SET v = 'L' WHERE id = 1", None, True),
        ("UPDATE t SET v = 'L' WHERE id = 1", "UPDATE t SET v = 'R' WHERE id = 1", False),  # same column moved
        ("UPDATE t SET v = 'L' WHERE id = 1", "UPDATE t SET n = 9 WHERE id = 1", True),  # another column
        ("UPDATE t SET v = 'L' WHERE id = 1", "DELETE FROM t WHERE id = 1", False),  # row gone
        ("UPDATE t SET b = x'01' WHERE id = 1", "UPDATE t SET b = x'02' WHERE id = 1", False),
        ("DELETE FROM t WHERE id = 1", None, True),
        ("DELETE FROM t WHERE id = 1", "UPDATE t SET n = 9 WHERE id = 1", False),  # any column moved
        ("INSERT INTO t VALUES (2, 'L', 2, NULL)", None, True),
        ("INSERT INTO t VALUES (2, 'L', 2, NULL)", "INSERT INTO t VALUES (2, 'R', 2, NULL)", False),
        ("INSERT INTO t VALUES (2, 'L', 2, NULL)", "INSERT INTO t VALUES (2, 'L', 2, NULL)", True),  # equal
    ],
)
def test_guard_passes_only_on_the_base_image(change: str, remote_edit: str | None, ok: bool):
    db, changeset = captured(SETUP, change)
    if remote_edit:
        db.execute(remote_edit)
    (guard,) = guards(db, changeset)
    assert passes(db, guard) is ok


def test_update_guard_checks_only_key_and_touched_columns():
    db, changeset = captured(SETUP, "UPDATE t SET v = 'L' WHERE id = 1")
    (guard,) = guards(db, changeset)
    assert guard.args == [1, "a"]
    assert '"n"' not in guard.sql and '"b"' not in guard.sql


def test_table_without_primary_key_guards_its_rowid():
    setup = "CREATE TABLE k (x TEXT); INSERT INTO k(rowid, x) VALUES (1, 'a');"
    db, changeset = captured(setup, "INSERT INTO k(rowid, x) VALUES (2, 'a')")
    (guard,) = guards(db, changeset)
    assert passes(db, guard)
    db.execute("INSERT INTO k(rowid, x) VALUES (2, 'a')")  # an equal row: still another row
    assert not passes(db, guard)
    db2, update = captured(setup, "UPDATE k SET x = 'b' WHERE rowid = 1")
    (guard,) = guards(db2, update)
    assert passes(db2, guard)
    db2.execute("UPDATE k SET x = 'z' WHERE rowid = 1")
    assert not passes(db2, guard)


def test_batch_failure_names_the_guard_by_step_index():
    db, changeset = captured(SETUP, "UPDATE t SET v = 'L' WHERE id = 1")
    rows = [OutboxRow(3, 0, [], changeset)]
    batch = push.build_batch(rows, columns_of(db), "client", 0, lambda v: v)
    guard_index = next(i for i, s in enumerate(batch.sources) if s is not None and s.guard)
    n = len(batch.steps)
    results: list[Any] = [{"rows": []}] * n
    errors_: list[Any] = [None] * n
    results = [r if i < guard_index else None for i, r in enumerate(results)]
    errors_[guard_index] = {"message": "any text at all"}
    failure = push.batch_failure({"step_results": results, "step_errors": errors_}, batch)
    assert failure is not None
    source, _message = failure
    assert source is not None and source.guard and source.outbox_id == 3
    committed = {"step_results": [{"rows": []}] * n, "step_errors": [None] * n}
    assert push.batch_failure(committed, batch) is None


def test_steps_are_conditional_on_every_earlier_step():
    db, changeset = captured(SETUP, "UPDATE t SET v = 'L' WHERE id = 1")
    batch = push.build_batch([OutboxRow(1, 0, [], changeset)], columns_of(db), "c", 0, lambda v: v)
    for i, step in enumerate(batch.steps[1 : batch.commit_index + 1], start=1):
        assert step["condition"] == {"type": "ok", "step": i - 1}


def test_insert_of_a_large_value_guards_the_key_only():
    big = "x" * (push.GUARD_VALUE_BYTES + 1)
    db, changeset = captured(SETUP, f"INSERT INTO t VALUES (2, '{big}', 2, NULL)")
    (guard,) = guards(db, changeset)
    assert guard.args == [2]  # the large value is sent once, with the insert
    assert passes(db, guard)
    db.execute(f"INSERT INTO t VALUES (2, '{big}', 2, NULL)")  # even an equal row fails it now
    assert not passes(db, guard)
