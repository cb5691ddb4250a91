"""The background sync daemon: keeps replicas in sync with their primary, unattended.

Each replica is opened once (one ``Replica``) and gets two threads:

- the *puller* long-polls the primary (``pull(long_poll_timeout_ms=...)``): the request waits on
  the primary until a new revision commits, so remote commits arrive within a network round
  trip; the library applies it as one atomic step, and the puller asks again, after
  ``coalesce`` seconds: what commits meanwhile comes in that next pull, together (on a busy
  primary, one pull per revision would bring the pages every revision touches again each time);
- the *pusher* reads the outbox size every ``watch_interval`` seconds (local commits of any
  process land there) and pushes as soon as it is not empty.

The long-poll wait runs beside pushes; everything that touches the database goes through the
replica's sync lock (``Replica.exclusive()``), one step at a time, as a single agent would (the
library fetches again under the lock when a push landed between a pull's fetch and its apply).

A failure (primary down, network gone, 5xx) is logged, counted, and retried after an
exponential backoff with jitter, capped at ``max_backoff``; local reads and writes are never
affected, and the replica catches up when the primary returns.  An auth refusal (401/403)
before the primary was ever reached is fatal (``fatal`` is set and the daemon stops): a wrong
token does not fix itself.  Later refusals (a revoked token) are retried like any failure.

``stop()`` never leaves a step half done: it waits for each pusher's in-flight push, then takes
every replica's sync lock, which no pull can be applied without; a puller still waiting on the
network is abandoned there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import errors
from .connection import SyncConnection
from .rebase import DEFAULT_POLICY
from .replica import Replica, SyncStats
from .state import SyncState

log = logging.getLogger("turso_sync.daemon")

#: seconds a puller waits after a pull that brought changes (``SyncDaemon(coalesce=...)``)
DEFAULT_COALESCE = 0.5

#: how long past its long-poll window an open pull still counts as healthy (for ``lag_seconds``)
_LONG_POLL_GRACE = 5.0


class Backoff:
    """Exponential backoff with jitter, bounded: ``base``, then doubling up to ``cap``, each scaled by 0.5 to 1."""

    def __init__(self, base: float = 0.25, cap: float = 10.0, rng: Callable[[], float] = random.random) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0
        self._rng = rng

    def next(self) -> float:
        """The delay before the next attempt (and count one more failure)."""
        ceiling = min(self.cap, self.base * (2 ** min(self.failures, 30)))
        self.failures += 1
        return ceiling * (0.5 + 0.5 * self._rng())

    def reset(self) -> None:
        """After a success: start again from ``base``."""
        self.failures = 0


@dataclass(frozen=True)
class DaemonReplica:
    """One replica the daemon keeps in sync, with its own key (None: a plaintext replica).

    The key never appears in ``repr`` (nor in any log line).
    """

    path: str
    encryption_key: str | None = field(default=None, repr=False)
    cipher: str = "aes256gcm"


@dataclass
class ReplicaStatus:
    """What the daemon knows about one replica (the figures behind ``--metrics``)."""

    path: str
    revision: str
    pending_changes: int
    bytes_sent: int
    bytes_received: int
    pulls: int
    pushes: int
    conflicts: int
    errors: int
    last_pull_unix_time: float | None
    last_push_unix_time: float | None
    connected: bool
    lag_seconds: float | None
    last_error: str | None


def _is_auth_refusal(exc: BaseException) -> bool:
    return isinstance(exc, errors.RemoteError) and exc.status in (401, 403)


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


class _ReplicaWorker:
    """The puller and pusher threads of one replica, and what they have seen."""

    def __init__(self, daemon: SyncDaemon, replica: DaemonReplica) -> None:
        self.daemon = daemon
        self.path = replica.path
        self.conn = daemon._open(replica)
        self.replica: Replica = self.conn.replica
        self._lock = threading.Lock()
        self._stats: SyncStats = self._read_stats()
        self._errors = 0
        self._last_error: str | None = None
        self._connected = False
        self._ever_connected = False
        self._pull_started: float | None = None  # monotonic start of the pull in flight
        self._pull_ok_since_error = False
        self.puller = threading.Thread(target=self._pull_loop, name=f"turso-sync puller {self.path}", daemon=True)
        self.pusher = threading.Thread(target=self._push_loop, name=f"turso-sync pusher {self.path}", daemon=True)

    # --- shared bookkeeping ---------------------------------------------------------------------

    def _succeeded(self, what: str) -> None:
        with self._lock:
            was = self._connected
            self._connected = True
            self._ever_connected = True
        if not was:
            log.info("%s: primary reachable (%s ok)", self.path, what)

    def _failed(self, exc: BaseException, what: str, retry_in: float) -> None:
        with self._lock:
            self._errors += 1
            self._last_error = _one_line(exc)
            first = self._connected or self._errors == 1
            self._connected = False
            fatal = _is_auth_refusal(exc) and not self._ever_connected
        if fatal:
            log.error("%s: %s refused: %s; stopping", self.path, what, _one_line(exc))
            self.daemon._fatal_error(exc)
            return
        # a failure that is retried is one line, at warning level the first time of a run (the
        # repeats at debug); an exception that is not one of ours may be a bug: its traceback
        # is logged too, at debug level, so it is there when asked for and not repeated otherwise
        level = logging.WARNING if first else logging.DEBUG
        log.log(level, "%s: %s failed (%s); retrying in %.1fs", self.path, what, _one_line(exc), retry_in)
        if not isinstance(exc, errors.Error):
            log.debug("%s: the traceback of that %s failure", self.path, what, exc_info=exc)

    def _read_stats(self) -> SyncStats:
        with self.replica.exclusive():  # the replica's own connection: never beside a step of the puller
            return self.replica.stats()

    def _publish(self) -> int:
        stats = self._read_stats()
        with self._lock:
            self._stats = stats
        return stats.pending_changes

    def status(self) -> ReplicaStatus:
        """A consistent snapshot, with the lag worked out now."""
        with self._lock:
            s = self._stats
            lag: float | None = None
            window = self.daemon.long_poll + _LONG_POLL_GRACE
            pull_open = self._pull_started is not None and time.monotonic() - self._pull_started < window
            if self._connected and pull_open and self._pull_ok_since_error:
                lag = 0.0  # a healthy long-poll is open: the primary answers it the moment it commits
            elif s.last_pull_unix_time is not None:
                lag = max(0.0, time.time() - s.last_pull_unix_time)
            return ReplicaStatus(
                path=self.path,
                revision=s.revision,
                pending_changes=s.pending_changes,
                bytes_sent=s.network_sent_bytes,
                bytes_received=s.network_received_bytes,
                pulls=s.pulls,
                pushes=s.pushes,
                conflicts=s.conflicts,
                errors=self._errors,
                last_pull_unix_time=s.last_pull_unix_time,
                last_push_unix_time=s.last_push_unix_time,
                connected=self._connected,
                lag_seconds=lag,
                last_error=self._last_error,
            )

    # --- the puller -----------------------------------------------------------------------------

    def _pull_loop(self) -> None:
        stop = self.daemon._stop
        backoff = Backoff(cap=self.daemon.max_backoff)
        wait_ms = int(self.daemon.long_poll * 1000)
        while not stop.is_set():
            started = time.monotonic()
            with self._lock:
                self._pull_started = started
            try:
                # the wait happens outside the sync lock (pushes go on); the apply takes it
                changed = self.replica.pull(long_poll_timeout_ms=wait_ms)
            except Exception as exc:
                with self._lock:
                    self._pull_started = None
                    self._pull_ok_since_error = False
                delay = backoff.next()
                self._failed(exc, "pull", delay)
                stop.wait(delay)
                continue
            with self._lock:
                self._pull_started = None
                self._pull_ok_since_error = True
            backoff.reset()
            self._succeeded("pull")
            if changed:
                log.log(self.daemon.step_level, "%s: pulled revision %s", self.path, self.replica.state.synced_revision)
                if self.daemon.coalesce:
                    stop.wait(self.daemon.coalesce)  # let more revisions land: the next pull takes them together
                continue
            elapsed = time.monotonic() - started
            if elapsed < self.daemon.interval:
                # answered at once with nothing new: a server without long-poll, or one shutting down
                stop.wait(self.daemon.interval - elapsed)

    # --- the pusher -----------------------------------------------------------------------------

    def _push_loop(self) -> None:
        stop = self.daemon._stop
        backoff = Backoff(cap=self.daemon.max_backoff)
        retry_at = 0.0
        while not stop.is_set():
            try:
                pending = self._publish()  # the outbox size, read under the replica's lock
                if pending and time.monotonic() >= retry_at:
                    pushed = self._push()
                    backoff.reset()
                    retry_at = 0.0
                    self._succeeded("push")
                    log.log(self.daemon.step_level, "%s: pushed %d transaction(s)", self.path, pushed)
                    self._publish()
            except Exception as exc:
                delay = backoff.next()
                retry_at = time.monotonic() + delay
                self._failed(exc, "push", delay)
            stop.wait(self.daemon.watch_interval)

    def _push(self) -> int:
        # a push that meets an unseen remote change pulls, lets the policy settle it (journaled)
        # and pushes again by itself; what it still cannot push is raised and retried with backoff
        return self.replica.push()

    # --- life cycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the replica once both threads have ended (an abandoned puller keeps it open)."""
        if not self.puller.is_alive() and not self.pusher.is_alive():
            self.conn.close()


