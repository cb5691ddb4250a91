"""One database the primary serves: the local engine, its connection, a worker thread, a revision feed.

Every touch of the database (SQL, page reads) runs on the database's own worker thread, one
job at a time, so the event loop never blocks on SQLite and no two jobs interleave.  After a
job that committed, the worker tells the event loop, which wakes the long-polls to look again.

The frame log keeps pre-images only (``FrameLog.post_images`` off: pulls read current pages,
pinned reads pre-images, and shipping to a store gets post-images back from them), and a
bounded window of history (``revision.HistoryWindow``): after a commit, the worker decides
whether a prune is due; the kept records are copied in a thread of their own, and only the
short last step (the records archived meanwhile, the rename) runs as a worker job.

Group commit (a primary on local disk): clients' connections commit with ``synchronous=NORMAL``,
so a commit writes its WAL frames without waiting for the disk; no answer of any job that ran
after a commit leaves before that commit's frames are synced.  The first commit after a sync
queues the next sync job on the worker (one at a time); every commit made before that job runs
shares its single ``fdatasync`` of the WAL, and then their answers go out together.  One replica
alone waits for one sync per commit, as with ``synchronous=FULL``; many replicas pushing at once
share one.  A sync that fails breaks the database (``broken``): the answers waiting for it are
refused, and the server opens it again from its files.  On an object store (``durable``) and on a
follower, commits keep ``synchronous=FULL``: a revision is uploaded only once it is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import apsw

from .. import errors
from ..local.connection import Connection
from ..local.engine import LocalDatabase, Snapshot
from ..local.framelog import PrunePlan, fsync_dir
from ..page import RESERVED_BYTES
from ..wire import hrana as wire
from ..wire.pull import PullRequest
from . import sql_policy
from .durable import DurableLog
from .follower import FollowedLog, InstallMismatch
from .hrana import PipelineExecutor, StreamState, has_statement
from .objectstore.errors import ObjectStoreError
from .objectstore.segment import Revision, SnapshotImage
from .pull import delta_bases, select_pages, select_slices
from .revision import CommitFeed, HistoryBounds, HistoryWindow
from .sql_policy import Access, SqlLimits

T = TypeVar("T")

log = logging.getLogger("turso_sync.primary")

# A new plaintext database reserves RESERVED_BYTES per page (turso_sync/page.py): what Turso's
# 28-byte ciphers need, so replicas that encrypt at rest can use the primary's pages unchanged.


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

    Its statements run on its own connection (never a client's: a stream keeps a client's
    connection inside a transaction between requests) under the SQL policy: the server's own
    as ``Access.SERVER``, a client's query selector as ``Access.QUERY_SELECTOR``.

    ``writer_waiting`` tells whether a stream holds SQLite's write lock between two of its
    requests.  The engine's snapshots take that lock to keep commits out while they read; with a
    stream holding it they would wait for a request that cannot come (every job of the database
    runs on this one thread).  Then the pages are read without it, which is as exact: no commit
    or checkpoint can run during this job, and frames a stream's transaction spilled into the WAL
    lie past the wal-index's committed end, which every read here stops at.
    """

    def __init__(
        self,
        engine: LocalDatabase,
        conn: Connection,
        policy: sql_policy.StatementPolicy | None = None,
        writer_waiting: Callable[[], bool] = lambda: False,
    ) -> None:
        self._engine = engine
        self._conn = conn
        self._policy = policy or sql_policy.install(conn.apsw_connection)
        self._writer_waiting = writer_waiting

    def current_seq(self) -> int:
        return self._engine.current_seq()

    def page_count(self) -> int:
        with self._policy.acting_as(Access.SERVER):
            return int(self._conn.apsw_connection.execute("PRAGMA page_count").get)

    def snapshot(self, since: int | None = None, pgnos: Iterable[int] | None = None) -> Snapshot:
        if self._writer_waiting():
            return self._snapshot_unlocked(since, pgnos)
        return self._engine.snapshot(since, pgnos)

    def _snapshot_unlocked(self, since: int | None, pgnos: Iterable[int] | None) -> Snapshot:
        """``LocalDatabase.snapshot`` without the write lock (see the class: a stream holds it)."""
        engine = self._engine
        wanted = set(pgnos) if pgnos is not None else None
        db_size = self.page_count()
        if since is None:
            seq = engine.current_seq()
            changed: set[int] = set(range(1, db_size + 1))
        else:
            seq = since
            changed = set()
            for txn in engine.log.history(since, with_images=False):
                changed.update(page.pgno for page in txn.pages)
                seq = txn.seq
            changed = {p for p in changed if p <= db_size}
        if wanted is not None:
            changed &= wanted
        read = engine.page_reader()
        return Snapshot(seq, db_size, {pgno: read(pgno) for pgno in sorted(changed)})

    def _snapshot_at_unlocked(self, seq: int, pgnos: Iterable[int] | None, since: int | None) -> Snapshot:
        """``LocalDatabase.snapshot_at`` without the write lock (a primary's pages are all local)."""
        log = self._engine.log
        wanted = set(pgnos) if pgnos is not None else None
        current_size = self.page_count()
        firsts, size_at = log.first_touches(seq, wanted)
        db_size = current_size if size_at is None else size_at
        chosen = set(range(1, db_size + 1)) if wanted is None else {p for p in wanted if 1 <= p <= db_size}
        if since is not None:
            changed: set[int] = set()
            for txn in log.history(since, with_images=False):
                if txn.seq > seq:
                    break
                changed.update(page.pgno for page in txn.pages)
            chosen &= changed
        old = {p: firsts[p] for p in chosen if p in firsts}
        pages = {p: log.decrypt(t.pre, p) for p, t in old.items() if t.pre is not None}
        read = self._engine.page_reader()
        pages.update({p: read(p) for p in sorted(chosen - set(old))})
        return Snapshot(seq, db_size, pages)

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
        if self._writer_waiting():
            return self._snapshot_at_unlocked(seq, pgnos, since)
        return self._engine.snapshot_at(seq, pgnos, since)


