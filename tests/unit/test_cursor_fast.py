"""The DB-API statement path that ``_speedups.CursorBase`` / ``ConnectionBase`` run in C (issue 12).

With the compiled helper, ``Cursor.execute``, ``Cursor.fetchone`` and ``Connection.execute`` are C
methods of the cursor's and the connection's base types, which decide on their own the common
path (a statement of one, no capture or a read, no row factory on a query) and hand everything
else to the Python methods.  Make runs this file twice, the second time with
``TURSO_SYNC_PURE_PYTHON=1`` (the Python twins), so each test holds for both.
"""

from __future__ import annotations

import gc
import sqlite3
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

import turso_sync
from tests.unit.capture_replica import open_capture_replica
from turso_sync._compiled import pure_python_forced, speedups
from turso_sync.local import connection as connection_module
from turso_sync.local.capture import OUTBOX_TABLE
from turso_sync.local.connection import Connection, Cursor

COMPILED = speedups() is not None and not pure_python_forced()


@pytest.fixture
def conn(tmp_path: Path, key: str | None) -> Iterator[Connection]:
    """A connection to a database holding t(id, v) with three rows."""
    connection = turso_sync.connect(tmp_path / "db", encryption_key=key)
    connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    connection.executemany("INSERT INTO t VALUES (?, ?)", [(1, "a"), (2, "b"), (3, "c")])
    connection.commit()
    yield connection
    connection.close()


def test_the_compiled_path_is_used_exactly_when_the_helper_is() -> None:
    base = connection_module._compiled.CursorBase if COMPILED else connection_module._CursorState
    assert Cursor.__mro__[1] is base
    assert ("execute" in vars(Cursor)) is not COMPILED and ("fetchone" in vars(Cursor)) is not COMPILED
    assert ("execute" in vars(Connection)) is not COMPILED
    if COMPILED:
        assert type(Cursor.execute).__name__ == "method_descriptor"
        assert Connection.execute is connection_module._compiled.ConnectionBase.execute


def test_closed_cursors_and_connections_refuse_statements(conn: Connection) -> None:
    cursor = conn.execute("SELECT v FROM t ORDER BY id")
    cursor.close()
    for call in (lambda: cursor.execute("SELECT 1"), cursor.fetchone, cursor.fetchall):
        with pytest.raises(turso_sync.ProgrammingError, match="closed cursor"):
            call()
    open_one = conn.execute("SELECT v FROM t ORDER BY id")
    assert open_one.fetchone() == ("a",)
    conn.close()
    for call in (
        lambda: conn.execute("SELECT 1"),
        lambda: open_one.execute("SELECT 1"),
        open_one.fetchone,
        conn.cursor,
    ):
        with pytest.raises(turso_sync.ProgrammingError, match="closed database"):
            call()


@pytest.mark.parametrize(
    ("sql", "parameters"),
    [
        ("SELECT v FROM t WHERE id = ?", ()),  # too few
        ("SELECT v FROM t WHERE id = ?", (1, 2)),  # too many
        ("SELECT v FROM t WHERE id = :id", {"other": 1}),  # a missing name
        ("INSERT INTO t VALUES (?, ?)", (9, object())),  # a value SQLite cannot store
        ("SELECT v FROM t WHERE id = ?", 5),  # not a sequence
    ],
)
def test_bad_parameters_are_a_programming_error_and_leave_the_cursor_empty(
    conn: Connection, sql: str, parameters: Any
) -> None:
    cursor = conn.cursor()
    cursor.execute("SELECT v FROM t ORDER BY id")
    with pytest.raises(turso_sync.ProgrammingError) as caught:
        cursor.execute(sql, parameters)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert isinstance(caught.value.__context__, apsw.Error | KeyError | TypeError | ValueError)
    assert cursor.description is None
    assert conn._idle is not cursor._cursor and conn._idle_before is not cursor._cursor
    with pytest.raises(turso_sync.ProgrammingError):
        conn.execute(sql, parameters)
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (3,)  # nothing was written


