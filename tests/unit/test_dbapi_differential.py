"""The DB-API wrapper against stdlib sqlite3, operation by operation (a differential checker).

Hypothesis draws a sequence of operations on up to three cursors of one connection: statements
run through ``Connection.execute``, ``Cursor.execute`` or ``executemany`` (reads, writes,
statements that fail, bad parameters), fetches (``fetchone``, ``fetchmany``, ``fetchall``, an iteration broken off
after some rows), commit and rollback, closing a cursor, and reads of ``rowcount``,
``lastrowid`` and ``description``.  Each is applied to a turso_sync connection (encrypted and
plaintext) and to a stdlib ``sqlite3`` connection on a file of its own, and what comes back must
be the same: rows, attribute values, or the DB-API class of the error raised.  Seeded
(``derandomize``) and shrinking; ``make test`` runs it with the compiled statement path and again
with its pure-Python twin (``TURSO_SYNC_PURE_PYTHON=1``, Makefile's PURE_PYTHON_TESTS).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import turso_sync
from tests.conftest import KEY256

SCHEMA = "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE)"

# (sql, how many parameters it takes); the ids are small so that writes meet each other's rows
STATEMENTS: list[tuple[str, int]] = [
    ("INSERT INTO t (v) VALUES (?)", 1),
    ("INSERT INTO t (id, v) VALUES (?, ?)", 2),  # may break the primary key: IntegrityError
    ("INSERT OR REPLACE INTO t (id, v) VALUES (?, ?)", 2),
    ("UPDATE t SET v = v || ? WHERE id = ?", 2),
    ("DELETE FROM t WHERE id = ?", 1),
    ("SELECT id, v FROM t WHERE id = ?", 1),
    ("SELECT id, v FROM t ORDER BY id", 0),
    ("SELECT count(*) AS n FROM t", 0),
    ("SELECT id FROM t WHERE id < 0", 0),  # no row
    ("SELEC id FROM t", 0),  # a syntax error
    ("SELECT id, v FROM t WHERE id = ?", 2),  # too many parameters
    ("INSERT INTO t (v) VALUES (?)", 0),  # too few
]

CURSORS = 3
statement = st.tuples(st.integers(0, len(STATEMENTS) - 1), st.integers(1, 6), st.sampled_from(["a", "b", "c", "d"]))
OPERATION = st.one_of(
    st.tuples(st.just("conn_execute"), st.integers(0, CURSORS - 1), statement),
    st.tuples(st.just("cursor_execute"), st.integers(0, CURSORS - 1), statement),
    st.tuples(st.just("executemany"), st.integers(0, CURSORS - 1), st.lists(statement, max_size=4)),
    st.tuples(st.just("fetchone"), st.integers(0, CURSORS - 1)),
    # (not size 0: CPython 3.11's sqlite3 then fetches every row, PEP 249 says nothing of it)
    st.tuples(st.just("fetchmany"), st.integers(0, CURSORS - 1), st.integers(1, 3)),
    st.tuples(st.just("fetchall"), st.integers(0, CURSORS - 1)),
    st.tuples(st.just("iterate"), st.integers(0, CURSORS - 1), st.integers(0, 3)),
    st.tuples(st.just("attributes"), st.integers(0, CURSORS - 1)),
    st.tuples(st.just("close"), st.integers(0, CURSORS - 1)),
    st.tuples(st.just("commit")),
    st.tuples(st.just("rollback")),
    st.tuples(st.just("in_transaction")),
)


def _parameters(index: int, key: int, text: str) -> tuple[Any, ...]:
    sql, count = STATEMENTS[index]
    return (text * key, key, key)[:count] if "(id, v)" not in sql else (key, text * key)


def _error_name(exc: BaseException) -> str:
    """The DB-API class an error belongs to (both modules name them alike), else its own name."""
    for name in ("IntegrityError", "ProgrammingError", "OperationalError", "InterfaceError", "DatabaseError"):
        if type(exc).__name__ == name or any(c.__name__ == name for c in type(exc).__mro__):
            return name
    return type(exc).__name__


class Side:
    """One connection and its cursor slots, applying operations and saying what came back."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.cursors: list[Any] = [conn.cursor() for _ in range(CURSORS)]
        self.closed: set[int] = set()  # slots holding a closed cursor

    def apply(self, op: tuple[Any, ...]) -> object:
        try:
            return self._apply(op)
        except Exception as exc:  # the error's DB-API class is the answer compared
            return ("error", _error_name(exc))

    def _apply(self, op: tuple[Any, ...]) -> object:
        kind = op[0]
        if kind in ("conn_execute", "cursor_execute"):
            slot, (index, key, text) = op[1], op[2]
            sql = STATEMENTS[index][0]
            parameters = _parameters(index, key, text)
            if kind == "conn_execute":
                self.cursors[slot] = self.conn.execute(sql, parameters)
                self.closed.discard(slot)
            else:
                self.cursors[slot].execute(sql, parameters)
            return "ran"
        if kind == "executemany":
            # one statement (the first drawn one's) with each drawn parameter set; a query is refused
            if not op[2]:
                return "nothing"
            index = op[2][0][0]
            batch = [_parameters(index, key, text) for _index, key, text in op[2]]
            self.cursors[op[1]].executemany(STATEMENTS[index][0], batch)
            return "ran many"
        if kind == "fetchone":
            return self.cursors[op[1]].fetchone()
        if kind == "fetchmany":
            return self.cursors[op[1]].fetchmany(op[2])
        if kind == "fetchall":
            return self.cursors[op[1]].fetchall()
        if kind == "iterate":
            rows: list[Any] = []
            for row in self.cursors[op[1]]:
                if len(rows) == op[2]:
                    break
                rows.append(row)
            return rows
        if kind == "attributes":
            if op[1] in self.closed:
                # (not compared: sqlite3 sets a closed cursor's rowcount to -1 when execute is
                # refused on it, which is of no use to anyone)
                return "closed"
            cursor = self.cursors[op[1]]
            description = cursor.description
            names = None if description is None else [column[0] for column in description]
            return cursor.rowcount, cursor.lastrowid, names
        if kind == "close":
            self.cursors[op[1]].close()
            self.closed.add(op[1])
            return "closed"
        if kind == "commit":
            self.conn.commit()
            return "committed"
        if kind == "rollback":
            self.conn.rollback()
            return "rolled back"
        if kind == "in_transaction":
            return self.conn.in_transaction
        raise AssertionError(kind)


