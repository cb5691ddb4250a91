"""The primary's SQL sandbox, without a server: the allow-list, temp, limits, leaks, and that it stays on.

Each test names the hole it closes (issue 13).  The executor runs on a plain APSW connection
in WAL mode, as the primary's is; the page source runs on the real local engine.
"""

from __future__ import annotations

import re
from pathlib import Path

import apsw
import pytest

from turso_sync import errors
from turso_sync.local.engine import LocalDatabase
from turso_sync.primary import sql_policy
from turso_sync.primary.database import EnginePages
from turso_sync.primary.hrana import PipelineExecutor, WriteDenied, sqlite_error
from turso_sync.primary.sql_policy import Access, SqlLimits, check, scrub
from turso_sync.wire import hrana as h

PRIMARY = Path(__file__).resolve().parents[2] / "turso_sync" / "primary"


@pytest.fixture
def conn(tmp_path: Path) -> apsw.Connection:
    db = apsw.Connection(str(tmp_path / "t.db"))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    return db


def execute(ex: PipelineExecutor, sql: str, *args: h.SqlValue, read_only: bool = False) -> h.StreamResult:
    (res,) = ex.run([h.ExecuteRequest(h.Stmt(sql=sql, args=args))], read_only=read_only)
    return res


def rows_of(res: h.StreamResult) -> list[list[h.SqlValue]]:
    assert isinstance(res, h.StreamResponse) and isinstance(res.result, h.StmtResult), res
    return res.result.rows


def refused(err: h.HranaError, sql: str) -> bool:
    """The policy's refusal naming the statement, or SQLite's "no such table" for what this build lacks."""
    if err.message.startswith("no such table: "):
        return True
    return err.code == "SQLITE_AUTH" and err.message.startswith("not authorized: ") and sql[:40] in err.message


def error_of(res: h.StreamResult) -> h.HranaError:
    assert isinstance(res, h.HranaError), res
    return res


# --- 2. temp: a temporary table would swallow pushes -------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE temp.t(id INTEGER PRIMARY KEY, v TEXT)",
        "CREATE TEMP TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
        "CREATE TEMPORARY TABLE x(a)",
        "CREATE TABLE TEMP.x(a)",
        "CREATE VIEW temp.v AS SELECT 1",
        "CREATE TEMP VIEW v AS SELECT 1",
        "CREATE TRIGGER temp.tr AFTER INSERT ON t BEGIN SELECT 1; END",
        "CREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END",
        "CREATE INDEX temp.i ON t(v)",
        "SELECT * FROM temp.sqlite_master",
        "SELECT * FROM sqlite_temp_master",
        "SELECT * FROM temp.sqlite_schema",
        "PRAGMA temp.table_info(t)",
        "PRAGMA temp.user_version",
        "DROP TABLE temp.t",
        "INSERT INTO temp.t VALUES (1, 'x')",
    ],
)
def test_temp_schema_is_refused_and_pushes_land_in_main(conn: apsw.Connection, sql: str) -> None:
    ex = PipelineExecutor(conn)
    err = error_of(execute(ex, sql))
    if sql.startswith("CREATE") and "INDEX" not in sql:
        assert err.code == "SQLITE_AUTH" and sql in err.message, err
    # the push that the temporary table swallowed before: it must reach main.t and stay
    execute(ex, "INSERT INTO t(id, v) VALUES (1, 'pushed') ON CONFLICT(id) DO UPDATE SET v = excluded.v")
    assert conn.execute("SELECT v FROM main.t").fetchall() == [("pushed",)]
    assert conn.execute("SELECT count(*) FROM sqlite_temp_master").get == 0


# --- 1. the sandbox cannot be switched off -----------------------------------------------------


def test_no_code_clears_the_authorizer() -> None:
    for path in PRIMARY.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"authorizer\s*=\s*None", text), path
        for line in re.findall(r".*\.authorizer\s*=.*", text):
            assert path.name == "sql_policy.py" and "= policy" in line, (path, line)


