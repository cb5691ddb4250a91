"""``turso_sync.aio.connect``: the asyncio twin of ``turso_sync.connect``.

Same arguments, same behaviour, the same protocol code: bootstrap, ``pull``, ``push`` and ``sync``
are the sans-IO steps of ``turso_sync.sync`` (``exchange.py``), run here by the asyncio driver.
Their network waits are awaited on an aiohttp client session (``AsyncHttpTransport``) in the event
loop: no thread waits for the network, and cancelling the task that awaits ``pull`` (a long poll,
say) abandons the request at once and leaves the replica as it was.

Local SQLite work (queries, and the local stretches of a sync: rebase, install) runs on one
worker thread per connection, in order, so the event loop never blocks on SQLite.  A partial
replica's missing pages are fetched while SQLite reads them, on that worker thread: the request
itself is still awaited on the event loop.

``transport=`` takes an async transport (``request`` is a coroutine function, ``aclose()``,
``stats``: ``turso_sync.sync.exchange.AsyncTransport``); a blocking ``Transport`` is accepted
too, and then runs each request on a thread of its own.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import turso_sync

from . import errors
from .crypto.page_codec import encryption_options
from .local.connection import Connection
from .sync.connection import SyncConnection, open_replica
from .sync.exchange import AsyncTransport, Request, Steps, adrive, asend
from .sync.partial import PartialSync
from .sync.pusher import DEFAULT_CHANGES_PER_BATCH
from .sync.rebase import DEFAULT_POLICY, Conflict, check_policy
from .sync.replica import Replica
from .sync.results import PullResult, PushResult, SyncResult, SyncStats
from .sync.state import SyncState
from .sync.target import replica_target
from .sync.transport import AsyncHttpTransport, HttpResponse, SinkFactory, TransferStats, Transport

__all__ = ["AsyncConnection", "AsyncCursor", "AsyncHttpTransport", "AsyncTransport", "connect"]

T = TypeVar("T")


class AsyncCursor:
    """Rows of one statement, fetched on the connection's worker thread."""

    def __init__(self, owner: AsyncConnection, cursor: Any) -> None:
        self._owner = owner
        self._cursor = cursor

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid  # type: ignore[no-any-return]

    async def fetchone(self) -> Any:
        return await self._owner._run(self._cursor.fetchone)

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return await self._owner._run(self._cursor.fetchmany, size)

    async def fetchall(self) -> list[Any]:
        return await self._owner._run(self._cursor.fetchall)