def test_sqlite_errors_are_translated_from_none(conn: Connection) -> None:
    with pytest.raises(turso_sync.IntegrityError) as caught:
        conn.execute("INSERT INTO t VALUES (?, ?)", (1, "again"))
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert isinstance(caught.value.__context__, apsw.ConstraintError)
    with pytest.raises(turso_sync.OperationalError, match="no such table"):
        conn.execute("SELECT * FROM missing")
    conn.rollback()


def test_keyword_arguments_and_their_mistakes(conn: Connection) -> None:
    assert conn.execute(sql="SELECT v FROM t WHERE id = ?", parameters=(2,)).fetchone() == ("b",)
    assert conn.cursor().execute("SELECT v FROM t WHERE id = :id", parameters={"id": 3}).fetchone() == ("c",)
    assert conn.execute("SELECT 7").fetchone() == (7,)  # parameters default to none
    with pytest.raises(TypeError):
        conn.execute()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        conn.execute("SELECT 1", (), ())  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        conn.cursor().execute("SELECT 1", params=())  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        conn.execute("SELECT 1", sql="SELECT 2")  # type: ignore[misc]


def test_a_statement_that_finishes_on_its_first_row_is_idle_after_one_fetch(conn: Connection) -> None:
    cursor = conn.execute("SELECT v FROM t WHERE id = ?", (2,))
    assert cursor._rows is cursor._cursor  # pending until the first fetch looks ahead
    assert conn._idle is not cursor._cursor
    assert cursor.fetchone() == ("b",)
    assert cursor._rows is None and conn._idle is cursor._cursor  # finished: snapshot released
    assert cursor.fetchone() is None and cursor.fetchall() == []
    assert cursor.description == (("v", None, None, None, None, None, None),)
    missed = conn.execute("SELECT v FROM t WHERE id = ?", (9,))
    assert missed.fetchone() is None and missed._rows is None
    assert missed.description == (("v", None, None, None, None, None, None),)
    two = conn.execute("SELECT v FROM t WHERE id < ? ORDER BY id", (3,))
    assert two.fetchone() == ("a",) and two._rows is not None  # one more row to come
    assert two.fetchone() == ("b",) and two._rows is None
    assert (two.rowcount, two.lastrowid) == (-1, 3)  # the connection's last insert (executemany's)


def test_rowcount_and_lastrowid_follow_each_statement(conn: Connection) -> None:
    cursor = conn.execute("INSERT INTO t VALUES (?, ?)", (10, "j"))
    assert (cursor.rowcount, cursor.lastrowid, cursor.description) == (1, 10, None)
    assert conn.in_transaction  # the implicit BEGIN
    cursor.execute("UPDATE t SET v = v || '!' WHERE id < ?", (3,))
    assert (cursor.rowcount, cursor.lastrowid) == (2, 10)
    cursor.execute("SELECT 1")
    assert cursor.rowcount == -1
    conn.rollback()
    fresh = conn.cursor()
    assert (fresh.rowcount, fresh.lastrowid, fresh.description, fresh.arraysize) == (-1, None, None, 1)
    conn.isolation_level = None
    conn.execute("INSERT INTO t VALUES (11, 'k')")
    assert not conn.in_transaction  # no implicit BEGIN without an isolation level


def test_row_factories_on_the_connection_and_on_the_cursor(conn: Connection) -> None:
    seen: list[Any] = []

    def factory(cursor: Any, row: tuple[Any, ...]) -> dict[str, Any]:
        seen.append(cursor.description)
        return {d[0]: value for d, value in zip(cursor.description, row, strict=True)}

    conn.row_factory = factory
    assert conn.execute("SELECT id, v FROM t WHERE id = ?", (1,)).fetchone() == {"id": 1, "v": "a"}
    assert [row["v"] for row in conn.execute("SELECT id, v FROM t ORDER BY id")] == ["a", "b", "c"]
    conn.row_factory = None
    cursor = conn.execute("SELECT id, v FROM t ORDER BY id")
    assert cursor.fetchone() == (1, "a")
    cursor.row_factory = lambda _cursor, row: row[1]
    assert (cursor.fetchone(), cursor.fetchall()) == ("b", ["c"])
    assert len(seen) == 4


