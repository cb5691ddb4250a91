"""Change capture on a replica classifies statements by what SQLite says they do, not by their text.

A database with the sync tables is a replica to every connection (capture is on); each test runs a
catalogue entry in autocommit and inside a transaction, and checks the data and the outbox: one
outbox row per committed transaction that changed something, holding exactly its schema statements
and row changes.  No server: the outbox is the whole of capture's contract.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import apsw
import pytest

import turso_sync
from tests.unit.capture_replica import open_capture_replica
from turso_sync.local.capture import OUTBOX_TABLE

CTE_INSERT = (
    "WITH RECURSIVE s(v) AS (SELECT 1 UNION ALL SELECT v+1 FROM s WHERE v<10) INSERT INTO t(id) SELECT v FROM s"
)


@pytest.fixture
def replica(tmp_path: Path, key: str | None) -> Any:
    """A database set up as a replica (sync tables present), with table t(id, v) and capture on."""
    conn = open_capture_replica(tmp_path / "r.db", key, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")
    yield conn
    conn.close()


def outbox(conn: Any) -> list[tuple[list[str], int]]:
    """Each outbox row as (its schema statements, how many row changes its changeset holds)."""
    out = []
    for ddl, changeset in conn.apsw_connection.execute(f"SELECT ddl, changeset FROM {OUTBOX_TABLE} ORDER BY id"):
        changes = sum(1 for _ in apsw.Changeset.iter(changeset)) if changeset else 0
        out.append((json.loads(ddl), changes))
    return out


def ids(conn: Any, table: str = "t") -> list[int]:
    return [r[0] for r in conn.execute(f"SELECT id FROM {table} ORDER BY id").fetchall()]


# --- statements that change rows --------------------------------------------------------------

ROW_WRITES = [
    (CTE_INSERT.replace("SELECT 1", "SELECT 3").replace("v<10", "v<12"), list(range(1, 13)), 10),
    ("/* a comment */ -- and another\n  INSERT INTO t(id, v) VALUES (20, 'x')", [1, 2, 20], 1),
    ("REPLACE INTO t(id, v) VALUES (1, 'again')", [1, 2], 1),
    ("INSERT OR REPLACE INTO t(id, v) VALUES (2, 'b2')", [1, 2], 1),
    ("INSERT INTO t(id, v) VALUES (1, 'z') ON CONFLICT(id) DO UPDATE SET v = excluded.v", [1, 2], 1),
    ("WITH doomed AS (SELECT 1 AS id) DELETE FROM t WHERE id IN doomed", [2], 1),
    ("WITH n AS (SELECT 2 AS id) UPDATE t SET v = 'u' WHERE id IN n", [1, 2], 1),
    ("\n\t  update t set v = 'lower' where id = 1", [1, 2], 1),
]


@pytest.mark.parametrize(("sql", "expected_ids", "changes"), ROW_WRITES)
@pytest.mark.parametrize("isolation_level", ["DEFERRED", None])
def test_row_writes_commit_with_their_capture(replica, sql, expected_ids, changes, isolation_level):
    replica.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    replica.commit()
    replica.apsw_connection.execute(f"DELETE FROM {OUTBOX_TABLE}")
    replica.isolation_level = isolation_level
    cursor = replica.execute(sql)
    assert cursor.rowcount == changes
    if isolation_level is not None:
        assert replica.in_transaction  # an implicit transaction, whatever the first keyword
        replica.commit()
    assert not replica.in_transaction
    assert ids(replica) == expected_ids
    assert outbox(replica) == [([], changes)]


def test_returning_gives_rows_and_is_captured(replica):
    replica.isolation_level = None
    got = replica.execute("INSERT INTO t(id, v) VALUES (7, 'r'), (8, 's') RETURNING id, v").fetchall()
    assert got == [(7, "r"), (8, "s")]
    empty = replica.execute("DELETE FROM t WHERE id > 100 RETURNING id")
    assert empty.fetchall() == [] and [d[0] for d in empty.description] == ["id"]
    gone = replica.execute("WITH k AS (SELECT 8 AS id) DELETE FROM t WHERE id IN k RETURNING v").fetchall()
    assert gone == [("s",)]
    assert ids(replica) == [7]
    assert outbox(replica) == [([], 2), ([], 1)]


def test_cte_insert_inside_an_explicit_transaction(replica):
    replica.execute("BEGIN")
    replica.execute(CTE_INSERT)
    replica.execute("INSERT INTO t(id) VALUES (50)")
    replica.execute("COMMIT")
    assert ids(replica)[-1] == 50 and len(ids(replica)) == 11
    assert outbox(replica) == [([], 11)]


def test_executemany_of_a_cte_insert(replica):
    replica.isolation_level = None
    replica.executemany("WITH x(v) AS (SELECT ?) INSERT INTO t(id) SELECT v FROM x", [(1,), (2,), (3,)])
    assert ids(replica) == [1, 2, 3]
    assert [changes for _ddl, changes in outbox(replica)] == [3]


# --- schema statements ------------------------------------------------------------------------


def test_create_table_as_select_is_a_schema_change(replica):
    replica.execute("INSERT INTO t VALUES (1, 'a')")
    replica.commit()
    replica.apsw_connection.execute(f"DELETE FROM {OUTBOX_TABLE}")
    replica.execute("CREATE TABLE copy AS SELECT * FROM t")
    assert ids(replica, "copy") == [1]
    ((ddl, _changes),) = outbox(replica)
    assert ddl == ["CREATE TABLE copy AS SELECT * FROM t"]


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TEMP TABLE scratch (x)",
        "CREATE TEMPORARY TABLE scratch (x)",
        "CREATE TABLE temp.scratch (x)",
        "/* lead */ CREATE TEMP VIEW tv AS SELECT 1",
        "CREATE TABLE IF NOT EXISTS _turso_sync_meta (key TEXT PRIMARY KEY, value)",
        "CREATE INDEX mine ON _turso_sync_outbox(gen)",
    ],
)
def test_temporary_and_internal_schema_is_not_pushed(replica, sql):
    replica.execute(sql)
    replica.commit()
    assert outbox(replica) == []


def test_writes_to_a_temp_table_are_not_captured(replica):
    replica.execute("CREATE TEMP TABLE scratch (x)")
    replica.execute("WITH v(x) AS (VALUES (1), (2)) INSERT INTO scratch SELECT x FROM v")
    replica.commit()
    assert replica.execute("SELECT count(*) FROM scratch").fetchone() == (2,)
    assert outbox(replica) == []


def test_schema_statements_by_what_they_do(replica):
    statements = [
        "-- why\nCREATE TABLE u (id INTEGER PRIMARY KEY, w)",
        "ALTER TABLE u ADD COLUMN z",
        "CREATE INDEX u_w ON u(w)",
        "CREATE VIEW uv AS SELECT * FROM u",
        "CREATE TRIGGER ut AFTER INSERT ON u BEGIN UPDATE u SET z = 1 WHERE id = new.id; END",
        "DROP TRIGGER ut",
        "DROP VIEW uv",
        "DROP INDEX u_w",
        "DROP TABLE u",
    ]
    for sql in statements:
        replica.execute(sql)
    assert [ddl for ddl, _ in outbox(replica)] == [[s] for s in statements]


def test_tables_with_constraint_indexes_are_pushed(replica):
    # SQLite reports the implicit sqlite_autoindex_* of UNIQUE / TEXT PRIMARY KEY as created too
    replica.execute("CREATE TABLE u (id INTEGER PRIMARY KEY, name TEXT UNIQUE)")
    replica.execute("CREATE TABLE k (code TEXT PRIMARY KEY, n) WITHOUT ROWID")
    replica.execute("CREATE TABLE pairs (a, b, UNIQUE (a, b))")
    assert [ddl for ddl, _ in outbox(replica)] == [
        ["CREATE TABLE u (id INTEGER PRIMARY KEY, name TEXT UNIQUE)"],
        ["CREATE TABLE k (code TEXT PRIMARY KEY, n) WITHOUT ROWID"],
        ["CREATE TABLE pairs (a, b, UNIQUE (a, b))"],
    ]


def test_drop_if_exists_is_classified_each_time(replica):
    replica.execute("DROP TABLE IF EXISTS later")  # nothing to drop: nothing to push
    assert outbox(replica) == []
    replica.execute("CREATE TABLE later (x)")
    replica.execute("DROP TABLE IF EXISTS later")  # the same text now drops a table
    assert [ddl for ddl, _ in outbox(replica)] == [["CREATE TABLE later (x)"], ["DROP TABLE IF EXISTS later"]]


# --- transactions and savepoints --------------------------------------------------------------


def test_end_commits_with_the_capture(replica):
    replica.execute("BEGIN")
    replica.execute("INSERT INTO t VALUES (1, 'a')")
    replica.execute("END")
    assert not replica.in_transaction
    assert outbox(replica) == [([], 1)]


def test_savepoint_release_that_commits_is_captured(replica):
    replica.isolation_level = None
    replica.execute("SAVEPOINT outer_sp")
    replica.execute("INSERT INTO t VALUES (1, 'a')")
    replica.execute("SAVEPOINT inner_sp")
    replica.execute("CREATE TABLE gone (x)")
    replica.execute(CTE_INSERT.replace("v<10", "v<3").replace("SELECT v FROM s", "SELECT v + 10 FROM s"))
    replica.execute("ROLLBACK TO inner_sp")  # undoes the table and the CTE rows
    replica.execute("RELEASE inner_sp")
    assert replica.in_transaction
    replica.execute("SAVEPOINT second")
    replica.execute("CREATE TABLE kept (x)")
    replica.execute("RELEASE second")  # not the outermost: the transaction goes on
    assert replica.in_transaction and outbox(replica) == []
    replica.execute('RELEASE SAVEPOINT "OUTER_SP"')  # names compare without case, as in SQLite
    assert not replica.in_transaction
    assert ids(replica) == [1]
    assert outbox(replica) == [(["CREATE TABLE kept (x)"], 1)]


def test_savepoint_inside_begin_never_commits(replica):
    replica.execute("BEGIN")
    replica.execute("SAVEPOINT a")
    replica.execute("INSERT INTO t VALUES (1, 'a')")
    replica.execute("RELEASE a")
    assert replica.in_transaction and outbox(replica) == []
    replica.commit()
    assert outbox(replica) == [([], 1)]


def test_rollback_to_then_release_of_the_outermost(replica):
    replica.isolation_level = None
    replica.execute("SAVEPOINT a")
    replica.execute("INSERT INTO t VALUES (1, 'a')")
    replica.execute("ROLLBACK TO a")
    replica.execute("INSERT INTO t VALUES (2, 'b')")
    replica.execute("RELEASE a")
    assert ids(replica) == [2]
    assert outbox(replica) == [([], 1)]


def test_failed_commit_takes_its_outbox_row_back(replica):
    raw = replica.apsw_connection
    replica.execute("PRAGMA foreign_keys = ON")
    replica.execute("CREATE TABLE child (id INTEGER PRIMARY KEY, p REFERENCES t(id) DEFERRABLE INITIALLY DEFERRED)")
    replica.execute("INSERT INTO child VALUES (1, 99)")  # no parent yet: COMMIT fails
    with pytest.raises(turso_sync.IntegrityError):
        replica.commit()
    assert replica.in_transaction
    assert raw.execute(f"SELECT count(*) FROM {OUTBOX_TABLE}").fetchall() == [(1,)]  # the CREATE only
    replica.execute("INSERT INTO t VALUES (99, 'parent')")
    replica.commit()
    assert outbox(replica)[1:] == [([], 2)]  # both rows, once


def test_executescript_with_every_kind(replica):
    replica.executescript(
        f"""
        -- a script as an app would write it
        CREATE TABLE s (id INTEGER PRIMARY KEY, n);
        {CTE_INSERT.replace("INTO t(id)", "INTO s(id)")};
        SAVEPOINT sp;
        INSERT OR REPLACE INTO s VALUES (1, 'one');
        RELEASE sp;
        BEGIN;
        UPDATE s SET n = 2 WHERE id = 2;
        INSERT INTO s VALUES (3, 3) ON CONFLICT(id) DO UPDATE SET n = 33;
        COMMIT;
        CREATE TEMP TABLE notes (x);
        """
    )
    assert replica.execute("SELECT id, n FROM s WHERE id <= 3").fetchall() == [(1, "one"), (2, 2), (3, 33)]
    (create, _), *rest = outbox(replica)
    assert create[0].endswith("CREATE TABLE s (id INTEGER PRIMARY KEY, n)")  # with the comment before it
    assert rest == [
        ([], 10),
        ([], 1),
        ([], 2),
    ]


def test_trigger_changes_are_in_the_same_outbox_row(replica):
    replica.execute("CREATE TABLE audit (n INTEGER PRIMARY KEY, id)")
    replica.execute("CREATE TRIGGER t_audit AFTER INSERT ON t BEGIN INSERT INTO audit(id) VALUES (new.id); END")
    replica.isolation_level = None
    replica.execute(CTE_INSERT.replace("v<10", "v<2"))
    assert ids(replica, "audit") == [1, 2]
    assert outbox(replica)[-1] == ([], 4)  # two rows of t, two of audit, one transaction


def test_reads_stay_reads(replica):
    replica.execute("INSERT INTO t VALUES (1, 'a')")
    replica.commit()
    for sql in (
        "WITH x AS (SELECT 1) SELECT * FROM t",
        "/* c */ SELECT * FROM t",
        "VALUES (1)",
        "PRAGMA table_info(t)",
        "EXPLAIN INSERT INTO t VALUES (5, 'e')",
    ):
        replica.execute(sql).fetchall()
        assert not replica.in_transaction, sql
    assert ids(replica) == [1]


@pytest.mark.parametrize("sql", ["COMMIT; DROP TABLE t", "RELEASE a; DROP TABLE t", "ROLLBACK; DROP TABLE t"])
def test_transaction_statements_refuse_a_second_statement(replica, sql):
    replica.isolation_level = None
    replica.execute("SAVEPOINT a")
    replica.execute("INSERT INTO t VALUES (1, 'a')")
    with pytest.raises(turso_sync.ProgrammingError, match="one statement at a time"):
        replica.execute(sql)
    assert replica.in_transaction
    replica.execute("RELEASE a")
    assert ids(replica) == [1] and outbox(replica) == [([], 1)]
