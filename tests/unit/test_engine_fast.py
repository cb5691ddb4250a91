"""The per-statement fast paths of the DB-API layer keep every behaviour they shortcut (issue 12).

``Cursor.execute`` asks SQLite for no description when the statement has no result columns,
builds ``description`` only when it is read, reads an empty result's columns again only when
asked for (prepared afresh, so a schema another connection changed shows), looks one row ahead
without catching ``StopIteration`` and, on a replica, runs reads without the capture's
bookkeeping.  Each test below drives one of those shortcuts where it could go wrong.
"""

from __future__ import annotations

import json
import sqlite3
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

import turso_sync
from tests.unit.capture_replica import open_capture_replica
from turso_sync.local import connection as connection_module
from turso_sync.local.capture import OUTBOX_TABLE
from turso_sync.local.connection import Connection
from turso_sync.local.statement import classify

POINT = "SELECT id, name, v FROM t WHERE id = ?"


def _transcript(conn: Any, scenario: Callable[[Any, list[Any]], None]) -> list[Any]:
    seen: list[Any] = []
    try:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, v)")
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)", [(i, f"n{i}", i * 10) for i in range(1, 6)])
        conn.commit()
        scenario(conn, seen)
    finally:
        conn.close()
    return seen


def same_as_sqlite3(tmp_path: Path, key: str | None, scenario: Callable[[Any, list[Any]], None]) -> None:
    """Run ``scenario`` on stdlib sqlite3 and on turso_sync; what each saw must be equal."""
    expected = _transcript(sqlite3.connect(tmp_path / "stdlib.db"), scenario)
    actual = _transcript(turso_sync.connect(tmp_path / "turso.db", encryption_key=key), scenario)
    assert actual == expected


def test_missed_point_reads_describe_their_columns_like_sqlite3(tmp_path, key):
    def scenario(conn: Any, seen: list[Any]) -> None:
        for wanted in (3, 99, 99, 4, -1):  # hits and misses of the same cached statement
            cur = conn.execute(POINT, (wanted,))
            seen.append((cur.fetchone(), cur.description, cur.rowcount, cur.fetchone()))
        missed = conn.execute(POINT, (99,))
        conn.execute("SELECT 1 AS other").fetchall()  # another statement runs before it is asked
        seen.append(missed.description)
        cur = conn.cursor()
        seen.append((cur.execute(POINT, (99,)).fetchall(), cur.execute("SELECT 2 AS two").description))
        conn.execute("ALTER TABLE t ADD COLUMN extra")
        conn.execute("ALTER TABLE t RENAME COLUMN name TO label")
        seen.append(conn.execute("SELECT * FROM t WHERE id = ?", (99,)).description)
        seen.append(conn.execute("SELECT * FROM t WHERE id = 1").fetchall())

    same_as_sqlite3(tmp_path, key, scenario)


def test_a_returning_statement_that_matched_nothing_is_described_not_run_again(tmp_path, key):
    def scenario(conn: Any, seen: list[Any]) -> None:
        cur = conn.execute("DELETE FROM t WHERE id = 99 RETURNING id, name")
        seen.append((cur.fetchall(), cur.description, cur.rowcount, conn.total_changes))
        cur = conn.execute("UPDATE t SET v = v + 1 WHERE id > 100 RETURNING v AS bumped")
        seen.append((cur.description, cur.fetchone(), conn.total_changes))
        conn.commit()
        seen.append(conn.execute("SELECT id, v FROM t ORDER BY id").fetchall())

    same_as_sqlite3(tmp_path, key, scenario)


def test_statements_without_result_columns_have_no_description(tmp_path, key):
    def scenario(conn: Any, seen: list[Any]) -> None:
        cur = conn.cursor()
        for sql, params in (
            ("INSERT INTO t VALUES (?, ?, ?)", (10, "ten", 100)),
            ("UPDATE t SET v = ? WHERE id = ?", (0, 10)),
            ("SELECT name FROM t WHERE id = ?", (10,)),
            ("DELETE FROM t WHERE id = ?", (10,)),
            ("PRAGMA user_version = 3", ()),
            ("PRAGMA user_version", ()),
        ):
            cur.execute(sql, params)
            seen.append((sql, cur.description, cur.rowcount, cur.lastrowid, cur.fetchall()))
        conn.commit()

    same_as_sqlite3(tmp_path, key, scenario)