def _check(ours_conn: Any, theirs_conn: Any, operations: list[tuple[Any, ...]]) -> None:
    for conn in (ours_conn, theirs_conn):
        conn.execute(SCHEMA)
        conn.commit()
    ours, theirs = Side(ours_conn), Side(theirs_conn)
    for step, op in enumerate(operations):
        expected = theirs.apply(op)
        got = ours.apply(op)
        assert got == expected, f"step {step} {op}: sqlite3 {expected!r}, turso_sync {got!r}"
    ours_conn.commit()
    theirs_conn.commit()
    rows = "SELECT id, v FROM t ORDER BY id"
    assert ours_conn.execute(rows).fetchall() == theirs_conn.execute(rows).fetchall()


@pytest.mark.parametrize("encrypted", [False, True], ids=["plaintext", "encrypted"])
@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(operations=st.lists(OPERATION, max_size=30))
def test_the_wrapper_answers_as_sqlite3_does(
    tmp_path: Path, encrypted: bool, operations: list[tuple[Any, ...]]
) -> None:
    case = tmp_path / f"case-{len(list(tmp_path.iterdir()))}"
    case.mkdir()
    ours = turso_sync.connect(case / "ours.db", encryption_key=KEY256 if encrypted else None)
    theirs = sqlite3.connect(case / "theirs.db")
    try:
        _check(ours, theirs, operations)
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize("module", ["turso_sync", "sqlite3"])
def test_what_the_model_leaves_out_still_agrees(tmp_path: Path, module: str) -> None:
    # fetchmany(0) on a closed cursor raises (the model draws sizes from 1); executemany refuses a
    # query before it runs, also one that would find no row and an empty parameter list
    conn: Any = turso_sync.connect(tmp_path / "t.db") if module == "turso_sync" else sqlite3.connect(tmp_path / "t.db")
    try:
        conn.execute(SCHEMA)
        cursor = conn.execute("SELECT id FROM t")
        cursor.close()
        with pytest.raises(Exception) as closed:
            cursor.fetchmany(0)
        assert _error_name(closed.value) == "ProgrammingError"
        for parameters in ([(1,)], []):
            with pytest.raises(Exception) as refused:
                conn.executemany("SELECT id FROM t WHERE id = ?", parameters)
            assert _error_name(refused.value) == "ProgrammingError"
    finally:
        conn.close()
