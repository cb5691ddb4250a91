"""The data directory: where each database lives, and opening them on demand.

Layout::

    DATA_DIR/
      server.lock                     held (flock) while a server uses the directory
      databases/
        default/db                    the database served at the root URL
        default/db-wal, db-frames     its WAL and frame log (revision history, a bounded window:
                                      see ``revision.HistoryBounds``)
        NAME/db ...                   the database served at /db/NAME
        NAME/owner                    who created it (a one-way hash of the token), for the per-token quota

Database names are 1-64 characters of ``A-Z a-z 0-9 _ -``, starting with a letter or digit.

Bounds: a client (token) may create at most ``max_databases_per_owner`` databases, and at most
``max_open`` databases are open at once (each holds a worker thread and a few file descriptors):
opening one more first closes the least recently used database that nobody is using (no
request in flight on it, which covers long-polls and running jobs, and no stream kept open
between requests); when every open database
is in use, the request is refused with ``StoreBusy`` (HTTP 503) rather than exceeding the bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
from collections.abc import AsyncIterator

from .database import HostedDatabase
from .durable import DurableLog, StoreBackend
from .follower import FollowedLog
from .objectstore.revlog import RevisionLog
from .revision import HistoryBounds
from .sql_policy import SqlLimits

log = logging.getLogger("turso_sync.primary")

DEFAULT_DATABASE = "default"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_OWNER = re.compile(r"[0-9a-z_-]{1,64}")

#: Defaults of the bounds (``Limits`` in app.py repeats them as ``serve`` flags).
DEFAULT_MAX_OPEN = 64
DEFAULT_MAX_PER_OWNER = 100


class UnknownDatabase(Exception):  # noqa: N818 - reads as what happened
    """The database does not exist and the request may not create it (HTTP 404)."""


class DatabaseQuota(Exception):  # noqa: N818 - reads as what happened
    """Creating the database would take its creator over the per-token bound (HTTP 403)."""


class StoreBusy(Exception):  # noqa: N818 - reads as what happened
    """Every open database is in use and the bound on open databases is reached (HTTP 503)."""


class DataDirBusy(Exception):  # noqa: N818 - reads as what happened
    """Another server already uses the data directory."""


def valid_name(name: str) -> bool:
    """True if ``name`` can name a database."""
    return _NAME.fullmatch(name) is not None


class DatabaseStore:
    """The databases under one data directory, opened on demand, at most ``max_open`` at once."""

    def __init__(
        self,
        data_dir: str,
        *,
        encryption_key: str | None = None,
        cipher: str = "aes256gcm",
        max_open: int = DEFAULT_MAX_OPEN,
        max_per_owner: int = DEFAULT_MAX_PER_OWNER,
        sql_limits: SqlLimits | None = None,
        backend: StoreBackend | None = None,
        history: HistoryBounds | None = None,
    ) -> None:
        if max_open < 1 or max_per_owner < 0:
            raise ValueError("max_open must be at least 1 and max_per_owner at least 0")
        self.data_dir = os.path.abspath(data_dir)
        self.max_open = max_open
        self.max_per_owner = max_per_owner
        self.sql_limits = sql_limits or SqlLimits()
        #: how much history each database keeps in its frame log (``serve --history-*``)
        self.history = history or HistoryBounds()
        self._key = encryption_key
        self._cipher = cipher
        self._open: dict[str, HostedDatabase] = {}  # in least-recently-used-first order
        self._users: dict[str, int] = {}  # requests in flight per open database
        self._owners: dict[str, str] = {}  # database -> owner, for databases that recorded one
        self._opening = asyncio.Lock()
        self._lock_fd: int | None = None
        #: on an object store (``serve --store``): the store, and the databases it holds
        self.backend = backend
        self._stored: set[str] = set()
        self._retiring: dict[str, asyncio.Task[None]] = {}

    def path_of(self, name: str) -> str:
        """The database file of ``name``."""
        return os.path.join(self.data_dir, "databases", name, "db")

    def _owner_path(self, name: str) -> str:
        return os.path.join(self.data_dir, "databases", name, "owner")

    def exists(self, name: str) -> bool:
        """True if ``name`` has a database file (on a store: if the store holds it)."""
        if self.backend is not None:
            return name in self._open or name in self._stored
        return name in self._open or os.path.exists(self.path_of(name))

    def names(self) -> list[str]:
        """Every database in the data directory (on a store: that the store held at start or since)."""
        if self.backend is not None:
            return sorted(n for n in self._stored | set(self._open) if valid_name(n))
        root = os.path.join(self.data_dir, "databases")
        try:
            entries = sorted(os.listdir(root))
        except FileNotFoundError:
            return []
        return [n for n in entries if valid_name(n) and os.path.exists(os.path.join(root, n, "db"))]

    def owned_by(self, owner: str) -> int:
        """How many databases ``owner`` created (and still exist)."""
        return sum(1 for o in self._owners.values() if o == owner)

    async def start(self) -> None:
        """Take the data directory, and open the first ``max_open`` existing databases (a wrong
        key fails here: one key serves every database); the others open on their first request,
        so a start does not take longer with the number of databases."""
        os.makedirs(os.path.join(self.data_dir, "databases"), exist_ok=True)
        fd = os.open(os.path.join(self.data_dir, "server.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirBusy(f"another turso-sync server is using {self.data_dir}") from None
        self._lock_fd = fd
        if self.backend is not None:
            # the store is the truth and the data directory a cache: databases open (taking their
            # writer lease and rebuilding their files) on their first request, not here
            self._stored = await self.backend.names()
            for name in self._stored:
                owner = self._read_owner(name)
                if owner is not None:
                    self._owners[name] = owner
            return
        for opened, name in enumerate(self.names()):
            owner = self._read_owner(name)
            if owner is not None:
                self._owners[name] = owner
            if opened < self.max_open:
                await self.get(name, create=False)

    def _read_owner(self, name: str) -> str | None:
        try:
            with open(self._owner_path(name), encoding="ascii") as f:
                owner = f.read().strip()
        except (OSError, UnicodeDecodeError):
            return None
        return owner if _OWNER.fullmatch(owner) else None

    async def get(self, name: str, *, create: bool, owner: str | None = None) -> HostedDatabase:
        """The open database ``name``, opening it (or creating it for ``owner``, if ``create``) first.

        The database may be closed again as soon as nobody uses it; a request holds it with
        ``use`` instead.
        """
        async with self.use(name, create=create, owner=owner) as db:
            return db

    @contextlib.asynccontextmanager
    async def use(self, name: str, *, create: bool, owner: str | None = None) -> AsyncIterator[HostedDatabase]:
        """Hold the database ``name`` open for the duration of a request (see ``get``).

        Raises UnknownDatabase, DatabaseQuota (``owner`` created too many) or StoreBusy.
        """
        db = self._open.get(name)
        if db is not None and db.broken:  # its writer lost the lease, or a sync failed: open it again
            self._retire(name, db)
            db = None
        if db is None:
            db = await self._open_db(name, create, owner)
        else:
            self._open[name] = self._open.pop(name)  # now the most recently used
        self._users[name] = self._users.get(name, 0) + 1  # no await since the lookup: cannot be closed between
        try:
            yield db
        finally:
            left = self._users[name] - 1
            if left:
                self._users[name] = left
            else:
                del self._users[name]

    def check(self, name: str, *, create: bool, owner: str | None = None) -> None:
        """Raise now what ``use`` would raise for a missing database (so a handler can refuse before reading a body)."""
        if self.exists(name):
            return
        if not create:
            raise UnknownDatabase(f"database '{name}' does not exist")
        if owner is not None and self.owned_by(owner) >= self.max_per_owner:
            raise DatabaseQuota(
                f"cannot create database '{name}': this token already created {self.max_per_owner} "
                f"databases, the most one token may (the server's --max-databases-per-token); "
                f"use an existing database or ask the operator"
            )

    async def _open_db(self, name: str, create: bool, owner: str | None) -> HostedDatabase:
        async with self._opening:
            db = self._open.get(name)
            if db is not None:
                return db
            retiring = self._retiring.get(name)
            if retiring is not None:  # its files are rebuilt below: the old engine must be closed first
                with contextlib.suppress(Exception):
                    await asyncio.shield(retiring)
            path = self.path_of(name)
            new = not self.exists(name)
            self.check(name, create=create, owner=owner)
            await self._make_room()
            os.makedirs(os.path.dirname(path), exist_ok=True)
            durable = follower = None
            backend = self.backend
            if backend is not None and backend.follow:
                follower = await FollowedLog.open(
                    RevisionLog(backend.client, backend.keys(name)), path, backend.follow_poll
                )
            elif backend is not None:
                durable = await DurableLog.open(backend, name, path)
            try:
                db = await HostedDatabase.open(
                    name,
                    path,
                    encryption_key=self._key,
                    cipher=self._cipher,
                    sql_limits=self.sql_limits,
                    durable=durable,
                    follower=follower,
                    history=self.history,
                )
            except BaseException:
                if durable is not None:
                    await durable.close()
                raise
            if new and owner is not None and follower is None:
                self._record_owner(name, owner)
            self._stored.add(name)
            self._open[name] = db
            return db

    def _retire(self, name: str, db: HostedDatabase) -> None:
        """Take a database whose writer failed out of service; it closes in the background."""
        if self._open.get(name) is db:
            del self._open[name]
        log.warning("database %s: it can no longer write or follow its log; opening it again", name)
        task = asyncio.get_running_loop().create_task(db.close())
        self._retiring[name] = task
        task.add_done_callback(lambda t: self._retiring.pop(name, None) if self._retiring.get(name) is t else None)

    def _record_owner(self, name: str, owner: str) -> None:
        if not _OWNER.fullmatch(owner):
            raise ValueError("an owner is 1-64 characters of 0-9 a-z _ -")
        tmp = self._owner_path(name) + ".tmp"
        with open(tmp, "w", encoding="ascii") as f:
            f.write(owner + "\n")
        os.replace(tmp, self._owner_path(name))
        self._owners[name] = owner

    async def _make_room(self) -> None:
        """Close least recently used idle databases until one more may open (under ``_opening``)."""
        while len(self._open) >= self.max_open:
            idle = next(
                (
                    n
                    for n, d in self._open.items()
                    if not self._users.get(n) and not d.feed.waiting and not d.open_streams
                ),
                None,
            )
            if idle is None:
                raise StoreBusy(
                    f"the server has {len(self._open)} databases open (its --max-open-databases) and every one "
                    f"is in use; try again shortly"
                )
            db = self._open.pop(idle)
            log.debug("closing idle database %s to make room (at most %d open)", idle, self.max_open)
            await db.close()

    def opened(self) -> list[HostedDatabase]:
        """The databases open now."""
        return list(self._open.values())

    def wake_all(self) -> None:
        """Release every long-poll (shutdown)."""
        for db in self._open.values():
            db.feed.close()

    async def close(self) -> None:
        """Close every database (on a store: releasing their leases) and release the data directory."""
        async with self._opening:
            for db in list(self._open.values()):
                await db.close()
            self._open.clear()
            for task in list(self._retiring.values()):
                with contextlib.suppress(Exception):
                    await task
            if self.backend is not None:
                await self.backend.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