def test_an_empty_result_shows_the_schema_another_connection_changed(tmp_path, key):
    path = tmp_path / "db"
    reader = turso_sync.connect(path, encryption_key=key)
    writer = turso_sync.connect(path, encryption_key=key)
    try:
        reader.execute("CREATE TABLE t (x INTEGER, y TEXT)")
        reader.executemany("INSERT INTO t VALUES (?, ?)", [(1, "a"), (2, "b"), (3, "c")])
        reader.commit()
        query = "SELECT * FROM t WHERE x > ?"
        # two cursors in the middle of the same text: APSW's cache ends up holding two copies
        first, second = reader.execute(query, (0,)), reader.execute(query, (0,))
        assert first.fetchone() == second.fetchone() == (1, "a")
        first.fetchall(), second.fetchall()
        writer.execute("ALTER TABLE t ADD COLUMN z")
        writer.commit()
        for _ in range(3):  # whichever cached copy a re-read would take, the columns are today's
            assert [d[0] for d in reader.execute(query, (100,)).description] == ["x", "y", "z"]
    finally:
        writer.close()
        reader.close()


def test_fetchone_finishes_a_statement_after_its_last_row(tmp_path, key):
    """The last row's look-ahead ends the read, so the cursor (still held) pins no WAL snapshot."""
    path = tmp_path / "db"
    reader = turso_sync.connect(path, encryption_key=key)
    writer = turso_sync.connect(path, encryption_key=key)
    try:
        writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
        writer.execute("INSERT INTO t VALUES (1, 'one')")
        writer.commit()
        held = reader.execute("SELECT v FROM t WHERE id = ?", (1,))
        assert held.fetchone() == ("one",)
        writer.execute("INSERT INTO t VALUES (2, 'two')")
        writer.commit()
        busy, log, done = writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert (busy, done) == (0, log), "the reader's finished statement kept its snapshot"
        assert held.fetchone() is None
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (2,)
    finally:
        writer.close()
        reader.close()


def test_row_factory_sees_each_row_on_every_fetch_path(tmp_path, key):
    conn = turso_sync.connect(tmp_path / "db", encryption_key=key)
    try:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, i * i) for i in range(1, 6)])
        conn.row_factory = lambda cursor, row: dict(zip([d[0] for d in cursor.description], row, strict=True))
        cur = conn.execute("SELECT id, v FROM t ORDER BY id")
        assert cur.fetchone() == {"id": 1, "v": 1}
        assert cur.fetchmany(2) == [{"id": 2, "v": 4}, {"id": 3, "v": 9}]
        assert cur.fetchall() == [{"id": 4, "v": 16}, {"id": 5, "v": 25}]
        assert conn.execute("SELECT id FROM t WHERE id = ?", (7,)).fetchall() == []
        assert list(conn.execute("SELECT v FROM t WHERE id = 2")) == [{"v": 4}]
    finally:
        conn.close()


# --- what a statement is, decided once per text ---------------------------------------------------


@pytest.fixture
def db() -> apsw.Connection:
    conn = apsw.Connection(":memory:")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
    return conn


@pytest.mark.parametrize(
    ("sql", "several", "is_read"),
    [
        ("SELECT * FROM t WHERE id = ?", False, True),
        ("SELECT 1;  ", False, True),
        ("SELECT 1; SELECT 2", True, True),
        ("SELECT ';' AS semicolon", False, True),
        ("SELECT * FROM missing; SELECT 1", True, False),  # not prepared: never taken for a read
        ("SELECT * FROM missing", False, False),
        ("INSERT INTO t VALUES (1, 2)", False, False),
        ("WITH s AS (SELECT 1) DELETE FROM t", False, False),
        ("BEGIN", False, False),
        ("SAVEPOINT a", False, False),
        ("CREATE TABLE u (a)", False, False),
        ("PRAGMA table_info(t)", False, True),
    ],
)
def test_several_and_is_read_are_decided_with_the_statement(db, sql, several, is_read):
    statement = classify(db, sql)
    assert (statement.several, statement.is_read) == (several, is_read)


def test_a_second_statement_is_refused_before_the_first_is_prepared(tmp_path, key):
    conn = turso_sync.connect(tmp_path / "db", encryption_key=key)
    try:
        for sql in ("SELECT * FROM missing; SELECT 1", "SELECT 1; SELECT 2"):
            with pytest.raises(turso_sync.ProgrammingError, match="one statement at a time"):
                conn.execute(sql)
            with pytest.raises(turso_sync.ProgrammingError, match="one statement at a time"):
                conn.executemany(sql, [()])
    finally:
        conn.close()


# --- a replica's reads skip the capture -------------------------------------------------------------