class SyncDaemon:
    """Keeps every replica in ``paths`` in sync with its primary until ``stop()``.

    ``paths``: replica paths, which share ``encryption_key`` and ``cipher``, or
    ``DaemonReplica(path, encryption_key, cipher)`` entries, each with its own key (None: a
    plaintext replica), so encrypted and plaintext replicas, or replicas with different keys,
    run side by side.  ``long_poll``: how long each pull may wait on the primary for a new
    commit (seconds).  ``coalesce``: how long the puller waits after a pull that brought
    changes before it asks again, so that revisions committed meanwhile come in one pull (it
    adds at most that much to the delay of a remote commit; 0: ask again at once).
    ``interval``: the least time between two pulls that came back empty at
    once (a server that does not hold long-polls is polled this often).  ``watch_interval``: how
    often local commits are looked for.  ``max_backoff``: the longest wait between retries after
    failures.  ``log_steps``: log each pull that brought something and each push at INFO (an
    access log); otherwise at DEBUG.  The token and conflict policy are those of
    ``turso_sync.connect`` and serve every replica.
    """

    def __init__(
        self,
        paths: Sequence[str | DaemonReplica],
        *,
        auth_token: str | None = None,
        encryption_key: str | None = None,
        cipher: str = "aes256gcm",
        conflict: str | Callable[..., Any] = DEFAULT_POLICY,
        long_poll: float = 10.0,
        coalesce: float = DEFAULT_COALESCE,
        interval: float = 1.0,
        watch_interval: float = 0.1,
        max_backoff: float = 10.0,
        log_steps: bool = False,
    ) -> None:
        if not paths:
            raise errors.ProgrammingError("the daemon needs at least one replica path")
        self.replicas = [
            p if isinstance(p, DaemonReplica) else DaemonReplica(str(p), encryption_key, cipher) for p in paths
        ]
        self.paths = [r.path for r in self.replicas]
        self.long_poll = max(0.0, long_poll)
        self.coalesce = max(0.0, coalesce)
        self.interval = max(0.0, interval)
        self.watch_interval = max(0.01, watch_interval)
        self.max_backoff = max(0.1, max_backoff)
        self.step_level = logging.INFO if log_steps else logging.DEBUG
        self._options: dict[str, Any] = {"auth_token": auth_token, "conflict": conflict}
        self._stop = threading.Event()
        self._workers: list[_ReplicaWorker] = []
        self._held = contextlib.ExitStack()
        self._stopped = False
        self.fatal: BaseException | None = None
        self.started_at: float | None = None

    def _open(self, replica: DaemonReplica) -> SyncConnection:
        from .. import connect

        path = replica.path
        if SyncState.load(path) is None:
            raise errors.ProgrammingError(f"{path} is not a replica; clone it first (turso_sync.connect(path, url))")
        conn: SyncConnection = connect(
            path, encryption_key=replica.encryption_key, cipher=replica.cipher, **self._options
        )
        return conn

    def _fatal_error(self, exc: BaseException) -> None:
        if self.fatal is None:
            self.fatal = exc
        self._stop.set()

    def start(self) -> None:
        """Open every replica (a wrong key or a non-replica path raises here), then start syncing."""
        seen: set[str] = set()
        try:
            for replica in self.replicas:
                real = os.path.realpath(replica.path)
                if real in seen:
                    continue
                seen.add(real)
                self._workers.append(_ReplicaWorker(self, DaemonReplica(real, replica.encryption_key, replica.cipher)))
        except BaseException:
            for worker in self._workers:
                worker.close()
            self._workers.clear()
            raise
        self.started_at = time.time()
        for worker in self._workers:
            worker.pusher.start()
            worker.puller.start()
            kind = "encrypted" if worker.conn.encrypted else "plaintext"
            log.info("%s: syncing with %s (%s)", worker.path, worker.replica.state.remote_url, kind)

    def request_stop(self) -> None:
        """Ask the threads to stop after their current step (``stop()`` then waits for them)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """True once ``stop()`` was called or a fatal error stopped the daemon."""
        return self._stop.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the daemon stops (``stop()`` or a fatal error); False after ``timeout``."""
        return self._stop.wait(timeout)

    def stop(self, grace: float = 0.5) -> list[str]:
        """Stop cleanly: finish in-flight pushes, take every sync lock, let pullers end.

        Returns the replicas whose puller was still waiting on the network after ``grace``
        seconds: it is abandoned there (it holds no lock and has written nothing).  The sync
        locks stay held until ``close()``, so no abandoned pull is applied before then; a
        process that exits without ``close()`` never applies it.
        """
        self._stop.set()
        self._stopped = True
        for worker in self._workers:
            worker.pusher.join()
        for worker in self._workers:
            self._held.enter_context(worker.replica.exclusive())
        deadline = time.monotonic() + grace
        abandoned = []
        for worker in self._workers:
            worker.puller.join(max(0.0, deadline - time.monotonic()))
            if worker.puller.is_alive():
                abandoned.append(worker.path)
        return abandoned

    def close(self) -> None:
        """Release the sync locks and close the connections (after ``stop()``)."""
        if not self._stopped:
            self.stop()
        self._held.close()
        for worker in self._workers:
            worker.close()

    def __enter__(self) -> SyncDaemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def status(self) -> list[ReplicaStatus]:
        """A snapshot per replica (safe to call from any thread)."""
        return [worker.status() for worker in self._workers]

    def healthy(self) -> bool:
        """Every thread of every replica is running (reachability aside)."""
        return not self._stop.is_set() and all(w.puller.is_alive() and w.pusher.is_alive() for w in self._workers)
