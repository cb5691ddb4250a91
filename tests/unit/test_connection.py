"""The DB-API connection behaves like stdlib ``sqlite3``: the same script, the same observations.

Each scenario below is one function that drives a connection and returns what it saw (results,
attributes, and the *name* of any exception raised).  It runs once against stdlib ``sqlite3``
and once against ``turso_sync`` (plaintext and encrypted), and the two transcripts must match.
Exceptions from ``turso_sync`` must also belong to its own DB-API hierarchy, so an application's
``except turso_sync.IntegrityError`` catches what ``except sqlite3.IntegrityError`` did.
"""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import turso_sync
from tests.childlines import ChildLines

KEY256 = "8c1f0e7d6a5b4c3d2e1f00112233445566778899aabbccddeeff0011223344ab"

Connect = Callable[..., Any]
Scenario = Callable[[Any], list[Any]]

_OUTSIDE_DBAPI = OverflowError  # stdlib raises these too, outside its DB-API hierarchy


@pytest.fixture(params=["plaintext", "encrypted"])
def turso_connect(request: pytest.FixtureRequest) -> Connect:
    """``turso_sync.connect`` with or without a key."""
    if request.param == "plaintext":
        return turso_sync.connect
    return lambda path, **kw: turso_sync.connect(path, encryption_key=KEY256, **kw)


class Transcript:
    """Collects observations; an exception is recorded by its class name."""

    def __init__(self, is_turso: bool) -> None:
        self.is_turso = is_turso
        self.lines: list[tuple[str, Any]] = []

    def see(self, label: str, action: Callable[[], Any]) -> Any:
        try:
            value = action()
        except Exception as exc:
            if self.is_turso and not isinstance(exc, (turso_sync.Error, _OUTSIDE_DBAPI)):
                value = ("raised a non-DB-API exception", type(exc).__name__, str(exc))
            else:
                value = ("raised", type(exc).__name__)
        self.lines.append((label, _comparable(value)))
        return value


def _comparable(value: Any) -> Any:
    """Make values compare by content: -0.0 vs 0.0 and NaN are told apart by their repr."""
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, list | tuple):
        return type(value)(_comparable(v) for v in value)
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    return value


def compare(tmp_path: Path, turso_connect: Connect, scenario: Callable[[Any, Transcript], None], **kw: Any) -> None:
    """Run ``scenario`` on stdlib sqlite3 and on turso_sync; the transcripts must be equal."""
    transcripts = []
    for name, connect, is_turso in (
        ("stdlib.db", sqlite3.connect, False),
        ("turso.db", turso_connect, True),
    ):
        conn = connect(str(tmp_path / name), **kw)
        if not is_turso:
            conn.execute("PRAGMA journal_mode=WAL")  # turso_sync always runs in WAL mode
        t = Transcript(is_turso)
        try:
            scenario(conn, t)
        finally:
            conn.close()
        transcripts.append(t.lines)
    expected, actual = transcripts
    assert len(actual) == len(expected)
    for (label, want), (_, got) in zip(expected, actual, strict=True):
        assert got == want, f"{label}: sqlite3 gave {want!r}, turso_sync gave {got!r}"


def _table(conn: Any) -> None:
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, v)")


# --- scenarios compared against stdlib sqlite3 -------------------------------------------------


def test_positional_and_named_parameters(tmp_path, turso_connect):
    def scenario(conn: Any, t: Transcript) -> None:
        _table(conn)
        t.see("qmark", lambda: conn.execute("INSERT INTO t(name, v) VALUES (?, ?)", ("a", 1)).rowcount)
        t.see("named", lambda: conn.execute("INSERT INTO t(name, v) VALUES (:n, :v)", {"n": "b", "v": 2}).rowcount)
        t.see("named reused", lambda: conn.execute("SELECT :x, :y, :x", {"x": 1, "y": "z"}).fetchall())
        t.see("numbered", lambda: conn.execute("SELECT ?2, ?1", ("first", "second")).fetchall())
        t.see("list params", lambda: conn.execute("SELECT ?, ?", [3, 4]).fetchone())
        t.see("too many", lambda: conn.execute("SELECT ?", (1, 2)))
        t.see("too few", lambda: conn.execute("SELECT ?, ?", (1,)))
        t.see("where", lambda: conn.execute("SELECT name FROM t WHERE v > ? ORDER BY id", (0,)).fetchall())

    compare(tmp_path, turso_connect, scenario)


