"""turso-sync: an encrypted, offline-first SQLite replica that syncs with Turso's protocol."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, overload

from .errors import (
    DatabaseError,
    DataError,
    EncryptionError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NetworkError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    PushConflictError,
    PushRejectedError,
    RemoteError,
    ReplicaDamagedError,
    SyncError,
    Warning,
)
from .local.connection import Connection, Cursor
from .sync.partial import PartialSync
from .sync.rebase import DEFAULT_POLICY
from .sync.transport import Transport

if TYPE_CHECKING:
    from .sync.connection import SyncConnection

__version__ = "0.1.0"

apilevel = "2.0"
threadsafety = 1
paramstyle = "qmark"  # named (":name") parameters work too


def __getattr__(name: str) -> Any:
    """``turso_sync.SyncConnection``, imported on first use (it pulls in the whole sync engine)."""
    if name == "SyncConnection":
        from .sync.connection import SyncConnection

        return SyncConnection
    raise AttributeError(f"module 'turso_sync' has no attribute {name!r}")


@overload
def connect(
    path: str | os.PathLike[str],
    remote_url: str,
    *,
    auth_token: str | None = None,
    client_name: str | None = None,
    long_poll_timeout_ms: int | None = None,
    bootstrap_if_empty: bool = True,
    encryption_key: str | None = None,
    cipher: str = "aes256gcm",
    encryption_format: str = "turso",
    passphrase: str | None = None,
    conflict: str | Callable[..., Any] = DEFAULT_POLICY,
    isolation_level: str | None = "DEFERRED",
    timeout: float = 5.0,
    record_frames: bool = False,
    partial: PartialSync | None = None,
    transport: Transport | None = None,
) -> SyncConnection: ...


@overload
def connect(
    path: str | os.PathLike[str],
    remote_url: None = None,
    *,
    auth_token: str | None = None,
    client_name: str | None = None,
    long_poll_timeout_ms: int | None = None,
    bootstrap_if_empty: bool = True,
    encryption_key: str | None = None,
    cipher: str = "aes256gcm",
    encryption_format: str = "turso",
    passphrase: str | None = None,
    conflict: str | Callable[..., Any] = DEFAULT_POLICY,
    isolation_level: str | None = "DEFERRED",
    timeout: float = 5.0,
    record_frames: bool = False,
    partial: PartialSync | None = None,
    transport: Transport | None = None,
) -> Connection | SyncConnection: ...


@overload
def connect(
    path: str | os.PathLike[str],
    remote_url: str | None = None,
    *,
    auth_token: str | None = None,
    client_name: str | None = None,
    long_poll_timeout_ms: int | None = None,
    bootstrap_if_empty: bool = True,
    encryption_key: str | None = None,
    cipher: str = "aes256gcm",
    encryption_format: str = "turso",
    passphrase: str | None = None,
    conflict: str | Callable[..., Any] = DEFAULT_POLICY,
    isolation_level: str | None = "DEFERRED",
    timeout: float = 5.0,
    record_frames: bool = False,
    partial: PartialSync | None = None,
    transport: Transport | None = None,
) -> Connection | SyncConnection: ...


def connect(
    path: str | os.PathLike[str],
    remote_url: str | None = None,
    *,
    auth_token: str | None = None,
    client_name: str | None = None,
    long_poll_timeout_ms: int | None = None,
    bootstrap_if_empty: bool = True,
    encryption_key: str | None = None,
    cipher: str = "aes256gcm",
    encryption_format: str = "turso",
    passphrase: str | None = None,
    conflict: str | Callable[..., Any] = DEFAULT_POLICY,
    isolation_level: str | None = "DEFERRED",
    timeout: float = 5.0,
    record_frames: bool = False,
    partial: PartialSync | None = None,
    transport: Transport | None = None,
) -> Connection | SyncConnection:
    """Open (or create) a local database, or a replica of a remote one.

    ``encryption_key`` is a hex string (32 hex digits for ``aes128gcm``, 64 for ``aes256gcm``);
    with it every page of the database, its WAL, its history and its pending changes are
    encrypted in Turso's format.  ``encryption_format="hardened"`` chooses the opt-in hardened
    format instead (pages bound to their place, AES-256-GCM-SIV; docs/encryption.md), and
    ``passphrase`` (hardened only) replaces the hex key: Argon2id derives the key that unwraps
    the file's data key.  A reopen needs only the key or passphrase: the format is in the file.

    With ``remote_url`` (or for a path that is already a replica, whose URL was saved) the
    result is a ``SyncConnection`` with ``pull()``, ``push()``, ``sync()``, ``checkpoint()``,
    ``stats()`` and ``conflicts()``; a new path is bootstrapped from the remote first
    (``bootstrap_if_empty``).  ``conflict`` is ``"last_push_wins"`` (Turso's behaviour),
    ``"remote_wins"``, ``"local_wins"`` or a callable ``(table, pk, base, local, remote, kind)``
    returning ``"local"``, ``"remote"`` or a merged row as a dict.

    ``partial=PartialSync(...)`` bootstraps a new replica partially (a prefix, or the pages a
    query reads) and fetches every other page on first read, pinned to the bootstrap revision
    (docs/partial.md).  It only matters when the replica is created.

    Creating a replica either succeeds or leaves nothing behind: when it fails (the remote
    refuses, the network drops, Ctrl-C), every file it had made beside ``path`` is removed.

    ``transport`` replaces the HTTP client a replica talks to its remote through: any object with
    ``request(path, body, content_type, timeout, idempotent) -> HttpResponse``, ``close()`` and a
    ``stats`` (``turso_sync.sync.transport.Transport``), for example one that wraps
    ``HttpTransport`` to inject faults in a test.  It is used for this connection only.

    The return type follows ``remote_url``: with a URL it is always a ``SyncConnection``;
    without one it is a local ``Connection``, or a ``SyncConnection`` when ``path`` is already a
    replica (known only at run time, so the type says ``Connection | SyncConnection``; narrow it
    with ``isinstance(conn, turso_sync.SyncConnection)``).

    Without a remote, ``record_frames=True`` starts the frame log (``<path>-frames``): every
    committed transaction, numbered and kept with its page images.  Replicas and the primary
    always keep one; once a database has a frame log, every connection keeps it up.
    """
    from .crypto.page_codec import encryption_options
    from .sync.rebase import check_policy
    from .sync.target import replica_target

    check_policy(conflict)  # a typo fails here, not at the first rebase
    try:  # the hardened format travels through the cipher name from here on
        encryption_key, cipher = encryption_options(encryption_key, cipher, encryption_format, passphrase)
    except (ValueError, TypeError) as exc:
        raise ProgrammingError(str(exc)) from None
    files, is_replica, creating = replica_target(os.fspath(path), remote_url, encryption_key, cipher)
    if is_replica:
        from .sync.connection import open_replica
        from .sync.exchange import drive
        from .sync.replica import Replica

        replica = Replica.unopened(
            files.path,
            remote_url,
            transport=transport,
            auth_token=auth_token,
            client_name=client_name,
            long_poll_timeout_ms=long_poll_timeout_ms,
            encryption_key=encryption_key,
            cipher=cipher,
            conflict=conflict,
        )
        steps = open_replica(
            replica,
            files,
            creating,
            bootstrap_if_empty=bootstrap_if_empty,
            partial=partial,
            encryption_key=encryption_key,
            cipher=cipher,
            isolation_level=isolation_level,
            timeout=timeout,
        )
        return drive(steps, replica.transport)
    plain = Connection(
        path,
        encryption_key=encryption_key,
        cipher=cipher,
        isolation_level=isolation_level,
        timeout=timeout,
        record_frames=record_frames,
    )
    try:
        files.raise_if_state_lost(plain)
    except BaseException:
        plain.close()
        raise
    return plain


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
    "NetworkError",
    "NotSupportedError",
    "OperationalError",
    "PartialSync",
    "ProgrammingError",
    "PushConflictError",
    "PushRejectedError",
    "RemoteError",
    "ReplicaDamagedError",
    "SyncConnection",
    "SyncError",
    "Transport",
    "Warning",
    "apilevel",
    "connect",
    "paramstyle",
    "threadsafety",
]