@pytest.fixture
def replica(tmp_path: Path, key: str | None) -> Iterator[Connection]:
    """A database set up as a replica (sync tables present), with table t(id, v UNIQUE) and capture on."""
    conn = open_capture_replica(tmp_path / "r.db", key, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")
    yield conn
    conn.close()


def outbox(conn: Connection) -> list[tuple[list[str], list[tuple[str, int, tuple[Any, ...] | None]]]]:
    """Each outbox row as (its schema statements, (table, operation, new values) of each change)."""
    out = []
    for ddl, changeset in conn.apsw_connection.execute(f"SELECT ddl, changeset FROM {OUTBOX_TABLE} ORDER BY id"):
        changes = [(c.name, c.opcode, c.new) for c in apsw.Changeset.iter(changeset)] if changeset else []
        out.append((json.loads(ddl), changes))
    return out


def test_reads_after_a_rollback_leave_the_next_transaction_captured_alone(replica):
    replica.execute("INSERT INTO t VALUES (1, 'kept')")
    replica.commit()
    replica.execute("BEGIN")
    replica.execute("INSERT INTO t VALUES (2, 'rolled back')")
    replica.execute("CREATE TABLE gone (a)")  # noted by the capture until its reset
    with pytest.raises(turso_sync.IntegrityError):
        replica.execute("INSERT OR ROLLBACK INTO t VALUES (3, 'kept')")  # SQLite rolls the transaction back
    assert not replica.in_transaction
    assert replica.execute("SELECT id FROM t ORDER BY id").fetchall() == [(1,)]  # a read, right after
    assert replica.execute(POINT.replace("name, ", ""), (2,)).fetchone() is None
    replica.execute("INSERT INTO t VALUES (4, 'new')")
    replica.commit()
    assert outbox(replica) == [
        ([], [("t", apsw.SQLITE_INSERT, (1, "kept"))]),
        ([], [("t", apsw.SQLITE_INSERT, (4, "new"))]),
    ]


def test_replica_reads_open_nothing_and_refuse_a_second_statement(replica):
    replica.execute("INSERT INTO t VALUES (1, 'a')")
    replica.commit()
    assert replica.execute("SELECT v FROM t WHERE id = ?", (1,)).fetchone() == ("a",)
    assert replica.execute("SELECT v FROM t WHERE id = ?", (2,)).description == (("v",) + (None,) * 6,)
    assert not replica.in_transaction
    with pytest.raises(turso_sync.ProgrammingError, match="one statement at a time"):
        replica.execute("SELECT 1; DELETE FROM t")
    assert replica.execute("SELECT count(*) FROM t").fetchone() == (1,)
    assert len(outbox(replica)) == 1


# --- a finished APSW cursor is handed to the next Cursor, never one with rows pending ---------------


@pytest.fixture
def two(tmp_path: Path, key: str | None) -> Iterator[tuple[Any, Any]]:
    """A reader and a writer on one file holding t(id, v) with five rows."""
    path = tmp_path / "db"
    reader = turso_sync.connect(path, encryption_key=key)
    writer = turso_sync.connect(path, encryption_key=key)
    writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
    writer.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"v{i}") for i in range(1, 6)])
    writer.commit()
    yield reader, writer
    writer.close()
    reader.close()


def checkpoint_completes(writer: Any) -> bool:
    """A new commit, then a passive checkpoint: True when no reader's snapshot held any frame back."""
    writer.execute("UPDATE t SET v = v || '+' WHERE id = 1")
    writer.commit()
    busy, log, done = writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return busy == 0 and done == log


def test_a_cursor_let_go_with_rows_pending_keeps_no_snapshot(two):
    reader, writer = two
    assert reader.execute("SELECT id FROM t ORDER BY id").fetchone() == (1,)  # four rows left, cursor dropped
    assert checkpoint_completes(writer)
    cursor = reader.cursor()
    assert cursor.execute("SELECT 1").fetchall() == [(1,)]  # finished: its APSW cursor is idle now
    with pytest.raises(turso_sync.ProgrammingError, match="return no rows"):
        cursor.executemany("SELECT ?", [(1,), (2,)])  # stopped at its first row
    del cursor
    assert checkpoint_completes(writer)
    assert reader.execute("SELECT count(*) FROM t").fetchone() == (5,)


