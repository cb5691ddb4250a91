"""Folded updates: an UPDATE matches its row only where the row still holds the change's old
values, and one guard checks ``changes()``; the batch means exactly what the guard before the
UPDATE meant (the row exists with the key and the touched columns' old values, or nothing commits).

Each batch is run by the primary's own Hrana executor on a file database standing in for the
remote, and read back as the client reads it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from tests.unit.test_push_backlog_fold import CLIENT, Local, run
from turso_sync.sync import push

SCHEMA = (
    "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE, w TEXT); "
    "CREATE TABLE u (k TEXT PRIMARY KEY, n INTEGER); "
    "CREATE TABLE r (a TEXT, b INTEGER)"  # no primary key: rows go by rowid
)
ROWS = (
    "INSERT INTO t VALUES (1, 'one', 'x'), (2, 'two', 'y'), (3, NULL, 'z'); "
    "INSERT INTO u VALUES ('a', 1); INSERT INTO r(rowid, a, b) VALUES (5, 'p', 1)"
)


class Updates(Local):
    """``Local`` on this file's schema, holding the rows the remote holds too."""

    def __init__(self) -> None:
        self.db = apsw.Connection(":memory:")
        self.db.execute(SCHEMA)
        self.db.execute(ROWS)
        self.rows = []

    def commit(self, sql: str, *args: object, ddl: list[str] | None = None) -> None:
        session = apsw.Session(self.db, "main")
        session.config(apsw.SQLITE_SESSION_OBJCONFIG_ROWID, 1)  # as capture does: rowid tables too
        session.attach()
        self.db.execute(sql, args)
        self.rows.append(push.OutboxRow(len(self.rows) + 1, 0, ddl or [], session.changeset()))
        session.close()

    def batch(self, fold: bool = True) -> push.PushBatch:
        return push.build_batch(self.rows, self.columns, CLIENT, 0, mark=push.NO_MARK, fold=fold)


@pytest.fixture
def remote_db(tmp_path: Path) -> Iterator[apsw.Connection]:
    db = apsw.Connection(str(tmp_path / "remote.db"))
    db.execute(SCHEMA)
    db.execute(ROWS)
    yield db
    db.close()


def change_steps(batch: push.PushBatch) -> list[push.Step]:
    return [s for s in batch.sources if s is not None and s.outbox_id is not None and not s.mark]


def test_an_update_is_one_statement_and_a_changes_guard(remote_db: apsw.Connection) -> None:
    local = Updates()
    local.commit("UPDATE t SET v = 'uno' WHERE id = 1")
    steps = change_steps(local.batch())
    assert [s.guard for s in steps] == [False, True]
    assert steps[0].sql == 'UPDATE "t" SET "v" = ? WHERE "id" IS ? AND "v" IS ?' and steps[0].args == ["uno", 1, "one"]
    assert "changes() = 1" in steps[1].sql and steps[1].outbox_id == 1
    assert not any("EXISTS" in s.sql for s in steps)
    assert run(remote_db, local.batch()) is None
    assert remote_db.execute("SELECT * FROM t ORDER BY id").fetchall() == local.dump()
    assert remote_db.execute(push.LAST_CHANGE_SELECT, (CLIENT,)).fetchall() == [(0, 1)]


def test_without_fold_the_guard_comes_first_as_before(remote_db: apsw.Connection) -> None:
    local = Updates()
    local.commit("UPDATE t SET v = 'uno' WHERE id = 1")
    steps = change_steps(local.batch(fold=False))
    assert [s.guard for s in steps] == [True, False] and "EXISTS" in steps[0].sql
    assert run(remote_db, local.batch(fold=False)) is None
    assert remote_db.execute("SELECT * FROM t ORDER BY id").fetchall() == local.dump()


