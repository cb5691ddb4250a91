"""The connection an app gets for a replica: the DB-API connection plus sync methods.

Method names follow pyturso's ``turso.sync.connect`` (``pull``, ``push``, ``checkpoint``,
``stats``), so switching is a one-line change; ``sync()`` and ``conflicts()`` are ours.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ..local.connection import Connection
from .exchange import Steps
from .files import ReplicaFiles
from .partial import PartialSync
from .rebase import Conflict
from .replica import Replica
from .results import PullResult, PushResult, SyncResult, SyncStats


class SyncConnection(Connection):
    """A connection to a local replica that can pull from and push to its remote."""

    def __init__(self, replica: Replica, **kwargs: Any) -> None:
        super().__init__(replica.path, record_frames=True, **kwargs)
        self.replica = replica
        #: the result of this connection's last ``pull``, ``push`` or ``sync`` (None before the first)
        self.last_sync: PullResult | PushResult | SyncResult | None = None

    def before_sync(self) -> None:
        """What every sync call does first: as pyturso does, it ends the open transaction."""
        self._check()
        if self.in_transaction:
            self.commit()

    def pull(self, long_poll_timeout_ms: int | None = None) -> bool:
        """Apply remote changes (pending local ones are replayed on top); True if any arrived.

        ``last_sync`` then holds the ``PullResult`` (revision, pages, bytes, new conflicts).
        """
        self.before_sync()
        self.last_sync = result = self.replica.pull(long_poll_timeout_ms)
        return result.changed

    def push(self) -> int:
        """Send pending local changes, exactly once; returns how many transactions were sent.

        ``last_sync`` then holds the ``PushResult``.
        """
        self.before_sync()
        self.last_sync = result = self.replica.push()
        return result.pushed

    def sync(self) -> bool:
        """Push, then pull; True if remote changes arrived (a rejected push pulls, then retries).

        ``last_sync`` then holds the ``SyncResult``.
        """
        self.before_sync()
        self.last_sync = result = self.replica.sync()
        return result.changed

    def checkpoint(self) -> None:
        """Copy the WAL into the database file (history is archived first)."""
        self._check()
        self.replica.checkpoint()

    def stats(self) -> SyncStats:
        """Revision, pending changes, bytes on the wire, last pull/push times, conflicts."""
        return self.replica.stats()

    def conflicts(self) -> list[Conflict]:
        """Every conflict met so far, however it was resolved (oldest first)."""
        return self.replica.conflicts()

    def close(self) -> None:
        """Close the connection and the replica's own resources."""
        if self._closed:
            return
        super().close()
        self.replica.close()


def open_replica(
    replica: Replica,
    files: ReplicaFiles,
    creating: bool,
    *,
    bootstrap_if_empty: bool = True,
    partial: PartialSync | None = None,
    **connection_options: Any,
) -> Steps[SyncConnection]:
    """Open (bootstrapping a new one) a prepared ``Replica`` and its app connection, as a step.

    A new replica that fails to open (an unreachable remote, Ctrl-C, a cancelled task) leaves
    no files behind.
    """
    with files.removed_on_failure() if creating else contextlib.nullcontext():
        try:
            yield from replica.open_steps(bootstrap_if_empty=bootstrap_if_empty, partial=partial)
            conn = SyncConnection(replica, **connection_options)
        except BaseException:
            replica.close()
            raise
        try:
            files.check_identity(conn, replica.state.client_id)
        except BaseException:
            conn.close()
            raise
    return conn
