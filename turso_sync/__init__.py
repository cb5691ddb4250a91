"""turso-sync: an encrypted, offline-first SQLite replica that syncs with Turso's protocol."""

from __future__ import annotations

import os

from .errors import (
    DatabaseError,
    DataError,
    EncryptionError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    Warning,
)
from .local.connection import Connection, Cursor

__version__ = "0.1.0"

apilevel = "2.0"
threadsafety = 1
paramstyle = "qmark"  # named (":name") parameters work too


def connect(
    path: str | os.PathLike[str],
    *,
    encryption_key: str | None = None,
    cipher: str = "aes256gcm",
    isolation_level: str | None = "DEFERRED",
    timeout: float = 5.0,
    record_frames: bool = True,
) -> Connection:
    """Open (or create) a local database.

    ``encryption_key`` is a hex string (32 hex digits for ``aes128gcm``, 64 for ``aes256gcm``);
    with it every page of the database and its WAL is encrypted in Turso's format.
    ``record_frames`` keeps the frame log (``<path>-frames``): every committed transaction,
    numbered, for sync.  Once a database has a frame log, every connection keeps it up.
    """
    return Connection(
        path,
        encryption_key=encryption_key,
        cipher=cipher,
        isolation_level=isolation_level,
        timeout=timeout,
        record_frames=record_frames,
    )


__all__ = [
    "Connection",
    "Cursor",
    "DataError",
    "DatabaseError",
    "EncryptionError",
    "Error",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "NotSupportedError",
    "OperationalError",
    "ProgrammingError",
    "Warning",
    "apilevel",
    "connect",
    "paramstyle",
    "threadsafety",
]
