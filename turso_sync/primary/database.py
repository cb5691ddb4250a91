"""One database the primary serves: the local engine, its connection, a worker thread, a revision feed.

Every touch of the database (SQL, page reads) runs on the database's own worker thread, one
job at a time, so the event loop never blocks on SQLite and no two jobs interleave.  After a
job that committed, the worker tells the event loop, which wakes the long-polls to look again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import apsw

from .. import errors
from ..local.connection import Connection
from ..local.engine import LocalDatabase, Snapshot
from ..wire import hrana as wire
from ..wire.pull import PullRequest
from . import sql_policy
from .hrana import PipelineExecutor, has_statement
from .pull import select_pages, select_slices
from .revision import CommitFeed
from .sql_policy import Access, SqlLimits

T = TypeVar("T")

log = logging.getLogger("turso_sync.primary")

#: Reserved bytes per page of a new plaintext database: what Turso's 28-byte ciphers need, so
#: replicas that encrypt at rest (remote encryption) can use the primary's pages unchanged.
RESERVED_BYTES = 28


#: Connection settings ``server_settings`` reads back (what a client must not change).
SETTINGS_PRAGMAS = (
    "query_only",
    "locking_mode",
    "synchronous",
    "journal_mode",
    "writable_schema",
    "foreign_keys",
    "recursive_triggers",
    "defer_foreign_keys",
    "case_sensitive_like",
    "cache_size",
    "temp_store",
    "busy_timeout",
    "wal_autocheckpoint",
    "trusted_schema",
    "cell_size_check",
    "reverse_unordered_selects",
    "automatic_index",
    "ignore_check_constraints",
    "legacy_alter_table",
    "mmap_size",
    "user_version",
    "application_id",
    "page_size",
)

#: Checkpoint the WAL once it holds this many pages (SQLite's default is 1000).
WAL_AUTOCHECKPOINT_PAGES = 64

#: After a commit that woke long-polls, how long their snapshots get before the WAL is emptied.
CHECKPOINT_DELAY = 0.01


@dataclass
class PullCounters:
    """What this database has sent to pulling clients since the server started."""

    pulls: int = 0
    pages: int = 0
    bytes: int = 0


class EnginePages:
    """The page source of the pull logic, backed by the local engine (worker thread only).

    Its statements run on the clients' connection under the SQL policy (installed there if it
    is not yet): the server's own as ``Access.SERVER``, a client's query selector as
    ``Access.QUERY_SELECTOR``.
    """

    def __init__(
        self, engine: LocalDatabase, conn: Connection, policy: sql_policy.StatementPolicy | None = None
    ) -> None:
        self._engine = engine
        self._conn = conn
        self._policy = policy or sql_policy.install(conn.apsw_connection)

    def current_seq(self) -> int:
        return self._engine.current_seq()

    def page_count(self) -> int:
        with self._policy.acting_as(Access.SERVER):
            return int(self._conn.apsw_connection.execute("PRAGMA page_count").get)

    def snapshot(self, since: int | None = None, pgnos: Iterable[int] | None = None) -> Snapshot:
        return self._engine.snapshot(since, pgnos)

    def query_pages(self, sql: str) -> list[int]:
        """Pages a query reads, as a superset: page 1, the schema, and every page of its tables and indexes.

        The query is compiled, never run, under the policy for query selectors (one ``SELECT``
        a read-only token could run); the tables it reads come from the policy's record of
        ``SQLITE_READ`` actions, their pages from ``dbstat``.
        """
        db = self._conn.apsw_connection
        policy = self._policy
        seen: list[str] = []

        def tracer(cursor: apsw.Cursor, statement: str, bindings: object) -> bool:
            seen.append(statement)
            return False  # compiled is enough

        cursor = db.cursor()
        cursor.exec_trace = tracer
        try:
            with policy.acting_as(Access.QUERY_SELECTOR):
                with contextlib.suppress(apsw.ExecTraceAbort):
                    cursor.execute(sql, can_cache=False)
                tables = set(policy.tables_read)
        except apsw.Error as exc:
            refused = isinstance(exc, apsw.AuthError | apsw.SQLError) and policy.refusal is not None
            reason = policy.refusal.reason if refused and policy.refusal else str(exc)
            raise errors.ProtocolError(
                f"server_query_selector is not a query this database runs: {sql_policy.scrub(reason)}"
            ) from None
        finally:
            cursor.close(force=True)
        if not seen:
            raise errors.ProtocolError("server_query_selector holds no statement")
        rest = sql[len(seen[0]) :] if sql.startswith(seen[0]) else ""
        if has_statement(rest):
            raise errors.ProtocolError("server_query_selector must be a single SELECT statement")
        with policy.acting_as(Access.SERVER):
            names = set(tables) | {"sqlite_schema"}
            marks = ",".join("?" * len(tables)) or "NULL"
            names.update(
                r[0] for r in db.execute(f"SELECT name FROM sqlite_schema WHERE tbl_name IN ({marks})", tuple(tables))
            )
            marks = ",".join("?" * len(names))
            pages = {int(r[0]) for r in db.execute(f"SELECT pageno FROM dbstat WHERE name IN ({marks})", tuple(names))}
        return sorted(pages | {1})

    def snapshot_at(self, seq: int, pgnos: Iterable[int] | None = None, since: int | None = None) -> Snapshot:
        """Images as of revision ``seq`` (pinned reads; see ``LocalDatabase.snapshot_at``)."""
        return self._engine.snapshot_at(seq, pgnos, since)


class HostedDatabase:
    """A database of the primary; create with ``await HostedDatabase.open(...)``."""

    def __init__(self, name: str, path: str, sql_limits: SqlLimits | None = None) -> None:
        self.name = name
        self.path = path
        self.sql_limits = sql_limits or SqlLimits()
        self.counters = PullCounters()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"db-{name}")
        self._loop = asyncio.get_running_loop()
        self._engine: LocalDatabase | None = None
        self._conn: Connection | None = None
        self._executor: PipelineExecutor | None = None
        self._pages: EnginePages | None = None
        self.feed = CommitFeed()
        self._checkpoint_queued = False

    @classmethod
    async def open(
        cls, name: str, path: str, *, encryption_key: str | None, cipher: str, sql_limits: SqlLimits | None = None
    ) -> HostedDatabase:
        """Open (creating if new) the database file at ``path`` on a fresh worker thread.

        ``sql_limits`` bounds what clients' SQL may spend (``SqlLimits()`` when not given).
        """
        db = cls(name, path, sql_limits)
        try:
            await db.call(db._open, encryption_key, cipher)
        except BaseException:
            db._worker.shutdown(wait=False)
            raise
        return db

    def _open(self, encryption_key: str | None, cipher: str) -> None:
        engine = LocalDatabase(self.path, encryption_key=encryption_key, cipher=cipher, reserved_bytes=RESERVED_BYTES)
        try:
            conn = engine.connect(isolation_level=None)
        except BaseException:
            engine.close()
            raise
        # A small WAL keeps pulls cheap: each engine snapshot reads the WAL whole (see run_pipeline)
        conn.apsw_connection.wal_autocheckpoint(WAL_AUTOCHECKPOINT_PAGES)
        self._engine, self._conn = engine, conn
        # the SQL policy goes on the connection here, before any client statement, for good
        self._executor = PipelineExecutor(conn.apsw_connection, limits=self.sql_limits)
        self._pages = EnginePages(engine, conn, sql_policy.install(conn.apsw_connection))

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on this database's worker thread."""
        return await self._loop.run_in_executor(self._worker, functools.partial(fn, *args))

    # --- jobs (worker thread) -------------------------------------------------------------------

    def select_pages(self, request: PullRequest) -> Snapshot:
        """The snapshot answering a pull request (see ``pull.select_pages``)."""
        assert self._pages is not None
        return select_pages(self._pages, request)

    async def slices(self, request: PullRequest) -> AsyncGenerator[Snapshot, None]:
        """The answer to a pull as it is read: one snapshot, or a bootstrap slice by slice.

        Each slice is read by a worker job of its own, only when the sender asks for it (after it
        sent the one before), so a bootstrap holds at most one slice in memory however slowly the
        client reads, and other requests' jobs run between its slices.  Every slice is of the
        same revision: a slice read after a commit is read as of the first slice's revision
        (``select_slices``).
        """
        assert self._pages is not None
        reader = select_slices(self._pages, request)
        try:
            while True:
                snap = await self.call(next, reader, None)
                if snap is None:
                    return
                yield snap
        finally:
            with contextlib.suppress(RuntimeError):  # the worker stopped (shutdown): nothing to close on
                await self.call(reader.close)

    def run_pipeline(self, requests: Sequence[wire.StreamRequest], read_only: bool) -> list[wire.StreamResult]:
        """Execute a pipeline; if it committed, wake the long-polls."""
        assert self._executor is not None
        before = self._executor.commits
        try:
            return self._executor.run(requests, read_only=read_only)
        finally:
            if self._executor.commits != before:
                if self.feed.waiting:
                    # long-polls are parked: let their snapshots (of a one-transaction WAL) go first
                    self._loop.call_soon_threadsafe(self._committed, True)
                else:
                    self._truncate_wal()
                    self._loop.call_soon_threadsafe(self._committed, False)

    def server_settings(self) -> dict[str, object]:
        """What clients must not be able to change, read on the worker through the server's own access.

        The connection's settings (pragmas), the schemas attached besides temp, how many
        temporary objects exist, whether the policy is in place, SQLite's process-wide memory limits.
        """
        assert self._conn is not None
        db = self._conn.apsw_connection
        policy = sql_policy.install(db)
        settings: dict[str, object] = {}
        with policy.acting_as(Access.SERVER):
            for name in SETTINGS_PRAGMAS:
                settings[name] = db.execute(f"PRAGMA {name}").get
            # SQLite opens an empty temp schema when a statement names it (even one refused): harmless
            settings["schemas"] = [r[1] for r in db.execute("PRAGMA database_list") if r[1] != "temp"]
            settings["temp_objects"] = db.execute("SELECT count(*) FROM temp.sqlite_master").get
        settings["policy_installed"] = db.authorizer is policy
        settings["hard_heap_limit"] = apsw.hard_heap_limit(-1)
        settings["soft_heap_limit"] = apsw.soft_heap_limit(-1)
        return settings

    def _committed(self, checkpoint_later: bool) -> None:
        """On the event loop after a commit: wake the long-polls, then maybe queue the checkpoint."""
        self.feed.bump()
        if checkpoint_later and not self._checkpoint_queued:
            self._checkpoint_queued = True
            # the woken polls resume and queue their snapshots within a few loop turns
            self._loop.call_later(CHECKPOINT_DELAY, self._queue_checkpoint)

    def _queue_checkpoint(self) -> None:
        self._checkpoint_queued = False
        if self.feed.closed:
            return
        with contextlib.suppress(RuntimeError):  # the worker stopped (shutdown)
            self._worker.submit(self._truncate_wal)

    def _truncate_wal(self) -> None:
        """Checkpoint and empty the WAL after a commit (the frame log archives it first).

        A database is pulled far more often than it is written (every replica pulls each
        change), and an engine snapshot parses whatever is in the WAL; with the WAL empty it
        reads pages straight from the file.  A few milliseconds per commit buy that.
        """
        if self._engine is None or self.feed.closed:
            return
        try:
            self._engine.checkpoint()
        except errors.OperationalError as exc:  # busy: another process reads; next commit retries
            log.debug("checkpoint of %s skipped: %s", self.name, exc)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._engine is not None:
            self._engine.close()

    async def close(self) -> None:
        """Wake the long-polls, close the connection and the engine, stop the worker."""
        self.feed.close()
        try:
            await self.call(self._close)
        finally:
            self._worker.shutdown(wait=True)
