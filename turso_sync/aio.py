"""``turso_sync.aio.connect``: the asyncio twin of ``turso_sync.connect``.

Same arguments, same behaviour; every call runs on one worker thread per connection (in
order), so the event loop never blocks on SQLite or on the network.  The methods are the
blocking connection's, awaitable.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import turso_sync

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

    def __init__(self, conn: Any, executor: ThreadPoolExecutor) -> None:
        self._conn = conn
        self._executor = executor

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args))

    @property
    def sync_connection(self) -> Any:
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

    async def pull(self, long_poll_timeout_ms: int | None = None) -> bool:
        return await self._run(self._conn.pull, long_poll_timeout_ms)  # type: ignore[no-any-return]

    async def push(self) -> int:
        return await self._run(self._conn.push)  # type: ignore[no-any-return]

    async def sync(self) -> bool:
        return await self._run(self._conn.sync)  # type: ignore[no-any-return]

    async def checkpoint(self) -> None:
        await self._run(self._conn.checkpoint)

    async def stats(self) -> Any:
        return await self._run(self._conn.stats)

    async def conflicts(self) -> list[Any]:
        return await self._run(self._conn.conflicts)  # type: ignore[no-any-return]

    async def close(self) -> None:
        try:
            await self._run(self._conn.close)
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


async def connect(path: str | os.PathLike[str], remote_url: str | None = None, **kwargs: Any) -> AsyncConnection:
    """Open a local database or replica, like ``turso_sync.connect``; returns an AsyncConnection."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="turso-sync")
    loop = asyncio.get_running_loop()
    try:
        conn = await loop.run_in_executor(executor, lambda: turso_sync.connect(path, remote_url, **kwargs))
    except BaseException:
        executor.shutdown(wait=False)
        raise
    return AsyncConnection(conn, executor)