def test_a_query_selector_leaves_the_policy_on(tmp_path: Path) -> None:
    engine = LocalDatabase(tmp_path / "db", reserved_bytes=28)
    conn = engine.connect(isolation_level=None)
    try:
        ex = PipelineExecutor(conn.apsw_connection)
        execute(ex, "CREATE TABLE t(x)")
        pages = EnginePages(engine, conn)
        policy = conn.apsw_connection.authorizer
        assert isinstance(policy, sql_policy.StatementPolicy)
        assert pages.query_pages("SELECT * FROM t")[0] == 1
        for hostile in ("PRAGMA query_only=1", "ATTACH ':memory:' AS a", "SELECT * FROM pragma_database_list"):
            with pytest.raises(errors.ProtocolError, match="server_query_selector"):
                pages.query_pages(hostile)
        with pytest.raises(errors.ProtocolError, match="single SELECT"):
            pages.query_pages("SELECT 1; PRAGMA query_only=1")
        assert conn.apsw_connection.authorizer is policy
        for sql in ("PRAGMA query_only=1", "PRAGMA hard_heap_limit=1", "ATTACH ':memory:' AS a"):
            assert error_of(execute(ex, sql, read_only=True)).code == "SQLITE_AUTH"
            assert error_of(execute(ex, sql)).code == "SQLITE_AUTH"
        assert conn.apsw_connection.execute("PRAGMA query_only").get == 0
    finally:
        conn.close()
        engine.close()


def test_a_statement_compiled_for_the_server_is_compiled_again_for_a_client(conn: apsw.Connection) -> None:
    ex = PipelineExecutor(conn)
    sql = "SELECT name FROM pragma_database_list"
    assert conn.execute(sql).fetchall()  # the server's own access, and now in APSW's statement cache
    assert error_of(execute(ex, sql, read_only=True)).code == "SQLITE_AUTH"
    assert error_of(execute(ex, sql)).code == "SQLITE_AUTH"


def test_install_is_idempotent_and_keeps_the_first_limits(conn: apsw.Connection) -> None:
    first = sql_policy.install(conn, SqlLimits(max_rows=5))
    assert sql_policy.install(conn) is first and PipelineExecutor(conn).limits.max_rows == 5


# --- 4. nothing about the host ------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "PRAGMA database_list",
        "PRAGMA main.database_list",
        "SELECT * FROM pragma_database_list",
        "SELECT file FROM pragma_database_list()",
        "PRAGMA compile_options",
        "SELECT * FROM pragma_compile_options",
        "PRAGMA module_list",
        "PRAGMA function_list",
        "PRAGMA pragma_list",
        "SELECT sqlite_version()",
        "SELECT sqlite_source_id()",
        "SELECT sqlite_compileoption_get(0)",
        "SELECT sqlite_compileoption_used('THREADSAFE')",
        "SELECT fts5_source_id()",
        "PRAGMA temp_store_directory",
        "PRAGMA data_store_directory",
        "SELECT * FROM sqlite_stmt",
        "SELECT total_changes()",
        "SELECT sqlite_log(1, 'x')",
    ],
)
def test_what_would_tell_about_the_host_is_refused(conn: apsw.Connection, sql: str) -> None:
    ex = PipelineExecutor(conn)
    for read_only in (True, False):
        err = error_of(execute(ex, sql, read_only=read_only))
        assert refused(err, sql), err
        assert "/" not in err.message.replace(sql, ""), err


def test_error_texts_name_no_host_path() -> None:
    err = sqlite_error(apsw.CantOpenError("unable to open database file: /srv/data/databases/default/db-frames"))
    assert "/srv" not in err.message and "<path>" in err.message
    assert scrub("page 3 of /var/lib/x/db is tampered\nTraceback (most recent call last):") == (
        "page 3 of <path> is tampered"
    )
    assert scrub('near "/": syntax error; 6 / 3') == 'near "/": syntax error; 6 / 3'
    assert len(scrub("x" * 5000)) == 500