def test_executemany_rowcount_and_lastrowid(tmp_path, turso_connect):
    def scenario(conn: Any, t: Transcript) -> None:
        _table(conn)
        cur = conn.cursor()
        t.see("fresh cursor", lambda: (cur.rowcount, cur.lastrowid, cur.description))
        t.see("insert", lambda: (cur.execute("INSERT INTO t(name) VALUES ('a')").rowcount, cur.lastrowid))
        t.see("insert 2", lambda: (cur.execute("INSERT INTO t(name) VALUES ('b')").rowcount, cur.lastrowid))
        rows = [(f"n{i}", i) for i in range(25)]
        t.see("many tuples", lambda: conn.executemany("INSERT INTO t(name, v) VALUES (?, ?)", rows).rowcount)
        gen = ({"n": f"g{i}"} for i in range(7))
        t.see("many generator, named", lambda: conn.executemany("INSERT INTO t(name) VALUES (:n)", gen).rowcount)
        t.see("many update", lambda: conn.executemany("UPDATE t SET v = ? WHERE v = ?", [(-1, 1), (-2, 2)]).rowcount)
        t.see("many none", lambda: conn.executemany("INSERT INTO t(name) VALUES (?)", []).rowcount)
        t.see("many select", lambda: conn.executemany("SELECT ?", [(1,)]))
        t.see("update", lambda: conn.execute("UPDATE t SET v = 0 WHERE v IS NULL").rowcount)
        t.see("delete", lambda: conn.execute("DELETE FROM t WHERE name LIKE 'g%'").rowcount)
        t.see("delete none", lambda: conn.execute("DELETE FROM t WHERE 0").rowcount)
        t.see(
            "replace",
            lambda: (lambda c: (c.rowcount, c.lastrowid))(conn.execute("REPLACE INTO t(id, name) VALUES (1, 'r')")),
        )
        t.see("explicit id", lambda: conn.execute("INSERT INTO t(id, name) VALUES (1000, 'k')").lastrowid)
        t.see("failed insert keeps lastrowid", lambda: _failed_insert_lastrowid(conn))
        t.see("total_changes", lambda: conn.total_changes)
        t.see("select rowcount", lambda: conn.execute("SELECT * FROM t").rowcount)

    compare(tmp_path, turso_connect, scenario)


def _failed_insert_lastrowid(conn: Any) -> Any:
    cur = conn.cursor()
    cur.execute("INSERT INTO t(name) VALUES ('unique one')")
    before = cur.lastrowid
    try:
        cur.execute("INSERT INTO t(name) VALUES ('unique one')")
    except Exception as exc:
        return before, cur.lastrowid, type(exc).__name__
    return "no error"


def test_executemany_leaves_lastrowid_unchanged_like_sqlite3(tmp_path, turso_connect):
    def scenario(conn: Any, t: Transcript) -> None:
        _table(conn)
        cur = conn.cursor()
        cur.executemany("INSERT INTO t(name) VALUES (?)", [("a",), ("b",)])
        t.see("lastrowid after executemany", lambda: cur.lastrowid)

    compare(tmp_path, turso_connect, scenario)