def test_an_error_mid_iteration_is_translated_and_ends_nothing_else(conn: Connection) -> None:
    sql = "SELECT abs(x) FROM (SELECT 1 AS x UNION ALL SELECT -9223372036854775808 UNION ALL SELECT 3)"
    with sqlite3.connect(":memory:") as reference:
        ref = reference.execute(sql)
        with pytest.raises(sqlite3.OperationalError, match="overflow"):
            ref.fetchall()
    cursor = conn.execute(sql)
    with pytest.raises(turso_sync.OperationalError, match="overflow") as caught:
        cursor.fetchone()  # its look-ahead steps onto the bad row
    assert caught.value.__suppress_context__ and isinstance(caught.value.__context__, apsw.Error)
    with pytest.raises(turso_sync.OperationalError, match="overflow"):
        list(conn.execute(sql))
    with pytest.raises(turso_sync.OperationalError, match="overflow"):
        conn.execute(sql).fetchall()
    assert conn.execute("SELECT v FROM t WHERE id = ?", (3,)).fetchone() == ("c",)


def test_iterating_a_cursor_acts_as_the_generator_did(conn: Connection) -> None:
    cursor = conn.execute("SELECT id FROM t ORDER BY id")
    rows = iter(cursor)  # nothing is checked or read before the first next()
    cursor.close()
    with pytest.raises(turso_sync.ProgrammingError, match="closed cursor"):
        next(rows)
    assert list(rows) == []  # finished by its error
    cursor = conn.execute("SELECT id FROM t ORDER BY id")
    assert cursor.fetchone() == (1,)  # (2,) is looked ahead
    assert list(cursor) == [(2,), (3,)]
    assert cursor._rows is None and conn._idle is cursor._cursor  # finished: idle
    assert list(cursor) == [] and cursor.fetchone() is None
    assert list(conn.execute("SELECT id FROM t WHERE id > 9")) == []
    cursor = conn.execute("SELECT id FROM t ORDER BY id")
    for row in cursor:
        assert row == (1,)
        break
    assert cursor._rows is cursor._cursor and conn._idle is not cursor._cursor  # left pending
    assert cursor.fetchall() == [(2,), (3,)]  # as in sqlite3 (a generator's `yield from` closed the APSW cursor)
    for _row in cursor.execute("SELECT id FROM t ORDER BY id"):
        break
    assert cursor.execute("SELECT 5").fetchall() == [(5,)]
    conn.row_factory = lambda _c, row: row[0] * 10
    cursor = conn.execute("SELECT id FROM t ORDER BY id")
    assert cursor.fetchone() == 10
    rows = iter(cursor)
    assert next(rows) == 20  # the look-ahead row, through the factory of the moment
    cursor.row_factory = None
    assert list(rows) == [(3,)]
    cursor = conn.execute("SELECT id FROM t ORDER BY id")
    rows = iter(cursor)
    assert next(rows) == 10
    cursor.row_factory = None  # the factory is read once, when the rows start
    assert list(rows) == [20, 30]


def test_an_error_ends_an_iteration(conn: Connection) -> None:
    rows = iter(conn.execute("SELECT abs(x) FROM (SELECT 1 AS x UNION ALL SELECT -9223372036854775808)"))
    assert next(rows) == (1,)
    with pytest.raises(turso_sync.OperationalError, match="overflow") as caught:
        next(rows)
    assert caught.value.__suppress_context__ and isinstance(caught.value.__context__, apsw.Error)
    assert list(rows) == []

    def failing(_cursor: Any, row: tuple[Any, ...]) -> Any:
        if row[0] == 2:
            raise ValueError("not this row")
        return row

    cursor = conn.execute("SELECT id FROM t ORDER BY id")
    cursor.row_factory = failing
    rows = iter(cursor)
    assert next(rows) == (1,)
    with pytest.raises(ValueError, match="not this row"):
        next(rows)
    assert list(rows) == []


