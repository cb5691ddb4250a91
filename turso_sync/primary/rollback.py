"""Rolling a database back to an earlier revision: an operator's action (``POST /admin/rollback``).

A rollback never rewrites history.  It commits one NEW revision on top of the head whose
user-visible content equals the content right after the target revision: the tables and their
rows, indexes, views, triggers, ``PRAGMA user_version`` and ``application_id``.  History stays
linear, so replicas pull the rollback like any other revision (no fork, nothing replica-side).

Not rolled back, on purpose: the sync bookkeeping the primary keeps for its replicas, every
schema object whose name (or table) starts with ``turso_sync_``: the change-id marks and push
fences of ``turso_sync_last_change_id`` stay at their head values.  A replica that pushed after
the target therefore neither pushes those changes again (its mark says they landed) nor meets a
fence that went backwards; its pending changes are rebased on the rolled-back state by its next
pull, as after any other revision.  SQLite's own tables stay too (``sqlite_stat1``...), except
``sqlite_sequence``: each AUTOINCREMENT counter becomes the larger of the head's and the
target's, so no id is handed out twice.

Where the target state comes from: the frame log's pre-images (a pinned read, as partial
replicas use), while the primary's history reaches back that far; on ``serve --store``, an
older revision is restored from the store (``objectstore.restore``; databases without an
at-rest key only).  Older than both: ``RollbackRefused`` 409 naming the oldest revision the
server can roll back to.

How it is applied: the target image is held in this process's memory and opened through a
read-only VFS of its own (nothing decrypted is written to disk, and it is not SQLite's heap,
which ``--sqlite-heap-bytes`` bounds), compared with the live database, and the difference applied in
ONE transaction on the database's worker thread, so it is ordered with pushes and SQL like any
job; while a stream (an open Hrana transaction) holds the write lock it waits, as a pipeline
does, and gives up with 503 after the same bound.  Rows of a rowid table are compared by rowid
and only those that differ are deleted and inserted again; a ``WITHOUT ROWID`` table that
differs is emptied and refilled; a table whose definition differs is dropped and created again
from the target's ``CREATE`` text.  Triggers are dropped first and created last, so none fires
on the rollback's own changes.  On ``serve --store`` the answer waits until the new revision is
durable in the store, as a push's does.  A rollback that finds nothing to change commits
nothing (so repeating a request is harmless).

Not handled: virtual tables (FTS5 and the like keep their data in shadow tables the server's
connections may not write): a database that has one, at the head or at the target, is refused.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import apsw

from .. import errors
from ..wire.pull import PullRequest
from . import sql_policy
from .database import DiskFull, HostedDatabase
from .durable import StoreBackend
from .follower import FollowerReadOnly
from .objectstore.errors import RevisionNotStored
from .objectstore.restore import restore, revision_at_time
from .pull import RevisionUnavailable
from .revision import format_revision
from .sql_policy import Access

log = logging.getLogger("turso_sync.primary")

#: Schema objects whose name (or table) starts with this are the sync's bookkeeping: never rolled back.
INTERNAL_PREFIX = "turso_sync_"

#: The largest request body of ``POST /admin/rollback`` (a JSON object of one field).
MAX_REQUEST_BYTES = 4096

_SQLITE_MAGIC = b"SQLite format 3\x00"

#: What the apply job gives back: (head before, revision after, changes); None when a stream held the lock.
_Applied = tuple[int, int, Counter[str]] | None


class RollbackRefused(Exception):  # noqa: N818 - reads as what happened
    """The rollback cannot be done as asked: ``status`` 400 (never can), 409 (the revision is no
    longer available) or 503 (a stream held the write lock too long: try again)."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class RollbackOutcome:
    """What a rollback did: the content of ``target`` became revision ``revision`` (was ``previous_head``).

    ``revision == previous_head`` when nothing differed (nothing was committed).  ``source``
    says where the target state was read: ``"history"`` (the frame log) or ``"store"``.
    """

    database: str
    target: int
    previous_head: int
    revision: int
    source: str
    changes: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        """The answer's body."""
        return {
            "database": self.database,
            "target": format_revision(self.target),
            "previous_head": format_revision(self.previous_head),
            "revision": format_revision(self.revision),
            "source": self.source,
            "changes": dict(self.changes),
        }