# --- 5. the allow-list -------------------------------------------------------------------------


REFUSED_EVERYWHERE = [
    "ATTACH ':memory:' AS a",
    "ATTACH 'file:/tmp/x?mode=memory' AS a",
    "DETACH main",
    "VACUUM INTO '/tmp/turso-sync-sandbox-should-not-exist.db'",
    "SELECT load_extension('libc')",
    "PRAGMA query_only = 1",
    "PRAGMA hard_heap_limit = 1",
    "PRAGMA soft_heap_limit = 1",
    "PRAGMA locking_mode = EXCLUSIVE",
    "PRAGMA synchronous = OFF",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA main.journal_mode = OFF",
    "PRAGMA page_size = 8192",
    "PRAGMA writable_schema = ON",
    "PRAGMA foreign_keys = ON",
    "PRAGMA recursive_triggers = ON",
    "PRAGMA defer_foreign_keys = ON",
    "PRAGMA case_sensitive_like = ON",
    "PRAGMA cache_size = 1",
    "PRAGMA mmap_size = 1000000",
    "PRAGMA busy_timeout = 100000",
    "PRAGMA wal_autocheckpoint = 0",
    "PRAGMA trusted_schema = ON",
    "PRAGMA cell_size_check = ON",
    "PRAGMA ignore_check_constraints = ON",
    "PRAGMA reverse_unordered_selects = ON",
    "PRAGMA threads = 8",
    "PRAGMA wal_checkpoint",
    "PRAGMA wal_checkpoint(TRUNCATE)",
    "PRAGMA optimize",
    "PRAGMA shrink_memory",
    "PRAGMA incremental_vacuum",
    "PRAGMA schema_version = 1",
    "SELECT * FROM pragma_wal_checkpoint",
    "SELECT fts3_tokenizer('simple')",
    "CREATE VIRTUAL TABLE f USING fts4(x)",
    "CREATE VIRTUAL TABLE f USING fts5vocab(t, row)",
    "CREATE VIRTUAL TABLE f USING dbstat",
    "SELECT * FROM sqlite_dbpage",
    "UPDATE sqlite_dbpage SET data = zeroblob(4096) WHERE pgno = 1",
]


@pytest.mark.parametrize("sql", REFUSED_EVERYWHERE)
def test_refused_everywhere_with_a_message_naming_the_statement(conn: apsw.Connection, sql: str) -> None:
    ex = PipelineExecutor(conn)
    for read_only in (False, True):
        try:
            err = error_of(execute(ex, sql, read_only=read_only))
        except WriteDenied:
            assert read_only, sql  # a read-only token's write may be refused as a write (403) first
            continue
        assert refused(err, sql), err
    assert conn.execute("PRAGMA journal_mode").get == "wal" and conn.execute("PRAGMA query_only").get == 0


def test_plain_vacuum_is_refused(conn: apsw.Connection) -> None:
    ex = PipelineExecutor(conn)
    assert "VACUUM" in error_of(execute(ex, "VACUUM")).message
    with pytest.raises(WriteDenied):
        execute(ex, "VACUUM", read_only=True)


