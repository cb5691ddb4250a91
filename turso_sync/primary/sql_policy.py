"""What SQL clients may run on the primary, and how much of the server one statement may use.

All clients of a database share one connection, so a client's statement must not reach
outside the database file (ATTACH, VACUUM INTO, extensions), leave state behind for the next
client (temporary objects, connection settings), break what the server relies on (WAL, page
size, the frame log), learn anything about the host (paths, versions, build options) or
spend unbounded time or memory.

The policy is an allow-list, enforced by an SQLite authorizer that is installed once, when
the connection is set up, and never removed: every statement is checked as SQLite compiles
it (triggers and views included).  What is allowed depends on who runs the statement, an
``Access`` that the database's worker sets for exactly the duration of one statement with
``StatementPolicy.acting_as``.  Client statements are compiled with the statement cache off,
so a statement compiled for one access is never reused for another.

Allowed, by access (everything else is refused, and the error names the statement and why):

* ``READ_ONLY``: ``SELECT`` (also ``WITH``, ``WITH RECURSIVE``, ``EXPLAIN``) over tables and
  views of schema ``main``; ``BEGIN``/``COMMIT``/``ROLLBACK``/``SAVEPOINT``/``RELEASE``; the
  built-in functions in ``FUNCTIONS``; reading the pragmas in ``READ_PRAGMAS`` and
  ``QUERY_PRAGMAS`` (also as ``pragma_*`` table-valued functions).
* ``READ_WRITE``: the above, plus ``INSERT``/``UPDATE``/``DELETE``, ``CREATE``/``DROP`` of
  tables, indexes, views and triggers in ``main``, ``ALTER TABLE``, ``ANALYZE``, ``REINDEX``,
  virtual tables of the modules in ``VTABLE_MODULES``, and setting the pragmas in
  ``SETTABLE_PRAGMAS`` (they live in the database file, not in the connection).
* ``QUERY_SELECTOR`` (a pull's ``server_query_selector``, compiled and never run): a
  ``SELECT`` as allowed to ``READ_ONLY``, nothing else; the tables it reads are recorded.
* ``SERVER`` (the server's own statements, and the default between statements): anything
  but what is refused everywhere.

Refused everywhere: any schema but ``main`` (``temp`` objects would shadow the real tables
for later clients: a push would land in a temporary table and be lost), ``ATTACH``,
``DETACH``, ``VACUUM`` and ``VACUUM INTO`` (SQLite runs both through an ATTACH; VACUUM also
rewrites the whole file under the frame log), ``load_extension``, raw page access
(``sqlite_dbpage``).
"""

from __future__ import annotations

import contextlib
import enum
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import apsw

MiB = 1024 * 1024


@dataclass(frozen=True)
class SqlLimits:
    """How much one client's SQL may make the server spend; over a bound, a step error naming it.

    ``max_statement_seconds``: one statement's run time (an interrupt, not a hung worker).
    ``max_pipeline_seconds``: the whole pipeline (one HTTP request) on the database's worker.
    ``max_rows``: rows one statement may return.
    ``max_response_bytes``: the rows and columns of one pipeline's answer, as JSON (about).
    ``max_value_bytes``: one string or blob, stored or computed (SQLite's ``SQLITE_LIMIT_LENGTH``,
    which also bounds a stored row).
    ``max_sql_bytes``: one SQL text (``SQLITE_LIMIT_SQL_LENGTH``).
    ``sqlite_heap_bytes``: SQLite's memory in the whole process (``sqlite3_hard_heap_limit64``,
    and half of it as the soft limit, where SQLite starts shrinking its caches); a statement
    that needs more fails with ``LIMIT_MEMORY``.  It bounds what one result row costs before
    the row and response limits can look at it (the connections keep temporary data in
    memory, so it also bounds sorts and temporary b-trees).  None leaves SQLite unlimited.
    Because SQLite's limit is the process's, not the server's, it is None unless asked for:
    ``turso-sync serve``, which owns its process, asks for ``SERVE_SQLITE_HEAP_BYTES`` by default,
    while a primary embedded in an application's process (or a test's) leaves that process's
    other SQLite databases alone.
    """

    max_statement_seconds: float = 10.0
    max_pipeline_seconds: float = 60.0
    max_rows: int = 100_000
    max_response_bytes: int = 32 * MiB
    max_value_bytes: int = 16 * MiB
    max_sql_bytes: int = 1 * MiB
    sqlite_heap_bytes: int | None = None