def parse_request(body: bytes) -> int | float:
    """The target of a rollback request: a revision (int) or a Unix time (float, from ``at``).

    The body is a JSON object with exactly one of ``"revision"`` (a number, or its decimal
    string) and ``"at"`` (an ISO 8601 time; without a zone, UTC).  Raises ProtocolError (400)
    naming what is wrong.
    """
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise errors.ProtocolError(
            'a rollback request is a JSON object: {"revision": N} or {"at": "2026-12-02T00:30:00Z"}'
        ) from None
    if not isinstance(request, dict) or len(request) != 1 or not set(request) <= {"revision", "at"}:
        raise errors.ProtocolError(
            'a rollback request holds exactly one field: {"revision": N} or {"at": "2026-12-02T00:30:00Z"}'
        )
    if "revision" in request:
        value = request["revision"]
        if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
            raise errors.ProtocolError(f"rollback: revision {str(value)[:40]!r} is not a revision (a number >= 0)")
        return value
    text = request["at"]
    try:
        if not isinstance(text, str):
            raise ValueError(text)
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise errors.ProtocolError(
            f"rollback: at {str(text)[:40]!r} is not an ISO 8601 time (for example 2026-12-02T00:30:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


async def resolve_target(db: HostedDatabase, backend: StoreBackend | None, target: int | float) -> int:
    """The revision a request's target names: a revision as is; a time, the newest revision that
    was durable in the object store by then (``serve --store`` only: the local history records
    no times)."""
    if isinstance(target, int):
        return target
    if backend is None:
        raise RollbackRefused(
            400,
            "a rollback to a time needs serve --store (only the object store dates revisions); "
            "give the revision to roll back to instead",
            "TIME_NOT_AVAILABLE",
        )
    try:
        return await revision_at_time(backend.client, backend.keys(db.name), target)
    except RevisionNotStored as exc:
        raise RollbackRefused(409, str(exc), "REVISION_UNAVAILABLE") from None


async def roll_back(
    db: HostedDatabase, target: int, *, backend: StoreBackend | None = None, lock_wait_s: float = 5.0
) -> RollbackOutcome:
    """Commit a new revision of ``db`` whose content is that of revision ``target`` (see the module).

    Raises RollbackRefused (400: ``target`` is newer than the head; 409: no longer available;
    503: a stream kept the write lock past ``lock_wait_s``), FollowerReadOnly (a read-only
    follower of the store), DiskFull, and on a store what ``make_durable`` raises (the rollback
    is then committed locally but not acknowledged: it is stored with the next request).
    """
    if db.follower is not None:
        raise FollowerReadOnly(
            f"this server follows database '{db.name}' read-only from the object store (--follow); "
            "send the rollback to its writer"
        )
    head = await db.call(db.local_seq)
    if target > head:
        raise RollbackRefused(
            400,
            f"revision {target} is newer than the head of database '{db.name}' (revision {head}); "
            "give a revision at or before the head",
            "REVISION_AHEAD",
        )
    image, source = await _target_image(db, target, backend)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + lock_wait_s
    while True:
        seen = db.streams_ended
        job = asyncio.ensure_future(db.call(_apply, db, image))
        job.add_done_callback(_waker(db))  # even if this request is cancelled meanwhile
        applied = await asyncio.shield(job)
        if applied is not None:
            break
        if not await db.wait_stream_end(seen, deadline - loop.time()):
            raise RollbackRefused(
                503,
                f"a transaction kept open between requests (a stream) holds the write lock of database "
                f"'{db.name}' and did not end within {lock_wait_s:g} s; nothing was rolled back; try again shortly",
                "DATABASE_LOCKED",
            )
    previous, revision, changes = applied
    await db.make_durable(revision)
    return RollbackOutcome(db.name, target, previous, revision, source, dict(changes))


def _waker(db: HostedDatabase) -> Callable[[asyncio.Future[_Applied]], None]:
    """A done-callback for the apply job: wake the long-polls when it committed (on the event loop)."""

    def wake(job: asyncio.Future[_Applied]) -> None:
        if job.cancelled() or job.exception() is not None:
            return
        applied = job.result()
        if applied is not None and applied[1] != applied[0]:
            db.feed.bump()

    return wake


async def _target_image(db: HostedDatabase, target: int, backend: StoreBackend | None) -> tuple[bytes, str]:
    """The database file's plaintext bytes right after ``target``, and where they came from."""
    try:
        snap = await db.call(db.select_pages, PullRequest(server_revision=format_revision(target)))
    except RevisionUnavailable:
        pass
    else:
        return image_from_pages(snap.pages, snap.db_size), "history"
    stored: str | None = None
    if backend is not None:
        try:
            restored = await restore(backend.client, backend.keys(db.name), target)
        except RevisionNotStored as exc:
            stored = str(exc)
        else:
            if restored.data and not restored.data.startswith(_SQLITE_MAGIC):
                stored = "the store holds it encrypted at rest, which a rollback cannot read yet"
            else:
                return _journal_mode_header(restored.data), "store"
    oldest = await _oldest_available(db, target)
    where = f"; the object store cannot give it either: {stored}" if stored is not None else ""
    raise RollbackRefused(
        409,
        f"revision {target} of database '{db.name}' is older than the history this server keeps: the oldest "
        f"revision it can roll back to is {oldest}{where}; `turso-sync restore` writes an older stored revision "
        "to a file",
        "REVISION_UNAVAILABLE",
    )


async def _oldest_available(db: HostedDatabase, after: int) -> int:
    """The oldest revision after ``after`` the history can still give (the frame log's base)."""
    return max(after + 1, await db.call(db.oldest_revision))


def image_from_pages(pages: dict[int, bytes], db_size: int) -> bytes:
    """A database file from its page images (1-based page numbers, every one up to ``db_size``)."""
    if db_size == 0:
        return b""
    missing = [p for p in range(1, db_size + 1) if p not in pages]
    if missing:
        raise errors.DatabaseError(f"the target state lacks pages {missing[:5]} of {db_size}")
    size = len(pages[1])
    return _journal_mode_header(b"".join(pages[p][:size] for p in range(1, db_size + 1)))


def _journal_mode_header(data: bytes) -> bytes:
    """``data`` with its header saying rollback journal, not WAL (the copy read through ``ImageVFS`` has none)."""
    if len(data) < 20:
        return data
    return data[:18] + b"\x01\x01" + data[20:]


# --- the job (worker thread) ---------------------------------------------------------------------


def _apply(db: HostedDatabase, image: bytes) -> _Applied:
    """Make ``db``'s content that of ``image`` in one transaction: ``(head before, revision after,
    changes)``, or None when a stream holds the write lock (nothing done; try again once it ends)."""
    conn = next((c for c in db.client_connections() if c.get_autocommit()), None)
    if conn is None:  # every connection is inside a stream's transaction
        return None
    vfs = ImageVFS(image)
    try:
        target = apsw.Connection(
            "file:rollback-target?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI, vfs=vfs.name
        )
    except BaseException:
        vfs.unregister()
        raise
    try:
        policy = sql_policy.install(conn)
        with policy.acting_as(Access.SERVER):
            previous = db.local_seq()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except apsw.BusyError:
                return None
            try:
                changes = reconcile(conn, target)
                if changes["content"]:
                    conn.execute("COMMIT")
                else:  # only identical triggers were dropped and made again: keep no revision for it
                    conn.execute("ROLLBACK")
            except apsw.FullError:
                raise DiskFull("the rollback met SQLITE_FULL") from None
            except apsw.NoMemError:
                raise RollbackRefused(
                    503,
                    f"the rollback of database '{db.name}' needed more memory than SQLite may use in this server "
                    "(serve --sqlite-heap-bytes); nothing was rolled back: raise the bound and try again",
                    "OUT_OF_MEMORY",
                ) from None
            finally:
                if not conn.get_autocommit():
                    conn.execute("ROLLBACK")
    finally:
        target.close()
        vfs.unregister()
    del changes["content"]
    return previous, db.local_seq(), changes


_vfs_numbers = itertools.count(1)


class ImageVFS(apsw.VFS):
    """A read-only SQLite file system holding one database image in this process's memory.

    The target state is read through it rather than ``deserialize``d, so it is not SQLite's
    memory (bounded by ``--sqlite-heap-bytes``) and never a file (an encrypted primary's
    decrypted pages never reach the disk).  Every other file (a journal SQLite looks for) goes to
    the default VFS, which finds none.
    """

    def __init__(self, image: bytes) -> None:
        self.image = image
        self.name = f"turso-sync-rollback-{next(_vfs_numbers)}"
        super().__init__(self.name, base="")

    # apsw takes any object with the file methods; an ``apsw.VFSFile`` would open a real file
    def xOpen(self, name: str | apsw.URIFilename | None, flags: list[int]) -> _ImageFile:  # type: ignore[override]
        return _ImageFile(self.image)


class _ImageFile:
    """The one file of ``ImageVFS``: reads only (the connection is read-only and immutable)."""

    def __init__(self, image: bytes) -> None:
        self.image = image

    # the method names are apsw's
    def xRead(self, amount: int, offset: int) -> bytes:
        return self.image[offset : offset + amount]  # short at the end: SQLite's short read

    def xFileSize(self) -> int:
        return len(self.image)

    def xWrite(self, data: bytes, offset: int) -> None:
        raise apsw.ReadOnlyError("the rollback's target image is read-only")

    def xTruncate(self, size: int) -> None:
        raise apsw.ReadOnlyError("the rollback's target image is read-only")

    def xSync(self, flags: int) -> None:
        pass

    def xLock(self, level: int) -> None:
        pass

    def xUnlock(self, level: int) -> None:
        pass

    def xCheckReservedLock(self) -> bool:
        return False

    def xFileControl(self, op: int, ptr: int) -> bool:
        return False

    def xSectorSize(self) -> int:
        return 4096

    def xDeviceCharacteristics(self) -> int:
        return 0

    def xClose(self) -> None:
        pass


@dataclass(frozen=True)
class _Object:
    type: str
    name: str
    table: str
    sql: str | None


_PLURAL = {"index": "indexes", "view": "views"}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _user_objects(conn: apsw.Connection) -> list[_Object]:
    """The schema objects a rollback restores, in creation order: not SQLite's, not the sync's."""
    out = []
    for type_, name, table, sql in conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY rowid", can_cache=False
    ):
        lowered = (name.lower(), table.lower())
        if any(n.startswith("sqlite_") or n.startswith(INTERNAL_PREFIX) for n in lowered):
            continue
        if sql is not None and sql.lstrip().upper().startswith("CREATE VIRTUAL TABLE"):
            raise RollbackRefused(
                409,
                f"table {name} is a virtual table, whose data a rollback cannot restore yet; "
                "`turso-sync restore` writes the database at a stored revision to a file",
                "VIRTUAL_TABLE",
            )
        out.append(_Object(type_, name, table, sql))
    return out