class AsyncConnection:
    """A connection whose methods are coroutines."""

    def __init__(self, conn: Connection, executor: ThreadPoolExecutor, transport: AsyncTransport | None) -> None:
        self._conn = conn
        self._executor = executor
        self._transport = transport
        # sync calls take turns, except while one waits for the network outside the replica's
        # sync lock (a long poll): that lock is a thread's, and every call runs on one thread
        self._turn = asyncio.Lock()
        #: the result of this connection's last ``pull``, ``push`` or ``sync`` (None before the first)
        self.last_sync: PullResult | PushResult | SyncResult | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    @property
    def sync_connection(self) -> Connection:
        """The blocking connection underneath (use it only from the worker thread)."""
        return self._conn

    async def execute(self, sql: str, parameters: Any = ()) -> AsyncCursor:
        return AsyncCursor(self, await self._run(self._conn.execute, sql, parameters))

    async def executemany(self, sql: str, seq_of_parameters: Iterable[Any]) -> AsyncCursor:
        return AsyncCursor(self, await self._run(self._conn.executemany, sql, list(seq_of_parameters)))

    async def executescript(self, script: str) -> None:
        await self._run(self._conn.executescript, script)

    async def commit(self) -> None:
        await self._run(self._conn.commit)

    async def rollback(self) -> None:
        await self._run(self._conn.rollback)

    async def _drive(self, steps_for: Callable[[Replica, TransferStats], Steps[T]]) -> T:
        """Run one sync call's steps: network on the loop, local work on the worker thread."""
        conn = self._conn
        if not isinstance(conn, SyncConnection) or self._transport is None:
            raise errors.NotAReplicaError(conn.path)
        replica = conn.replica
        turn = _Turn(self._turn)
        await turn.take()
        try:
            await self._run(conn.before_sync)
            traffic = TransferStats()
            transport = _TakingTurns(self._transport, turn, lambda: replica.holds_sync_lock)
            return await adrive(steps_for(replica, traffic), transport, self._run, traffic)
        finally:
            turn.give_back()

    async def pull_result(self, long_poll_timeout_ms: int | None = None) -> PullResult:
        """``pull``, returning the whole ``PullResult`` (revision, pages, bytes, new conflicts)."""
        result = await self._drive(lambda replica, traffic: replica.pull_steps(long_poll_timeout_ms, traffic))
        self.last_sync = result
        return result

    async def pull(self, long_poll_timeout_ms: int | None = None) -> bool:
        """Apply remote changes (pending local ones are replayed on top); True if any arrived.

        Cancelling the awaiting task stops the request (a long poll too) at once; the replica
        keeps its previous state.
        """
        return (await self.pull_result(long_poll_timeout_ms)).changed

    async def push_result(self) -> PushResult:
        """``push``, returning the ``PushResult`` (an ``int`` of transactions, with details)."""
        result = await self._drive(lambda replica, traffic: replica.push_steps(DEFAULT_CHANGES_PER_BATCH, traffic))
        self.last_sync = result
        return result

    async def push(self) -> int:
        """Send pending local changes, exactly once; returns how many transactions were sent."""
        return (await self.push_result()).pushed

    async def sync_result(self) -> SyncResult:
        """``sync``, returning the ``SyncResult`` (its push and its pull)."""
        result = await self._drive(lambda replica, traffic: replica.sync_steps(traffic))
        self.last_sync = result
        return result

    async def sync(self) -> bool:
        """Push, then pull; True if remote changes arrived (a rejected push pulls, then retries)."""
        return (await self.sync_result()).changed

    async def checkpoint(self) -> None:
        await self._run(self._sync_connection().checkpoint)

    async def stats(self) -> SyncStats:
        return await self._run(self._sync_connection().stats)

    async def conflicts(self) -> list[Conflict]:
        return await self._run(self._sync_connection().conflicts)

    def _sync_connection(self) -> SyncConnection:
        if not isinstance(self._conn, SyncConnection):
            raise errors.NotAReplicaError(self._conn.path)
        return self._conn

    async def close(self) -> None:
        """Close the connection, the replica and its HTTP client."""
        try:
            await self._run(self._conn.close)
        finally:
            try:
                if self._transport is not None:
                    await self._transport.aclose()
            finally:
                self._executor.shutdown(wait=False)

    async def __aenter__(self) -> AsyncConnection:
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            await self.commit()
        else:
            await self.rollback()
        await self.close()


class _Turn:
    """One sync call's hold on its connection's turn lock (it knows whether it holds it)."""

    def __init__(self, lock: asyncio.Lock) -> None:
        self._lock = lock
        self._held = False

    async def take(self) -> None:
        await self._lock.acquire()
        self._held = True

    def give_back(self) -> None:
        if self._held:
            self._held = False
            self._lock.release()


class _TakingTurns:
    """The transport of one sync call, which lets other calls take their turn while it waits
    for the network outside the replica's sync lock (a pull's long poll), as the blocking API
    lets another thread push meanwhile."""

    def __init__(self, transport: AsyncTransport, turn: _Turn, locked: Callable[[], bool]) -> None:
        self._transport = transport
        self._turn = turn
        self._locked = locked
        self.stats = transport.stats

    async def request(
        self, path: str, body: bytes, content_type: str, timeout: float, idempotent: bool
    ) -> HttpResponse:
        return await self.request_streamed(path, body, content_type, timeout, idempotent, None)

    async def request_streamed(
        self, path: str, body: bytes, content_type: str, timeout: float, idempotent: bool, sink: SinkFactory | None
    ) -> HttpResponse:
        """``request``, fed into ``sink`` where the connection's transport can (``exchange.asend``)."""
        call = Request(path, body, content_type, timeout, idempotent, sink)
        if self._locked():
            return await asend(self._transport, call)
        self._turn.give_back()
        try:
            return await asend(self._transport, call)
        finally:
            await self._turn.take()  # the step's local work goes on in its turn

    async def aclose(self) -> None:
        """Nothing: the connection's transport is closed with the connection."""