def test_description_fetchmany_and_iteration(tmp_path, turso_connect):
    def scenario(conn: Any, t: Transcript) -> None:
        _table(conn)
        conn.executemany("INSERT INTO t(name, v) VALUES (?, ?)", [(f"n{i:02d}", i * 1.5) for i in range(23)])
        cur = conn.execute("SELECT id, name AS label, v * 2 FROM t ORDER BY id")
        t.see("description", lambda: cur.description)
        t.see("fetchone", lambda: cur.fetchone())
        t.see("fetchmany default", lambda: cur.fetchmany())
        t.see("fetchmany 5", lambda: cur.fetchmany(5))
        cur.arraysize = 4
        t.see("fetchmany arraysize", lambda: cur.fetchmany())
        t.see("iterate rest", lambda: list(cur))
        t.see("exhausted fetchone", lambda: cur.fetchone())
        t.see("exhausted fetchmany", lambda: cur.fetchmany(3))
        t.see("exhausted fetchall", lambda: cur.fetchall())
        t.see("description kept", lambda: cur.description)
        t.see("reuse cursor", lambda: (cur.execute("SELECT 1 AS one, 'x'").description, cur.fetchall()))
        t.see("dml description", lambda: cur.execute("UPDATE t SET v = 0 WHERE id = 1").description)
        t.see("dml fetch", lambda: (cur.fetchone(), cur.fetchall()))
        t.see("fetchmany larger", lambda: conn.execute("SELECT id FROM t WHERE id < 4").fetchmany(100))
        t.see("for loop", lambda: list(conn.execute("SELECT name FROM t WHERE id <= 3")))
        t.see(
            "cte",
            lambda: conn.execute(
                "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 50) SELECT sum(n) FROM s"
            ).fetchall(),
        )
        t.see("returning", lambda: conn.execute("INSERT INTO t(name) VALUES ('ret') RETURNING id, name").fetchall())
        t.see("pragma", lambda: conn.execute("PRAGMA user_version").fetchall())

    compare(tmp_path, turso_connect, scenario)


def test_description_of_an_empty_result(tmp_path, turso_connect):
    def scenario(conn: Any, t: Transcript) -> None:
        _table(conn)
        cur = conn.execute("SELECT id, name FROM t WHERE 0")
        t.see("empty result", lambda: (cur.description, cur.fetchall()))

    compare(tmp_path, turso_connect, scenario)


def test_description_read_late_is_the_querys(tmp_path, turso_connect):
    # turso_sync reads a query's columns only when ``description`` is asked for: from the running
    # statement, or (once it finished) by preparing it again; either way, what sqlite3 says
    def scenario(conn: Any, t: Transcript) -> None:
        _table(conn)
        conn.executemany("INSERT INTO t(name, v) VALUES (?, ?)", [(f"n{i}", i * 0.5) for i in range(5)])
        point = "SELECT id, name AS label, v + 1 FROM t WHERE id = ?"
        cur = conn.execute(point, (2,))
        t.see("point read, then description", lambda: (cur.fetchone(), cur.description))
        cur = conn.execute(point, (99,))
        t.see("point read that missed", lambda: (cur.fetchone(), cur.description))
        cur = conn.execute("SELECT name, id FROM t ORDER BY id")
        t.see("one row read", lambda: (cur.fetchone(), cur.description))
        t.see("rest read", lambda: (cur.fetchall(), cur.description))
        cur = conn.execute("SELECT v FROM t ORDER BY id")
        t.see("iterated", lambda: (list(cur), cur.description))
        t.see("same cursor, another query", lambda: (cur.execute(point, (3,)).fetchall(), cur.description))
        t.see("then a write", lambda: (cur.execute("UPDATE t SET v = 0 WHERE id = 1").description, cur.rowcount))
        t.see("returning", lambda: cur.execute("DELETE FROM t WHERE id = 5 RETURNING id, name").description)
        t.see("returning rows", lambda: (cur.fetchall(), cur.description))

        def as_dict(cursor: Any, row: tuple[Any, ...]) -> dict[str, Any]:
            return {d[0]: value for d, value in zip(cursor.description, row, strict=True)}

        conn.row_factory = as_dict
        t.see("factory, point reads", lambda: [conn.execute(point, (k,)).fetchone() for k in (1, 2, 99)])
        t.see("factory, every row", lambda: conn.execute("SELECT id, name FROM t ORDER BY id").fetchall())
        conn.row_factory = None
        cur = conn.execute(point, (4,))
        cur.row_factory = as_dict  # set after the query ran: it still sees the columns
        t.see("factory set late", lambda: cur.fetchone())

    compare(tmp_path, turso_connect, scenario)


