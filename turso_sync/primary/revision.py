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


class RevisionFeed:
    """The newest committed revision of one database, and the long-polls waiting beyond some revision.

    Lives on the event loop: ``publish`` and ``wait_beyond`` are called from the loop thread
    (the worker thread reaches ``publish`` through ``loop.call_soon_threadsafe``).  Waiters
    sleep on futures, so nothing polls.
    """

    def __init__(self, latest: int) -> None:
        self.latest = latest
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._closed = False

    def publish(self, seq: int) -> None:
        """Record a newly committed revision and wake every waiter it satisfies."""
        if seq <= self.latest:
            return
        self.latest = seq
        keep = []
        for threshold, fut in self._waiters:
            if seq > threshold:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((threshold, fut))
        self._waiters = keep

    def close(self) -> None:
        """Wake every waiter now (server shutdown); later waits return at once."""
        self._closed = True
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters = []

    @property
    def waiting(self) -> int:
        """How many long-polls are waiting."""
        return len(self._waiters)

    async def wait_beyond(self, seq: int, timeout: float) -> bool:
        """Wait until a revision newer than ``seq`` is published, at most ``timeout`` seconds.

        Returns True if one is (or already was) available, False on timeout or shutdown.
        """
        if self.latest > seq:
            return True
        if self._closed or timeout <= 0:
            return False
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (seq, fut)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)
        return self.latest > seq