class DiskFull(Exception):  # noqa: N818 - reads as what happened
    """A statement met SQLITE_FULL: the disk (or the database's size bound) is full (HTTP 503)."""


class WalSyncFailed(Exception):  # noqa: N818 - reads as what happened
    """The WAL could not be synced: commits made since the last sync may not be on disk (HTTP 503)."""


class _Lane:
    """A connection for clients' SQL with its pipeline executor (worker thread only).

    ``on_commit``: group commit (module doc): the connection commits without syncing, and this
    sees every commit it makes, whoever makes it (a client's SQL, a rollback)."""

    def __init__(
        self, engine: LocalDatabase, sql_limits: SqlLimits, on_commit: Callable[[], bool] | None = None
    ) -> None:
        # no busy timeout: see hrana.py (a wait on this thread could never end sooner)
        self.conn = engine.connect(isolation_level=None, timeout=0)
        try:
            if on_commit is not None:
                db = self.conn.apsw_connection
                db.execute("PRAGMA synchronous=NORMAL")
                db.set_commit_hook(on_commit, id="turso_sync.primary.group_commit")
            # A small WAL keeps pulls cheap: each engine snapshot reads the WAL whole (see run_pipeline)
            self.conn.apsw_connection.wal_autocheckpoint(WAL_AUTOCHECKPOINT_PAGES)
            # the SQL policy goes on the connection here, before any client statement, for good
            self.executor = PipelineExecutor(self.conn.apsw_connection, limits=sql_limits)
        except BaseException:
            self.conn.close()
            raise


@dataclass(eq=False)
class OpenStream:
    """A client's stream kept open between requests: its connection, inside a transaction."""

    lane: _Lane
    state: StreamState


@dataclass
class PipelineRun:
    """What one pipeline job did.

    ``results``: one per request (None when ``locked``); ``stream``: the stream still open after
    it (None when it ended); ``committed``: a transaction committed; ``locked``: it needed the
    write lock a stream holds and committed nothing (run it again once a stream ends); ``refused``:
    it left a transaction open that was not to be kept, which was rolled back.
    """

    results: list[wire.StreamResult] | None
    stream: OpenStream | None = None
    committed: bool = False
    locked: bool = False
    refused: bool = False
    seq: int = 0  # on a store: the newest local revision when the job ended (what its answer may show)


#: Spare client connections kept open for the next stream (more are closed when streams end).
SPARE_LANES = 2


