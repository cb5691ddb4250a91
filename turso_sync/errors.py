"""Every exception turso_sync raises: the DB-API 2.0 hierarchy plus the sync errors.

Mirrors the stdlib ``sqlite3`` module, so ``except turso_sync.IntegrityError`` works the way
an application written for ``sqlite3`` expects::

    Warning
    Error                          base of every turso_sync error (PEP 249)
     +-- InterfaceError            misuse of the interface (a closed connection)
     +-- DatabaseError
          +-- DataError            a value does not fit
          +-- OperationalError     SQL error, busy, locked, I/O
          |    +-- SyncError       a sync call could not complete; local data unchanged
          |         +-- NetworkError          unreachable, timed out, cut short      (retry later)
          |         +-- RemoteError           an HTTP error status: ``.status``      (401/403: the token)
          |         |    +-- ReadOnlyTokenError  403: the token may only read; pushing needs a read-write one
          |         +-- ProtocolError         a message breaks the protocol (either side)
          |         +-- PushRejectedError     a pending change refused: ``.outbox_id``, ``.refusal``
          |              +-- PushConflictError  a remote change in the way; pull, then push
          +-- IntegrityError       a constraint failed
          +-- InternalError        the engine reached an impossible state
          +-- ProgrammingError     wrong use of the API (bad parameters, unknown conflict policy)
          |    +-- NotAReplicaError  pull/push/sync on a database that is not a replica
          +-- NotSupportedError
          |    +-- NotAllowedOnReplicaError  a statement a replica refuses (journal_mode, ATTACH, DETACH)
          +-- EncryptionError      wrong, missing or unneeded key; a page failed authentication
          +-- ReplicaDamagedError  a replica's files no longer belong together: ``.file``, ``.remedy``

Every error a sync call (bootstrap, ``pull``, ``push``, ``sync``) raises because of the remote
or the wire is a ``SyncError``; the key and the local files keep their own types
(``EncryptionError``, ``ReplicaDamagedError``): retrying does not help with those.  Decide by
type and by the attributes (``RemoteError.status``, ``PushRejectedError.outbox_id``), never
by the message text, which is written for people and may change.

``SyncError`` sits under ``OperationalError``, as PEP 249 places "errors related to the
database's operation ... not necessarily under the control of the programmer" (a lost
connection): ``except turso_sync.OperationalError`` keeps catching sync failures.  The
primary's own HTTP-level errors live beside its handlers (``primary/app.py``) and never reach
a client as exceptions: it answers with a status, which the client raises as ``RemoteError``.
"""

from __future__ import annotations

from typing import Any

import apsw


class Warning(Exception):  # noqa: N818 - the name is fixed by PEP 249
    """Important warnings (PEP 249)."""


class Error(Exception):
    """Base class of every turso_sync error."""


class InterfaceError(Error):
    """Misuse of the interface rather than of the database (for example a closed connection)."""


class DatabaseError(Error):
    """An error reported by the database: wrong key, corrupt page, bad file."""


class DataError(DatabaseError):
    """A value does not fit (too big, out of range)."""


class OperationalError(DatabaseError):
    """The database could not do what was asked: SQL error, busy, locked, I/O."""


class IntegrityError(DatabaseError):
    """A constraint failed: UNIQUE, NOT NULL, FOREIGN KEY, CHECK."""


class InternalError(DatabaseError):
    """The engine reached a state it should never be in."""


class ProgrammingError(DatabaseError):
    """Wrong use of the API: bad parameters, a statement on a closed cursor."""


