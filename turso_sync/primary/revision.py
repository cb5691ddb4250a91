"""Revisions on the wire, and waiting for the next one (long-poll).

A revision is the sequence number of a committed transaction in the database's frame log,
written as a decimal string: ``"0"`` for a new database, then ``"1"``, ``"2"``...  Numbers
persist with the frame log, so a client's revision stays meaningful across server restarts.
"""

from __future__ import annotations

import asyncio

from ..errors import ProtocolError

#: A revision is at most a 64-bit number.
_MAX_DIGITS = 20


def format_revision(seq: int) -> str:
    """The wire form of a sequence number."""
    return str(seq)


def parse_revision(text: str, field: str) -> int:
    """The sequence number in a wire revision; raises ProtocolError naming ``field``."""
    if not text.isascii() or not text.isdigit() or len(text) > _MAX_DIGITS:
        raise ProtocolError(f"{field} {text[:40]!r} is not a revision of this server (expected a decimal number)")
    seq = int(text)
    if seq >= 1 << 63:
        raise ProtocolError(f"{field} {text!r} is out of range")
    return seq


class CommitFeed:
    """Wakes the long-polls of one database when it commits.

    A counter, bumped after every commit the server makes; a long-poll notes the counter, takes
    its snapshot, and if that brought nothing new waits for the counter to move, then looks
    again.  Noting the counter before the snapshot means no commit can slip between the two.
    Lives on the event loop (the worker thread bumps it through ``loop.call_soon_threadsafe``);
    waiters sleep on futures, so nothing polls.
    """

    def __init__(self) -> None:
        self.version = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False

    def bump(self) -> None:
        """Record a commit and wake every waiter."""
        self.version += 1
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def close(self) -> None:
        """Wake every waiter now (server shutdown); later waits return at once."""
        self._closed = True
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def waiting(self) -> int:
        """How many long-polls are waiting."""
        return len(self._waiters)

    async def wait_after(self, version: int, timeout: float) -> bool:
        """Wait until the counter moves past ``version``, at most ``timeout`` seconds.

        Returns True if there was a commit since ``version``; False on timeout or shutdown.
        """
        if self.version != version:
            return True
        if self._closed or timeout <= 0:
            return False
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)
        return self.version != version