#: SQLite's memory bound of a ``turso-sync serve`` process (see ``SqlLimits.sqlite_heap_bytes``).
SERVE_SQLITE_HEAP_BYTES = 256 * MiB


class Access(enum.Enum):
    """Who runs the statement being compiled."""

    READ_ONLY = "a read-only token"
    READ_WRITE = "a read-write token"
    QUERY_SELECTOR = "a query selector"
    SERVER = "the server"


#: Pragmas a read-write client may set: they change the database file, not the connection.
SETTABLE_PRAGMAS = frozenset({"user_version", "application_id"})

#: Pragmas anyone may read (without an argument): facts about the database, nothing about the host.
READ_PRAGMAS = frozenset(
    {
        "user_version",
        "application_id",
        "schema_version",
        "data_version",
        "page_count",
        "page_size",
        "freelist_count",
        "encoding",
        "auto_vacuum",
        "foreign_keys",
        "collation_list",
        "integrity_check",
        "quick_check",
        "foreign_key_check",
        "table_list",
    }
)

#: Pragmas that take an argument only to say what to look at (a table, an index, a limit).
QUERY_PRAGMAS = frozenset(
    {
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
        "foreign_key_check",
        "integrity_check",
        "quick_check",
    }
)

#: Built-in functions clients may call.  Left out on purpose: ``load_extension`` (runs code
#: from the host's files), ``sqlite_version``, ``sqlite_source_id``, ``fts5_source_id``,
#: ``sqlite_compileoption_get``/``_used`` (the host's build), ``sqlite_log`` (writes to the
#: server's log), ``total_changes`` (counts every client's changes on the shared connection),
#: ``fts3_tokenizer`` (takes a pointer), ``fts5`` (hands out a pointer), ``geopoly_debug`` and
#: the ``rtree*`` debugging functions, and the FTS3/4 auxiliaries of modules not allowed.
FUNCTIONS = frozenset(
    {
        # core scalar
        *("abs", "changes", "char", "coalesce", "concat", "concat_ws", "format", "glob", "hex"),
        *("if", "ifnull", "iif", "instr", "last_insert_rowid", "length", "like", "likelihood"),
        *("likely", "lower", "ltrim", "max", "min", "nullif", "octet_length", "printf", "quote"),
        *("random", "randomblob", "replace", "round", "rtrim", "sign", "soundex", "substr"),
        *("substring", "trim", "typeof", "unhex", "unicode", "unistr", "unistr_quote", "unlikely"),
        *("upper", "zeroblob", "subtype", "match"),
        # aggregate and window
        *("avg", "count", "group_concat", "string_agg", "sum", "total", "median", "percentile"),
        *("percentile_cont", "percentile_disc", "row_number", "rank", "dense_rank", "percent_rank"),
        *("cume_dist", "ntile", "lag", "lead", "first_value", "last_value", "nth_value"),
        # date and time
        *("date", "time", "datetime", "julianday", "unixepoch", "strftime", "timediff"),
        *("current_date", "current_time", "current_timestamp"),
        # math
        *("acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "ceil", "ceiling", "cos"),
        *("cosh", "degrees", "exp", "floor", "ln", "log", "log10", "log2", "mod", "pi", "pow"),
        *("power", "radians", "sin", "sinh", "sqrt", "tan", "tanh", "trunc"),
        # JSON
        *("json", "jsonb", "json_array", "jsonb_array", "json_array_length", "json_array_insert"),
        *("jsonb_array_insert", "json_error_position", "json_extract", "jsonb_extract", "->", "->>"),
        *("json_insert", "jsonb_insert", "json_object", "jsonb_object", "json_patch", "jsonb_patch"),
        *("json_pretty", "json_remove", "jsonb_remove", "json_replace", "jsonb_replace", "json_set"),
        *("jsonb_set", "json_type", "json_valid", "json_quote", "json_group_array", "jsonb_group_array"),
        *("json_group_object", "jsonb_group_object"),
        # full-text search (FTS5) and R*Tree queries
        *("bm25", "highlight", "snippet", "fts5_get_locale", "fts5_insttoken", "fts5_locale"),
    }
)

#: Virtual table modules a read-write client may create tables of.  FTS5 and R*Tree are the
#: maintained ones; SQLite's defensive mode (set on the connection) keeps their shadow tables
#: read-only to SQL, so a client cannot hand them crafted internals.
VTABLE_MODULES = frozenset({"fts5", "rtree", "rtree_i32"})

#: Eponymous virtual tables clients may read (``pragma_*`` ones go by the pragma's name).
#: ``dbstat`` describes pages every pull hands out anyway.
READABLE_VTABLES = frozenset({"json_each", "json_tree", "jsonb_each", "jsonb_tree", "dbstat"})

#: Tables nobody reads or writes through SQL: raw pages (would bypass the frame log when
#: written) and the connection's statement list.
_HIDDEN_TABLES = frozenset({"sqlite_dbpage", "sqlite_stmt"})

_WRITES = {
    apsw.SQLITE_INSERT: "INSERT",
    apsw.SQLITE_UPDATE: "UPDATE",
    apsw.SQLITE_DELETE: "DELETE",
    apsw.SQLITE_CREATE_TABLE: "CREATE TABLE",
    apsw.SQLITE_CREATE_INDEX: "CREATE INDEX",
    apsw.SQLITE_CREATE_VIEW: "CREATE VIEW",
    apsw.SQLITE_CREATE_TRIGGER: "CREATE TRIGGER",
    apsw.SQLITE_DROP_TABLE: "DROP TABLE",
    apsw.SQLITE_DROP_INDEX: "DROP INDEX",
    apsw.SQLITE_DROP_VIEW: "DROP VIEW",
    apsw.SQLITE_DROP_TRIGGER: "DROP TRIGGER",
    apsw.SQLITE_ALTER_TABLE: "ALTER TABLE",
    apsw.SQLITE_ANALYZE: "ANALYZE",
    apsw.SQLITE_REINDEX: "REINDEX",
    apsw.SQLITE_CREATE_VTABLE: "CREATE VIRTUAL TABLE",
    apsw.SQLITE_DROP_VTABLE: "DROP VIRTUAL TABLE",
}

_TEMP_ACTIONS = {
    apsw.SQLITE_CREATE_TEMP_TABLE: "CREATE TEMP TABLE",
    apsw.SQLITE_CREATE_TEMP_INDEX: "CREATE TEMP INDEX",
    apsw.SQLITE_CREATE_TEMP_VIEW: "CREATE TEMP VIEW",
    apsw.SQLITE_CREATE_TEMP_TRIGGER: "CREATE TEMP TRIGGER",
    apsw.SQLITE_DROP_TEMP_TABLE: "DROP TEMP TABLE",
    apsw.SQLITE_DROP_TEMP_INDEX: "DROP TEMP INDEX",
    apsw.SQLITE_DROP_TEMP_VIEW: "DROP TEMP VIEW",
    apsw.SQLITE_DROP_TEMP_TRIGGER: "DROP TEMP TRIGGER",
}

_CLIENTS = (Access.READ_ONLY, Access.READ_WRITE, Access.QUERY_SELECTOR)


@dataclass(frozen=True)
class Refusal:
    """Why the authorizer refused an action; ``write`` marks a read-only client's write."""

    reason: str
    write: bool = False


def check(access: Access, code: int, arg1: str | None, arg2: str | None, dbname: str | None) -> Refusal | None:
    """The policy for one authorizer action: None to allow, else why it is refused (pure)."""
    # refused everywhere, whoever asks
    if code == apsw.SQLITE_ATTACH:
        return Refusal("ATTACH (also how SQLite runs VACUUM and VACUUM INTO) is not allowed")
    if code == apsw.SQLITE_DETACH:
        return Refusal("DETACH is not allowed")
    if code in _TEMP_ACTIONS:
        return Refusal(f"{_TEMP_ACTIONS[code]}: temporary objects are not allowed (schema main only)")
    schema = arg1 if code == apsw.SQLITE_ALTER_TABLE else dbname
    server_looks = access is Access.SERVER and code in (apsw.SQLITE_READ, apsw.SQLITE_SELECT) and schema == "temp"
    if schema is not None and schema != "main" and not server_looks:  # the server may check that temp is empty
        return Refusal(f"schema {schema!r} is not allowed (schema main only)")
    if code == apsw.SQLITE_FUNCTION and (arg2 or "").lower() == "load_extension":
        return Refusal("load_extension is not allowed")
    table = (arg1 or "").lower()
    if (
        code in (apsw.SQLITE_READ, apsw.SQLITE_INSERT, apsw.SQLITE_UPDATE, apsw.SQLITE_DELETE)
        and table in _HIDDEN_TABLES
    ):
        return Refusal(f"table {table} is not allowed")
    if access is Access.SERVER:
        return None
    return _check_client(access, code, arg1, arg2)


def _check_client(access: Access, code: int, arg1: str | None, arg2: str | None) -> Refusal | None:
    if code in (apsw.SQLITE_SELECT, apsw.SQLITE_RECURSIVE):
        return None
    if code == apsw.SQLITE_READ:
        table = (arg1 or "").lower()
        if table.startswith("pragma_"):
            return _check_pragma(access, table[len("pragma_") :], None)
        return None  # tables and views of main (any other schema was refused above)
    if code == apsw.SQLITE_FUNCTION:
        name = (arg2 or "").lower()
        return None if name in FUNCTIONS else Refusal(f"function {name}() is not allowed")
    if access is Access.QUERY_SELECTOR:
        return Refusal("a query selector may only be a SELECT")
    if code in (apsw.SQLITE_TRANSACTION, apsw.SQLITE_SAVEPOINT):
        return None
    if code == apsw.SQLITE_PRAGMA:
        return _check_pragma(access, (arg1 or "").lower(), arg2)
    if code in _WRITES:
        if access is Access.READ_ONLY:
            return Refusal(f"{_WRITES[code]} writes, and this token may only read", write=True)
        if code in (apsw.SQLITE_CREATE_VTABLE, apsw.SQLITE_DROP_VTABLE) and (arg2 or "").lower() not in VTABLE_MODULES:
            allowed = ", ".join(sorted(VTABLE_MODULES))
            return Refusal(f"virtual tables of module {arg2!r} are not allowed (only {allowed})")
        return None
    return Refusal(f"{apsw.mapping_authorizer_function.get(code, code)} is not allowed")


def _check_pragma(access: Access, name: str, arg: str | None) -> Refusal | None:
    if arg is None and (name in READ_PRAGMAS or name in QUERY_PRAGMAS):
        return None
    if arg is not None and name in QUERY_PRAGMAS:
        return None
    if arg is not None and name in SETTABLE_PRAGMAS:
        if access is Access.READ_WRITE:
            return None
        return Refusal(f"PRAGMA {name} = ... writes, and this token may only read", write=True)
    if arg is None:
        return Refusal(f"PRAGMA {name} is not allowed (it acts, or tells about the server)")
    return Refusal(f"PRAGMA {name} = ... is not allowed (it changes the server's shared connection or file)")


_DECIDED_MAX = 4096  # authorizer answers a policy keeps (then it starts over)


class StatementPolicy:
    """The authorizer and progress handler of one connection, and who its current statement runs for.

    Installed by ``install``; never removed.  The database's single worker thread sets the
    access around each statement with ``acting_as``.
    """

    def __init__(self, limits: SqlLimits) -> None:
        self.limits = limits
        self.access = Access.SERVER
        self.refusal: Refusal | None = None
        self.tables_read: set[str] = set()
        self.timed_out = False
        self._deadline: float | None = None
        # ``check`` is pure: its answers, by its arguments (an action recurs in every statement
        # that names the same table, column or function)
        self._decided: dict[tuple[Access, int, str | None, str | None, str | None], Refusal | None] = {}

    def __call__(self, code: int, arg1: str | None, arg2: str | None, dbname: str | None, trigger: str | None) -> int:
        """The SQLite authorizer callback."""
        key = (self.access, code, arg1, arg2, dbname)
        try:
            refusal = self._decided[key]
        except KeyError:
            refusal = check(self.access, code, arg1, arg2, dbname)
            if len(self._decided) >= _DECIDED_MAX:  # names come from clients: keep the memory bounded
                self._decided.clear()
            self._decided[key] = refusal
        if refusal is not None:
            if self.refusal is None:  # the first reason is the one that explains the rest
                self.refusal = refusal
            return apsw.SQLITE_DENY
        if code == apsw.SQLITE_READ and arg1:
            self.tables_read.add(arg1)
        return apsw.SQLITE_OK

    def progress(self) -> bool:
        """The progress handler: True (interrupt) once the statement's deadline has passed."""
        if self._deadline is not None and time.monotonic() > self._deadline:
            self.timed_out = True
            return True
        return False

    @contextlib.contextmanager
    def acting_as(self, access: Access, deadline: float | None = None) -> Iterator[None]:
        """Compile and run statements for ``access`` (until ``deadline``, a ``time.monotonic`` value).

        Restores the previous access afterwards, whatever happens; clears the previous
        statement's refusal, tables and timeout.
        """
        saved = (self.access, self._deadline)
        self.access, self._deadline = access, deadline
        self.refusal, self.timed_out = None, False
        self.tables_read = set()
        try:
            yield
        finally:
            self.access, self._deadline = saved


#: Connection-level SQLite settings for untrusted SQL (see SQLite's "Defense Against the Dark Arts").
_DBCONFIG = (
    (apsw.SQLITE_DBCONFIG_DEFENSIVE, 1),  # no writable_schema, shadow tables read-only, no sqlite_dbpage writes
    (apsw.SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0),  # schema may use only innocuous functions and virtual tables
    (apsw.SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 0),
    (apsw.SQLITE_DBCONFIG_ENABLE_FTS3_TOKENIZER, 0),
    (apsw.SQLITE_DBCONFIG_ENABLE_ATTACH_CREATE, 0),
    (apsw.SQLITE_DBCONFIG_ENABLE_ATTACH_WRITE, 0),
)

#: How many virtual machine steps pass between two looks at the clock.
PROGRESS_STEPS = 1000


def install(conn: apsw.Connection, limits: SqlLimits | None = None) -> StatementPolicy:
    """Put the policy on ``conn`` for good, with SQLite's own limits; returns it.

    Installing again on the same connection returns the policy already there (so the
    executor and the page source share one).
    """
    current = conn.authorizer
    if isinstance(current, StatementPolicy):
        return current
    policy = StatementPolicy(limits or SqlLimits())
    lim = policy.limits
    for option, value in _DBCONFIG:
        conn.config(option, value)
    conn.limit(apsw.SQLITE_LIMIT_ATTACHED, 0)
    conn.limit(apsw.SQLITE_LIMIT_LENGTH, lim.max_value_bytes)
    conn.limit(apsw.SQLITE_LIMIT_SQL_LENGTH, lim.max_sql_bytes)
    conn.limit(apsw.SQLITE_LIMIT_WORKER_THREADS, 0)
    if lim.sqlite_heap_bytes is not None:
        # process-wide in SQLite: the same value for every database of a server
        apsw.hard_heap_limit(lim.sqlite_heap_bytes)
        apsw.soft_heap_limit(lim.sqlite_heap_bytes // 2)
    conn.authorizer = policy
    conn.set_progress_handler(policy.progress, PROGRESS_STEPS, id="turso_sync.primary.sql_policy")
    return policy


# --- what a client may see of an error --------------------------------------------------------

_ABSOLUTE_PATH = re.compile(r"(?<![\w.])(?:/[^\s/'\"`,;:()]+){2,}/?")


def scrub(message: str) -> str:
    """An error message fit for a client: absolute paths become ``<path>``, at most 500 characters.

    SQLite names files in some errors (``unable to open database file``, I/O errors from the
    engine); a client must learn nothing about the host from them.
    """
    text = _ABSOLUTE_PATH.sub("<path>", message)
    first = text.split("\n", 1)[0]  # never a traceback
    return first if len(first) <= 500 else first[:497] + "..."
