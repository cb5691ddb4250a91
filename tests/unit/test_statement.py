"""What SQLite says a statement does (``turso_sync.local.statement``), and how a connection uses it."""

from __future__ import annotations

import apsw
import pytest

import turso_sync
from turso_sync.local.statement import classify


@pytest.fixture
def db() -> apsw.Connection:
    conn = apsw.Connection(":memory:")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE); CREATE TEMP TABLE scratch (x)")
    return conn


@pytest.mark.parametrize(
    ("sql", "writes", "rows"),
    [
        ("WITH s(v) AS (SELECT 1) INSERT INTO t(id) SELECT v FROM s", True, False),
        ("-- lead\n/* more */ UPDATE t SET v = 'x'", True, False),
        ("REPLACE INTO t VALUES (1, 'a')", True, False),
        ("INSERT INTO t VALUES (1, 'a') ON CONFLICT(id) DO UPDATE SET v = excluded.v RETURNING id", True, True),
        ("DELETE FROM t RETURNING *", True, True),
        ("INSERT INTO scratch VALUES (1)", True, False),
        ("WITH x AS (SELECT 1) SELECT * FROM x", False, True),
        ("EXPLAIN DELETE FROM t", False, True),
        ("PRAGMA table_info(t)", False, True),
        ("CREATE TABLE c AS SELECT * FROM t", False, False),
    ],
)
def test_row_writes_and_result_columns(db, sql, writes, rows):
    statement = classify(db, sql)
    assert (statement.writes_rows, statement.returns_rows) == (writes, rows)


def test_schema_objects_transactions_and_savepoints(db):
    assert classify(db, "CREATE TABLE u (id TEXT PRIMARY KEY, w UNIQUE)").schema_objects == ("u",)
    assert classify(db, "CREATE INDEX i ON t(v)").schema_objects == ("i", "t")
    assert classify(db, "ALTER TABLE t ADD COLUMN z").schema_objects == ("t",)
    assert classify(db, "CREATE TEMP TABLE y (a)").schema_objects == ()
    assert classify(db, "CREATE TABLE temp.y (a)").schema_objects == ()
    assert classify(db, "DROP TABLE scratch").schema_objects == ()  # a TEMP table
    assert classify(db, "END").transaction == "COMMIT"
    assert classify(db, "BEGIN IMMEDIATE").transaction == "BEGIN"
    assert classify(db, 'ROLLBACK TO  "My Point"').savepoint == ("ROLLBACK", "My Point")
    assert classify(db, "RELEASE SAVEPOINT a").savepoint == ("RELEASE", "a")
    assert not classify(db, "SELECT * FROM missing").prepared


def test_answers_that_depend_on_the_schema_are_not_cached(db):
    assert not classify(db, "DROP TABLE IF EXISTS later").cacheable  # compiles to nothing now
    assert not classify(db, "CREATE TABLE IF NOT EXISTS t (a)").cacheable
    assert classify(db, "INSERT INTO t(v) VALUES (?)").cacheable
    assert classify(db, "SELECT * FROM t WHERE id = :id").cacheable


def test_an_authorizer_already_set_is_put_back(db):
    def deny_writes(code, *_):
        return apsw.SQLITE_DENY if code == apsw.SQLITE_INSERT else apsw.SQLITE_OK

    db.authorizer = deny_writes
    assert classify(db, "INSERT INTO t VALUES (1, 'a')").writes_rows
    assert db.authorizer is deny_writes
    with pytest.raises(apsw.AuthError):
        db.execute("INSERT INTO t VALUES (1, 'a')")


def test_a_cte_led_insert_opens_the_implicit_transaction(tmp_path):
    conn = turso_sync.connect(tmp_path / "db")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    cursor = conn.execute("WITH s(v) AS (VALUES (1), (2), (3)) INSERT INTO t SELECT v FROM s")
    assert cursor.rowcount == 3 and conn.in_transaction
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    conn.close()
