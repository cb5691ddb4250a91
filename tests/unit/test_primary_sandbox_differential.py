"""Differential check of the primary's SQL sandbox: whatever it allows behaves exactly as plain SQLite.

Hypothesis generates statements from a small grammar over a fixed schema (reads, writes,
CASE/EXISTS/IN subqueries, recursive CTEs, built-in functions, conflict clauses).  Each runs
through the primary's executor (the policy on, with both token kinds) and on a plain SQLite
connection holding the same data; rows, errors and the tables afterwards must be the same.
The grammar only uses what the policy documents as allowed, so a refusal is a failure too.
"""

from __future__ import annotations

import apsw
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from turso_sync.primary.hrana import PipelineExecutor, WriteDenied
from turso_sync.wire import hrana as h

SCHEMA = [
    "CREATE TABLE t(id INTEGER PRIMARY KEY, a INTEGER, b TEXT, c REAL, d BLOB)",
    "CREATE TABLE u(k TEXT PRIMARY KEY, n INTEGER NOT NULL DEFAULT 0 CHECK (n > -100))",
    "CREATE INDEX t_a ON t(a)",
    "CREATE VIEW tv AS SELECT id, a + 1 AS a1, upper(b) AS ub FROM t",
    "INSERT INTO t VALUES (1, 10, 'one', 1.5, x'01'), (2, -3, 'two', NULL, NULL), (3, NULL, 'Three', 0.25, x'ff00'),"
    " (4, 7, NULL, -2.0, x''), (5, 10, 'five', 1e10, x'abcd')",
    "INSERT INTO u VALUES ('x', 1), ('y', 2), ('z', 0)",
]

COLUMNS = ["id", "a", "b", "c", "d"]
INT_COLUMNS = ["id", "a"]
FUNCS_1 = ["abs", "length", "lower", "upper", "typeof", "hex", "quote", "trim", "unicode", "round", "sign", "soundex"]
FUNCS_2 = ["coalesce", "ifnull", "nullif", "instr", "max", "min", "substr", "round", "printf", "json_array"]
OPS = ["+", "-", "*", "/", "%", "||", "=", "<>", "<", ">=", "AND", "OR", "IS", "IS NOT", "&", "<<"]

literals = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(str),
    st.integers(-20, 20).map(str),
    st.sampled_from(["NULL", "'one'", "'two'", "''", "'x'", "1.5", "-0.0", "x'00ff'", "9223372036854775807"]),
)
columns = st.sampled_from(COLUMNS)


def _extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(inner, st.sampled_from(OPS), inner).map(lambda x: f"({x[0]} {x[1]} {x[2]})"),
        st.tuples(st.sampled_from(FUNCS_1), inner).map(lambda x: f"{x[0]}({x[1]})"),
        st.tuples(st.sampled_from(FUNCS_2), inner, inner).map(lambda x: f"{x[0]}({x[1]}, {x[2]})"),
        st.tuples(inner, inner, inner).map(lambda x: f"CASE WHEN {x[0]} THEN {x[1]} ELSE {x[2]} END"),
        inner.map(lambda e: f"EXISTS (SELECT 1 FROM u WHERE n = {e})"),
        inner.map(lambda e: f"({e} IN (SELECT a FROM t))"),
        inner.map(lambda e: f"CAST({e} AS INTEGER)"),
        inner.map(lambda e: f"(SELECT count(*) FROM t WHERE a > {e})"),
    )


expressions = st.recursive(st.one_of(literals, columns), _extend, max_leaves=6)
conditions = expressions