def _pragma_int(conn: apsw.Connection, name: str) -> int:
    return int(conn.execute(f"PRAGMA {name}", can_cache=False).get)  # type: ignore[arg-type]


def _sequences(conn: apsw.Connection) -> dict[str, int]:
    exists = conn.execute(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'sqlite_sequence'", can_cache=False
    ).get
    if not exists:
        return {}
    return {str(n): int(s) for n, s in conn.execute("SELECT name, seq FROM sqlite_sequence", can_cache=False)}


def reconcile(live: apsw.Connection, target: apsw.Connection) -> Counter[str]:
    """Change ``live`` (inside its transaction) until its user-visible content equals ``target``'s.

    Returns counts of what changed; ``"content"`` counts every change but the dropping and
    making again of triggers that are the same on both sides.
    """
    changes: Counter[str] = Counter()
    run = _runner(live)
    live_objects = _user_objects(live)
    target_objects = _user_objects(target)
    wanted = {(o.type, o.name.lower()): o for o in target_objects}
    sequences_before = _sequences(live)
    run("PRAGMA defer_foreign_keys = ON")  # the target was consistent; its rows arrive in any order

    for obj in live_objects:  # triggers first: none may fire on the rollback's own changes
        if obj.type == "trigger":
            run(f"DROP TRIGGER {_quote(obj.name)}")
            same = wanted.get(("trigger", obj.name.lower()))
            if same is None or same.sql != obj.sql:
                changes["triggers_dropped"] += 1
    for obj in live_objects:
        if obj.type in ("view", "index") and obj.sql is not None:
            same = wanted.get((obj.type, obj.name.lower()))
            if same is None or same.sql != obj.sql:
                run(f"DROP {obj.type.upper()} {_quote(obj.name)}")
                changes[_PLURAL[obj.type] + "_dropped"] += 1
    kept: set[str] = set()
    for obj in live_objects:
        if obj.type != "table":
            continue
        same = wanted.get(("table", obj.name.lower()))
        if same is not None and same.sql == obj.sql:
            kept.add(obj.name.lower())
        else:
            run(f"DROP TABLE {_quote(obj.name)}")
            changes["tables_dropped"] += 1
    for obj in target_objects:
        if obj.type == "table" and obj.name.lower() not in kept:
            assert obj.sql is not None
            run(obj.sql)
            changes["tables_created"] += 1
    for obj in target_objects:
        if obj.type == "table":
            _copy_rows(live, target, obj.name, fresh=obj.name.lower() not in kept, changes=changes)
    # indexes and views: one of the same name still there is the same (a different one was
    # dropped above, and so was every one on a dropped table)
    for obj in target_objects:
        if obj.type in ("index", "view") and obj.sql is not None and not _exists(live, obj.type, obj.name):
            run(obj.sql)
            changes[_PLURAL[obj.type] + "_created"] += 1
    before = {o.name.lower(): o.sql for o in live_objects if o.type == "trigger"}
    for obj in target_objects:
        if obj.type == "trigger":
            assert obj.sql is not None
            run(obj.sql)
            if before.get(obj.name.lower()) != obj.sql:
                changes["triggers_created"] += 1
    _restore_sequences(live, target, sequences_before, changes)
    for pragma in ("user_version", "application_id"):
        value = _pragma_int(target, pragma)
        if _pragma_int(live, pragma) != value:
            run(f"PRAGMA {pragma} = {value:d}")
            changes[f"{pragma}_set"] += 1
    changes["content"] = sum(changes.values())
    return changes


