"""The data directory: where each database lives, and opening them on demand.

Layout::

    DATA_DIR/
      server.lock                     held (flock) while a server uses the directory
      databases/
        default/db                    the database served at the root URL
        default/db-wal, db-frames     its WAL and frame log (revision history)
        NAME/db ...                   the database served at /db/NAME

Database names are 1-64 characters of ``A-Z a-z 0-9 _ -``, starting with a letter or digit.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re

from .database import HostedDatabase

DEFAULT_DATABASE = "default"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class UnknownDatabase(Exception):  # noqa: N818 - reads as what happened
    """The database does not exist and the request may not create it (HTTP 404)."""


class DataDirBusy(Exception):  # noqa: N818 - reads as what happened
    """Another server already uses the data directory."""


def valid_name(name: str) -> bool:
    """True if ``name`` can name a database."""
    return _NAME.fullmatch(name) is not None


class DatabaseStore:
    """The databases under one data directory, opened lazily and kept open."""

    def __init__(self, data_dir: str, *, encryption_key: str | None = None, cipher: str = "aes256gcm") -> None:
        self.data_dir = os.path.abspath(data_dir)
        self._key = encryption_key
        self._cipher = cipher
        self._open: dict[str, HostedDatabase] = {}
        self._opening = asyncio.Lock()
        self._lock_fd: int | None = None

    def path_of(self, name: str) -> str:
        """The database file of ``name``."""
        return os.path.join(self.data_dir, "databases", name, "db")

    def exists(self, name: str) -> bool:
        """True if ``name`` has a database file."""
        return name in self._open or os.path.exists(self.path_of(name))

    def names(self) -> list[str]:
        """Every database in the data directory."""
        root = os.path.join(self.data_dir, "databases")
        try:
            entries = sorted(os.listdir(root))
        except FileNotFoundError:
            return []
        return [n for n in entries if valid_name(n) and os.path.exists(os.path.join(root, n, "db"))]

    async def start(self) -> None:
        """Take the data directory, and open every existing database (a wrong key fails here)."""
        os.makedirs(os.path.join(self.data_dir, "databases"), exist_ok=True)
        fd = os.open(os.path.join(self.data_dir, "server.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirBusy(f"another turso-sync server is using {self.data_dir}") from None
        self._lock_fd = fd
        for name in self.names():
            await self.get(name, create=False)

    async def get(self, name: str, *, create: bool) -> HostedDatabase:
        """The open database ``name``, opening it (or creating it, if ``create``) first."""
        db = self._open.get(name)
        if db is not None:
            return db
        async with self._opening:
            db = self._open.get(name)
            if db is not None:
                return db
            path = self.path_of(name)
            if not os.path.exists(path):
                if not create:
                    raise UnknownDatabase(f"database '{name}' does not exist")
                os.makedirs(os.path.dirname(path), exist_ok=True)
            db = await HostedDatabase.open(name, path, encryption_key=self._key, cipher=self._cipher)
            self._open[name] = db
            return db

    def opened(self) -> list[HostedDatabase]:
        """The databases open now."""
        return list(self._open.values())

    def wake_all(self) -> None:
        """Release every long-poll (shutdown)."""
        for db in self._open.values():
            db.feed.close()

    async def close(self) -> None:
        """Close every database and release the data directory."""
        for db in list(self._open.values()):
            await db.close()
        self._open.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