def test_implicit_transactions_commit_and_rollback(tmp_path, turso_connect):
    def scenario(conn: Any, t: Transcript) -> None:
        t.see("fresh", lambda: conn.in_transaction)
        _table(conn)
        t.see("after DDL", lambda: conn.in_transaction)
        conn.execute("SELECT * FROM t").fetchall()
        t.see("after SELECT", lambda: conn.in_transaction)
        conn.execute("INSERT INTO t(name) VALUES ('kept')")
        t.see("after INSERT", lambda: conn.in_transaction)
        conn.commit()
        t.see("after commit", lambda: conn.in_transaction)
        for sql in (
            "UPDATE t SET v = 1",
            "DELETE FROM t WHERE name = 'nobody'",
            "REPLACE INTO t(id, name) VALUES (50, 'r')",
            "/* comment */ -- line\n INSERT INTO t(name) VALUES ('commented')",
        ):
            conn.execute(sql)
            t.see(f"after {sql!r}", lambda: conn.in_transaction)
            conn.rollback()
            t.see(f"after rollback of {sql!r}", lambda: conn.in_transaction)
        t.see("rolled back rows", lambda: conn.execute("SELECT id, name, v FROM t ORDER BY id").fetchall())
        conn.execute("INSERT INTO t(name) VALUES ('discard me')")
        conn.execute("CREATE TABLE inside (x)")  # DDL inside an open transaction belongs to it
        conn.rollback()
        t.see("ddl rolled back", lambda: conn.execute("SELECT name FROM sqlite_schema ORDER BY name").fetchall())
        t.see("commit with nothing open", lambda: conn.commit())
        t.see("rollback with nothing open", lambda: conn.rollback())
        conn.execute("BEGIN")
        t.see("explicit BEGIN", lambda: conn.in_transaction)
        conn.execute("INSERT INTO t(name) VALUES ('explicit')")
        conn.rollback()
        t.see("explicit rolled back", lambda: conn.execute("SELECT count(*) FROM t").fetchone())
        conn.execute("INSERT INTO t(name) VALUES ('second')")
        conn.commit()
        conn.execute("CREATE TABLE other (x)")
        cur = conn.execute("SELECT name FROM t ORDER BY id")
        first = cur.fetchone()
        conn.execute("INSERT INTO other VALUES ('while reading')")
        conn.commit()
        t.see("cursor survives commit", lambda: (first, cur.fetchall(), conn.in_transaction))
        t.see("total_changes", lambda: conn.total_changes)

    compare(tmp_path, turso_connect, scenario)


def test_autocommit_when_isolation_level_is_none(tmp_path, turso_connect):
    def scenario(conn: Any, t: Transcript) -> None:
        _table(conn)
        conn.execute("INSERT INTO t(name) VALUES ('auto')")
        t.see("no implicit transaction", lambda: conn.in_transaction)
        conn.rollback()
        t.see("row stays", lambda: conn.execute("SELECT name FROM t").fetchall())
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t(name) VALUES ('manual')")
        t.see("manual transaction", lambda: conn.in_transaction)
        conn.execute("ROLLBACK")
        t.see("manual rolled back", lambda: conn.execute("SELECT name FROM t").fetchall())

    compare(tmp_path, turso_connect, scenario, isolation_level=None)