class HostedDatabase:
    """A database of the primary; create with ``await HostedDatabase.open(...)``.

    Clients' SQL runs on a shared connection (a *lane*), except a stream kept open between
    requests (a Hrana baton): it keeps the lane its transaction runs on, and the next request
    gets another.  ``streams_ended`` counts ended streams, for writers waiting on one's lock.
    """

    def __init__(
        self,
        name: str,
        path: str,
        sql_limits: SqlLimits | None = None,
        durable: DurableLog | None = None,
        follower: FollowedLog | None = None,
        history: HistoryBounds | None = None,
    ) -> None:
        self.name = name
        #: on an object store (``serve --store``): the link to it; None for a local-disk primary
        self.durable = durable
        #: a read-only follower of the store (``--follow``): what keeps it up with the writer
        self.follower = follower
        self.path = path
        self.sql_limits = sql_limits or SqlLimits()
        self.counters = PullCounters()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"db-{name}")
        self._loop = asyncio.get_running_loop()
        self._engine: LocalDatabase | None = None
        self._conn: Connection | None = None  # the page source's own
        self._lane: _Lane | None = None
        self._spare: list[_Lane] = []
        self._streams: set[OpenStream] = set()
        self._pages: EnginePages | None = None
        self.feed = CommitFeed()
        self._checkpoint_queued = False
        #: a commit's checkpoint job is queued on the worker and has not started (worker thread only)
        self._after_commit_queued = False
        #: checkpoint jobs that ran after commits, and commits they covered (for tests and benchmarks)
        self.after_commit_jobs = self.after_commit_commits = 0
        self._commits_since_job = 0
        # group commit (module doc): the commits the lanes' hook counted (worker thread), the count
        # a sync was last arranged for, the count synced so far as the event loop knows it, the
        # answers waiting for a sync (count, future), a sync job queued and not started (worker
        # thread), and why the last sync failed (it breaks the database)
        self.group_commit = durable is None and follower is None
        self._lane_commits = self._lane_commits_noted = 0
        self._synced_count = 0
        self._sync_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._sync_queued = False
        # jobs ``call`` submitted (counted on the event loop) and started (on the worker): none
        # waiting means a commit has nobody to share a sync with, and syncs at once
        self._jobs_submitted = self._jobs_started = 0
        self._sync_error: WalSyncFailed | None = None
        self._wal_fd: int | None = None
        #: WAL syncs the worker made for group commit, and commits they covered (tests, benchmarks)
        self.wal_syncs = self.wal_synced_commits = 0
        self.streams_ended = 0
        self._stream_waiters: list[asyncio.Future[None]] = []
        self._final_seq: int | None = None  # the local revision when the engine closed (on a store)
        self.history = HistoryWindow(history or HistoryBounds())
        self._prune_due = False  # a prune is scheduled or under way (set on the worker, cleared on the loop)
        self._prune_task: asyncio.Task[None] | None = None
        #: prunes finished since the server started (for tests and benchmarks)
        self.prunes = 0

    @classmethod
    async def open(
        cls,
        name: str,
        path: str,
        *,
        encryption_key: str | None,
        cipher: str,
        sql_limits: SqlLimits | None = None,
        durable: DurableLog | None = None,
        follower: FollowedLog | None = None,
        history: HistoryBounds | None = None,
    ) -> HostedDatabase:
        """Open (creating if new) the database file at ``path`` on a fresh worker thread.

        ``sql_limits`` bounds what clients' SQL may spend (``SqlLimits()`` when not given).
        ``durable``: the database lives on an object store (its local files were just rebuilt
        from it); whatever opening committed locally is stored before this returns.
        ``history``: how much of its history the database keeps (``HistoryBounds()`` when not given).
        """
        db = cls(name, path, sql_limits, durable, follower, history)
        try:
            await db.call(db._open, encryption_key, cipher)
            if durable is not None and durable.catch_up_to is not None:
                # reused local files: the takeover revision becomes a local one that changes no page
                await db.call(db._catch_up, durable.catch_up_to)
            if durable is not None:
                await db.make_durable(await db.call(db.local_seq))
            if follower is not None:
                follower.start(db._install_followed)
        except BaseException:
            if db._engine is not None:
                with contextlib.suppress(Exception):
                    await db.call(db._close)
            db._worker.shutdown(wait=False)
            raise
        return db

    def _catch_up(self, seq: int) -> None:
        """Bring reused local files from revision ``seq - 1`` to ``seq`` with a commit that changes no page."""
        engine = self._engine
        assert engine is not None
        snap = engine.snapshot(None, [1])
        if engine.current_seq() != seq - 1 or engine.install_pages(snap.pages, snap.db_size) != seq:
            raise ObjectStoreError(
                f"database {self.name}: the local files could not follow the takeover revision {seq}; "
                "they are rebuilt from the store at the next open"
            )

    def local_seq(self) -> int:
        """The newest committed local revision (worker thread)."""
        assert self._engine is not None
        return self._engine.current_seq()

    @property
    def broken(self) -> bool:
        """True when this database can store nothing more in the object store (its writer was deposed
        or its lease ran out), a follower cannot keep up with the log, or a sync of its WAL failed:
        it must be closed and opened again (from the store, or from its files)."""
        return (
            (self.durable is not None and self.durable.failed)
            or (self.follower is not None and self.follower.failed)
            or self._sync_error is not None
        )

    async def _install_followed(self, rev: Revision) -> None:
        await self.call(self.install_revision, rev)

    def install_revision(self, rev: Revision) -> None:
        """Install a revision read from the store as the next local transaction (follower, worker thread).

        Raises InstallMismatch when it cannot get the same number (the follower then rebuilds).
        """
        engine = self._engine
        assert engine is not None
        pages = {pgno: engine.log.decrypt(img, pgno) for pgno, img in rev.pages.items() if pgno <= rev.db_size}
        if not pages and rev.db_size >= 1:  # a revision that changes no page (a takeover): carry the number
            pages = engine.snapshot(None, [1]).pages
        if not pages or engine.current_seq() != rev.number - 1:
            raise InstallMismatch(f"revision {rev.number} cannot follow local revision {engine.current_seq()}")
        seq = engine.install_pages(pages, rev.db_size)
        if seq != rev.number:
            raise InstallMismatch(f"revision {rev.number} was installed as local revision {seq}")
        self._after_job(True)

    async def make_durable(self, seq: int) -> None:
        """Return once every local revision up to ``seq`` is durable in the object store (at once
        without a store).  Raises StoreUnavailable (not known to be stored; the revisions stay
        queued and the next call uploads them again), NotWriter or Deposed."""
        durable = self.durable
        if durable is None or seq <= durable.stored:
            return
        if seq > durable.queued:
            async with durable.reading:
                if seq > durable.queued:
                    assert self._engine is not None
                    durable.enqueue(await self.call(durable.read_revisions, self._engine))
        await durable.group.wait_stored(min(seq, durable.queued))
        if durable.snapshot_due():
            durable.snapshotting = self._loop.create_task(self._snapshot(durable))

    async def _snapshot(self, durable: DurableLog) -> None:
        """Write a snapshot of the database to the store (in the background; failures are logged)."""
        try:
            image = await self.call(self._snapshot_image)
            if image is not None:
                await durable.write_snapshot(image)
        except RuntimeError:  # the worker stopped (closing): the next writer snapshots
            pass
        except ObjectStoreError as exc:
            log.warning("database %s: snapshot or compaction failed: %s", self.name, exc)

    def _snapshot_image(self) -> SnapshotImage | None:
        """The database as stored on disk (worker thread); None while a stream holds the write lock."""
        if self._engine is None or self.durable is None or self.writer_waiting():
            return None  # the image is read under the write lock, which a stream would hold for ever
        return self.durable.read_image(self._engine)

    def _open(self, encryption_key: str | None, cipher: str) -> None:
        engine = LocalDatabase(self.path, encryption_key=encryption_key, cipher=cipher, reserved_bytes=RESERVED_BYTES)
        try:
            conn = engine.connect(isolation_level=None, timeout=0)
            try:
                self._lane = _Lane(engine, self.sql_limits, self._lane_hook())
            except BaseException:
                conn.close()
                raise
        except BaseException:
            engine.close()
            raise
        self._engine, self._conn = engine, conn
        # one image per page written: the primary never reads a post-image back (see the module)
        engine.log.post_images = False
        self.history.note(time.monotonic(), engine.current_seq())  # history found counts as of now
        # the page source's own connection, under the same policy and limits as clients' SQL
        policy = sql_policy.install(conn.apsw_connection, self.sql_limits)
        self._pages = EnginePages(engine, conn, policy, self.writer_waiting)

    @property
    def open_streams(self) -> int:
        """Streams kept open between requests on this database."""
        return len(self._streams)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on this database's worker thread; with group commit, return (or raise)
        only once every commit made before the job ended is synced (module doc).

        Raises WalSyncFailed if that sync failed (whatever the job did).
        """
        if not self.group_commit:
            return await self._loop.run_in_executor(self._worker, functools.partial(fn, *args))
        self._jobs_submitted += 1
        count, value, error = await self._loop.run_in_executor(self._worker, self._job, fn, args)
        try:
            if count > self._synced_count:
                await self._until_synced(count)
            if error is not None:
                raise error
            return value  # type: ignore[no-any-return]
        finally:
            del error  # no cycle through the traceback

    def _job(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[int, Any, BaseException | None]:
        """Worker thread: ``fn(*args)``'s value or exception, and the commits counted when it ended."""
        self._jobs_started += 1
        value: Any = None
        error: BaseException | None = None
        try:
            value = fn(*args)
        except Exception as exc:
            error = exc
        self._note_commits()  # any commit the job made that ``_after_job`` did not see (a rollback's)
        return self._lane_commits, value, error

    def _lane_hook(self) -> Callable[[], bool] | None:
        return self._lane_committed if self.group_commit else None

    def _lane_committed(self) -> bool:
        """Every clients' connection's commit hook (group commit): count it, let the commit go ahead."""
        self._lane_commits += 1
        return False

    def _note_commits(self) -> None:
        """Worker thread: if a clients' connection committed since the last look, see that a sync
        covers it: at once when no job waits to share it, else one queued behind them."""
        if self._lane_commits == self._lane_commits_noted:
            return
        self._lane_commits_noted = self._lane_commits
        if self._sync_queued:
            return  # the sync queued behind the jobs waiting covers this commit too
        if self._jobs_submitted == self._jobs_started:
            self._sync_job()  # no job waits to share the sync: the answer need not wait for one more
            return
        with contextlib.suppress(RuntimeError):  # the worker is shutting down: nothing more runs
            self._worker.submit(self._sync_job)
            self._sync_queued = True

    async def _until_synced(self, count: int) -> None:
        """On the event loop: return once the first ``count`` commits are synced; raise WalSyncFailed."""
        if self._sync_error is not None:
            raise self._sync_error
        waiter = self._loop.create_future()
        self._sync_waiters.append((count, waiter))
        await waiter

    def _synced(self, count: int, error: WalSyncFailed | None) -> None:
        """On the event loop, after a sync job: release (or refuse) the answers it covered."""
        if error is not None:
            self._sync_error = error
        else:
            self._synced_count = max(self._synced_count, count)
        waiting, self._sync_waiters = self._sync_waiters, []
        for upto, waiter in waiting:
            if waiter.done():
                continue
            if self._sync_error is not None:
                waiter.set_exception(self._sync_error)
            elif upto <= self._synced_count:
                waiter.set_result(None)
            else:
                self._sync_waiters.append((upto, waiter))

    def _sync_job(self) -> None:
        """Worker thread: sync the WAL, making every commit counted so far durable (group commit)."""
        self._sync_queued = False  # a commit from here on queues a sync of its own
        count = self._lane_commits
        self.wal_syncs += 1
        self.wal_synced_commits = count
        error: WalSyncFailed | None = None
        try:
            self._sync_wal()
        except OSError as exc:
            log.critical(
                "database %s: syncing its WAL failed (%s): the commits since the last sync may not be on "
                "disk; their answers are refused and the database is opened again from its files",
                self.name,
                exc,
            )
            error = WalSyncFailed(
                "the server could not make this change durable (its disk failed a sync), so it is not "
                "acknowledged; try again"
            )
        self._loop.call_soon_threadsafe(self._synced, count, error)

    def _sync_wal(self) -> None:
        """``fdatasync`` the WAL (its directory too, the first time: SQLite has not synced it yet)."""
        wal = self.path + "-wal"
        if self._wal_fd is not None and os.fstat(self._wal_fd).st_ino != os.stat(wal).st_ino:
            os.close(self._wal_fd)  # a new WAL file (never while our connections are open; be sure)
            self._wal_fd = None
        if self._wal_fd is None:
            self._wal_fd = os.open(wal, os.O_RDONLY)
            fsync_dir(wal)
        os.fdatasync(self._wal_fd)

    # --- jobs (worker thread) -------------------------------------------------------------------

    def oldest_revision(self) -> int:
        """The oldest revision a pinned read can still be answered at (the history's base)."""
        assert self._engine is not None
        return self._engine.oldest_revision()

    def select_pages(self, request: PullRequest) -> Snapshot:
        """The snapshot answering a pull request (see ``pull.select_pages``)."""
        assert self._pages is not None
        return select_pages(self._pages, request)

    def select_pages_and_bases(self, request: PullRequest) -> tuple[Snapshot, dict[int, bytes]]:
        """``select_pages``, and the images its pages' deltas are made against (``pull.delta_bases``)."""
        assert self._pages is not None
        snap = select_pages(self._pages, request)
        return snap, delta_bases(self._pages, request, snap)

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

    def writer_waiting(self) -> bool:
        """True if a stream holds SQLite's write lock between two of its requests (worker thread)."""
        return any(stream.lane.executor.holds_write_lock for stream in self._streams)

    def run_pipeline(
        self, requests: Sequence[wire.StreamRequest], read_only: bool, keep_open: bool = False
    ) -> PipelineRun:
        """See ``_run_pipeline``; on an object store, also the local revision the answer may show."""
        run = self._run_pipeline(requests, read_only, keep_open)
        if self.durable is not None:
            run.seq = self.local_seq()
        return run

    def _run_pipeline(
        self, requests: Sequence[wire.StreamRequest], read_only: bool, keep_open: bool = False
    ) -> PipelineRun:
        """Execute a pipeline with ``baton`` null (a new stream); if it committed, wake the long-polls.

        With ``keep_open``, a transaction still open at its end stays open as a stream (the
        caller answers with a baton); otherwise it is rolled back.  Raises WriteDenied (rolled
        back) or DiskFull (rolled back).
        """
        lane = self._lane
        assert lane is not None
        executor = lane.executor
        locked_before = self.writer_waiting()
        before = executor.commits
        state = executor.new_stream(read_only)
        try:
            results = executor.execute(requests, state)
        except BaseException:
            executor.end_transaction()
            raise
        finally:
            self._after_job(executor.commits != before)
        committed = executor.commits != before
        if executor.disk_full:
            executor.end_transaction()
            raise DiskFull("a statement met SQLITE_FULL")
        if executor.busy and locked_before and not committed:
            # nothing it did could write (the stream's lock kept every write out): running it
            # again once the stream ends gives what it would have got had it come then
            executor.end_transaction()
            return PipelineRun(None, locked=True)
        if not executor.in_transaction:
            return PipelineRun(results, committed=committed)
        if not keep_open:
            executor.end_transaction()
            return PipelineRun(results, committed=committed, refused=True)
        stream = OpenStream(lane, state)
        self._streams.add(stream)
        self._lane = self._take_lane()
        return PipelineRun(results, stream, committed)

    def continue_stream(self, stream: OpenStream, requests: Sequence[wire.StreamRequest]) -> PipelineRun:
        """See ``_continue_stream``; on an object store, also the local revision the answer may show."""
        run = self._continue_stream(stream, requests)
        if self.durable is not None:
            run.seq = self.local_seq()
        return run

    def _continue_stream(self, stream: OpenStream, requests: Sequence[wire.StreamRequest]) -> PipelineRun:
        """Execute the next request of an open stream; the stream ends when its transaction does.

        Raises WriteDenied or DiskFull, the stream ended (rolled back) first.
        """
        executor = stream.lane.executor
        before = executor.commits
        try:
            results = executor.execute(requests, stream.state)
        except BaseException:
            self.end_stream(stream)
            raise
        finally:
            self._after_job(executor.commits != before)
        committed = executor.commits != before
        if executor.disk_full:
            self.end_stream(stream)
            raise DiskFull("a statement met SQLITE_FULL")
        if stream.state.closed or not executor.in_transaction:
            self.end_stream(stream)
            return PipelineRun(results, None, committed)
        return PipelineRun(results, stream, committed)

    def end_stream(self, stream: OpenStream) -> None:
        """Roll back the stream's transaction and give its connection back (worker thread; idempotent)."""
        if stream not in self._streams:
            return
        self._streams.discard(stream)
        lane = stream.lane
        try:
            lane.executor.end_transaction()
        except apsw.Error as exc:  # the connection is unusable: close it rather than reuse it
            log.warning("database %s: a stream's rollback failed (%s); its connection is closed", self.name, exc)
            lane.conn.close()
        else:
            if len(self._spare) < SPARE_LANES:
                self._spare.append(lane)
            else:
                lane.conn.close()
        self.streams_ended += 1
        self._loop.call_soon_threadsafe(self._wake_stream_waiters)
        if not self._streams:
            self._truncate_wal()  # commits while streams were open left the WAL as it was

    def _take_lane(self) -> _Lane:
        if self._spare:
            return self._spare.pop()
        assert self._engine is not None
        return _Lane(self._engine, self.sql_limits, self._lane_hook())

    def _wake_stream_waiters(self) -> None:
        waiters, self._stream_waiters = self._stream_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_stream_end(self, seen: int, timeout: float) -> bool:
        """Wait until a stream ends after ``streams_ended`` was ``seen`` (on the event loop); False on timeout."""
        if self.streams_ended != seen:
            return True
        waiter = self._loop.create_future()
        self._stream_waiters.append(waiter)
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                await waiter
        except TimeoutError:
            return self.streams_ended != seen
        return True

    def _after_job(self, committed: bool) -> None:
        """After a job that committed, wake the long-polls (and empty the WAL, see ``_truncate_wal``),
        and start a prune of the history if one is due."""
        if not committed:
            return
        self._note_commits()
        if self.feed.waiting:
            # long-polls are parked: let their snapshots (of a one-transaction WAL) go first
            self._loop.call_soon_threadsafe(self._committed, True)
        else:
            # the next job of this worker, not this one: the answer leaves while the WAL is
            # emptied (the commit is durable already), and every job the answer leads to (the
            # client's next pull, an upload to the store) is queued behind it, as before; the
            # history is measured there, once the frame log holds this commit.  One such job
            # queued and not started yet covers this commit too: commits that arrive together
            # (many replicas pushing) share one checkpoint, which runs after all of them
            self._commits_since_job += 1
            if not self._after_commit_queued:
                with contextlib.suppress(RuntimeError):  # the worker is shutting down: nothing more runs
                    self._worker.submit(self._after_commit_job)
                    self._after_commit_queued = True
            self._loop.call_soon_threadsafe(self._committed, False)
            return
        self._check_history()

    def _after_commit_job(self) -> None:
        self._after_commit_queued = False  # a commit from here on queues a job of its own
        self.after_commit_jobs += 1
        self.after_commit_commits += self._commits_since_job
        self._commits_since_job = 0
        self._truncate_wal_job()
        if not self.feed.closed:
            self._check_history()

    def _check_history(self) -> None:
        """Note the revision's time; if the history outgrew its window, start a prune (worker thread).

        Cheap: a few bisects of the frame log's index.  Never past what the store holds.
        """
        engine = self._engine
        if engine is None or self._prune_due:
            return
        frames = engine.log
        now = time.monotonic()
        try:
            if self.history.note_due(now):  # at most once a second: finding the revision reads the WAL
                self.history.note(now, engine.current_seq())
            upto = self.history.prune_to(
                now,
                base=frames.base_seq,
                size=frames.known_size,  # this process alone archives and prunes it (see the module)
                bytes_point=frames.prune_point,
                bytes_after=frames.seq_bytes_after,
                stored=self.durable.stored if self.durable is not None else None,
            )
        except OSError as exc:
            log.warning("database %s: cannot measure its history (%s); not pruned", self.name, exc)
            return
        if upto is None:
            return
        self._prune_due = True
        self._loop.call_soon_threadsafe(self._start_prune, upto)

    def _start_prune(self, upto: int) -> None:
        """On the event loop: run the prune up to ``upto`` in the background."""
        if self.feed.closed or self._engine is None:
            self._prune_due = False
            return
        self._prune_task = self._loop.create_task(self._prune(upto))

    async def _prune(self, upto: int) -> None:
        """Prune the history up to ``upto``: the copy in a thread, the last step as a worker job.

        Never cancelled (``close`` waits for it): a prepared prune holds the log's prune lock
        until it is finished or abandoned.
        """
        engine = self._engine
        assert engine is not None
        frames = engine.log
        plan: PrunePlan | None = None
        try:
            plan = await asyncio.to_thread(frames.prepare_prune, upto)
            if plan is not None:
                job = self._loop.run_in_executor(self._worker, frames.finish_prune, plan)
                plan = None  # finish_prune ends the plan, whatever happens in it
                if await job:
                    self.prunes += 1
                    log.debug("database %s: history pruned up to revision %d", self.name, upto)
        except RuntimeError:  # the worker stopped (closing): the next open prunes
            pass
        except OSError as exc:
            log.warning("database %s: pruning its history up to revision %d failed: %s", self.name, upto, exc)
        finally:
            if plan is not None:
                frames.abandon_prune(plan)
            self._prune_due = False

    def client_connections(self) -> list[apsw.Connection]:
        """Every connection clients' SQL runs on now: shared, spare and streams' (worker thread only).

        For checks of what clients cannot change, and for tests that stand in for the host
        (a full disk through ``PRAGMA max_page_count``).
        """
        lanes = [*([self._lane] if self._lane is not None else []), *self._spare, *(s.lane for s in self._streams)]
        return [lane.conn.apsw_connection for lane in lanes]

    def server_settings(self) -> dict[str, object]:
        """What clients must not be able to change, read on the worker through the server's own access.

        The connection's settings (pragmas), the schemas attached besides temp, how many
        temporary objects exist, whether the policy is in place, SQLite's process-wide memory limits.
        """
        assert self._lane is not None
        db = self._lane.conn.apsw_connection
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
            self._worker.submit(self._truncate_wal_job)

    def _truncate_wal_job(self) -> None:
        try:
            self._truncate_wal()
        except Exception:  # a job's future nobody reads: say it here
            log.exception("checkpoint of %s failed; the next commit tries again", self.name)

    def _truncate_wal(self) -> None:
        """Checkpoint and empty the WAL after a commit (the frame log archives it first).

        A database is pulled far more often than it is written (every replica pulls each
        change), and an engine snapshot parses whatever is in the WAL; with the WAL empty it
        reads pages straight from the file.  A few milliseconds per commit buy that.
        """
        if self._engine is None or self.feed.closed or self._streams:
            return  # an open stream's transaction would make the checkpoint wait (this thread) for nothing
        try:
            self._engine.checkpoint()
        except errors.OperationalError as exc:  # busy: another process reads; next commit retries
            log.debug("checkpoint of %s skipped: %s", self.name, exc)

    def _close(self) -> None:
        if self._engine is not None and self.durable is not None:
            with contextlib.suppress(Exception):  # the stamp is an optimisation: without it, a rebuild
                self._final_seq = self._engine.current_seq()
        for stream in list(self._streams):
            self.end_stream(stream)
        for lane in [*self._spare, *([self._lane] if self._lane is not None else [])]:
            lane.conn.close()
        self._spare.clear()
        if self._conn is not None:
            self._conn.close()
        if self._engine is not None:
            self._engine.close()
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None

    async def close(self) -> None:
        """Wake the long-polls, close the connection and the engine, stop the worker; on a store,
        finish the upload in flight and release the writer lease."""
        self.feed.close()
        if self.follower is not None:
            await self.follower.close()
        if self._prune_task is not None:
            with contextlib.suppress(Exception):
                await self._prune_task  # never cancelled: see _prune
        try:
            # not through ``call``: closing waits for no sync (after a failed one, the files are
            # opened again as they are on disk)
            await self._loop.run_in_executor(self._worker, self._close)
        finally:
            self._worker.shutdown(wait=True)
            if self.durable is not None:
                await self.durable.close(self._final_seq)
