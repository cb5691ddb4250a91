"""Runs Hrana pipelines on a database's connection, with SQLite's own semantics.

A pipeline runs its requests in order on one connection, as one Hrana stream.  A stream can
outlive its request (Hrana batons, see ``streams.py``): ``execute`` runs requests and leaves a
transaction open for the next request of the same stream; ``run`` is a stream of one request.
Within a batch, a failed step does not by itself end an open transaction; conditions
(``ok``, ``error``, ``not``, ``and``, ``or``, ``is_autocommit``) decide what runs next and are
evaluated on the live connection at the moment the step comes up.  A stream that ends with a
transaction still open is rolled back, so nothing a client left half-done reaches a revision.

The connections are opened with no busy timeout: every job of a database runs on one thread,
so a lock held by another connection of this server (a stream between two of its requests) is
never released while a job waits; SQLITE_BUSY comes back at once and ``busy`` records it.

Every statement is compiled and run under the SQL policy (``sql_policy``) for the stream's
access, never from the statement cache, and within the limits of ``SqlLimits``: a statement
over one gets a step error naming the limit (``LIMIT_*`` codes), and no error text a client
sees names a file of the host.

Runs on the database's worker thread only (see ``database.py``); no asyncio here.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import apsw
import apsw.ext

from ..wire import hrana as wire
from . import sql_policy
from .sql_policy import Access, SqlLimits

#: Stored SQL texts one stream may hold (``store_sql``).
MAX_STORED_SQL = 1000


class WriteDenied(Exception):  # noqa: N818 - reads as what happened
    """A read-only client tried to run a statement that writes."""

    def __init__(self, sql: str) -> None:
        super().__init__(f"this token may only read, and the statement writes: {_clip(sql)}")
        self.sql = sql


class _StepFailed(Exception):  # noqa: N818 - internal control flow
    def __init__(self, error: wire.HranaError) -> None:
        super().__init__(error.message)
        self.error = error


class StreamState:
    """One stream's state: stored SQL, whether it was closed, the caller's access, what is left to spend.

    The time and response budgets are per request (``begin_request``); stored SQL and ``closed``
    last as long as the stream.
    """

    def __init__(self, read_only: bool, limits: SqlLimits) -> None:
        self.read_only = read_only
        self.access = Access.READ_ONLY if read_only else Access.READ_WRITE
        self.sqls: dict[int, str] = {}
        self.closed = False
        self.deadline = 0.0
        self.response_bytes = 0
        self.begin_request(limits)

    def begin_request(self, limits: SqlLimits) -> None:
        """A new request of this stream: a fresh time budget and response budget."""
        self.deadline = time.monotonic() + limits.max_pipeline_seconds
        self.response_bytes = limits.max_response_bytes  # what the answer's rows may still take


class _StatementGuard:
    """Exec tracer: sees each statement after it is prepared and before it runs.

    It refuses a second statement where only one is allowed (checked before the first runs),
    refuses writes from a read-only stream, and keeps the first statement's columns.
    """

    def __init__(self, sql: str, read_only: bool, single: bool) -> None:
        self.sql = sql
        self.read_only = read_only
        self.single = single
        self.calls = 0
        self.refusal: str | None = None
        self.offending = ""
        self.description: tuple[tuple[str, str | None], ...] = ()

    def __call__(self, cursor: apsw.Cursor, statement: str, bindings: Any) -> bool:
        self.calls += 1
        if self.calls == 1 and self.single:
            rest = self.sql[len(statement) :] if self.sql.startswith(statement) else ""
            if has_statement(rest):
                self.refusal = "many"
                return False
        if self.read_only and not cursor.is_readonly:
            self.refusal = "write"
            self.offending = statement
            return False
        if self.calls == 1:
            self.description = cursor.get_description()
        return True

    def failure(self) -> Exception:
        if self.refusal == "write":
            return WriteDenied(self.offending)
        return _StepFailed(
            wire.HranaError(
                "SQL string contains more than one statement; use a batch or a sequence", "SQL_MANY_STATEMENTS"
            )
        )


class PipelineExecutor:
    """Executes pipelines on one APSW connection (owned by the caller, used from one thread).

    Installs the SQL policy on the connection for good (see ``sql_policy.install``), with
    ``limits`` (``SqlLimits()`` when not given).
    """

    def __init__(self, conn: apsw.Connection, *, limits: SqlLimits | None = None) -> None:
        self._conn = conn
        self.commits = 0
        self._policy = sql_policy.install(conn, limits)
        self.limits = self._policy.limits
        #: True when a statement of the last ``execute`` met SQLITE_BUSY (another connection's lock)
        self.busy = False
        #: True when a statement of the last ``execute`` met SQLITE_FULL (the disk, or a size bound)
        self.disk_full = False
        conn.set_commit_hook(self._on_commit, id="turso_sync.primary.hrana")

    def _on_commit(self) -> bool:
        self.commits += 1
        return False  # let the commit go ahead

    def run(self, requests: Sequence[wire.StreamRequest], *, read_only: bool = False) -> list[wire.StreamResult]:
        """One result per request, as a stream of one request (an open transaction is rolled back at the end).

        Raises WriteDenied (after rolling back) for a read-only writer.
        """
        try:
            return self.execute(requests, self.new_stream(read_only))
        finally:
            self.end_transaction()

    def new_stream(self, read_only: bool) -> StreamState:
        """The state of a new stream on this connection."""
        return StreamState(read_only, self.limits)

    def execute(self, requests: Sequence[wire.StreamRequest], stream: StreamState) -> list[wire.StreamResult]:
        """One result per request of ``stream``, leaving a transaction they opened open (unless closed).

        Raises WriteDenied for a read-only writer (the caller ends the transaction).
        """
        self.busy = self.disk_full = False
        stream.begin_request(self.limits)
        return [self._request(req, stream) for req in requests]

    @property
    def in_transaction(self) -> bool:
        """True while a transaction is open on the connection."""
        return not self._conn.get_autocommit()

    @property
    def holds_write_lock(self) -> bool:
        """True while the connection's transaction holds SQLite's write lock (it wrote, or BEGIN IMMEDIATE)."""
        return bool(self._conn.txn_state("main") == apsw.SQLITE_TXN_WRITE)

    def end_transaction(self) -> None:
        """Roll back the open transaction, if any."""
        if not self._conn.get_autocommit():
            with self._policy.acting_as(Access.SERVER):
                self._conn.execute("ROLLBACK")

    # --- requests -------------------------------------------------------------------------------

    def _request(self, req: wire.StreamRequest, stream: StreamState) -> wire.StreamResult:
        if stream.closed:
            return wire.HranaError("the stream was closed by an earlier request", "STREAM_CLOSED")
        try:
            if isinstance(req, wire.ExecuteRequest):
                return wire.StreamResponse("execute", self._execute(req.stmt, stream))
            if isinstance(req, wire.BatchRequest):
                return wire.StreamResponse("batch", self._batch(req.steps, stream))
            if isinstance(req, wire.SequenceRequest):
                self._sequence(self._sql(req.sql, req.sql_id, stream), stream)
                return wire.StreamResponse("sequence")
            if isinstance(req, wire.DescribeRequest):
                return wire.StreamResponse("describe", self._describe(self._sql(req.sql, req.sql_id, stream), stream))
            if isinstance(req, wire.StoreSqlRequest):
                if req.sql_id not in stream.sqls and len(stream.sqls) >= MAX_STORED_SQL:
                    return wire.HranaError(
                        f"a stream may store at most {MAX_STORED_SQL} SQL texts", "SQL_STORE_TOO_MANY"
                    )
                stream.sqls[req.sql_id] = req.sql
                return wire.StreamResponse("store_sql")
            if isinstance(req, wire.CloseSqlRequest):
                stream.sqls.pop(req.sql_id, None)
                return wire.StreamResponse("close_sql")
            if isinstance(req, wire.CloseRequest):
                stream.closed = True
                self.end_transaction()
                return wire.StreamResponse("close")
            return wire.StreamResponse("get_autocommit", is_autocommit=self._conn.get_autocommit())
        except _StepFailed as failed:
            return failed.error

    def _batch(self, steps: Sequence[wire.BatchStep], stream: StreamState) -> wire.BatchResult:
        results: list[wire.StmtResult | None] = []
        errors: list[wire.HranaError | None] = []
        for step in steps:
            if step.condition is not None and not self._holds(step.condition, results, errors):
                results.append(None)
                errors.append(None)
                continue
            try:
                results.append(self._execute(step.stmt, stream))
                errors.append(None)
            except _StepFailed as failed:
                results.append(None)
                errors.append(failed.error)
        return wire.BatchResult(results, errors)

    def _holds(
        self, cond: wire.Cond, results: list[wire.StmtResult | None], errors: list[wire.HranaError | None]
    ) -> bool:
        if isinstance(cond, wire.OkCond):
            return cond.step < len(results) and results[cond.step] is not None
        if isinstance(cond, wire.ErrorCond):
            return cond.step < len(errors) and errors[cond.step] is not None
        if isinstance(cond, wire.NotCond):
            return not self._holds(cond.cond, results, errors)
        if isinstance(cond, wire.AndCond):
            return all(self._holds(c, results, errors) for c in cond.conds)
        if isinstance(cond, wire.OrCond):
            return any(self._holds(c, results, errors) for c in cond.conds)
        return bool(self._conn.get_autocommit())

    # --- statements -----------------------------------------------------------------------------

    def _sql(self, sql: str | None, sql_id: int | None, stream: StreamState) -> str:
        if sql is not None:
            return sql
        assert sql_id is not None
        stored = stream.sqls.get(sql_id)
        if stored is None:
            raise _StepFailed(
                wire.HranaError(f"no SQL is stored under sql_id {sql_id} in this stream", "SQL_NOT_FOUND")
            )
        return stored

    def _execute(self, stmt: wire.Stmt, stream: StreamState) -> wire.StmtResult:
        sql = self._sql(stmt.sql, stmt.sql_id, stream)
        conn = self._conn
        guard = _StatementGuard(sql, stream.read_only, single=True)
        before = conn.total_changes()
        rows: list[list[wire.SqlValue]] = []
        with self._running(sql, stream, guard) as cursor:
            cursor.execute(sql, self._bindings(sql, stmt), can_cache=False)
            if stmt.want_rows:
                rows = self._collect(cursor, sql, stream)
            else:
                for _ in cursor:
                    pass
        changed = conn.total_changes() != before
        cols = [wire.Col(name, decltype) for name, decltype in guard.description]
        stream.response_bytes -= sum(len(name) + len(decltype or "") + 32 for name, decltype in guard.description)
        # without changes, report no rowid: the connection's last one may be another client's
        if not changed:
            return wire.StmtResult(cols, rows, 0, None)
        return wire.StmtResult(cols, rows, conn.changes(), conn.last_insert_rowid())

    def _collect(self, cursor: apsw.Cursor, sql: str, stream: StreamState) -> list[list[wire.SqlValue]]:
        """The statement's rows, within the row and response limits (else a step error naming the limit)."""
        limits = self.limits
        rows: list[list[wire.SqlValue]] = []
        budget = stream.response_bytes
        for row in cursor:
            if len(rows) >= limits.max_rows:
                raise _StepFailed(
                    wire.HranaError(
                        f"the statement returns more than {limits.max_rows} rows, the server's limit; "
                        f"add a LIMIT and page through the rest: {_clip(sql)}",
                        "LIMIT_ROWS",
                    )
                )
            budget -= 8 + sum(_json_cost(v) for v in row)
            if budget < 0:
                stream.response_bytes = 0
                raise _StepFailed(
                    wire.HranaError(
                        f"the results would take more than {limits.max_response_bytes} bytes, the server's "
                        f"limit for one response; ask for fewer or smaller rows: {_clip(sql)}",
                        "LIMIT_RESPONSE_BYTES",
                    )
                )
            rows.append(list(row))
        stream.response_bytes = budget
        return rows

    def _sequence(self, sql: str, stream: StreamState) -> None:
        guard = _StatementGuard(sql, stream.read_only, single=False)
        with self._running(sql, stream, guard) as cursor:
            for _ in cursor.execute(sql, can_cache=False):
                pass

    def _describe(self, sql: str, stream: StreamState) -> wire.DescribeResult:
        """Compile ``sql`` under the policy (a refused statement is refused here too), never run it.

        A read-only stream may describe a write (``is_readonly`` false tells it so): the
        statement is compiled as for a read-write token, and never runs.
        """
        seen: dict[str, Any] = {}

        def tracer(cursor: apsw.Cursor, statement: str, bindings: Any) -> bool:
            seen.update(
                statement=statement,
                names=cursor.bindings_names,
                description=cursor.get_description(),
                is_explain=cursor.is_explain,
                is_readonly=cursor.is_readonly,
            )
            return False  # compiled is enough: never run

        with self._running(sql, stream, tracer, Access.READ_WRITE) as cursor:
            cursor.execute(sql, apsw._null_bindings, can_cache=False)  # type: ignore[attr-defined]
        if not seen:
            raise _StepFailed(wire.HranaError("the SQL string holds no statement", "SQL_NO_STATEMENT"))
        if has_statement(sql[len(seen["statement"]) :] if sql.startswith(seen["statement"]) else ""):
            raise _StepFailed(wire.HranaError("SQL string contains more than one statement", "SQL_MANY_STATEMENTS"))
        params = [_param_name(name) for name in seen["names"]]
        cols = [wire.Col(name, decltype) for name, decltype in seen["description"]]
        return wire.DescribeResult(params, cols, bool(seen["is_explain"]), bool(seen["is_readonly"]))

    # --- running one statement under the policy and the limits ---------------------------------

    def _deadline(self, stream: StreamState) -> float:
        return min(time.monotonic() + self.limits.max_statement_seconds, stream.deadline)

    def _check_started(self, sql: str, stream: StreamState) -> None:
        """Refuse before compiling: the pipeline's time is used up, or the SQL text is too long."""
        if time.monotonic() >= stream.deadline:
            raise _StepFailed(
                wire.HranaError(
                    f"the request used up its {self.limits.max_pipeline_seconds:g} s on the server before "
                    f"this statement; send the rest in another request: {_clip(sql)}",
                    "LIMIT_PIPELINE_TIME",
                )
            )
        if (
            len(sql) > self.limits.max_sql_bytes
            or len(sql.encode("utf-8", "surrogatepass")) > self.limits.max_sql_bytes
        ):
            raise _StepFailed(
                wire.HranaError(
                    f"the SQL text is longer than {self.limits.max_sql_bytes} bytes, the server's limit: {_clip(sql)}",
                    "LIMIT_SQL_BYTES",
                )
            )

    @contextlib.contextmanager
    def _running(
        self, sql: str, stream: StreamState, tracer: Callable[..., bool], access: Access | None = None
    ) -> Iterator[apsw.Cursor]:
        """A cursor that compiles and steps under ``access`` (the stream's) and the deadline; errors become
        step errors.  ``tracer`` sees each statement before it runs: a ``_StatementGuard``'s refusal is
        the step's error; any other tracer that stops a statement means "compiled is enough" (describe).
        """
        self._check_started(sql, stream)
        cursor = self._conn.cursor()
        cursor.exec_trace = tracer
        try:
            with self._policy.acting_as(access or stream.access, self._deadline(stream)):
                yield cursor
        except apsw.ExecTraceAbort:
            if isinstance(tracer, _StatementGuard):
                raise tracer.failure() from None
        except apsw.Error as exc:
            raise _StepFailed(self._sqlite_error(exc, sql, stream)) from None
        except (UnicodeError, OverflowError, KeyError, TypeError, ValueError) as exc:
            raise _StepFailed(
                wire.HranaError(
                    f"value cannot be passed to or from SQLite: {sql_policy.scrub(str(exc))}", "VALUE_INVALID"
                )
            ) from None
        finally:
            cursor.close(force=True)

    def _sqlite_error(self, exc: apsw.Error, sql: str, stream: StreamState) -> wire.HranaError:
        """The step error for an SQLite error: the policy's reason, the limit hit, or SQLite's (scrubbed) message."""
        policy, limits = self._policy, self.limits
        # a refused action stops the compile: SQLITE_AUTH, or "not authorized to use function" (SQLITE_ERROR)
        if isinstance(exc, apsw.AuthError | apsw.SQLError) and policy.refusal is not None:
            if policy.refusal.write and stream.read_only:
                raise WriteDenied(sql)
            return wire.HranaError(f"not authorized: {policy.refusal.reason}: {_clip(sql)}", "SQLITE_AUTH")
        if isinstance(exc, apsw.InterruptError) and policy.timed_out:
            if time.monotonic() >= stream.deadline:
                return wire.HranaError(
                    f"the request ran longer than {limits.max_pipeline_seconds:g} s on the server, its limit; "
                    f"the statement was stopped: {_clip(sql)}",
                    "LIMIT_PIPELINE_TIME",
                )
            return wire.HranaError(
                f"the statement ran longer than {limits.max_statement_seconds:g} s, the server's limit, "
                f"and was stopped: {_clip(sql)}",
                "LIMIT_STATEMENT_TIME",
            )
        if isinstance(exc, apsw.TooBigError):
            return wire.HranaError(
                f"a string, blob or row is larger than {limits.max_value_bytes} bytes, "
                f"the server's limit: {_clip(sql)}",
                "LIMIT_VALUE_BYTES",
            )
        if isinstance(exc, apsw.BusyError):
            self.busy = True
        if isinstance(exc, apsw.FullError):
            self.disk_full = True
        if isinstance(exc, apsw.NoMemError):
            return wire.HranaError(
                f"the statement needs more memory than the server allows: {_clip(sql)}", "LIMIT_MEMORY"
            )
        return sqlite_error(exc)

    def _bindings(self, sql: str, stmt: wire.Stmt) -> Sequence[Any]:
        """Values by parameter index: positional ones by position, named ones by name (prefix optional).

        As in SQLite, a parameter without a value is NULL.  Only statements with named arguments
        need the parameter names, which cost one extra compile (under the current access).
        """
        if not stmt.named_args:
            return stmt.args
        named = {(name[1:] if name[0] in ":@$" else name): value for name, value in stmt.named_args}
        names = apsw.ext.query_info(self._conn, sql).bindings_names
        values: list[Any] = []
        for index, name in enumerate(names, start=1):
            if name is None or name.isdigit():
                values.append(stmt.args[index - 1] if index <= len(stmt.args) else None)
            else:
                values.append(named.get(name))
        return values