def test_read_write_may_do_what_replicas_push(conn: apsw.Connection) -> None:
    ex = PipelineExecutor(conn)
    not_auto = h.NotCond(h.IsAutocommitCond())
    steps = [
        "BEGIN IMMEDIATE",
        "CREATE TABLE IF NOT EXISTS turso_sync_last_change_id (client_id TEXT PRIMARY KEY, pull_gen INTEGER, "
        "change_id INTEGER)",
        "CREATE TABLE IF NOT EXISTS u (id INTEGER PRIMARY KEY, v TEXT, n INTEGER CHECK (n >= 0))",
        "CREATE INDEX IF NOT EXISTS u_v ON u(v)",
        "CREATE VIEW IF NOT EXISTS uv AS SELECT id, upper(v) AS v FROM u",
        "CREATE TRIGGER IF NOT EXISTS u_log AFTER INSERT ON u BEGIN UPDATE t SET v = NEW.v WHERE id = 1; END",
        "ALTER TABLE u ADD COLUMN extra TEXT",
        "SAVEPOINT sp",
        'INSERT INTO "u"("id", "v", "n") VALUES (1, \'a\', 1) ON CONFLICT("id") DO UPDATE SET "v" = excluded."v"',
        "RELEASE sp",
        "SELECT CASE WHEN EXISTS(SELECT 1 FROM u WHERE id = 1) THEN 1 ELSE abs(-9223372036854775808) END",
        "UPDATE u SET n = n + 1 WHERE id = 1",
        "DELETE FROM u WHERE id = 99",
        "INSERT INTO turso_sync_last_change_id(client_id, pull_gen, change_id) VALUES ('c', 0, 3) "
        "ON CONFLICT(client_id) DO UPDATE SET pull_gen=excluded.pull_gen, change_id=excluded.change_id",
        "PRAGMA user_version = 9",
        "PRAGMA main.application_id = 7",
        "CREATE VIRTUAL TABLE IF NOT EXISTS docs USING fts5(body)",
        "INSERT INTO docs(body) VALUES ('hello world')",
        "SELECT highlight(docs, 0, '[', ']') FROM docs WHERE docs MATCH 'hello'",
        "CREATE VIRTUAL TABLE IF NOT EXISTS boxes USING rtree(id, x0, x1)",
        "ANALYZE",
        "REINDEX u_v",
        "COMMIT",
    ]
    (res,) = ex.run(
        [h.BatchRequest(tuple(h.BatchStep(h.Stmt(sql=s), not_auto if i else None) for i, s in enumerate(steps)))]
    )
    assert isinstance(res, h.StreamResponse) and isinstance(res.result, h.BatchResult)
    assert res.result.step_errors == [None] * len(steps), [
        (steps[i], e) for i, e in enumerate(res.result.step_errors) if e
    ]
    assert conn.execute("SELECT v, n FROM u").fetchall() == [("a", 2)] and conn.execute("PRAGMA user_version").get == 9
    # the conditional push's refusal: an ordinary function raising, not the policy
    err = error_of(
        execute(ex, "SELECT CASE WHEN EXISTS(SELECT 1 FROM u WHERE id = 2) THEN 1 ELSE abs(-9223372036854775808) END")
    )
    assert "integer overflow" in err.message and err.code != "SQLITE_AUTH"
    err = error_of(execute(ex, "UPDATE u SET n = -1"))
    assert err.code == "SQLITE_CONSTRAINT_CHECK"


def test_read_only_may_read_introspect_and_use_transactions(conn: apsw.Connection) -> None:
    ex = PipelineExecutor(conn)
    execute(ex, "INSERT INTO t VALUES (1, '{\"a\": [1, 2]}')")
    for sql in (
        "SELECT * FROM t",
        "SELECT * FROM main.t",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 10) SELECT sum(x) FROM c",
        "SELECT value FROM t, json_each(t.v, '$.a')",
        "SELECT count(*) FROM dbstat",
        "SELECT name FROM sqlite_schema",
        "EXPLAIN QUERY PLAN SELECT * FROM t WHERE id = 1",
        "PRAGMA table_info(t)",
        "PRAGMA main.table_xinfo('t')",
        "SELECT name FROM pragma_table_info('t')",
        "PRAGMA index_list(t)",
        "PRAGMA foreign_key_list(t)",
        "PRAGMA user_version",
        "PRAGMA page_count",
        "PRAGMA integrity_check",
        "PRAGMA quick_check(t)",
        "SELECT date('now'), upper('x'), printf('%5d', 3), hex(randomblob(4)) IS NOT NULL, changes()",
    ):
        assert isinstance(execute(ex, sql, read_only=True), h.StreamResponse), sql
    results = ex.run(
        [h.ExecuteRequest(h.Stmt(sql=s)) for s in ("BEGIN", "SAVEPOINT a", "SELECT 1", "RELEASE a", "COMMIT")],
        read_only=True,
    )
    assert all(isinstance(r, h.StreamResponse) for r in results), results
    for sql in ("INSERT INTO t VALUES (2, 'x')", "PRAGMA user_version = 3", "CREATE TABLE z(a)", "ANALYZE"):
        with pytest.raises(WriteDenied, match="may only read"):
            execute(ex, sql, read_only=True)


