"""The Hrana executor: SQLite's batch semantics, conditions on the live connection, policy."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from turso_sync.primary.hrana import PipelineExecutor, WriteDenied, has_statement
from turso_sync.wire import hrana as h

NOT_AUTOCOMMIT = h.NotCond(h.IsAutocommitCond())


@pytest.fixture
def conn(tmp_path: Path) -> apsw.Connection:
    db = apsw.Connection(str(tmp_path / "t.db"))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    return db


def stmt(sql: str, *args: h.SqlValue, **kw: object) -> h.Stmt:
    return h.Stmt(sql=sql, args=args, **kw)  # type: ignore[arg-type]


def batch(*steps: tuple[h.Cond | None, h.Stmt]) -> h.BatchRequest:
    return h.BatchRequest(tuple(h.BatchStep(s, c) for c, s in steps))


def rows(conn: apsw.Connection) -> list[tuple]:
    return conn.execute("SELECT id, v FROM t ORDER BY id").fetchall()


def test_turso_push_batch_commits_everything(conn: apsw.Connection) -> None:
    ex = PipelineExecutor(conn)
    (res,) = ex.run(
        [
            batch(
                (None, stmt("BEGIN IMMEDIATE")),
                (NOT_AUTOCOMMIT, stmt("INSERT INTO t VALUES (?, ?)", 1, "a")),
                (NOT_AUTOCOMMIT, stmt("INSERT INTO t VALUES (?, ?)", 2, "b")),
                (NOT_AUTOCOMMIT, stmt("COMMIT")),
            )
        ]
    )
    assert isinstance(res, h.StreamResponse) and isinstance(res.result, h.BatchResult)
    assert res.result.step_errors == [None] * 4
    assert res.result.step_results[1] is not None and res.result.step_results[1].affected_row_count == 1
    assert rows(conn) == [(1, "a"), (2, "b")]
    assert ex.commits == 1


def test_failed_step_does_not_end_the_transaction(conn: apsw.Connection) -> None:
    conn.execute("INSERT INTO t VALUES (1, 'old')")
    ex = PipelineExecutor(conn)
    (res,) = ex.run(
        [
            batch(
                (None, stmt("BEGIN")),
                (NOT_AUTOCOMMIT, stmt("INSERT INTO t VALUES (1, 'dup')")),  # constraint error
                (NOT_AUTOCOMMIT, stmt("INSERT INTO t VALUES (2, 'kept')")),
                (NOT_AUTOCOMMIT, stmt("COMMIT")),
            )
        ]
    )
    assert isinstance(res, h.StreamResponse) and isinstance(res.result, h.BatchResult)
    err = res.result.step_errors[1]
    assert err is not None and err.code == "SQLITE_CONSTRAINT_PRIMARYKEY" and "UNIQUE" in err.message
    assert res.result.step_results[1] is None
    assert rows(conn) == [(1, "old"), (2, "kept")]  # SQLite's semantics: the statement failed, not the txn


def test_conditions_ok_error_and_or_decide_what_runs(conn: apsw.Connection) -> None:
    ex = PipelineExecutor(conn)
    (res,) = ex.run(
        [
            batch(
                (None, stmt("SELECT * FROM missing")),  # 0: error
                (h.OkCond(0), stmt("INSERT INTO t VALUES (1, 'no')")),  # 1: skipped
                (h.ErrorCond(0), stmt("INSERT INTO t VALUES (2, 'yes')")),  # 2: runs
                (h.AndCond((h.OkCond(2), h.NotCond(h.OkCond(1)))), stmt("INSERT INTO t VALUES (3, 'and')")),
                (h.OrCond((h.OkCond(1), h.ErrorCond(1))), stmt("INSERT INTO t VALUES (4, 'or')")),  # skipped
                (h.AndCond(()), stmt("INSERT INTO t VALUES (5, 'empty and')")),  # true
                (h.OrCond(()), stmt("INSERT INTO t VALUES (6, 'empty or')")),  # false
            )
        ]
    )
    assert isinstance(res, h.StreamResponse) and isinstance(res.result, h.BatchResult)
    assert [r is not None for r in res.result.step_results] == [False, False, True, True, False, True, False]
    assert [e is not None for e in res.result.step_errors] == [True, False, False, False, False, False, False]
    assert "no such table: missing" in (res.result.step_errors[0].message if res.result.step_errors[0] else "")
    assert rows(conn) == [(2, "yes"), (3, "and"), (5, "empty and")]


def test_is_autocommit_is_evaluated_on_the_live_connection(conn: apsw.Connection) -> None:
    ex = PipelineExecutor(conn)
    (res,) = ex.run(
        [
            batch(
                (None, stmt("BEGIN")),
                (NOT_AUTOCOMMIT, stmt("INSERT INTO t VALUES (1, 'x')")),
                (None, stmt("INSERT INTO t VALUES (NULL, NULL)")),  # NOT NULL: error, txn stays open
                (None, stmt("ROLLBACK")),
                (NOT_AUTOCOMMIT, stmt("INSERT INTO t VALUES (2, 'after rollback')")),  # autocommit now: skipped
                (h.IsAutocommitCond(), stmt("INSERT INTO t VALUES (3, 'autocommit')")),
            )
        ]
    )
    assert isinstance(res, h.StreamResponse) and isinstance(res.result, h.BatchResult)
    assert res.result.step_results[4] is None and res.result.step_errors[4] is None
    assert rows(conn) == [(3, "autocommit")]


def test_open_transaction_at_end_of_request_is_rolled_back(conn: apsw.Connection) -> None:
    ex = PipelineExecutor(conn)
    ex.run([batch((None, stmt("BEGIN")), (None, stmt("INSERT INTO t VALUES (1, 'x')")))])
    assert conn.get_autocommit()
    assert rows(conn) == []
    assert ex.commits == 0


def test_execute_results_and_errors(conn: apsw.Connection) -> None:
    ex = PipelineExecutor(conn)
    insert, select, bad, many, skipped_rows = ex.run(
        [
            h.ExecuteRequest(stmt("INSERT INTO t(v) VALUES (?), (?)", "a", "b")),
            h.ExecuteRequest(stmt("SELECT id, v, x'00ff', 1.5, NULL FROM t ORDER BY id")),
            h.ExecuteRequest(stmt("SELEC 1")),
            h.ExecuteRequest(stmt("INSERT INTO t(v) VALUES ('z'); DELETE FROM t")),
            h.ExecuteRequest(stmt("SELECT * FROM t", want_rows=False)),
        ]
    )
    assert isinstance(insert, h.StreamResponse) and isinstance(insert.result, h.StmtResult)
    assert insert.result.affected_row_count == 2 and insert.result.last_insert_rowid == 2
    assert isinstance(select, h.StreamResponse) and isinstance(select.result, h.StmtResult)
    assert [c.name for c in select.result.cols] == ["id", "v", "x'00ff'", "1.5", "NULL"]
    assert select.result.cols[0].decltype == "INTEGER"
    assert select.result.rows == [[1, "a", b"\x00\xff", 1.5, None], [2, "b", b"\x00\xff", 1.5, None]]
    assert select.result.affected_row_count == 0
    assert isinstance(bad, h.HranaError) and "syntax error" in bad.message and bad.code == "SQLITE_ERROR"
    assert isinstance(many, h.HranaError) and many.code == "SQL_MANY_STATEMENTS"
    assert rows(conn) == [(1, "a"), (2, "b")]  # the multi-statement string ran nothing
    assert isinstance(skipped_rows, h.StreamResponse) and isinstance(skipped_rows.result, h.StmtResult)
    assert skipped_rows.result.rows == []


def test_ddl_reports_no_affected_rows(conn: apsw.Connection) -> None:
    ex = PipelineExecutor(conn)
    conn.execute("INSERT INTO t VALUES (1, 'x')")
    (res,) = ex.run([h.ExecuteRequest(stmt("CREATE TABLE u(a)"))])
    assert isinstance(res, h.StreamResponse) and isinstance(res.result, h.StmtResult)
    assert res.result.affected_row_count == 0


def test_arguments_named_positional_and_wrong(conn: apsw.Connection) -> None:
    ex = PipelineExecutor(conn)
    named, numbered, missing, too_many = ex.run(
        [
            h.ExecuteRequest(h.Stmt(sql="SELECT :a, @b, $c", named_args=((":a", 1), ("b", "two"), ("$c", None)))),
            h.ExecuteRequest(h.Stmt(sql="SELECT ?2, :x", args=(10, 20), named_args=(("x", 3),))),
            h.ExecuteRequest(h.Stmt(sql="SELECT :a, :b", named_args=((":a", 1),))),
            h.ExecuteRequest(stmt("SELECT ?", 1, 2)),
        ]
    )
    assert isinstance(named, h.StreamResponse) and named.result.rows == [[1, "two", None]]  # type: ignore[union-attr]
    assert isinstance(numbered, h.StreamResponse) and numbered.result.rows == [[20, 3]]  # type: ignore[union-attr]
    assert isinstance(missing, h.StreamResponse) and missing.result.rows == [[1, None]]  # type: ignore[union-attr]
    assert isinstance(too_many, h.HranaError) and too_many.code == "ARGS_INVALID"


def test_values_sqlite_cannot_take_are_step_errors(conn: apsw.Connection) -> None:
    ex = PipelineExecutor(conn)
    lone, bad_utf8 = ex.run(
        [h.ExecuteRequest(stmt("SELECT ?", "\ud800")), h.ExecuteRequest(stmt("SELECT CAST(x'ff' AS TEXT)"))]
    )
    assert isinstance(lone, h.HranaError) and lone.code == "VALUE_INVALID"
    assert isinstance(bad_utf8, h.HranaError) and bad_utf8.code == "VALUE_INVALID"


def test_stored_sql_sequence_describe_autocommit_close(conn: apsw.Connection) -> None:
    ex = PipelineExecutor(conn)
    results = ex.run(
        [
            h.StoreSqlRequest(1, "INSERT INTO t(v) VALUES (?)"),
            h.ExecuteRequest(h.Stmt(sql_id=1, args=("stored",))),
            h.ExecuteRequest(h.Stmt(sql_id=2)),
            h.SequenceRequest("INSERT INTO t(v) VALUES ('s1'); INSERT INTO t(v) VALUES ('s2');"),
            h.DescribeRequest("SELECT id AS n, v FROM t WHERE id = :id AND v = ?2"),
            h.DescribeRequest("SELECT 1; SELECT 2"),
            h.CloseSqlRequest(1),
            h.ExecuteRequest(h.Stmt(sql_id=1)),
            h.ExecuteRequest(stmt("BEGIN")),
            h.GetAutocommitRequest(),
            h.CloseRequest(),
            h.ExecuteRequest(stmt("SELECT 1")),
        ]
    )
    assert isinstance(results[1], h.StreamResponse)
    assert isinstance(results[2], h.HranaError) and results[2].code == "SQL_NOT_FOUND"
    assert isinstance(results[3], h.StreamResponse) and results[3].type == "sequence"
    describe = results[4]
    assert isinstance(describe, h.StreamResponse) and isinstance(describe.result, h.DescribeResult)
    assert describe.result.params == [":id", "?2"]
    assert [c.name for c in describe.result.cols] == ["n", "v"] and describe.result.is_readonly
    assert isinstance(results[5], h.HranaError) and results[5].code == "SQL_MANY_STATEMENTS"
    assert isinstance(results[7], h.HranaError) and results[7].code == "SQL_NOT_FOUND"
    assert isinstance(results[9], h.StreamResponse) and results[9].is_autocommit is False
    assert isinstance(results[10], h.StreamResponse) and results[10].type == "close"
    assert isinstance(results[11], h.HranaError) and results[11].code == "STREAM_CLOSED"
    assert rows(conn) == [(1, "stored"), (2, "s1"), (3, "s2")]


def test_read_only_streams_may_read_but_not_write(conn: apsw.Connection) -> None:
    ex = PipelineExecutor(conn)
    (res,) = ex.run([h.ExecuteRequest(stmt("SELECT count(*) FROM t"))], read_only=True)
    assert isinstance(res, h.StreamResponse)
    for sql in ("INSERT INTO t VALUES (1, 'x')", "CREATE TABLE z(a)", "PRAGMA user_version = 3", "VACUUM"):
        with pytest.raises(WriteDenied, match="may only read"):
            ex.run([h.ExecuteRequest(stmt("BEGIN")), h.ExecuteRequest(stmt(sql))], read_only=True)
        assert conn.get_autocommit()
    with pytest.raises(WriteDenied):
        ex.run([batch((None, stmt("SELECT 1")), (None, stmt("DELETE FROM t")))], read_only=True)
    assert rows(conn) == [] and conn.execute("PRAGMA user_version").get == 0


@pytest.mark.parametrize(
    "sql",
    [
        "ATTACH DATABASE ':memory:' AS other",
        "VACUUM INTO '/tmp/turso-sync-should-not-exist.db'",
        "PRAGMA journal_mode = DELETE",
        "PRAGMA page_size = 8192",
        "PRAGMA writable_schema = ON",
        "PRAGMA wal_checkpoint",
        "CREATE TEMP TABLE scratch(a)",
        "SELECT load_extension('x')",
        "VACUUM",  # SQLite runs it through an internal ATTACH
    ],
)
def test_policy_refuses_what_would_escape_or_leak(conn: apsw.Connection, sql: str) -> None:
    (res,) = PipelineExecutor(conn).run([h.ExecuteRequest(stmt(sql))])
    assert isinstance(res, h.HranaError), res
    assert res.code == "SQLITE_AUTH" or "not authorized" in res.message, res
    assert conn.execute("PRAGMA journal_mode").get == "wal"


def test_policy_allows_what_clients_need(conn: apsw.Connection) -> None:
    results = PipelineExecutor(conn).run(
        [
            h.ExecuteRequest(stmt("PRAGMA user_version = 7")),
            h.ExecuteRequest(stmt("PRAGMA table_info(t)")),
            h.ExecuteRequest(stmt("SELECT name FROM pragma_table_info('t')")),
            h.ExecuteRequest(stmt("PRAGMA integrity_check")),
        ]
    )
    assert all(isinstance(r, h.StreamResponse) for r in results), results
    assert conn.execute("PRAGMA user_version").get == 7


def test_has_statement() -> None:
    assert not has_statement("  ; -- c\n /* x */ ;")
    assert not has_statement("/* unterminated")
    assert has_statement("; SELECT 1")
    assert has_statement("-- c\nDELETE FROM t")


@pytest.mark.parametrize("kind", ["execute", "sequence", "describe"])
def test_a_nul_character_in_sql_is_a_step_error_on_every_request_kind(conn: apsw.Connection, kind: str) -> None:
    """Found by the route fuzzer: ``describe`` of "\\x00" escaped as a ValueError (a 500)."""
    request: h.StreamRequest
    if kind == "execute":
        request = h.ExecuteRequest(stmt("\x00"))
    elif kind == "sequence":
        request = h.SequenceRequest("\x00")
    else:
        request = h.DescribeRequest("\x00")
    (result,) = PipelineExecutor(conn).run([request])
    assert isinstance(result, h.HranaError) and result.code == "VALUE_INVALID"