def test_cursors_in_use_never_share_and_a_closed_one_is_not_reused(two):
    reader, _writer = two
    point = "SELECT v FROM t WHERE id = ?"
    first, second = reader.execute(point, (1,)), reader.execute(point, (2,))
    done = reader.execute(point, (3,))
    assert done.fetchone() == ("v3",)  # finished, still held
    fourth = reader.execute("SELECT id FROM t WHERE id > ? ORDER BY id", (3,))
    assert (first.fetchone(), second.fetchone(), fourth.fetchall(), done.fetchone()) == (
        ("v1",),
        ("v2",),
        [(4,), (5,)],
        None,
    )
    del first, second, fourth, done
    last = reader.execute(point, (3,))
    assert last.fetchone() == ("v3",)  # finished: its APSW cursor is idle now
    last.close()
    del last
    assert [reader.execute(point, (i,)).fetchone() for i in (4, 5, 6)] == [("v4",), ("v5",), None]


@pytest.mark.skipif(connection_module._UNSHARED < 0, reason="this interpreter's reference counts are not exact")
def test_loops_of_point_reads_reuse_their_apsw_cursors(two):
    reader, _writer = two
    point = "SELECT v FROM t WHERE id = ?"
    used: list[weakref.ref[apsw.Cursor]] = []  # weak: a strong reference would keep it from reuse

    def distinct() -> int:
        alive = [ref() for ref in used]
        assert None not in alive, "an APSW cursor was freed, so the count would be wrong"
        return len({id(c) for c in alive})

    for i in range(1, 6):  # nothing holds the Cursor once its row is read
        cursor = reader.execute(point, (i,))
        assert cursor.fetchone() == (f"v{i}",)
        used.append(weakref.ref(cursor._cursor))
        del cursor
    assert distinct() == 1
    used.clear()
    for i in range(1, 6):  # the previous Cursor is still held while the next one is made
        cursor = reader.execute(point, (i,))
        assert cursor.fetchone() == (f"v{i}",)
        used.append(weakref.ref(cursor._cursor))
    assert distinct() == 2


# --- what each statement's cursor keeps, whatever runs after it ---------------------------------------


def _statement_results(connect: Callable[[str], Any], path: str) -> list[Any]:
    """What a script of statements leaves on each cursor, read after later statements ran."""
    conn = connect(path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    out: list[Any] = []
    a = conn.execute("INSERT INTO t (v) VALUES ('a')")
    b = conn.execute("INSERT INTO t (id, v) VALUES (10, 'b')")
    c = conn.cursor()
    c.execute("UPDATE t SET v = v || '!'")
    d = conn.execute("SELECT v FROM t WHERE id = ?", (10,))
    conn.commit()
    conn.execute("DELETE FROM t WHERE id = 10")  # changes() and last_insert_rowid() move on
    conn.execute("INSERT INTO t (v) VALUES ('e')")
    for cursor in (a, b, c, d):  # each still says what its own statement did
        out.append((cursor.rowcount, cursor.lastrowid, cursor.description is None))
    out.append(d.fetchone())
    # a cursor used again: the second statement's values, nothing left of the first
    c.execute("INSERT INTO t (v) VALUES ('f')")
    out.append((c.rowcount, c.lastrowid, c.description))
    c.execute("SELECT id FROM t ORDER BY id")
    out.append((c.rowcount, c.lastrowid, [col[0] for col in c.description], c.fetchall()))
    c.execute("DELETE FROM t WHERE v = 'none'")
    out.append((c.rowcount, c.lastrowid, c.description, c.fetchone()))
    # a cursor from execute starts as one from cursor() does
    fresh, made = conn.execute("SELECT 1"), conn.cursor()
    out.append((fresh.arraysize, made.arraysize, made.rowcount, made.lastrowid, made.description))
    out.append((fresh.connection is conn, made.connection is conn))
    conn.close()
    return out


def test_each_cursor_keeps_its_statements_rowcount_and_lastrowid_like_sqlite3(tmp_path: Path, key: str | None) -> None:
    ours = _statement_results(lambda p: turso_sync.connect(p, encryption_key=key), str(tmp_path / "ours.db"))
    theirs = _statement_results(sqlite3.connect, str(tmp_path / "stdlib.db"))
    assert ours == theirs


def test_a_row_factory_set_on_the_connection_reaches_cursors_from_execute(tmp_path: Path, key: str | None) -> None:
    conn = turso_sync.connect(tmp_path / "f.db", encryption_key=key)
    assert conn.execute("SELECT 1 AS one").fetchone() == (1,)
    conn.row_factory = lambda cursor, row: dict(zip([c[0] for c in cursor.description], row, strict=True))
    assert conn.execute("SELECT 1 AS one").fetchone() == {"one": 1}
    assert conn.cursor().execute("SELECT 2 AS two").fetchone() == {"two": 2}
    conn.row_factory = None
    assert conn.execute("SELECT 3").fetchone() == (3,)
    conn.close()