def _runner(conn: apsw.Connection) -> Callable[..., None]:
    """``run(sql, args)``: one statement on ``conn``, outside the statement cache (see sql_policy)."""

    def run(sql: str, args: tuple[Any, ...] = ()) -> None:
        for _ in conn.execute(sql, args, can_cache=False):
            pass

    return run


def _exists(conn: apsw.Connection, type_: str, name: str) -> bool:
    return bool(
        conn.execute(
            "SELECT count(*) FROM sqlite_schema WHERE type = ? AND name = ? COLLATE NOCASE",
            (type_, name),
            can_cache=False,
        ).get
    )


def _columns(conn: apsw.Connection, table: str) -> tuple[list[str], list[str]]:
    """The table's stored columns (what an INSERT may name), and every column's name."""
    stored, every = [], []
    for row in conn.execute("SELECT name, hidden FROM pragma_table_xinfo(?)", (table,), can_cache=False):
        every.append(str(row[0]))
        if row[1] == 0:  # 2 and 3: generated columns, derived from the rest
            stored.append(str(row[0]))
    return stored, every


def _rowid_name(conn: apsw.Connection, table: str, every: list[str]) -> str | None:
    """How to name the table's rowid (None: a WITHOUT ROWID table, or every alias is a column's name)."""
    without = conn.execute(
        "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?", (table,), can_cache=False
    ).get
    if without:
        return None
    names = {c.lower() for c in every}
    return next((alias for alias in ("rowid", "_rowid_", "oid") if alias not in names), None)