def test_context_manager_commits_or_rolls_back(tmp_path, turso_connect):
    def scenario(conn: Any, t: Transcript) -> None:
        _table(conn)

        def success() -> Any:
            with conn as entered:
                entered.execute("INSERT INTO t(name) VALUES ('committed')")
            return conn.in_transaction, entered is conn

        def failure() -> Any:
            try:
                with conn:
                    conn.execute("INSERT INTO t(name) VALUES ('rolled back')")
                    raise LookupError("application error")
            except LookupError:
                return conn.in_transaction
            return "no exception"

        def integrity() -> Any:
            try:
                with conn:
                    conn.execute("INSERT INTO t(name) VALUES ('before dup')")
                    conn.execute("INSERT INTO t(name) VALUES ('committed')")
            except Exception as exc:
                return type(exc).__name__, conn.in_transaction
            return "no exception"

        t.see("success", success)
        t.see("failure", failure)
        t.see("integrity error inside with", integrity)
        t.see("rows", lambda: conn.execute("SELECT name FROM t ORDER BY id").fetchall())
        t.see("still open", lambda: conn.execute("SELECT 1").fetchone())

    compare(tmp_path, turso_connect, scenario)


def test_executescript(tmp_path, turso_connect):
    def scenario(conn: Any, t: Transcript) -> None:
        _table(conn)
        conn.execute("INSERT INTO t(name) VALUES ('pending')")
        script = """
            CREATE TABLE s (x INTEGER, y TEXT);
            INSERT INTO s VALUES (1, 'one');
            SELECT * FROM s;  -- rows from a script are drained, not returned
            INSERT INTO s VALUES (2, 'two; with a semicolon');
            CREATE INDEX s_y ON s(y);
        """
        t.see("script", lambda: (lambda c: (c.rowcount, c.description, c.fetchall()))(conn.executescript(script)))
        t.see("pending committed first", lambda: conn.in_transaction)
        conn.rollback()
        t.see("pending kept", lambda: conn.execute("SELECT name FROM t").fetchall())
        t.see("script rows", lambda: conn.execute("SELECT * FROM s ORDER BY x").fetchall())
        t.see(
            "bad script", lambda: conn.executescript("INSERT INTO s VALUES (3, 'x'); INSERT INTO nowhere VALUES (1);")
        )
        t.see("before the error", lambda: conn.execute("SELECT count(*) FROM s").fetchone())

    compare(tmp_path, turso_connect, scenario)


def test_closed_connection_and_cursor_raise_programming_error(tmp_path, turso_connect):
    def scenario(conn: Any, t: Transcript) -> None:
        _table(conn)
        cur = conn.cursor()
        cur.close()
        t.see("closed cursor execute", lambda: cur.execute("SELECT 1"))
        t.see("closed cursor fetchone", lambda: cur.fetchone())
        t.see("closed cursor fetchall", lambda: cur.fetchall())
        t.see("closed cursor executemany", lambda: cur.executemany("INSERT INTO t(name) VALUES (?)", [("a",)]))
        t.see("close cursor twice", lambda: cur.close())
        other = conn.cursor()
        other.execute("SELECT 1")
        conn.close()
        for label, action in (
            ("execute", lambda: conn.execute("SELECT 1")),
            ("executemany", lambda: conn.executemany("SELECT 1", [])),
            ("executescript", lambda: conn.executescript("SELECT 1;")),
            ("cursor", lambda: conn.cursor()),
            ("commit", lambda: conn.commit()),
            ("rollback", lambda: conn.rollback()),
            ("in_transaction", lambda: conn.in_transaction),
            ("total_changes", lambda: conn.total_changes),
            ("cursor of closed connection", lambda: other.execute("SELECT 1")),
            ("fetch from closed connection", lambda: other.fetchall()),
            ("close twice", lambda: conn.close()),
        ):
            t.see(f"closed connection: {label}", action)

    compare(tmp_path, turso_connect, scenario)


