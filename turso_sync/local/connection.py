"""The DB-API 2.0 connection over APSW and the encrypting VFS, shaped like stdlib ``sqlite3``."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import apsw

from .. import errors
from .._compiled import speedups
from ..crypto.hardened import HardenedCodec
from ..crypto.page_codec import (
    SQLITE_MAGIC,
    TURSO_MAGIC_PREFIX,
    PageAuthError,
    PageCodec,
    parse_key,
)
from .capture import ChangeCapture, is_replica, replicated_schema_change
from .framelog import FrameLog
from .lazy import LazyPages
from .statement import Statement, classify, split_statements
from .vfs import PAGE_SIZE, DatabaseState, cut_short, ensure_vfs, file_descriptor, realpath, registry, ring_reader
from .walindex import committed_wal

Params = Sequence[Any] | Mapping[str, Any]
Description = tuple[tuple[str, None, None, None, None, None, None], ...]
Columns = tuple[tuple[str, str | None], ...]  # APSW's description: (name, declared type) per column

_STATEMENTS_KEPT = 1024  # per connection; the cache starts over when full

# A new Cursor takes one of the connection's idle APSW cursors (``Connection._idle``) when nothing
# else holds it, which its reference count tells: the attribute, the local and the argument make 3 on
# CPython 3.11-3.13 with the GIL.  Elsewhere (free threading, 3.14's borrowed references) the count
# is not that exact, so no cursor is reused (-1 is never a count).
_UNSHARED = (
    3
    if sys.implementation.name == "cpython"
    and sys.version_info < (3, 14)
    and getattr(sys, "_is_gil_enabled", lambda: True)()
    else -1
)
_getrefcount = sys.getrefcount
# what APSW's execute raises that ``Cursor._failed`` turns into the DB-API's errors
_RUN_ERRORS = (apsw.Error, KeyError, TypeError, ValueError)
_new_cursor = object.__new__


@functools.lru_cache(maxsize=512)
def _dbapi_description(cols: Columns) -> Description:
    """PEP 249's seven-item column descriptions (only the name is known), cached per shape."""
    return tuple((name, None, None, None, None, None, None) for name, _decl in cols)


class _Unread:
    """``Cursor._columns`` of a query whose columns were not read yet (``Cursor.description`` reads them).

    APSW gives a statement's columns only with their declared types, which costs SQLite more than
    a point read's own step (about 5,700 instructions against 13,000), and most loops never ask.
    """

    __slots__ = ()


_UNREAD = _Unread()