def test_describe_compiles_under_the_policy(conn: apsw.Connection) -> None:
    ex = PipelineExecutor(conn)
    (ok, refused) = ex.run(
        [h.DescribeRequest(sql="SELECT id FROM t WHERE v = :v"), h.DescribeRequest(sql="PRAGMA database_list")],
        read_only=True,
    )
    assert isinstance(ok, h.StreamResponse) and ok.result is not None
    assert error_of(refused).code == "SQLITE_AUTH"
    # a reader may learn that a statement writes (it is compiled, never run)
    (write,) = ex.run([h.DescribeRequest(sql="INSERT INTO t(v) VALUES (?)")], read_only=True)
    assert isinstance(write, h.StreamResponse) and isinstance(write.result, h.DescribeResult)
    assert write.result.is_readonly is False and conn.execute("SELECT count(*) FROM t").get == 0


def test_check_is_an_allow_list() -> None:
    # an action code the policy has never heard of is refused for clients, as is any unknown function
    for access in (Access.READ_ONLY, Access.READ_WRITE, Access.QUERY_SELECTOR):
        assert check(access, 9999, None, None, None) is not None
        assert check(access, apsw.SQLITE_FUNCTION, None, "my_new_function", None) is not None
        assert check(access, apsw.SQLITE_READ, "t", "a", "aux") is not None
    assert check(Access.QUERY_SELECTOR, apsw.SQLITE_INSERT, "t", None, "main") is not None
    assert check(Access.READ_WRITE, apsw.SQLITE_ALTER_TABLE, "temp", "t", None) is not None
    assert check(Access.SERVER, apsw.SQLITE_ATTACH, "", None, None) is not None


def test_remembered_answers_are_per_access_and_bounded(conn: apsw.Connection) -> None:
    """The policy remembers its answers (``check`` is pure), by every argument including who asks:
    a write allowed to a read-write stream stays refused to a read-only one, in either order,
    the same statement alternating; and the memory is bounded, whatever names clients send."""
    ex = PipelineExecutor(conn)
    insert = "INSERT INTO t(id, v) VALUES (?, 'x')"
    for i in range(3):
        with pytest.raises(WriteDenied):
            execute(ex, insert, 100 + i, read_only=True)
        assert not isinstance(execute(ex, insert, 200 + i), h.HranaError)
    assert conn.execute("SELECT id FROM t WHERE id >= 100 ORDER BY id").fetchall() == [(200,), (201,), (202,)]
    policy = conn.authorizer
    assert isinstance(policy, sql_policy.StatementPolicy)
    for i in range(sql_policy._DECIDED_MAX + 50):  # many distinct names: each a new action to decide
        policy(apsw.SQLITE_READ, f"t{i}", "v", "main", None)
        assert len(policy._decided) <= sql_policy._DECIDED_MAX
    assert policy(apsw.SQLITE_ATTACH, "x", None, None, None) == apsw.SQLITE_DENY


# --- 3. bounded resources -----------------------------------------------------------------------


def test_values_over_the_limit_are_refused(conn: apsw.Connection) -> None:
    ex = PipelineExecutor(conn, limits=SqlLimits(max_value_bytes=10_000))
    for sql in (
        "SELECT zeroblob(40000000), zeroblob(40000000)",
        "SELECT randomblob(1e9)",
        "SELECT printf('%.*c', 20000, 'x')",
        "SELECT group_concat(hex(zeroblob(1000))) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL "
        "SELECT x + 1 FROM c LIMIT 100) SELECT x FROM c)",
    ):
        err = error_of(execute(ex, sql, read_only=True))
        assert err.code == "LIMIT_VALUE_BYTES" and "10000 bytes" in err.message, err
    err = error_of(execute(ex, "INSERT INTO t VALUES (5, ?)", "x" * 20_000))
    assert err.code == "LIMIT_VALUE_BYTES", err
    assert rows_of(execute(ex, "SELECT length(zeroblob(9000))")) == [[9000]]