def _typed(row: tuple[Any, ...]) -> tuple[tuple[type, Any], ...]:
    """A row compared as SQLite stores it (1 and 1.0 differ)."""
    return tuple((type(v), v) for v in row)


def _copy_rows(
    live: apsw.Connection, target: apsw.Connection, table: str, *, fresh: bool, changes: Counter[str]
) -> None:
    """Make ``live``'s rows of ``table`` those of ``target`` (``fresh``: the live table was just made, empty)."""
    stored, every = _columns(target, table)
    rowid = _rowid_name(target, table, every)
    names = ([rowid] if rowid is not None else []) + stored
    column_list = ", ".join(_quote(n) if n != rowid else n for n in names)
    select = f"SELECT {column_list} FROM {_quote(table)}"
    insert = f"INSERT INTO {_quote(table)} ({column_list}) VALUES ({', '.join('?' * len(names))})"
    if fresh:
        inserted = _insert_all(live, insert, target.execute(select, can_cache=False))
        changes["rows_inserted"] += inserted
        return
    if rowid is None:  # compared whole, in one order on both sides; refilled if different
        order = " ORDER BY " + ", ".join(str(i + 1) for i in range(len(names)))
        same = all(
            a == b
            for a, b in _zip_longest(
                (_typed(r) for r in live.execute(select + order, can_cache=False)),
                (_typed(r) for r in target.execute(select + order, can_cache=False)),
            )
        )
        if not same:
            live.execute(f"DELETE FROM {_quote(table)}", can_cache=False)
            changes["rows_deleted"] += live.changes()
            changes["rows_inserted"] += _insert_all(live, insert, target.execute(select, can_cache=False))
        return
    order = f" ORDER BY {rowid}"
    gone: list[int] = []
    new: list[tuple[Any, ...]] = []
    live_rows = live.execute(select + order, can_cache=False)
    target_rows = target.execute(select + order, can_cache=False)
    for have, want in _merge_by_first(live_rows, target_rows):
        if have is not None and (want is None or _typed(have) != _typed(want)):
            gone.append(have[0])
        if want is not None and (have is None or _typed(have) != _typed(want)):
            new.append(want)
    if gone:
        live.executemany(f"DELETE FROM {_quote(table)} WHERE {rowid} = ?", [(r,) for r in gone], can_cache=False)
        changes["rows_deleted"] += len(gone)
    if new:
        changes["rows_inserted"] += _insert_all(live, insert, iter(new))


