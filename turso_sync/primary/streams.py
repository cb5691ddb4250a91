"""Hrana streams kept open between requests (batons): who holds which, and their bounds.

A ``/v2/pipeline`` request with ``baton`` null runs as a new stream.  If a transaction is still
open on it at the end (and the request did not ``close`` it), the stream is kept: its
connection stays inside the transaction, and the answer carries a baton.  The next request of
the stream sends that baton; its requests run on the same connection, in the same
transaction.  A stream lives exactly as long as its transaction: a request that ends it
(``COMMIT``, ``ROLLBACK``, ``close``) is answered with baton null.  A client that sends baton
null and leaves no transaction open (Turso's clients: one ``BEGIN … COMMIT`` batch, no
``close``) gets baton null, as before batons existed.

A baton is random (192 bits), good for one request: each answer carries a new one, so a
request cannot be replayed and two requests never run on one stream at once.  It is bound to
the token that opened the stream (its SHA-256) and to the database: another token gets 403
and the stream goes on untouched.

Bounds (``StreamLimits``, each a ``serve`` flag): an idle stream (no request within
``idle_timeout_s``) and an old one (open longer than ``max_age_s``) is rolled back by the
reaper; ``max_per_client`` streams per token (over: 429) and ``max_total`` in all (over: 503);
``max_bytes`` of request bodies per stream transaction (over: 413, rolled back).  While a stream
holds the write lock, another writer's request waits up to ``lock_wait_s`` for the stream to
end, then gets 503 with ``Retry-After`` (see ``app.pipeline``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

from .database import HostedDatabase, OpenStream


@dataclass(frozen=True)
class StreamLimits:
    """The bounds on streams kept open between requests (see the module)."""

    idle_timeout_s: float = 10.0
    max_age_s: float = 600.0
    max_per_client: int = 8
    max_total: int = 64
    max_bytes: int = 256 << 20
    lock_wait_s: float = 5.0


class StreamGone(Exception):  # noqa: N818 - reads as what happened
    """The baton names no open stream: closed, rolled back (idle, too old, too large), or never issued (HTTP 400)."""


class StreamForbidden(Exception):  # noqa: N818 - reads as what happened
    """The baton belongs to a stream another token opened (HTTP 403)."""


class TooManyStreams(Exception):  # noqa: N818 - reads as what happened
    """The token already holds its bound of open streams (HTTP 429)."""


class StreamsExhausted(Exception):  # noqa: N818 - reads as what happened
    """The server holds its bound of open streams (HTTP 503)."""


class StreamTooLarge(Exception):  # noqa: N818 - reads as what happened
    """The stream's transaction took in more request bytes than ``max_bytes`` (HTTP 413)."""


def token_digest(authorization: str | None) -> bytes:
    """What a stream remembers of the token that opened it: a SHA-256 of the header, never the token."""
    return hashlib.sha256((authorization or "").encode("utf-8", "surrogatepass")).digest()


@dataclass(eq=False)
class Stream:
    """One open stream of one database, between (or during) its requests."""

    db: HostedDatabase
    handle: OpenStream
    database: str
    client: str
    token: bytes
    read_only: bool
    bytes_in: int
    opened: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    baton: str = ""
    running: bool = False


class StreamRegistry:
    """Every open stream of the server, by baton; the event loop's side (no SQLite here)."""

    def __init__(self, limits: StreamLimits) -> None:
        self.limits = limits
        self._by_baton: dict[str, Stream] = {}
        self._streams: set[Stream] = set()
        self._per_client: dict[str, int] = {}
        self._reserved = 0

    def __len__(self) -> int:
        return len(self._streams)

    def open_for(self, client: str) -> int:
        """Streams ``client`` holds (reservations included)."""
        return self._per_client.get(client, 0)

    def refusal(self, client: str) -> Exception | None:
        """Why ``client`` may not open one more stream now (None: it may)."""
        held = self._per_client.get(client, 0)
        if held >= self.limits.max_per_client:
            return TooManyStreams(
                f"this token already holds {held} open streams (transactions kept open between requests), "
                f"the most the server allows (--max-streams-per-client); finish or close one first"
            )
        if len(self._streams) + self._reserved >= self.limits.max_total:
            return StreamsExhausted(
                f"the server holds {self.limits.max_total} open streams (its --max-streams); try again shortly"
            )
        return None

    def reserve(self, client: str) -> bool:
        """Hold a place for a stream ``client`` may open in the request about to run; False if none is left."""
        if self.refusal(client) is not None:
            return False
        self._per_client[client] = self._per_client.get(client, 0) + 1
        self._reserved += 1
        return True

    def unreserve(self, client: str) -> None:
        """Give back a place ``reserve`` held (the request kept no stream)."""
        self._reserved -= 1
        self._forget_client(client)

    def add(
        self,
        db: HostedDatabase,
        handle: OpenStream,
        *,
        database: str,
        client: str,
        token: bytes,
        read_only: bool,
        bytes_in: int,
    ) -> Stream:
        """Register the stream a request (holding a reservation of ``client``) kept open; issue its baton."""
        self._reserved -= 1
        stream = Stream(db, handle, database, client, token, read_only, bytes_in)
        self._streams.add(stream)
        self._issue(stream)
        return stream

    def take(self, baton: str, token: bytes, database: str) -> Stream:
        """The stream ``baton`` names, now running its next request (its baton is spent).

        Raises StreamGone (unknown, spent or expired baton, or another database) or
        StreamForbidden (another token's stream; that stream goes on).
        """
        stream = self._by_baton.get(baton)
        if stream is None or stream.database != database:
            raise StreamGone(
                "the baton names no open stream: it was used already, or its stream ended (committed, "
                "closed, or rolled back after being idle or too old or too large); the transaction it held "
                "was rolled back: start it again with baton null"
            )
        if not hmac.compare_digest(stream.token, token):
            raise StreamForbidden("this baton belongs to a stream another token opened; use your own stream")
        del self._by_baton[baton]
        stream.baton = ""
        stream.running = True
        return stream

    def put_back(self, stream: Stream) -> str:
        """The stream's request is done and it stays open: a new baton for its next request."""
        stream.running = False
        stream.last_used = time.monotonic()
        return self._issue(stream)

    def drop(self, stream: Stream) -> None:
        """Forget a stream that ended (its transaction is over)."""
        if stream not in self._streams:
            return
        self._streams.discard(stream)
        self._by_baton.pop(stream.baton, None)
        self._forget_client(stream.client)

    def expired(self, now: float | None = None) -> list[Stream]:
        """Streams idle longer than the idle timeout or open longer than the age bound, not running."""
        now = time.monotonic() if now is None else now
        limits = self.limits
        return [
            s
            for s in self._streams
            if not s.running and (now - s.last_used >= limits.idle_timeout_s or now - s.opened >= limits.max_age_s)
        ]

    def all(self) -> list[Stream]:
        """Every open stream."""
        return list(self._streams)

    def _issue(self, stream: Stream) -> str:
        baton = secrets.token_urlsafe(24)
        stream.baton = baton
        self._by_baton[baton] = stream
        return baton

    def _forget_client(self, client: str) -> None:
        left = self._per_client.get(client, 0) - 1
        if left > 0:
            self._per_client[client] = left
        else:
            self._per_client.pop(client, None)