@pytest.mark.parametrize(
    "remote_change",
    [
        "UPDATE t SET v = 'theirs' WHERE id = 1",  # the touched column moved
        "DELETE FROM t WHERE id = 1",  # the row is gone
    ],
)
def test_a_remote_change_to_the_row_fails_the_guard_and_nothing_commits(
    remote_db: apsw.Connection, remote_change: str
) -> None:
    local = Updates()
    local.commit("UPDATE t SET w = 'mine' WHERE id = 2")
    local.commit("UPDATE t SET v = 'uno' WHERE id = 1")
    remote_db.execute(remote_change)
    before = remote_db.execute("SELECT * FROM t ORDER BY id").fetchall()
    failure = run(remote_db, local.batch())
    assert failure is not None
    source, message = failure
    assert source is not None and source.guard and source.outbox_id == 2 and "integer overflow" in message
    assert remote_db.execute("SELECT * FROM t ORDER BY id").fetchall() == before  # row 2 not written either
    assert remote_db.execute("SELECT name FROM sqlite_schema WHERE name = 'turso_sync_last_change_id'").fetchall() == []


def test_a_remote_change_to_a_column_the_update_did_not_touch_passes_and_stays(remote_db: apsw.Connection) -> None:
    local = Updates()
    local.commit("UPDATE t SET v = 'uno' WHERE id = 1")
    remote_db.execute("UPDATE t SET w = 'theirs' WHERE id = 1")
    assert run(remote_db, local.batch()) is None
    assert remote_db.execute("SELECT * FROM t WHERE id = 1").fetchall() == [(1, "uno", "theirs")]


def test_a_null_old_value_matches_a_null_and_nothing_else(remote_db: apsw.Connection, tmp_path: Path) -> None:
    local = Updates()
    local.commit("UPDATE t SET v = 'three' WHERE id = 3")  # v was NULL
    assert run(remote_db, local.batch()) is None
    assert remote_db.execute("SELECT v FROM t WHERE id = 3").fetchall() == [("three",)]
    other = apsw.Connection(str(tmp_path / "other.db"))
    other.execute(SCHEMA)
    other.execute(ROWS)
    other.execute("UPDATE t SET v = '' WHERE id = 3")
    failure = run(other, local.batch())
    assert failure is not None and failure[0] is not None and failure[0].guard
    other.close()


def test_a_constraint_the_update_breaks_is_a_rejection_not_a_conflict(remote_db: apsw.Connection) -> None:
    local = Updates()
    local.commit("UPDATE t SET v = 'uno' WHERE id = 1")
    remote_db.execute("UPDATE t SET v = 'uno' WHERE id = 2")  # v is UNIQUE: the remote took the value
    failure = run(remote_db, local.batch())
    assert failure is not None
    source, message = failure
    assert source is not None and not source.guard and "UNIQUE" in message


def test_text_keys_and_rowid_tables_fold_too(remote_db: apsw.Connection, tmp_path: Path) -> None:
    local = Updates()
    local.commit("UPDATE u SET n = 2 WHERE k = 'a'")
    local.commit("UPDATE r SET b = 2 WHERE rowid = 5")
    steps = change_steps(local.batch())
    assert [s.guard for s in steps] == [False, True, False, True]
    assert '"rowid" IS ?' in steps[2].sql
    assert run(remote_db, local.batch()) is None
    assert remote_db.execute("SELECT * FROM u").fetchall() == [("a", 2)]
    assert remote_db.execute("SELECT rowid, a, b FROM r").fetchall() == [(5, "p", 2)]
    other = apsw.Connection(str(tmp_path / "other.db"))
    other.execute(SCHEMA)
    other.execute(ROWS)
    other.execute("UPDATE r SET b = 9 WHERE rowid = 5")
    failure = run(other, local.batch())
    assert failure is not None and failure[0] is not None and failure[0].guard and failure[0].outbox_id == 2
    assert other.execute("SELECT * FROM u").fetchall() == [("a", 1)]  # nothing committed
    other.close()


def test_inserts_and_deletes_keep_their_steps_around_a_folded_update(remote_db: apsw.Connection) -> None:
    local = Updates()
    local.commit("INSERT INTO t VALUES (10, 'ten', 'w')")
    local.commit("UPDATE t SET w = 'changed' WHERE id = 10")
    local.commit("DELETE FROM t WHERE id = 2")
    steps = change_steps(local.batch())
    assert [(s.outbox_id, s.guard) for s in steps] == [
        (1, False),
        (1, True),
        (2, False),
        (2, True),
        (3, True),
        (3, False),
    ]
    assert run(remote_db, local.batch()) is None
    assert remote_db.execute("SELECT * FROM t ORDER BY id").fetchall() == local.dump()