def test_the_default_value_limit_stops_the_101_mib_answer(conn: apsw.Connection) -> None:
    ex = PipelineExecutor(conn)
    err = error_of(execute(ex, "SELECT zeroblob(40000000), zeroblob(40000000)", read_only=True))
    assert err.code == "LIMIT_VALUE_BYTES", err


def test_response_bytes_are_bounded_per_response(conn: apsw.Connection) -> None:
    ex = PipelineExecutor(conn, limits=SqlLimits(max_response_bytes=100_000))
    big = "SELECT zeroblob(30000)"
    results = ex.run([h.ExecuteRequest(h.Stmt(sql=big)) for _ in range(4)], read_only=True)
    assert [isinstance(r, h.StreamResponse) for r in results] == [True, True, False, False]
    assert error_of(results[2]).code == "LIMIT_RESPONSE_BYTES" and "100000 bytes" in error_of(results[2]).message
    # each response gets its own budget
    assert isinstance(execute(ex, big, read_only=True), h.StreamResponse)
    # text needing JSON escapes is counted as escaped
    err = error_of(execute(ex, "SELECT replace(hex(zeroblob(20000)), '0', char(1))", read_only=True))
    assert err.code == "LIMIT_RESPONSE_BYTES"


def test_rows_are_bounded_per_statement(conn: apsw.Connection) -> None:
    ex = PipelineExecutor(conn, limits=SqlLimits(max_rows=50))
    series = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT {}) SELECT x FROM c"
    assert len(rows_of(execute(ex, series.format(50)))) == 50
    err = error_of(execute(ex, series.format(51)))
    assert err.code == "LIMIT_ROWS" and "50 rows" in err.message
    # rows nobody asked for are not counted
    (res,) = ex.run([h.ExecuteRequest(h.Stmt(sql=series.format(500), want_rows=False))])
    assert isinstance(res, h.StreamResponse)


def test_a_cpu_bomb_is_interrupted_and_the_worker_goes_on(conn: apsw.Connection) -> None:
    ex = PipelineExecutor(conn, limits=SqlLimits(max_statement_seconds=0.2))
    bomb = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    for read_only in (True, False):
        err = error_of(execute(ex, bomb, read_only=read_only))
        assert err.code == "LIMIT_STATEMENT_TIME" and "0.2 s" in err.message, err
    # a write interrupted inside a transaction leaves nothing behind, and the next statement runs
    results = ex.run(
        [
            h.ExecuteRequest(h.Stmt(sql="BEGIN")),
            h.ExecuteRequest(h.Stmt(sql=f"INSERT INTO t(v) SELECT x FROM ({bomb.replace('count(*)', 'x')})")),
            h.ExecuteRequest(h.Stmt(sql="SELECT count(*) FROM t")),
        ]
    )
    assert error_of(results[1]).code == "LIMIT_STATEMENT_TIME"
    assert conn.get_autocommit() and conn.execute("SELECT count(*) FROM t").get == 0
    assert rows_of(execute(ex, "SELECT 1")) == [[1]]


def test_a_pipeline_has_a_time_budget(conn: apsw.Connection) -> None:
    ex = PipelineExecutor(conn, limits=SqlLimits(max_statement_seconds=60, max_pipeline_seconds=0.2))
    bomb = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    results = ex.run([h.ExecuteRequest(h.Stmt(sql=bomb)), h.ExecuteRequest(h.Stmt(sql="SELECT 1"))])
    assert [error_of(r).code for r in results] == ["LIMIT_PIPELINE_TIME", "LIMIT_PIPELINE_TIME"]


