"""The sync agent of one local replica: a small facade over bootstrap, pull, push and the journal.

Pull is physical (pages, Turso's protocol), push is logical (Hrana batches).  The protocol lives
in sans-IO steps (``exchange.py``): ``bootstrap.py`` creates the replica, ``pull.py`` fetches
and installs (rebasing the outbox, ``rebase.py``), ``pusher.py`` sends the outbox exactly once,
``outbox.py`` and ``journal.py`` read the bookkeeping tables.  ``Replica`` holds what they
share (the files, the state, the lock, the transport) and runs each step with the blocking
driver; ``turso_sync.aio`` runs the same steps with the asyncio one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from .. import errors
from ..crypto.page_codec import PageCodec
from ..local.connection import Connection
from ..local.engine import LocalDatabase
from ..local.lazy import clear_fetcher, set_fetcher
from ..local.vfs import realpath
from . import pull as pull_mod
from . import pusher
from .bootstrap import KeyOptions, bootstrap, create_deferred, fetch_pinned
from .exchange import Steps, drive
from .files import ReplicaFiles
from .journal import conflict_count, read_conflicts
from .outbox import ensure_tables, pending_count
from .partial import PartialSync
from .rebase import DEFAULT_POLICY, Conflict, Resolver, check_policy
from .results import PullResult, PushResult, SyncResult, SyncStats
from .state import SyncState
from .transport import HttpTransport, TransferStats, Transport

PUSH_ROUNDS = pusher.PUSH_ROUNDS

__all__ = ["PullResult", "PushResult", "Replica", "SyncResult", "SyncStats"]


class Replica:
    """One local replica and its remote.

    ``Replica(path, url, ...)`` opens it, bootstrapping a new one over the (blocking) transport;
    ``Replica.unopened(...)`` prepares one without any I/O, for a driver to run ``open_steps()``.
    """

    path: str
    state: SyncState
    db: LocalDatabase
    transport: Transport

    def __init__(
        self,
        path: str,
        remote_url: str | None,
        *,
        auth_token: str | None = None,
        client_name: str | None = None,
        long_poll_timeout_ms: int | None = None,
        bootstrap_if_empty: bool = True,
        encryption_key: str | None = None,
        cipher: str = "aes256gcm",
        conflict: str | Resolver = DEFAULT_POLICY,
        transport: Transport | None = None,
        request_timeout: float = 30.0,
        partial: PartialSync | None = None,
    ) -> None:
        self._prepare(
            path,
            remote_url,
            auth_token=auth_token,
            client_name=client_name,
            long_poll_timeout_ms=long_poll_timeout_ms,
            encryption_key=encryption_key,
            cipher=cipher,
            conflict=conflict,
            transport=transport,
            request_timeout=request_timeout,
        )
        drive(self.open_steps(bootstrap_if_empty=bootstrap_if_empty, partial=partial), self.transport)

    @classmethod
    def unopened(
        cls, path: str, remote_url: str | None, *, transport: Transport | None = None, **options: Any
    ) -> Replica:
        """A replica whose state is read and transport set, before any file is created or request sent.

        Run ``open_steps()`` with a driver to open it; ``options`` are ``Replica``'s own but
        ``bootstrap_if_empty`` and ``partial``, which go to ``open_steps``.
        """
        replica = cls.__new__(cls)
        replica._prepare(path, remote_url, transport=transport, **options)
        return replica

    def _prepare(
        self,
        path: str,
        remote_url: str | None,
        *,
        auth_token: str | None = None,
        client_name: str | None = None,
        long_poll_timeout_ms: int | None = None,
        encryption_key: str | None = None,
        cipher: str = "aes256gcm",
        conflict: str | Resolver = DEFAULT_POLICY,
        transport: Transport | None = None,
        request_timeout: float = 30.0,
    ) -> None:
        """Everything but the files and the network: the state, the lock, the transport."""
        check_policy(conflict)
        self.path = realpath(path)
        self._mutex = threading.RLock()
        self._lock_fd: int | None = None
        self._lock_depth = 0
        self.policy = conflict
        self.long_poll_timeout_ms = long_poll_timeout_ms or 0
        self.request_timeout = request_timeout
        self.key = KeyOptions(encryption_key, cipher)
        self._opened = False
        state = SyncState.load(self.path)
        if state is not None and state.bootstrapping:
            files = ReplicaFiles(self.path)  # a bootstrap that never finished: start it over
            files.remove(keep={files.sync_lock})  # but the sync lock another process may hold
            state = None
        if state is None:
            if remote_url is None:
                raise errors.ProgrammingError(f"{self.path} is not a replica yet: pass remote_url to create it")
            name = client_name or "turso-sync"
            state = SyncState(remote_url=remote_url, client_id=f"{name}-{uuid.uuid4()}")
        elif remote_url is not None and remote_url != state.remote_url:
            state.remote_url = remote_url
        self.state = state
        self.transport = transport or HttpTransport(
            state.remote_url, auth_token=auth_token, client_name=client_name or "turso-sync"
        )

    def open_steps(self, *, bootstrap_if_empty: bool = True, partial: PartialSync | None = None) -> Steps[None]:
        """Bootstrap a new replica (the only network here), then open its database."""
        # missing pages of a partial replica are fetched through this replica's transport
        set_fetcher(self.path, self._fetch_pinned)
        try:
            if not os.path.exists(self.path) or not os.path.exists(SyncState.path_for(self.path)):
                if os.path.exists(self.path):
                    raise errors.ProgrammingError(
                        f"{self.path} exists but is not a replica; choose a new path to bootstrap into"
                    )
                if bootstrap_if_empty:
                    try:
                        yield from bootstrap(self.path, self.state, self.key, self.request_timeout, partial)
                    finally:
                        self.count_bytes()
                    self.state.save(self.path)
                else:
                    create_deferred(self.path, self.state, self.key)
            self.db = self.key.open(self.path)
            try:
                self._configure_lazy()
                ensure_tables(self.db, self.state.client_id)
            except BaseException:
                self.db.close()  # a failed open leaves nothing open (its files may be removed next)
                raise
        except BaseException:
            clear_fetcher(self.path, self._fetch_pinned)
            raise
        self._opened = True

    def _configure_lazy(self) -> None:
        lazy = self.db.lazy
        if lazy is None or self.state.partial is None:
            return
        options = PartialSync.from_json(self.state.partial)
        lazy.segment_pages = options.segment_pages
        lazy.prefetch = options.prefetch

    def _fetch_pinned(self, pgnos: list[int], revision: str) -> dict[int, bytes]:
        """A partial replica's lazy fetch (called by SQLite reads, so blocking, on the transport)."""
        return drive(fetch_pinned(self.state, pgnos, revision, self.request_timeout), self.transport)

    # --- what the parts share -----------------------------------------------------------------

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the replica's sync lock (across processes) with the state freshly read.

        Two agents on one replica (an app and the daemon, say) never push the same change
        twice or rebuild from a base another one already moved.
        """
        with self._mutex:
            if self._lock_depth == 0:
                fd = os.open(self.path + "-sync.lock", os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self._lock_fd = fd
                fresh = SyncState.load(self.path)
                if fresh is not None and not fresh.bootstrapping:
                    fresh.remote_url = self.state.remote_url
                    self.state = fresh
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0 and self._lock_fd is not None:
                    os.close(self._lock_fd)  # drops the flock
                    self._lock_fd = None

    @property
    def holds_sync_lock(self) -> bool:
        """True while a step of this replica is inside ``exclusive()`` (the asyncio driver asks)."""
        return self._lock_depth > 0

    def count_bytes(self) -> None:
        """Move the transport's byte counts into the state (saved by the caller)."""
        stats = self.transport.stats
        self.state.bytes_sent += stats.sent
        self.state.bytes_received += stats.received
        stats.sent = stats.received = 0

    @property
    def codec(self) -> PageCodec | None:
        """The database's page codec (None for a plaintext replica)."""
        return self.db.codec

    def connect(self, **kwargs: Any) -> Connection:
        """A DB-API connection to the replica (its writes are captured for push)."""
        return self.db.connect(**kwargs)

    def close(self) -> None:
        """Close the database and the transport."""
        clear_fetcher(self.path, self._fetch_pinned)
        if self._opened:
            self.db.close()
        self.transport.close()

    # --- pull, push, sync: the steps, and the blocking calls --------------------------------------

    def pull_steps(self, long_poll_timeout_ms: int | None, traffic: TransferStats) -> Steps[PullResult]:
        """``pull`` for a driver that counts this call's bytes into ``traffic``."""
        wait = self.long_poll_timeout_ms if long_poll_timeout_ms is None else long_poll_timeout_ms
        outcome = yield from pull_mod.pull(self, wait)
        return PullResult(
            outcome.changed,
            outcome.revision,
            outcome.pages_received,
            traffic.sent,
            traffic.received,
            outcome.conflicts,
            pending_count(self.db),
        )

    def push_steps(self, max_changes_per_batch: int, traffic: TransferStats) -> Steps[PushResult]:
        """``push`` for a driver that counts this call's bytes into ``traffic``."""
        with self.exclusive():
            outcome = yield from pusher.push(self, max_changes_per_batch)
            revision = self.state.synced_revision
        return PushResult(
            outcome.pushed,
            revision,
            outcome.pulled,
            outcome.pages_received,
            traffic.sent,
            traffic.received,
            outcome.conflicts,
            pending_count(self.db),
        )

    def sync_steps(self, traffic: TransferStats) -> Steps[SyncResult]:
        """``sync`` for a driver that counts this call's bytes into ``traffic``."""
        with self.exclusive():
            pushed = yield from self.push_steps(pusher.DEFAULT_CHANGES_PER_BATCH, traffic)
            sent, received = traffic.sent, traffic.received
            pulled = yield from self.pull_steps(0, traffic)
        pulled.bytes_sent -= sent
        pulled.bytes_received -= received
        return SyncResult(pushed, pulled)

    def pull(self, long_poll_timeout_ms: int | None = None) -> PullResult:
        """Fetch remote changes and apply them under the pending local ones (true if any arrived).

        The network wait (long poll) happens without the sync lock; applying takes it.
        """
        traffic = TransferStats()
        return drive(self.pull_steps(long_poll_timeout_ms, traffic), self.transport, traffic)

    def push(self, max_changes_per_batch: int = pusher.DEFAULT_CHANGES_PER_BATCH) -> PushResult:
        """Send every pending local change, exactly once (``int(result)``: transactions pushed).

        Each change is conditional on the remote row still holding the values it was made
        against (compare-and-set, see ``push.py``).  When a remote change it has not seen is in
        the way (a conflict), or the remote refuses a change (a constraint its state breaks),
        push pulls: the rebase settles the clash under the conflict policy and journals it, and
        push tries again, at most ``PUSH_ROUNDS`` times.  Then it raises, and every change not
        yet pushed stays pending.
        """
        traffic = TransferStats()
        return drive(self.push_steps(max_changes_per_batch, traffic), self.transport, traffic)

    def sync(self) -> SyncResult:
        """Push, then pull (true if remote changes arrived).

        A push that meets a remote change it has not seen pulls first (the rebase settles the
        conflict under the policy and journals it) and pushes again, so ``sync()``, ``push()``
        and ``pull()`` reach the same outcome for the same history.
        """
        traffic = TransferStats()
        return drive(self.sync_steps(traffic), self.transport, traffic)

    # --- the rest -----------------------------------------------------------------------------

    def stats(self) -> SyncStats:
        """Revision, pending changes, bytes on the wire, times, conflicts; pages of a partial replica."""
        pending = pending_count(self.db)
        conflicts = conflict_count(self.db)
        s = SyncState.load(self.path) or self.state  # another agent may have synced meanwhile
        partial: dict[str, Any] = {}
        lazy = self.db.lazy
        if lazy is not None:
            with lazy.locked():
                m = lazy.map
                partial = {
                    "pages_present": m.present_count(),
                    "pages_local": m.present_count(),
                    "pages_total": m.boot_size,
                    "lazy_requests": m.requests,
                    "lazy_pages_fetched": m.pages_fetched,
                    "lazy_bytes_fetched": m.bytes_fetched,
                }
        return SyncStats(
            s.synced_revision,
            pending,
            s.bytes_sent,
            s.bytes_received,
            s.last_pull,
            s.last_push,
            conflicts,
            s.pulls,
            s.pushes,
            **partial,
        )

    def conflicts(self) -> list[Conflict]:
        """The conflict journal, oldest first."""
        return read_conflicts(self.db)

    def checkpoint(self) -> None:
        """Copy the WAL into the database file (history is archived first)."""
        self.db.checkpoint()
