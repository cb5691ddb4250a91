"""Helpers for testing an application that uses turso_sync, without a server.

``MockTransport`` stands where the HTTP client stands (``turso_sync.connect(..., transport=)``)
and lets a function of the test answer every request::

    from turso_sync.testing import MockTransport, pull_answer

    def handler(path: str, body: bytes, content_type: str) -> HttpResponse:
        if path == "/pull-updates":
            return pull_answer("rev-1")  # an empty remote database
        return HttpResponse(503, b"down for the test")

    conn = turso_sync.connect("app.db", "https://example.invalid", transport=MockTransport(handler))

``AsyncMockTransport`` is the same for ``turso_sync.aio.connect``.  Nothing here opens a
socket.  A non-200 answer raises ``RemoteError`` as the real transport does (but is never
retried: the handler sees each request exactly once), and an exception the handler raises
(``NetworkError`` for a connection that "fails") reaches the sync call as is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .errors import RemoteError
from .sync.transport import HttpResponse, TransferStats
from .wire.pull import PAGE_SIZE, PullHeader, encode_page

__all__ = ["AsyncMockTransport", "Handler", "HttpResponse", "MockRequest", "MockTransport", "pull_answer"]

#: ``handler(path, body, content_type) -> HttpResponse``: the remote, as a function
Handler = Callable[[str, bytes, str], HttpResponse]


@dataclass(frozen=True)
class MockRequest:
    """One request the replica sent: the path (``/pull-updates``, ``/v2/pipeline``), body and type."""

    path: str
    body: bytes
    content_type: str
    idempotent: bool


class MockTransport:
    """A ``Transport`` whose remote is ``handler``: no network, every request recorded."""

    def __init__(self, handler: Handler) -> None:
        """``handler(path, body, content_type)`` answers each request with an ``HttpResponse``."""
        self.handler = handler
        self.stats = TransferStats()
        self.requests: list[MockRequest] = []
        self.closed = False

    def request(self, path: str, body: bytes, content_type: str, timeout: float, idempotent: bool) -> HttpResponse:
        """Hand the request to ``handler``; a status other than 200 raises ``RemoteError``."""
        self.requests.append(MockRequest(path, body, content_type, idempotent))
        self.stats.sent += len(body)
        response = self.handler(path, body, content_type)
        self.stats.received += len(response.body)
        if response.status != 200:
            raise RemoteError(response.status, response.body, path)
        return response

    def close(self) -> None:
        """Mark the transport closed (the replica closes its transport when the connection closes)."""
        self.closed = True


class AsyncMockTransport:
    """``MockTransport`` for ``turso_sync.aio.connect(..., transport=)``: the same handler, awaited."""

    def __init__(self, handler: Handler) -> None:
        """``handler(path, body, content_type)`` answers each request with an ``HttpResponse``."""
        self._mock = MockTransport(handler)
        self.stats = self._mock.stats
        self.requests = self._mock.requests

    @property
    def closed(self) -> bool:
        """True once the connection closed its transport."""
        return self._mock.closed

    async def request(
        self, path: str, body: bytes, content_type: str, timeout: float, idempotent: bool
    ) -> HttpResponse:
        """Hand the request to the handler; a status other than 200 raises ``RemoteError``."""
        return self._mock.request(path, body, content_type, timeout, idempotent)

    async def aclose(self) -> None:
        """Mark the transport closed."""
        self._mock.close()


def pull_answer(revision: str, pages: Mapping[int, bytes] | None = None) -> HttpResponse:
    """A valid ``/pull-updates`` answer bringing the client to ``revision`` with ``pages``.

    ``pages`` maps 1-based page numbers to 4096-byte raw pages; the database size is the
    highest page number.  Without pages it is the answer of a remote whose database is empty,
    which a new replica accepts as its bootstrap.
    """
    pages = dict(pages or {})
    for pgno, page in pages.items():
        if pgno < 1 or len(page) != PAGE_SIZE:
            raise ValueError(f"page {pgno}: a page number from 1 and {PAGE_SIZE} bytes are needed, got {len(page)}")
    body = PullHeader(revision, max(pages, default=0)).to_bytes()
    body += b"".join(encode_page(pgno - 1, pages[pgno]) for pgno in sorted(pages))
    return HttpResponse(200, body, {"content-type": "application/protobuf"})
