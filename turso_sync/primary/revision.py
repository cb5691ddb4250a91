"""Revisions on the wire, waiting for the next one (long-poll), and how many the primary keeps.

A revision is the sequence number of a committed transaction in the database's frame log,
written as a decimal string: ``"0"`` for a new database, then ``"1"``, ``"2"``...  Numbers
persist with the frame log, so a client's revision stays meaningful across server restarts.

The primary keeps a window of them (``HistoryWindow``): at least the revisions of the last
``seconds``, and at most ``max_bytes`` of frame log, the byte bound winning where the two
disagree.  A client behind the window gets every page again; a pinned read before it gets 409.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass

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


#: Defaults of ``serve --history-seconds`` and ``--history-bytes``.
DEFAULT_HISTORY_SECONDS = 3600.0
DEFAULT_HISTORY_BYTES = 256 * 1024 * 1024

#: The window notes the current revision at most this often (seconds): its memory stays bounded.
_SAMPLE_EVERY = 1.0


@dataclass(frozen=True)
class HistoryBounds:
    """How much history each database keeps in its frame log (``serve --history-seconds/-bytes``).

    At least the revisions committed in the last ``seconds``, and at most ``max_bytes`` of frame
    log: where the two disagree, the byte bound wins.  On an object store, revisions not stored
    yet are kept whatever the bound (the store ships them from the frame log).
    """

    seconds: float = DEFAULT_HISTORY_SECONDS
    max_bytes: int = DEFAULT_HISTORY_BYTES

    def __post_init__(self) -> None:
        if self.seconds < 0:
            raise ValueError(f"history window of {self.seconds:g} s must not be negative")
        if self.max_bytes < 1:
            raise ValueError(f"history bound of {self.max_bytes} bytes must be positive")


class HistoryWindow:
    """Decides how far a database's history may be pruned (pure: the caller gives times and sizes).

    The frame log records no times, so the window notes ``(time, current revision)`` as commits
    happen, at most once a second: a revision noted at a time older than ``seconds`` ago was
    committed then or earlier, so pruning up to it keeps every revision of the last ``seconds``.
    History found at start counts as committed at start.

    A prune rewrites the kept part of the log, so it is done in steps that each drop at least
    half of the file: past ``max_bytes`` it prunes down to half of it (the file holds between
    ``max_bytes / 2`` and ``max_bytes``, plus what one job appends); by age, once the aged-out
    part is at least half of the file (so it holds at most about twice the time window).  Each
    byte appended is thus copied about once more.
    """

    def __init__(self, bounds: HistoryBounds) -> None:
        self.bounds = bounds
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def note_due(self, now: float) -> bool:
        """Whether ``note`` at ``now`` would record anything (so the caller may skip finding the revision)."""
        samples = self._samples
        return not samples or now - samples[-1][0] >= _SAMPLE_EVERY

    def note(self, now: float, seq: int) -> None:
        """The current revision is ``seq`` at time ``now`` (monotonic seconds)."""
        samples = self._samples
        if not self.note_due(now):
            return
        samples.append((now, seq))
        self._forget(now)

    def _forget(self, now: float) -> None:
        """Drop the notes older than the newest aged-out one (which prunes at least as far)."""
        samples, horizon = self._samples, now - self.bounds.seconds
        while len(samples) >= 2 and samples[1][0] <= horizon:
            samples.popleft()

    def aged_out(self, now: float) -> int | None:
        """The newest noted revision committed more than ``seconds`` ago (None: none is known)."""
        self._forget(now)
        if self._samples and self._samples[0][0] <= now - self.bounds.seconds:
            return self._samples[0][1]
        return None

    def prune_to(
        self,
        now: float,
        *,
        base: int,
        size: int,
        bytes_point: Callable[[int], int],
        bytes_after: Callable[[int], int],
        stored: int | None = None,
    ) -> int | None:
        """The revision to prune up to now, or None for no prune.

        ``base``: the log's oldest kept revision; ``size``: its bytes; ``bytes_point(n)``: the oldest
        revision whose prune leaves at most ``n`` bytes; ``bytes_after(s)``: the bytes a prune up to
        ``s`` leaves; ``stored``: on an object store, the newest stored revision (never passed).
        """
        upto = base
        if size > self.bounds.max_bytes:
            upto = bytes_point(self.bounds.max_bytes // 2)
        aged = self.aged_out(now)
        if aged is not None and aged > upto and (upto > base or bytes_after(aged) <= size // 2):
            upto = aged  # a rewrite is due anyway, or the aged-out part is half the file
        if stored is not None:
            upto = min(upto, stored)
        return upto if upto > base else None