class _LoopBridge:
    """A blocking ``Transport`` for the worker thread, whose requests are awaited on the loop.

    Only a partial replica's lazy page fetch needs one (SQLite asks for the page synchronously,
    on the worker thread); the worker waits for the answer, the event loop does the I/O.
    """

    def __init__(self, transport: AsyncTransport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self.stats = transport.stats

    def request(self, path: str, body: bytes, content_type: str, timeout: float, idempotent: bool) -> HttpResponse:
        """Run the async request on the loop and wait for it (on any thread but the loop's)."""
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            # waiting here would block the loop the request needs: refuse instead of hanging
            raise errors.ProgrammingError(
                "a missing page of a partial replica was read on the event loop's thread; use the "
                "AsyncConnection's methods (they read on its worker thread), not sync_connection"
            )
        call = self._transport.request(path, body, content_type, timeout, idempotent)
        return asyncio.run_coroutine_threadsafe(call, self._loop).result()

    def close(self) -> None:
        """Nothing: the connection closes the async transport itself (``aclose``)."""


class _BlockingInThread:
    """An ``AsyncTransport`` over a blocking ``Transport``: each request on a thread of its own."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self.stats = transport.stats

    async def request(
        self, path: str, body: bytes, content_type: str, timeout: float, idempotent: bool
    ) -> HttpResponse:
        return await asyncio.to_thread(self._transport.request, path, body, content_type, timeout, idempotent)

    async def aclose(self) -> None:
        await asyncio.to_thread(self._transport.close)


def _as_async(transport: AsyncTransport | Transport) -> AsyncTransport:
    if inspect.iscoroutinefunction(transport.request):
        return transport  # type: ignore[return-value]
    return _BlockingInThread(transport)  # type: ignore[arg-type]


async def connect(
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
    transport: AsyncTransport | Transport | None = None,
) -> AsyncConnection:
    """Open a local database or replica, like ``turso_sync.connect``; returns an AsyncConnection.

    A new replica's bootstrap awaits the remote on the event loop; cancelled (or failed), it
    leaves no files behind, as ``turso_sync.connect`` does.
    """
    check_policy(conflict)  # a typo fails here, not at the first rebase
    try:  # the hardened format travels through the cipher name from here on
        encryption_key, cipher = encryption_options(encryption_key, cipher, encryption_format, passphrase)
    except (ValueError, TypeError) as exc:
        raise errors.ProgrammingError(str(exc)) from None
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="turso-sync")

    async def run_local(fn: Callable[[], T]) -> T:
        return await loop.run_in_executor(executor, fn)

    remote: AsyncTransport | None = None
    try:
        target = functools.partial(replica_target, os.fspath(path), remote_url, encryption_key, cipher)
        files, is_replica, creating = await run_local(target)
        if not is_replica:
            local = functools.partial(
                turso_sync.connect,
                path,
                encryption_key=encryption_key,
                cipher=cipher,
                isolation_level=isolation_level,
                timeout=timeout,
                record_frames=record_frames,
            )
            return AsyncConnection(await run_local(local), executor, None)
        saved = await run_local(functools.partial(SyncState.load, files.path))
        url = remote_url if remote_url is not None else (saved.remote_url if saved is not None else "")
        if transport is None:
            remote = AsyncHttpTransport(url, auth_token=auth_token, client_name=client_name or "turso-sync")
        else:
            remote = _as_async(transport)
        prepare = functools.partial(
            Replica.unopened,
            files.path,
            remote_url,
            transport=_LoopBridge(remote, loop),
            long_poll_timeout_ms=long_poll_timeout_ms,
            encryption_key=encryption_key,
            cipher=cipher,
            conflict=conflict,
        )
        replica = await run_local(prepare)
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
        conn = await adrive(steps, remote, run_local)
        return AsyncConnection(conn, executor, remote)
    except BaseException:
        try:
            if remote is not None:
                await asyncio.shield(remote.aclose())
        finally:
            executor.shutdown(wait=False)
        raise