def test_sql_text_is_bounded(conn: apsw.Connection) -> None:
    ex = PipelineExecutor(conn, limits=SqlLimits(max_sql_bytes=1000))
    err = error_of(execute(ex, "SELECT '" + "x" * 2000 + "'"))
    assert err.code == "LIMIT_SQL_BYTES" and "1000 bytes" in err.message
    (seq,) = ex.run([h.SequenceRequest(sql="SELECT 1;" * 200)])
    assert error_of(seq).code == "LIMIT_SQL_BYTES"


def test_sqlite_limits_are_set_on_the_connection(conn: apsw.Connection) -> None:
    PipelineExecutor(conn, limits=SqlLimits(max_value_bytes=12345, max_sql_bytes=6789))
    assert conn.limit(apsw.SQLITE_LIMIT_LENGTH) == 12345
    assert conn.limit(apsw.SQLITE_LIMIT_SQL_LENGTH) == 6789
    assert conn.limit(apsw.SQLITE_LIMIT_ATTACHED) == 0
    assert conn.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, -1) == 1
    assert conn.config(apsw.SQLITE_DBCONFIG_TRUSTED_SCHEMA, -1) == 0


def test_sqlite_memory_is_bounded_for_the_process(conn: apsw.Connection) -> None:
    hard, soft = apsw.hard_heap_limit(-1), apsw.soft_heap_limit(-1)
    try:
        ex = PipelineExecutor(conn, limits=SqlLimits(sqlite_heap_bytes=64 * 1024 * 1024))
        assert apsw.hard_heap_limit(-1) == 64 * 1024 * 1024 and apsw.soft_heap_limit(-1) == 32 * 1024 * 1024
        # each value is under the value limit; the row is not, and SQLite runs out of its allowance first
        row_bomb = "SELECT " + ", ".join(["zeroblob(8000000)"] * 20)
        err = error_of(execute(ex, row_bomb, read_only=True))
        assert err.code == "LIMIT_MEMORY", err
        assert rows_of(execute(ex, "SELECT length(zeroblob(8000000))")) == [[8000000]]
    finally:
        apsw.hard_heap_limit(hard)
        apsw.soft_heap_limit(soft)


def test_every_client_statement_is_compiled_for_the_client(
    conn: apsw.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[Access, int, str | None]] = []
    real_call = sql_policy.StatementPolicy.__call__

    def spy(
        policy: sql_policy.StatementPolicy,
        code: int,
        arg1: str | None,
        arg2: str | None,
        dbname: str | None,
        trigger: str | None,
    ) -> int:
        # every action the authorizer sees, and for whom (the policy answers repeats from memory)
        seen.append((policy.access, code, arg1))
        return real_call(policy, code, arg1, arg2, dbname, trigger)

    monkeypatch.setattr(sql_policy.StatementPolicy, "__call__", spy)
    ex = PipelineExecutor(conn)
    requests: list[h.StreamRequest] = [
        h.ExecuteRequest(h.Stmt(sql="BEGIN")),
        h.ExecuteRequest(h.Stmt(sql="SELECT v FROM t WHERE id = :id", named_args=(("id", 1),))),
        h.BatchRequest((h.BatchStep(h.Stmt(sql="SELECT count(*) FROM t"), None),)),
        h.SequenceRequest(sql="SELECT 1; SELECT id FROM t"),
        h.DescribeRequest(sql="SELECT v FROM t"),
        h.StoreSqlRequest(sql_id=1, sql="SELECT id FROM t"),
        h.ExecuteRequest(h.Stmt(sql_id=1)),
    ]
    for read_only in (True, False):
        seen.clear()
        ex.run(requests, read_only=read_only)  # ends with the transaction open: the server rolls it back
        client = [s for s in seen if s[0] is not Access.SERVER]
        server = [s for s in seen if s[0] is Access.SERVER]
        assert len(client) > 10
        # only the server's own ROLLBACK (compiled once, then from the statement cache)
        assert set(server) <= {(Access.SERVER, apsw.SQLITE_TRANSACTION, "ROLLBACK")}, server