def test_constraint_and_sql_errors(tmp_path, turso_connect):
    def scenario(conn: Any, t: Transcript) -> None:
        _table(conn)
        conn.execute("CREATE TABLE checked (x INTEGER CHECK (x > 0), p INTEGER REFERENCES t(id))")
        conn.execute("INSERT INTO t(name) VALUES ('a')")
        conn.commit()
        t.see("UNIQUE", lambda: conn.execute("INSERT INTO t(name) VALUES ('a')"))
        t.see("transaction stays open", lambda: conn.in_transaction)
        t.see("NOT NULL", lambda: conn.execute("INSERT INTO t(name) VALUES (NULL)"))
        t.see("PRIMARY KEY", lambda: conn.execute("INSERT INTO t(id, name) VALUES (1, 'b')"))
        t.see("CHECK", lambda: conn.execute("INSERT INTO checked(x) VALUES (0)"))
        t.see("executemany stops at the failing row", lambda: _many_until_dup(conn))
        t.see("rows after errors", lambda: conn.execute("SELECT name FROM t ORDER BY id").fetchall())
        conn.rollback()
        conn.execute("PRAGMA foreign_keys=ON")  # outside a transaction, or it is a no-op
        t.see("FOREIGN KEY", lambda: conn.execute("INSERT INTO checked(x, p) VALUES (1, 999)").rowcount)
        conn.rollback()
        t.see("syntax error", lambda: conn.execute("SELEC 1"))
        t.see("no such table", lambda: conn.execute("SELECT * FROM missing"))
        t.see("no such column", lambda: conn.execute("SELECT nope FROM t"))
        t.see("no such function", lambda: conn.execute("SELECT nofunc(1)"))
        t.see("incomplete", lambda: conn.execute("SELECT * FROM"))
        t.see("table exists", lambda: conn.execute("CREATE TABLE t (x)"))
        t.see("int too large", lambda: conn.execute("SELECT ?", (2**63,)))
        t.see("usable afterwards", lambda: conn.execute("SELECT count(*) FROM t").fetchone())

    compare(tmp_path, turso_connect, scenario)


def _many_until_dup(conn: Any) -> Any:
    try:
        conn.executemany("INSERT INTO t(name) VALUES (?)", [("m1",), ("m2",), ("a",), ("m3",)])
    except Exception as exc:
        return type(exc).__name__, conn.execute("SELECT name FROM t WHERE name LIKE 'm%' ORDER BY id").fetchall()
    return "no error"


def test_missing_named_parameter_is_a_programming_error(tmp_path, turso_connect):
    def scenario(conn: Any, t: Transcript) -> None:
        t.see("missing :a", lambda: conn.execute("SELECT :a", {"b": 1}))

    compare(tmp_path, turso_connect, scenario)


def test_execute_refuses_several_statements(tmp_path, turso_connect):
    def scenario(conn: Any, t: Transcript) -> None:
        _table(conn)
        t.see("two statements", lambda: (conn.execute("SELECT 1; DELETE FROM t"), "accepted")[1])

    compare(tmp_path, turso_connect, scenario)


VALUES: list[Any] = [
    None,
    0,
    1,
    -1,
    2**31,
    2**63 - 1,
    -(2**63),
    0.0,
    -0.0,
    1.5,
    1e-300,
    -2.5e300,
    math.pi,
    float("inf"),
    float("-inf"),
    float("nan"),  # SQLite stores NaN as NULL
    "",
    "plain ascii",
    "ünïcödé ☃ \U0001f600",
    "nul\x00inside",
    "x" * 100_000,  # overflow pages
    b"",
    b"\x00" * 17,
    bytes(range(256)) * 300,  # overflow pages
    bytearray(b"bytearray"),
    memoryview(b"memoryview"),
    True,
]


