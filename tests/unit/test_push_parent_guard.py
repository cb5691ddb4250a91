"""Foreign-key guards of a push batch: a child pushed after the remote deleted its parent fails the batch.

Run on plain SQLite databases: ``local`` is the replica (the child's parent exists there), the
remote stands in for the primary after another replica deleted the parent.
"""

from __future__ import annotations

import apsw
import pytest

from turso_sync.sync import push
from turso_sync.sync.rebase import OutboxRow

SCHEMA = (
    "CREATE TABLE p (id INTEGER PRIMARY KEY, code TEXT UNIQUE);"
    "CREATE TABLE c (id INTEGER PRIMARY KEY, p INTEGER REFERENCES p(id), code TEXT REFERENCES p(code), n INTEGER);"
    "CREATE TABLE d (id INTEGER PRIMARY KEY, p INTEGER REFERENCES p);"  # references p's primary key
    "INSERT INTO p VALUES (1, 'one'), (2, 'two');"
)


def changeset_of(db: apsw.Connection, sql: str) -> bytes:
    """What ``sql`` changes on ``db`` (then undone)."""
    session = apsw.Session(db, "main")
    session.config(apsw.SQLITE_SESSION_OBJCONFIG_ROWID, 1)
    session.attach()
    db.execute("SAVEPOINT s")
    db.execute(sql)
    changeset = session.changeset()
    db.execute("ROLLBACK TO s")
    db.execute("RELEASE s")
    session.close()
    return changeset


def database(extra: str = "") -> apsw.Connection:
    db = apsw.Connection(":memory:")
    db.execute(SCHEMA + extra)
    return db


def query_of(db: apsw.Connection) -> push.Query:
    return lambda sql, args: list(db.execute(sql, args))


def columns_of(db: apsw.Connection) -> push.Columns:
    return lambda table: [(r[1], r[5]) for r in db.execute(f"PRAGMA table_info({push.quote(table)})")]


def batch_steps(local: apsw.Connection, sql: str) -> list[push.Step]:
    changeset = changeset_of(local, sql)
    checks: list[push.Step] = []
    steps = push.change_steps(
        OutboxRow(3, 0, [], changeset), columns_of(local), push.local_parents(query_of(local)), checks
    )
    return steps + checks


def commits(remote: apsw.Connection, steps: list[push.Step]) -> bool:
    """Run the steps on ``remote`` as one transaction; True if every guard passed (then rolled back)."""
    remote.execute("BEGIN")
    try:
        for step in steps:
            remote.execute(step.sql, step.args).fetchall()
    except apsw.SQLError as exc:
        assert "integer overflow" in str(exc), exc
        return False
    finally:
        remote.execute("ROLLBACK")
    return True


@pytest.mark.parametrize(
    ("change", "remote_edit", "ok"),
    [
        ("INSERT INTO c VALUES (7, 1, NULL, 0)", None, True),
        ("INSERT INTO c VALUES (7, 1, NULL, 0)", "DELETE FROM p WHERE id = 1", False),  # parent gone
        ("INSERT INTO c VALUES (7, 1, NULL, 0)", "DELETE FROM p WHERE id = 2", True),  # another parent
        ("INSERT INTO c VALUES (7, NULL, 'two', 0)", "DELETE FROM p WHERE id = 2", False),  # by a unique column
        ("INSERT INTO c VALUES (7, NULL, NULL, 0)", "DELETE FROM p", True),  # references nothing
        ("INSERT INTO d VALUES (7, 2)", "DELETE FROM p WHERE id = 2", False),  # REFERENCES p: its key
        ("UPDATE c SET p = 2 WHERE id = 5", "DELETE FROM p WHERE id = 2", False),  # a written reference
        ("UPDATE c SET n = 9 WHERE id = 5", "DELETE FROM p WHERE id = 1", True),  # reference not written
    ],
)
def test_a_child_commits_only_if_its_parent_is_on_the_remote(change: str, remote_edit: str | None, ok: bool):
    rows = "INSERT INTO c VALUES (5, 1, NULL, 0);"
    local, remote = database(rows), database(rows)
    if remote_edit:
        remote.execute(remote_edit)
    assert commits(remote, batch_steps(local, change)) is ok


def test_a_reference_that_dangles_locally_is_pushed_as_it_is():
    """After the rebase journaled the dangling child (parent deleted locally too), no guard: the push goes."""
    local, remote = database("DELETE FROM p WHERE id = 1;"), database("DELETE FROM p WHERE id = 1;")
    steps = batch_steps(local, "INSERT INTO c VALUES (7, 1, NULL, 0)")
    assert [s.guard for s in steps] == [True, False], "only the row guard"
    assert commits(remote, steps)


def test_parent_guards_run_after_every_change_of_the_batch():
    """A child inserted before its parent in changeset order still passes: the parent comes in the same batch."""
    local = database()
    changeset = changeset_of(local, "INSERT INTO c VALUES (8, 3, NULL, 0); INSERT INTO p VALUES (3, 'three')")
    local.execute("INSERT INTO p VALUES (3, 'three'); INSERT INTO c VALUES (8, 3, NULL, 0)")
    batch = push.build_batch(
        [OutboxRow(4, 0, [], changeset)],
        columns_of(local),
        "client",
        0,
        lambda v: {"v": v},
        None,
        push.local_parents(query_of(local)),
    )
    sources = [s for s in batch.sources if s is not None]
    parent_guard = next(
        i
        for i, s in enumerate(sources)
        if s.guard and 'FROM "p"' in s.sql and "EXISTS (SELECT" in s.sql and "NOT" not in s.sql
    )
    last_row_change = max(i for i, s in enumerate(sources) if not s.guard)
    assert parent_guard > last_row_change
    remote = database()
    assert commits(remote, [s for s in sources if s.sql != push.LAST_CHANGE_UPSERT])