def _insert_all(live: apsw.Connection, insert: str, rows: Iterator[tuple[Any, ...]]) -> int:
    count = 0

    def counted() -> Iterator[tuple[Any, ...]]:
        nonlocal count
        for row in rows:
            count += 1
            yield row

    live.executemany(insert, counted(), can_cache=False)
    return count


_END = object()


def _zip_longest(a: Iterator[Any], b: Iterator[Any]) -> Iterator[tuple[Any, Any]]:
    while True:
        x, y = next(a, _END), next(b, _END)
        if x is _END and y is _END:
            return
        yield x, y


def _merge_by_first(
    a: Iterator[tuple[Any, ...]], b: Iterator[tuple[Any, ...]]
) -> Iterator[tuple[tuple[Any, ...] | None, tuple[Any, ...] | None]]:
    """Pairs of rows of two rowid-ordered iterators with the same rowid (None where one side has none)."""
    x, y = next(a, None), next(b, None)
    while x is not None or y is not None:
        if y is None or (x is not None and x[0] < y[0]):
            yield x, None
            x = next(a, None)
        elif x is None or y[0] < x[0]:
            yield None, y
            y = next(b, None)
        else:
            yield x, y
            x, y = next(a, None), next(b, None)


def _restore_sequences(
    live: apsw.Connection, target: apsw.Connection, before: dict[str, int], changes: Counter[str]
) -> None:
    """AUTOINCREMENT counters: the larger of the head's and the target's (no id is handed out twice)."""
    wanted = _sequences(target)
    if not wanted:
        return
    now = _sequences(live)
    for name, seq in wanted.items():
        if name.lower().startswith(INTERNAL_PREFIX) or not _exists(live, "table", name):
            continue
        value = max(seq, before.get(name, 0), now.get(name, 0))
        if now.get(name) == value:
            continue
        if name in now:
            live.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = ?", (value, name), can_cache=False)
        else:
            live.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (name, value), can_cache=False)
        changes["sequences_set"] += 1