def test_values_round_trip(tmp_path, turso_connect):
    def scenario(conn: Any, t: Transcript) -> None:
        conn.execute("CREATE TABLE vals (id INTEGER PRIMARY KEY, v)")
        conn.executemany("INSERT INTO vals(v) VALUES (?)", [(v,) for v in VALUES])
        conn.commit()
        for i, value in enumerate(VALUES, start=1):
            t.see(
                f"value {i} {type(value).__name__}",
                lambda i=i: conn.execute("SELECT v, typeof(v) FROM vals WHERE id = ?", (i,)).fetchone(),
            )
        t.see(
            "bound and selected directly", lambda: conn.execute("SELECT ?, ?, ?", (2**63 - 1, b"\x01", 0.1)).fetchone()
        )

    compare(tmp_path, turso_connect, scenario)


def test_values_read_back_equal_to_what_was_written(tmp_path, turso_connect):
    """Not just equal to sqlite3: equal to the Python values themselves."""
    conn = turso_connect(str(tmp_path / "v.db"))
    conn.execute("CREATE TABLE vals (id INTEGER PRIMARY KEY, v)")
    conn.executemany("INSERT INTO vals(v) VALUES (?)", [(v,) for v in VALUES])
    conn.commit()
    conn.close()
    conn = turso_connect(str(tmp_path / "v.db"))
    got = [v for (v,) in conn.execute("SELECT v FROM vals ORDER BY id")]
    conn.close()
    for written, read in zip(VALUES, got, strict=True):
        if isinstance(written, float) and math.isnan(written):
            expected: Any = None
        elif isinstance(written, bytearray | memoryview):
            expected = bytes(written)
        elif isinstance(written, bool):
            expected = int(written)
        else:
            expected = written
        assert type(read) is type(expected) and repr(read) == repr(expected)


def test_row_factory(tmp_path, turso_connect):
    def as_dict(cursor: Any, row: tuple[Any, ...]) -> dict[str, Any]:
        return {d[0]: v for d, v in zip(cursor.description, row, strict=True)}

    def scenario(conn: Any, t: Transcript) -> None:
        _table(conn)
        conn.executemany("INSERT INTO t(name, v) VALUES (?, ?)", [("a", 1), ("b", 2)])
        conn.row_factory = as_dict
        t.see("connection factory", lambda: conn.execute("SELECT name, v * 10 AS ten FROM t ORDER BY id").fetchall())
        t.see("fetchone", lambda: conn.execute("SELECT name FROM t ORDER BY id").fetchone())
        t.see("fetchmany", lambda: conn.execute("SELECT name FROM t ORDER BY id").fetchmany(1))
        t.see("iteration", lambda: list(conn.execute("SELECT id FROM t ORDER BY id")))
        cur = conn.cursor()
        cur.row_factory = lambda _cursor, row: row[0]
        t.see("cursor factory wins", lambda: cur.execute("SELECT name FROM t ORDER BY id").fetchall())
        conn.row_factory = None
        t.see("reset to tuples", lambda: conn.execute("SELECT name FROM t ORDER BY id").fetchall())
        t.see("existing cursor keeps its own", lambda: cur.execute("SELECT v FROM t ORDER BY id").fetchall())

    compare(tmp_path, turso_connect, scenario)


# --- two connections to one file ----------------------------------------------------------------


def test_reader_keeps_its_snapshot_until_its_transaction_ends(tmp_path, turso_connect):
    path = str(tmp_path / "two.db")
    writer = turso_connect(path)
    reader = turso_connect(path)
    try:
        writer.execute("CREATE TABLE t (x)")
        writer.execute("INSERT INTO t VALUES (1)")
        writer.commit()
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (1,)
        writer.execute("INSERT INTO t VALUES (2)")
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (1,)  # uncommitted: invisible
        writer.commit()
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (1,)  # committed, but after the snapshot
        assert writer.execute("SELECT count(*) FROM t").fetchone() == (2,)
        reader.commit()
        assert reader.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (2,)]
        # a reader that is not inside a transaction sees every commit straight away
        writer.execute("INSERT INTO t VALUES (3)")
        writer.commit()
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (3,)
    finally:
        reader.close()
        writer.close()