@st.composite
def selects(draw: st.DrawFn) -> str:
    items = ", ".join(draw(st.lists(expressions, min_size=1, max_size=3)))
    where = draw(st.one_of(st.just(""), conditions.map(lambda c: f" WHERE {c}")))
    kind = draw(st.sampled_from(["plain", "aggregate", "view", "cte", "compound"]))
    if kind == "aggregate":
        col = draw(columns)
        return f"SELECT count(*), sum({col}), group_concat({col}), max({col}) FROM t{where}"
    if kind == "view":
        return f"SELECT id, a1, ub FROM tv{where.replace('WHERE', 'WHERE id > 0 AND') if where else ''} ORDER BY id"
    if kind == "cte":
        limit = draw(st.integers(0, 50))
        return (
            f"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT {limit}) "
            f"SELECT x, x * x FROM c WHERE x % 3 = 0"
        )
    if kind == "compound":
        return f"SELECT a FROM t UNION SELECT n FROM u ORDER BY 1 LIMIT {draw(st.integers(0, 10))}"
    order = draw(st.sampled_from(["", " ORDER BY id", " ORDER BY 1"]))
    return f"SELECT {items} FROM t{where}{order}"


@st.composite
def writes(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["insert", "upsert", "update", "delete", "insert_select"]))
    if kind == "insert":
        return f"INSERT INTO t(a, b) VALUES ({draw(expressions)}, {draw(expressions)})"
    if kind == "upsert":
        key = draw(st.sampled_from(["'x'", "'y'", "'new'", "NULL"]))
        return (
            f"INSERT INTO u(k, n) VALUES ({key}, {draw(expressions)}) "
            f"ON CONFLICT(k) DO UPDATE SET n = excluded.n + {draw(st.integers(-5, 5))}"
        )
    if kind == "update":
        col = draw(st.sampled_from([*INT_COLUMNS, "b", "c"]))
        return f"UPDATE t SET {col} = {draw(expressions)} WHERE {draw(conditions)}"
    if kind == "delete":
        return f"DELETE FROM u WHERE {draw(conditions)}"
    return f"INSERT OR IGNORE INTO u(k, n) SELECT b, a FROM t WHERE {draw(conditions)}"


def _fresh() -> apsw.Connection:
    db = apsw.Connection(":memory:")
    for sql in SCHEMA:
        db.execute(sql)
    return db


def plain(db: apsw.Connection, sql: str) -> tuple[str, object]:
    try:
        return "rows", [list(r) for r in db.execute(sql, can_cache=False)]
    except apsw.Error as exc:
        return "error", str(exc)
    except UnicodeError:  # text that is not UTF-8 (x'ff' cast to text): the executor says VALUE_INVALID
        return "value-error", None


def sandboxed(db: apsw.Connection, sql: str, read_only: bool) -> tuple[str, object]:
    ex = PipelineExecutor(db)
    (res,) = ex.run([h.ExecuteRequest(h.Stmt(sql=sql))], read_only=read_only)
    if isinstance(res, h.HranaError):
        assert res.code != "SQLITE_AUTH" and not res.code.startswith("LIMIT_"), (sql, res)
        if res.code == "VALUE_INVALID":
            return "value-error", None
        return "error", res.message
    assert isinstance(res, h.StreamResponse) and isinstance(res.result, h.StmtResult)
    return "rows", res.result.rows


def tables(db: apsw.Connection) -> list[list[tuple[object, ...]]]:
    t = db.execute("SELECT id, quote(a), quote(b), quote(c), quote(d) FROM t ORDER BY id").fetchall()
    return [t, db.execute("SELECT quote(k), quote(n) FROM u ORDER BY k").fetchall()]


FAST = settings(max_examples=150, deadline=None, derandomize=True)


@FAST
@given(sql=selects(), read_only=st.booleans())
def test_reads_match_plain_sqlite(sql: str, read_only: bool) -> None:
    ours, theirs = _fresh(), _fresh()
    result = sandboxed(ours, sql, read_only)
    event(result[0])  # rows, error or value-error: --hypothesis-show-statistics shows the mix
    assert result == plain(theirs, sql), sql


@FAST
@given(sql=writes())
def test_writes_match_plain_sqlite(sql: str) -> None:
    ours, theirs = _fresh(), _fresh()
    result = sandboxed(ours, sql, read_only=False)
    event(result[0])
    assert result == plain(theirs, sql), sql
    assert tables(ours) == tables(theirs), sql
    # a read-only token's write is refused as a whole (403), and changes nothing
    reader = _fresh()
    with pytest.raises(WriteDenied):
        sandboxed(reader, sql, read_only=True)
    assert tables(reader) == tables(_fresh())