def _param_name(name: str | None) -> str | None:
    if name is None:
        return None
    return f"?{name}" if name.isdigit() else f":{name}"


def sqlite_error(exc: apsw.Error) -> wire.HranaError:
    """A step error from an SQLite error: its message (no host paths), and its (extended) result code name."""
    if isinstance(exc, apsw.BindingsError):
        return wire.HranaError(sql_policy.scrub(str(exc)), "ARGS_INVALID")
    code = apsw.mapping_extended_result_codes.get(getattr(exc, "extendedresult", -1))
    if code is None:
        code = apsw.mapping_result_codes.get(getattr(exc, "result", -1), "SQLITE_ERROR")
    return wire.HranaError(sql_policy.scrub(str(exc)), str(code))


_JSON_ESCAPED = re.compile(r'[\x00-\x1f"\\]')


def _json_cost(value: wire.SqlValue) -> int:
    """About how many bytes ``value`` takes in the JSON answer (never less than it does)."""
    if isinstance(value, str):
        size = len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
        if _JSON_ESCAPED.search(value):
            size += 5 * (len(value) - len(value.translate(_DROP_ESCAPED)))  # \u00XX at worst
        return size + 32
    if isinstance(value, bytes | bytearray | memoryview):
        return (len(value) + 2) // 3 * 4 + 32
    return 48  # null, integer, float with their {"type": ...} wrapper


_DROP_ESCAPED = dict.fromkeys([*range(0x20), ord('"'), ord("\\")])


def has_statement(sql: str) -> bool:
    """True if ``sql`` holds anything besides whitespace, semicolons and comments."""
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch.isspace() or ch == ";":
            i += 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            return True
    return False


def _clip(sql: str, limit: int = 80) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