def open_checks(path: str, codec: PageCodec | None) -> PageCodec | None:
    """Check the key against the file before SQLite touches it; return the codec to use.

    Nothing is written here, so a wrong key leaves the file exactly as it was.
    """
    try:
        with file_descriptor(path) as fd:
            head = os.pread(fd, PAGE_SIZE, 0)
    except FileNotFoundError:
        head = b""
    if len(head) < 100:
        return codec  # a new (or still empty) database
    if head.startswith(TURSO_MAGIC_PREFIX):
        if codec is None:
            raise errors.EncryptionError(f"{path} is encrypted; pass encryption_key (and cipher) to open it")
        try:
            codec = codec.for_file(head)  # a hardened file needs only its key
        except ValueError as exc:
            raise errors.EncryptionError(f"{path} {exc}") from None
        page_size = int.from_bytes(head[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        if page_size != codec.page_size:
            codec = codec.with_page_size(page_size)
        if isinstance(codec, HardenedCodec):
            codec.ring_source = ring_reader(path)  # mid-rotation: the other key of the ring opens it too
        with file_descriptor(path) as fd:
            page1 = os.pread(fd, codec.slot_size, 0)  # a larger slot in the envelope layout
        try:
            codec.decrypt(page1, 1)
        except PageAuthError:
            raise errors.EncryptionError(
                f"wrong encryption key for {path}: page 1 failed authentication (or the file was changed on disk)"
            ) from None
        except errors.EncryptionError as exc:  # the file's stored key parameters are refused
            raise errors.EncryptionError(f"{path}: {exc}") from None
        return codec
    if head.startswith(SQLITE_MAGIC):
        if codec is not None:
            raise errors.EncryptionError(
                f"{path} is a plaintext SQLite database, not an encrypted one; open it without encryption_key"
            )
        return None
    raise errors.DatabaseError(f"{path} is not a database file (unknown header)")


# The compiled statement path (``_speedups.CursorBase`` / ``ConnectionBase``, see the cursor section
# of turso_sync/_speedups.c): the C base types hold a cursor's state as members and run the common
# path of ``Cursor.execute``, ``Cursor.fetchone`` and ``Connection.execute`` without a Python frame,
# calling the methods below for everything else.  Without them (no compiled module, or
# TURSO_SYNC_PURE_PYTHON=1) the Python twins below are defined instead, on plain bases.
_compiled = speedups()
_FAST = _compiled is not None and hasattr(_compiled, "CursorBase")


class _CursorState:
    """The pure-Python twin of ``_speedups.CursorBase``'s members: a new cursor's state, read from the
    class until a statement sets it on the instance (a Cursor is made per ``Connection.execute``, so
    its constructor stores only what differs)."""

    _rows: Iterator[tuple[Any, ...]] | None = None
    _ahead: tuple[Any, ...] | None = None
    _columns: Columns | _Unread | None = None  # APSW's (name, declared type) of each
    _query: tuple[str, Params] = ("", ())  # the statement and parameters whose columns are _UNREAD
    _description: Description | None = None  # built from _columns when first read
    rowcount = -1
    lastrowid: int | None = None
    _closed = False


if TYPE_CHECKING or not _FAST:
    _CursorBase = _CursorState
    _ConnectionBase = object
else:
    _CursorBase = _compiled.CursorBase
    _ConnectionBase = _compiled.ConnectionBase


class Cursor(_CursorBase):
    """A DB-API cursor; rows come back as tuples (or through ``row_factory``)."""

    arraysize = 1
    connection: Connection
    _cursor: apsw.Cursor

    def __init__(self, connection: Connection) -> None:
        # (``Connection.execute`` and its C twin, connectionbase_execute in _speedups.c, do the same
        # without this frame: keep the three alike)
        self.connection = connection
        # an idle APSW cursor let go by the Cursor that ran it; two are kept, because in a loop
        # of ``cursor = conn.execute(...)`` the previous Cursor is still held while the next is made
        idle = connection._idle
        if idle is not None and _getrefcount(idle) == _UNSHARED:
            self._cursor = idle
        else:
            idle = connection._idle_before
            if idle is not None and _getrefcount(idle) == _UNSHARED:
                self._cursor = idle
            else:
                self._cursor = connection._db.cursor()
        self.row_factory: Callable[[Cursor, tuple[Any, ...]], Any] | None = connection.row_factory

    def _check(self) -> None:
        if self._closed:
            raise errors.ProgrammingError("cannot operate on a closed cursor")
        self.connection._check()

    if not _FAST:  # the twin of CursorBase.execute

        def execute(self, sql: str, parameters: Params = ()) -> Cursor:
            """Run one statement with parameters by position (``?``) or by name (``:name``)."""
            # the per-statement path: every call of an app's loop crosses it, so it reads each
            # attribute once and does only what this statement needs (see docs/benchmarks.md)
            conn = self.connection
            if self._closed or conn._closed:
                self._check()
            statement = conn._statements.get(sql) or conn._statement(sql)
            capture = conn._capture
            if capture is not None and not statement.is_read:
                return self._execute_captured(sql, parameters, statement, capture)
            if statement.writes_rows and conn.isolation_level is not None and conn._db.get_autocommit():
                conn._begin_if_needed(sql)
            return self._run(sql, parameters, statement)

    def _execute_captured(self, sql: str, parameters: Params, statement: Statement, capture: ChangeCapture) -> Cursor:
        """On a replica: transaction statements go through commit/rollback, writes are captured.

        Reads (``Statement.is_read``) do not come here: they have nothing to capture.
        """
        conn = self.connection
        if statement.several:
            # before COMMIT/ROLLBACK/RELEASE are turned into calls that would ignore (or run) the rest
            raise errors.ProgrammingError("You can only execute one statement at a time.")
        if capture.rolled_back:
            capture.reset()
        if statement.transaction == "COMMIT":
            conn.commit()
            return self._done()
        if statement.transaction == "ROLLBACK":
            conn.rollback()
            return self._done()
        if statement.savepoint is not None:
            return self._savepoint(sql, statement, capture)
        dml = statement.writes_rows
        if dml:
            conn._begin_if_needed(sql)
        schema = replicated_schema_change(statement)
        if conn._db.get_autocommit() and (schema or dml):
            # a write outside a transaction: give it one, so its capture commits with it
            conn._db.execute("BEGIN IMMEDIATE")
            try:
                self._run(sql, parameters, statement)
                rows = list(self._rows) if self._rows is not None else None
                if schema:
                    capture.note_schema(sql)
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            self._rows = iter(rows) if rows is not None else None
            self._ahead = None
            return self
        self._run(sql, parameters, statement)
        if schema:
            capture.note_schema(sql)
        return self

    def _savepoint(self, sql: str, statement: Statement, capture: ChangeCapture) -> Cursor:
        """SAVEPOINT / RELEASE / ROLLBACK TO on a replica, followed so that a RELEASE that commits is captured."""
        conn = self.connection
        assert statement.savepoint is not None
        operation, name = statement.savepoint
        if operation == "BEGIN":
            opens = conn._db.get_autocommit()
            self._run(sql, (), statement)
            capture.savepoint_began(name, opens)
        elif operation == "RELEASE" and capture.release_commits(name):
            conn._commit_with(sql)  # the outermost savepoint of its transaction: a COMMIT
        else:
            self._run(sql, (), statement)
            if operation == "RELEASE":
                capture.released(name)
            else:
                capture.rolled_back_to(name)
        return self._done()

    def _done(self) -> Cursor:
        self._columns = self._description = None
        self._rows = None
        self._ahead = None
        self.rowcount = -1
        return self

    def _run(self, sql: str, parameters: Params, statement: Statement) -> Cursor:
        if statement.several:
            raise errors.ProgrammingError("You can only execute one statement at a time.")
        cursor = self._cursor
        cols: Columns | _Unread | None = None
        try:
            cursor.execute(sql, parameters)
            if statement.returns_rows and self.row_factory is None:
                # its columns are read only if ``description`` is asked for (see _Unread); a row
                # factory is given the cursor with every row, to read them, so it gets them now
                cols = _UNREAD
                self._query = (sql, parameters)
            elif statement.returns_rows or not statement.prepared:
                # (a statement SQLite prepared without result columns never has any: nothing to ask)
                try:
                    cols = cursor.get_description()
                except apsw.ExecutionCompleteError:
                    # no row came back (a point read that missed, say) and the cursor forgot its
                    # columns: they are read again only if ``description`` is asked for
                    if statement.returns_rows:
                        cols = _UNREAD
                        self._query = (sql, parameters)
        except _RUN_ERRORS as exc:
            raise self._failed(exc, sql) from None
        # PEP 249's description is built when first read (most loops never read it)
        self._columns = cols or None
        self._description = None
        conn = self.connection
        if cols is _UNREAD or (cols and type(cols) is tuple):
            # a query's first row may be pending (fetchone finds out whether one came back)
            self._rows = cursor
            # rows pending: not idle (see Connection._idle)
            if conn._idle is cursor:
                conn._idle = None
            elif conn._idle_before is cursor:
                conn._idle_before = None
        else:
            self._rows = None
            if conn._idle is not cursor:  # finished: idle (inline _idle_now, on every statement)
                conn._idle_before, conn._idle = conn._idle, cursor
        self._ahead = None
        db = conn._db
        self.rowcount = db.changes() if statement.writes_rows else -1
        self.lastrowid = db.last_insert_rowid()
        return self

    def _failed(self, exc: BaseException, sql: str) -> errors.Error:
        """What ``_run`` raises (from None) when APSW's ``execute`` raised ``exc`` (CursorBase's too)."""
        self._columns = self._description = None
        self.rowcount = -1  # as sqlite3's cursor after a statement that failed
        self._not_idle()
        if isinstance(exc, apsw.Error):
            return self.connection._translate(exc)
        return errors.ProgrammingError(f"bad parameters for {sql[:60]!r}: {exc}")

    def executemany(self, sql: str, seq_of_parameters: Iterable[Params]) -> Cursor:
        """Run one statement once per parameter set."""
        self._check()
        # the previous statement's results are gone, also when this one fails or is refused (sqlite3's)
        self.rowcount = -1
        self._columns = self._description = None
        self._rows = self._ahead = None
        conn = self.connection
        statement = conn._statements.get(sql) or conn._statement(sql)
        if statement.several:
            raise errors.ProgrammingError("You can only execute one statement at a time.")
        if statement.returns_rows and not statement.writes_rows:
            # a query, refused before it runs, as sqlite3 does (also when it would find no row)
            raise errors.ProgrammingError("executemany() can only run statements that return no rows")
        if statement.writes_rows:
            conn._begin_if_needed(sql)
        own_txn = conn._capture is not None and statement.writes_rows and conn._db.get_autocommit()
        if own_txn:
            conn._db.execute("BEGIN IMMEDIATE")  # on a replica the writes commit with their capture
        before = conn._db.total_changes()
        self._not_idle()  # a statement that returns rows is left unfinished here
        try:
            for _ in self._cursor.executemany(sql, seq_of_parameters):  # APSW loops in C
                raise errors.ProgrammingError("executemany() can only run statements that return no rows")
            if own_txn:
                conn.commit()
        except apsw.Error as exc:
            if own_txn:
                conn.rollback()
            raise conn._translate(exc) from None
        except (KeyError, TypeError, ValueError) as exc:
            if own_txn:
                conn.rollback()
            raise errors.ProgrammingError(f"bad parameters for {sql[:60]!r}: {exc}") from None
        self._columns = self._description = None
        self._rows = None
        self._ahead = None
        self.rowcount = conn._db.total_changes() - before
        return self

    def executescript(self, script: str) -> Cursor:
        """Commit any open transaction, then run several statements separated by ``;``."""
        self._check()
        conn = self.connection
        if conn.in_transaction and conn.isolation_level is not None:
            conn.commit()
        if conn._capture is not None:
            # like sqlite3: a script runs without implicit transactions (each write commits,
            # with its capture, unless the script opens a transaction itself)
            level, conn.isolation_level = conn.isolation_level, None
            try:
                for statement in split_statements(script):
                    self.execute(statement)
                    self.fetchall()
            finally:
                conn.isolation_level = level
            return self._done()
        self._not_idle()
        try:
            for _ in self._cursor.execute(script):
                pass  # APSW pauses at each statement that returns rows; drain them
        except apsw.Error as exc:
            raise conn._translate(exc) from None
        self._columns = self._description = None
        self._rows = None
        self._ahead = None
        return self

    @property
    def description(self) -> Description | None:
        """PEP 249's seven-item description of each result column (only the name is known), or None."""
        description = self._description
        cols = self._columns
        if description is None and cols is not None:
            if cols is _UNREAD:
                found: Columns | None = None
                if self._rows is self._cursor:
                    # the statement has not finished: its columns are the ones its rows have
                    with contextlib.suppress(apsw.ExecutionCompleteError):
                        found = self._cursor.get_description()
                if found is None:
                    # it finished (no row came back, or every row was read), and the cursor forgot
                    # its columns: the statement is prepared again, without running it
                    found = self.connection._result_columns(*self._query)
                    if found is None:
                        return None
                self._columns = cols = found
            description = self._description = _dbapi_description(cols)
        return description

    def _not_idle(self) -> None:
        """This cursor's APSW cursor may be left unfinished: off ``Connection._idle``."""
        conn = self.connection
        if conn._idle is self._cursor:
            conn._idle = None
        elif conn._idle_before is self._cursor:
            conn._idle_before = None

    def _idle_now(self) -> None:
        """This cursor's statement finished: its APSW cursor is idle (see ``Connection._idle``)."""
        conn = self.connection
        if conn._idle is not self._cursor:
            conn._idle_before, conn._idle = conn._idle, self._cursor

    def _convert(self, row: tuple[Any, ...]) -> Any:
        return self.row_factory(self, row) if self.row_factory else row

    if not _FAST:  # the twin of CursorBase.fetchone

        def fetchone(self) -> Any:
            """The next row, or None."""
            if self._closed or self.connection._closed:
                self._check()
            rows = self._rows
            if rows is None:
                return None
            row = self._ahead
            # next(rows, None) rather than catching StopIteration: APSW never yields None for a row
            try:
                if row is None:
                    row = next(rows, None)
                    if row is None:
                        self._rows = None
                        self._idle_now()
                        return None
                else:
                    self._ahead = None
                # look one row ahead: when this was the last row the statement finishes now and
                # its read snapshot is released (so a later pull's pages are seen at once)
                ahead = next(rows, None)
            except apsw.Error as exc:
                raise self.connection._translate(exc) from None
            if ahead is None:
                self._rows = None
                conn = self.connection  # finished: idle (inline _idle_now, on every point read)
                if conn._idle is not self._cursor:
                    conn._idle_before, conn._idle = conn._idle, self._cursor
            else:
                self._ahead = ahead
            factory = self.row_factory
            return row if factory is None else factory(self, row)

    def fetchmany(self, size: int | None = None) -> list[Any]:
        """Up to ``size`` rows (``arraysize`` by default)."""
        if self._closed or self.connection._closed:
            self._check()  # raises, also for size 0 (which fetches nothing), as sqlite3 does
        out = []
        for _ in range(self.arraysize if size is None else size):
            row = self.fetchone()
            if row is None:
                break
            out.append(row)
        return out

    if not _FAST:  # the twin of CursorBase.fetchall

        def fetchall(self) -> list[Any]:
            """All remaining rows."""
            if self._closed or self.connection._closed:
                self._check()
            rows = self._rows
            if rows is None:
                return []
            ahead = self._ahead
            factory = self.row_factory
            try:
                if factory is None:
                    out = [] if ahead is None else [ahead]
                    out.extend(rows)
                else:
                    out = [] if ahead is None else [factory(self, ahead)]
                    out.extend([factory(self, row) for row in rows])
            except apsw.Error as exc:
                raise self.connection._translate(exc) from None
            self._rows = None
            self._ahead = None
            self._idle_now()
            return out

    if not _FAST:  # the twin of CursorBase's iterator (CursorIterator in _speedups.c)

        def __iter__(self) -> Iterator[Any]:
            self._check()
            if self._ahead is not None:
                ahead, self._ahead = self._ahead, None
                yield self._convert(ahead)
            rows = self._rows
            if rows is None:
                return
            convert = self.row_factory
            try:
                if convert is None:
                    # not ``yield from``: a generator closed early (a loop's ``break``) would close the
                    # APSW cursor with it, and this Cursor could neither fetch nor run anything again
                    for row in rows:
                        yield row
                else:
                    for row in rows:
                        yield convert(self, row)
            except apsw.Error as exc:
                raise self.connection._translate(exc) from None
            self._rows = None
            self._idle_now()

    def close(self) -> None:
        """Close the cursor; further use raises ProgrammingError."""
        if not self._closed:
            self._not_idle()
            self._closed = True
            self._rows = None
            self._ahead = None
            self._cursor.close(force=True)

    def setinputsizes(self, sizes: Any) -> None:
        """Part of PEP 249; does nothing."""

    def setoutputsize(self, size: Any, column: Any = None) -> None:
        """Part of PEP 249; does nothing."""


class Connection(_ConnectionBase):
    """A connection to a local database file, encrypted when opened with a key."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        encryption_key: str | None = None,
        cipher: str = "aes256gcm",
        isolation_level: str | None = "DEFERRED",
        timeout: float = 5.0,
        record_frames: bool = True,
        reserved_bytes: int = 0,
    ) -> None:
        self.path = realpath(path)
        codec: PageCodec | None = None
        if encryption_key is not None:
            try:
                spec, key = parse_key(encryption_key, cipher)
            except (ValueError, TypeError) as exc:
                raise errors.ProgrammingError(str(exc)) from None
            codec = PageCodec(spec, key)
        codec = open_checks(self.path, codec)
        self.encrypted = codec is not None
        self.isolation_level = isolation_level
        self.row_factory: Callable[[Cursor, tuple[Any, ...]], Any] | None = None
        self._state: DatabaseState = registry.acquire(self.path, codec)
        if self._state.codec is not None and codec is not None and self._state.codec.spec != codec.spec:
            registry.release(self.path)
            raise errors.EncryptionError(f"{self.path} is already open in this process with another cipher")
        self._closed = False
        self._capture: ChangeCapture | None = None
        self._refused: str | None = None  # what the replica authorizer last denied (see enable_capture)
        self._statements: dict[str, Statement] = {}  # what SQLite said of each SQL text (statement.py)
        # the APSW cursors of the last two finished statements, handed to a new Cursor if nothing
        # else holds them (see _UNSHARED); never one with rows pending, whose read snapshot it keeps
        self._idle: apsw.Cursor | None = None
        self._idle_before: apsw.Cursor | None = None
        self._probe: apsw.Cursor | None = None  # reads an empty result's columns (_result_columns)
        self._probed: list[tuple[tuple[str, str | None], ...]] = []
        self._reserved_bytes = reserved_bytes
        try:
            if self._state.lazy is None:
                self._state.lazy = LazyPages.open(self.path, self._state.codec)  # a partial replica
            if self._state.frame_log is None and FrameLog.exists(self.path):
                self._attach_frame_log()
            self._db = apsw.Connection(
                self.path,
                flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE,
                vfs=ensure_vfs(),
            )
            self._configure(timeout)
            if record_frames and self._state.frame_log is None:
                self._start_frame_log()
            if is_replica(self._db):
                self.enable_capture()
        except apsw.Error as exc:
            self._abandon()
            raise self._translate(exc) from None
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> None:
        """Opening failed: close what was opened now (not when the garbage collector gets to it, where
        a checkpoint meeting a damaged file could only be reported as ignored), and let the state go."""
        db = getattr(self, "_db", None)  # (a member of the compiled base, when it is used)
        if db is not None:
            with contextlib.suppress(apsw.Error, errors.Error):
                db.close()
        registry.release(self.path)
        self._closed = True

    def _configure(self, timeout: float) -> None:
        db = self._db
        db.set_busy_timeout(int(timeout * 1000))
        db.execute("PRAGMA temp_store=MEMORY")
        if db.execute("PRAGMA page_count").get == 0:
            if self.encrypted:
                db.reserve_bytes(reserve=self._state.codec.reserved)  # type: ignore[union-attr]
            elif self._reserved_bytes:
                db.reserve_bytes(reserve=self._reserved_bytes)
            db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        mode = db.execute("PRAGMA journal_mode").get
        if str(mode).lower() != "wal":
            db.execute("PRAGMA journal_mode=WAL").fetchall()
        db.execute("PRAGMA synchronous=FULL")
        db.execute("SELECT count(*) FROM sqlite_schema").fetchall()  # reads page 1: proves the key

    def enable_capture(self) -> None:
        """Record every transaction into the outbox (done automatically on a replica).

        A replica also refuses, as SQLite compiles them, the statements it cannot allow
        (``NotAllowedOnReplicaError``): changing ``journal_mode`` (the frame log and every pull
        need WAL), ``ATTACH`` of a file and ``DETACH`` (its captured changes stay in its own
        database).
        """
        if self._capture is None:
            self._capture = ChangeCapture(self._db)
            self._db.authorizer = self._replica_authorizer

    def _replica_authorizer(
        self, code: int, third: str | None, fourth: str | None, dbname: str | None, trigger: str | None
    ) -> int:
        """SQLite's authorizer on a replica: deny what a replica cannot allow, note why for ``_translate``."""
        refused = None
        if code == apsw.SQLITE_ATTACH and third:  # an empty name is VACUUM's own temporary database
            refused = "ATTACH"
        elif code == apsw.SQLITE_DETACH:
            refused = "DETACH"
        elif code == apsw.SQLITE_PRAGMA and (third or "").lower() == "journal_mode" and fourth is not None:
            refused = f"PRAGMA journal_mode={fourth}"
        if refused is None:
            return apsw.SQLITE_OK
        self._refused = refused
        return apsw.SQLITE_DENY

    @property
    def lazy_pages(self) -> LazyPages | None:
        """The missing-page fetcher of a partial replica (None for a database held whole)."""
        return self._state.lazy

    def pull(self, long_poll_timeout_ms: int | None = None) -> bool:
        """Only a replica pulls: raises ``NotAReplicaError`` (a remote URL, or ``clone``, makes one)."""
        raise errors.NotAReplicaError(self.path)

    def push(self) -> int:
        """Only a replica pushes: raises ``NotAReplicaError``."""
        raise errors.NotAReplicaError(self.path)

    def sync(self) -> bool:
        """Only a replica syncs: raises ``NotAReplicaError``."""
        raise errors.NotAReplicaError(self.path)

    def _attach_frame_log(self) -> None:
        codec = self._state.codec
        # the log keeps images as they are on disk: slots of the codec's size (envelope: P + 32)
        log = FrameLog(self.path, codec, codec.slot_size if codec else PAGE_SIZE)
        self._state.frame_log = log
        self._state.before_checkpoint = log.archive
        if self._state.lazy is not None:
            log.is_missing = self._state.lazy.missing_now

    def _start_frame_log(self) -> None:
        """Begin recording: history starts at the database's current committed state."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if not FrameLog.exists(self.path):
                size = db.execute("PRAGMA page_count").get
                page_size = db.execute("PRAGMA page_size").get
                marker = (0, 0, 0)
                try:
                    scan = committed_wal(self.path)
                    hdr, committed = scan.header, scan.txns
                    if hdr is not None and committed:
                        marker = (hdr.salt1, hdr.salt2, committed[-1].commit_frame)
                except FileNotFoundError:
                    pass
                codec = self._state.codec
                slot = codec.slot_size if codec is not None else page_size
                FrameLog(self.path, codec, slot).create(size, 0, marker)
        finally:
            db.execute("ROLLBACK")
        self._attach_frame_log()

    @property
    def apsw_connection(self) -> apsw.Connection:
        """The underlying APSW connection (for the engine's own use)."""
        self._check()
        return self._db

    def _check(self) -> None:
        if self._closed:
            raise errors.ProgrammingError("cannot operate on a closed database")

    def _translate(self, exc: BaseException) -> errors.Error:
        if isinstance(exc, apsw.AuthError) and self._refused is not None:
            what, self._refused = self._refused, None
            return errors.NotAllowedOnReplicaError(
                f"{what} is not allowed on a replica ({self.path}): a replica stays in WAL mode with only its own "
                "database attached; use a plain database (turso_sync.connect without a remote URL) for this"
            )
        if isinstance(exc, apsw.IOError) and self._state.lazy_error:
            lazy_error = self._state.lazy_error[0]
            self._state.lazy_error.clear()
            return lazy_error  # a missing page of a partial replica could not be fetched
        if isinstance(exc, apsw.CorruptError | apsw.NotADBError) and self._state.last_error:
            detail = self._state.last_error[0]
            self._state.last_error.clear()
            return errors.EncryptionError(f"{self.path}: {detail}; the key is wrong or the file was changed on disk")
        if isinstance(exc, apsw.CorruptError) and self._state.codec is not None:
            cut = cut_short(self.path, self._state.codec)
            if cut is not None:
                return errors.EncryptionError(f"{self.path}: {cut}; restore the file or bootstrap the replica again")
        return errors.translate(exc)

    def _statement(self, sql: str) -> Statement:
        """What SQLite says ``sql`` does; kept per text unless the answer depends on the schema."""
        statement = classify(self._db, sql)
        if statement.cacheable:
            if len(self._statements) >= _STATEMENTS_KEPT:
                self._statements.clear()
            self._statements[sql] = statement
        return statement

    def _result_columns(self, sql: str, parameters: Params) -> Columns | None:
        """The result columns of ``sql`` as SQLite prepares it now, read without running it (None if it cannot).

        For a query that returned no row, whose cursor no longer knows its columns: the statement
        is prepared afresh and stopped by an exec trace before its first step (about half the
        cost of ``apsw.ext.query_info``).  Not from APSW's statement cache: a cached copy that has
        not been stepped since another connection changed the schema still has the old columns.
        """
        try:
            if self._probe is None:
                seen = self._probed

                def stop_before_first_step(cursor: apsw.Cursor, _sql: str, _bindings: object) -> bool:
                    seen.append(cursor.get_description())
                    return False

                self._probe = self._db.cursor()
                self._probe.exec_trace = stop_before_first_step  # holds the list, not the connection
            self._probed.clear()
            self._probe.execute(sql, parameters, can_cache=False)
        except apsw.ExecTraceAbort:
            pass
        except apsw.Error:  # the connection is closed, or the schema changed under the text
            return None
        return self._probed[0] if self._probed else None

    def _begin_if_needed(self, sql: str) -> None:
        """The implicit BEGIN before a statement that changes rows (callers check that it does).

        Unlike stdlib ``sqlite3``, which looks at the first keyword, SQLite's own answer decides,
        so ``WITH ... INSERT`` opens the transaction too.
        """
        if self.isolation_level is not None and self._db.get_autocommit():
            try:
                self._db.execute(f"BEGIN {self.isolation_level}")
            except apsw.Error as exc:
                raise self._translate(exc) from None

    @property
    def in_transaction(self) -> bool:
        """True while a transaction is open."""
        self._check()
        return not self._db.get_autocommit()

    @property
    def total_changes(self) -> int:
        """Rows changed since the connection opened."""
        self._check()
        return self._db.total_changes()

    def cursor(self) -> Cursor:
        """A new cursor."""
        self._check()
        return Cursor(self)

    if not _FAST:  # the twin of ConnectionBase.execute

        def execute(self, sql: str, parameters: Params = ()) -> Cursor:
            """Shortcut: a new cursor's ``execute``."""
            if self._closed:
                self._check()
            # ``Cursor(self)`` inlined: a type call runs ``__init__`` in a frame of its own, entered from
            # C (about 450 instructions in a micro loop, callgrind); what is set here is what
            # ``Cursor.__init__`` sets (keep them and _speedups.c's alike), the rest reads the class's defaults
            cursor = _new_cursor(Cursor)
            cursor.connection = self
            idle = self._idle
            if idle is not None and _getrefcount(idle) == _UNSHARED:
                cursor._cursor = idle
            else:
                idle = self._idle_before
                if idle is not None and _getrefcount(idle) == _UNSHARED:
                    cursor._cursor = idle
                else:
                    cursor._cursor = self._db.cursor()
            cursor.row_factory = self.row_factory
            return cursor.execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Iterable[Params]) -> Cursor:
        """Shortcut: a new cursor's ``executemany``."""
        return self.cursor().executemany(sql, seq_of_parameters)

    def executescript(self, script: str) -> Cursor:
        """Shortcut: a new cursor's ``executescript``."""
        return self.cursor().executescript(script)

    def commit(self) -> None:
        """Commit the open transaction, if any (on a replica, with its captured changes)."""
        self._check()
        if not self._db.get_autocommit():
            self._commit_with("COMMIT")
        if self._capture is not None:
            self._capture.reset()

    def _commit_with(self, sql: str) -> None:
        """Run ``sql`` (COMMIT, or a RELEASE that ends the transaction) with the capture flushed first."""
        capture = self._capture
        try:
            if capture is not None:
                capture.flush()
            self._db.execute(sql)
        except apsw.Error as exc:
            if capture is not None:
                capture.unflush()  # the transaction may go on: its outbox row is written again later
            raise self._translate(exc) from None
        if capture is not None:
            capture.reset()

    def rollback(self) -> None:
        """Roll back the open transaction, if any."""
        self._check()
        if not self._db.get_autocommit():
            try:
                self._db.execute("ROLLBACK")
            except apsw.Error as exc:
                raise self._translate(exc) from None
        if self._capture is not None:
            self._capture.reset()

    def close(self) -> None:
        """Close the connection; an open transaction is rolled back, as in sqlite3."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._capture is not None:
                self._capture.close()
            try:
                self._db.close(True)
            except apsw.IOError:
                # the last connection's checkpoint was refused because the frame log could not
                # archive (see vfs._archive_before_checkpoint): the WAL keeps every frame
                if self._state.archive_error is None:
                    raise
        finally:
            registry.release(self.path)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # like sqlite3: commit on success, roll back on error; the connection stays open
        if self._closed:
            return
        if exc_type is None:
            self.commit()
        else:
            self.rollback()

    def __del__(self) -> None:
        # a plain try, not contextlib.suppress: at interpreter exit module globals may be gone
        try:  # noqa: SIM105
            self.close()
        except Exception:  # noqa: S110 - nothing to report to from a finalizer
            pass


if _FAST:
    assert _compiled is not None
    _compiled.cursor_setup(Cursor, _UNREAD, _UNSHARED, _RUN_ERRORS, apsw.Error, Statement)