def test_second_writer_in_the_same_process_gets_busy(tmp_path, turso_connect):
    path = str(tmp_path / "two.db")
    first = turso_connect(path)
    second = turso_connect(path, timeout=0.1)
    try:
        first.execute("CREATE TABLE t (x)")
        first.commit()
        first.execute("INSERT INTO t VALUES ('first')")
        with pytest.raises(turso_sync.OperationalError, match=r"locked|busy"):
            second.execute("INSERT INTO t VALUES ('second')")
        second.rollback()
        first.commit()
        second.execute("INSERT INTO t VALUES ('second')")
        second.commit()
        assert first.execute("SELECT x FROM t ORDER BY rowid").fetchall() == [("first",), ("second",)]
        # a reader whose snapshot is older than the latest commit cannot upgrade to a writer
        second.execute("BEGIN")
        second.execute("SELECT count(*) FROM t").fetchone()
        first.execute("INSERT INTO t VALUES ('third')")
        first.commit()
        with pytest.raises(turso_sync.OperationalError):
            second.execute("INSERT INTO t VALUES ('stale')")
        second.rollback()
        assert second.execute("SELECT count(*) FROM t").fetchone() == (3,)
    finally:
        second.close()
        first.close()


_LOCK_HOLDER = textwrap.dedent(
    """
    import sys
    import turso_sync
    key = sys.argv[2] or None
    conn = turso_sync.connect(sys.argv[1], encryption_key=key)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t VALUES ('from the other process')")
    print("holding", flush=True)
    sys.stdin.readline()
    conn.commit()
    print("committed", flush=True)
    sys.stdin.readline()
    conn.close()
    """
)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plaintext", "encrypted"])
def test_second_writer_in_another_process_gets_busy(tmp_path, encrypted):
    key = KEY256 if encrypted else None
    path = str(tmp_path / "shared.db")
    conn = turso_sync.connect(path, encryption_key=key, timeout=0.2)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    child = subprocess.Popen(
        [sys.executable, "-c", _LOCK_HOLDER, path, key or ""],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdin is not None
    lines = ChildLines(child)
    try:
        assert lines.readline() == "holding"
        with pytest.raises(turso_sync.OperationalError, match=r"locked|busy"):
            conn.execute("INSERT INTO t VALUES ('here')")
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)  # its write is not committed yet
        child.stdin.write(b"commit\n")
        child.stdin.flush()
        assert lines.readline() == "committed"
        assert conn.execute("SELECT x FROM t").fetchall() == [("from the other process",)]
        conn.execute("INSERT INTO t VALUES ('here')")
        conn.commit()
        child.stdin.write(b"close\n")
        child.stdin.flush()
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        lines.close()
        conn.close()
    conn = turso_sync.connect(path, encryption_key=key)
    assert conn.execute("SELECT x FROM t ORDER BY rowid").fetchall() == [("from the other process",), ("here",)]
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


def test_module_level_dbapi_attributes():
    assert turso_sync.apilevel == "2.0"
    assert turso_sync.paramstyle in ("qmark", "named")
    for name in (
        "Warning",
        "Error",
        "InterfaceError",
        "DatabaseError",
        "DataError",
        "OperationalError",
        "IntegrityError",
        "InternalError",
        "ProgrammingError",
        "NotSupportedError",
    ):
        assert getattr(turso_sync, name) is getattr(turso_sync.errors, name)
    for name in ("DatabaseError", "OperationalError", "IntegrityError", "ProgrammingError", "EncryptionError"):
        assert issubclass(getattr(turso_sync, name), turso_sync.Error)
    assert issubclass(turso_sync.EncryptionError, turso_sync.DatabaseError)