class NotAReplicaError(ProgrammingError):
    """``pull``, ``push`` or ``sync`` on a database that is not a replica (``path`` names it)."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path} is not a replica (open it with a remote URL, or clone it)")
        self.path = path


class NotSupportedError(DatabaseError):
    """The database does not support what was asked."""


class NotAllowedOnReplicaError(NotSupportedError):
    """A statement a replica refuses: changing ``journal_mode``, ``ATTACH``, ``DETACH``.

    A replica runs in WAL mode under the sync agent (its frame log and pulls depend on it), and
    its captured changes must stay in its own database; the statement is refused before it runs.
    """


class EncryptionError(DatabaseError):
    """The key is wrong, missing or not needed, or a page failed authentication."""


class ReplicaDamagedError(DatabaseError):
    """A replica's files no longer belong together: a database emptied, truncated or replaced, a
    frame log, sync state or revert file missing or damaged.

    ``file`` names the file at fault, ``remedy`` says what to do (``turso-sync verify --repair``),
    ``damages`` lists every problem found (``turso_sync.sync.files.Damage``).
    """

    def __init__(self, file: str, what: str, remedy: str, damages: list[Any] | None = None) -> None:
        super().__init__(f"{file}: {what}; {remedy}")
        self.file = file
        self.what = what
        self.remedy = remedy
        self.damages = list(damages or [])


class SyncError(OperationalError):
    """Sync could not complete; the local database is unchanged and keeps every local write."""


class NetworkError(SyncError):
    """The remote could not be reached or did not answer completely."""


class ProtocolError(SyncError):
    """A sync message does not follow the protocol: malformed bytes or JSON, a bad field or revision.

    The message names the field at fault; the sender has to fix its request (on the client, a
    remote that answers this way is not a turso-sync or Turso sync server, or a broken proxy is
    in between).
    """


class RemoteError(SyncError):
    """The remote answered with an error status."""

    def __init__(self, status: int, body: bytes, path: str) -> None:
        text = body[:300].decode("utf-8", "replace")
        super().__init__(self._message(status, text, path))
        self.status = status
        self.body = body
        self.path = path

    def _message(self, status: int, text: str, path: str) -> str:
        return f"remote returned HTTP {status} for {path}: {text}"


class ReadOnlyTokenError(RemoteError):
    """The remote refused a write because the token may only read (HTTP 403); nothing was pushed.

    Every change stays pending: push with a read-write token (``auth_token``, ``--auth-token``).
    """

    def _message(self, status: int, text: str, path: str) -> str:
        return (
            f"this token is read-only: the remote refused to write (HTTP {status} for {path}); every change "
            "stays pending, push with a read-write token"
        )


class PushRejectedError(SyncError):
    """The remote refused a pending change; it stays pending (see ``outbox_id``).

    ``refusal`` identifies the refusal (the remote's error for the change, or a fixed reason
    such as the size limit); ``push()`` compares it across a pull-and-retry round to tell a
    refusal the rebase cannot settle (the same again) from one it did.  None for a conflict.
    """

    def __init__(self, message: str, outbox_id: int | None = None, *, refusal: str | None = None) -> None:
        super().__init__(message)
        self.outbox_id = outbox_id
        self.refusal = refusal


class PushConflictError(PushRejectedError):
    """A pending change met a remote change it had not seen; pull (the policy settles it), then push."""


_APSW_MAP: list[tuple[type[BaseException], type[Error]]] = [
    (apsw.ConstraintError, IntegrityError),
    (apsw.MismatchError, IntegrityError),
    (apsw.TooBigError, DataError),
    (apsw.RangeError, DataError),
    (apsw.CorruptError, DatabaseError),
    (apsw.NotADBError, DatabaseError),
    (apsw.MisuseError, ProgrammingError),
    (apsw.BindingsError, ProgrammingError),
    (apsw.ExecutionCompleteError, ProgrammingError),
    (apsw.CursorClosedError, ProgrammingError),
    (apsw.ConnectionClosedError, ProgrammingError),
    (apsw.InternalError, InternalError),
    (apsw.Error, OperationalError),
]


def translate(exc: BaseException) -> Error:
    """The DB-API exception for an APSW exception, keeping its message."""
    for apsw_type, ours in _APSW_MAP:
        if isinstance(exc, apsw_type):
            message = str(exc)
            for prefix in ("SQLError: ", "ConstraintError: ", "CorruptError: ", "BusyError: "):
                if message.startswith(prefix):
                    message = message[len(prefix) :]
            return ours(message)
    return OperationalError(str(exc))