def test_an_iteration_error_is_translated_after_the_cursor_class_changed(conn: Connection) -> None:
    # (the C iterator once looked the cursor's connection up with the error still set: when the
    # lookup missed the type attribute cache, as after any change to the class, that lookup failed
    # with AttributeError instead)
    sql = "SELECT abs(x) FROM (SELECT 1 AS x UNION ALL SELECT -9223372036854775808)"
    for operation in (lambda rows: next(rows), lambda rows: list(rows)):
        rows = iter(conn.execute(sql))
        assert next(rows) == (1,)
        Cursor.spare_attribute = None  # type: ignore[attr-defined]
        del Cursor.spare_attribute  # type: ignore[attr-defined]
        with pytest.raises(turso_sync.OperationalError, match="overflow"):
            operation(rows)
    cursor = conn.execute(sql)
    Cursor.spare_attribute = None  # type: ignore[attr-defined]
    del Cursor.spare_attribute  # type: ignore[attr-defined]
    with pytest.raises(turso_sync.OperationalError, match="overflow"):
        cursor.fetchall()


def holding(target: object) -> Any:
    """A row factory that holds ``target`` (a reference cycle when set on it)."""
    return lambda _cursor, row: (target, row)


def test_a_cursor_in_a_reference_cycle_is_collected(conn: Connection) -> None:
    cursor = conn.execute("SELECT v FROM t ORDER BY id")
    cursor.row_factory = holding(cursor)  # cursor -> its row factory -> cursor
    assert cursor.fetchone()[0] is cursor
    ref = weakref.ref(cursor)
    del cursor
    gc.collect()
    assert ref() is None


def test_a_connection_in_a_reference_cycle_is_collected(tmp_path: Path) -> None:
    connection = turso_sync.connect(tmp_path / "cycle.db")
    connection.row_factory = holding(connection)  # its own row factory holds it
    cursor = connection.execute("SELECT 1")
    assert cursor.fetchone() == (connection, (1,))
    ref = weakref.ref(connection)
    del connection, cursor
    gc.collect()
    assert ref() is None


def test_cursor_attributes_hold_what_is_stored(conn: Connection) -> None:
    cursor = conn.cursor()
    cursor.arraysize = 2
    assert cursor.fetchmany() == [] and cursor.fetchone() is None
    cursor.execute("SELECT id FROM t ORDER BY id")
    assert cursor.fetchmany() == [(1,), (2,)]
    cursor.extra = "an attribute of the caller's"  # type: ignore[attr-defined]
    assert cursor.extra == "an attribute of the caller's"  # type: ignore[attr-defined]
    assert cursor.connection is conn
    assert not cursor._closed


# --- a replica's writes still take the capture -----------------------------------------------------


@pytest.fixture
def replica(tmp_path: Path, key: str | None) -> Iterator[Connection]:
    replica = open_capture_replica(tmp_path / "r.db", key, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    yield replica
    replica.close()


def pushed(replica: Connection) -> list[tuple[Any, ...]]:
    """The new values of each change in the outbox, in order."""
    out = []
    for (changeset,) in replica.apsw_connection.execute(f"SELECT changeset FROM {OUTBOX_TABLE} ORDER BY id"):
        out.extend(change.new for change in apsw.Changeset.iter(changeset))
    return out


def test_a_replicas_writes_through_either_execute_are_captured(replica: Connection) -> None:
    replica.execute("INSERT INTO t VALUES (?, ?)", (1, "conn"))  # the implicit BEGIN
    assert replica.in_transaction
    cursor = replica.cursor()
    cursor.execute("INSERT INTO t VALUES (:id, :v)", {"id": 2, "v": "cursor"})
    assert cursor.rowcount == 1 and cursor.lastrowid == 2
    assert cursor.execute("SELECT v FROM t WHERE id = ?", (2,)).fetchone() == ("cursor",)  # a read
    replica.execute("COMMIT")  # through the capture: one outbox row
    assert not replica.in_transaction
    replica.isolation_level = None
    cursor.execute("INSERT INTO t VALUES (3, 'autocommit')")  # committed at once, with its capture
    assert not replica.in_transaction
    assert pushed(replica) == [(1, "conn"), (2, "cursor"), (3, "autocommit")]
    outbox_rows = replica.apsw_connection.execute(f"SELECT count(*) FROM {OUTBOX_TABLE}").fetchall()
    assert outbox_rows == [(2,)]
