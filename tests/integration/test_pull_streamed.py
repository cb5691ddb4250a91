"""A pull's answer is decoded while it travels.

- The transports feed a ``request_streamed`` request's sink each piece of a successful body as it
  arrives (a real HTTP server on loopback holds the second piece back until the sink has seen the
  first), start a new sink for each attempt, and never feed an error's body.
- Against a real ``turso-sync serve``: a replica's pull decodes the answer piece by piece as it
  comes (``PullSink``) and ends with every row.
- A transport that overrides ``request`` alone is never bypassed.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import turso_sync
from tests.integration.primary_harness import pipeline
from tests.servers import primary
from turso_sync.errors import RemoteError
from turso_sync.sync import remote
from turso_sync.sync.exchange import streams
from turso_sync.sync.transport import AsyncHttpTransport, HttpResponse, HttpTransport
from turso_sync.testing import MockTransport

FIRST, SECOND = b"a" * 5000, b"b" * 7000


class _Sink:
    def __init__(self, seen: threading.Event) -> None:
        self.seen = seen
        self.data = b""

    def feed(self, data: bytes) -> None:
        self.data += data
        if self.data.startswith(FIRST):
            self.seen.set()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: threading.Event
    held_back: list[bool]  # one per answer to /held: True if the sink had not seen the first piece
    attempts: list[str]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.attempts.append(self.path)
        if self.path == "/refused":
            body = b"no such database"
            self.send_response(404)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("content-type", "application/protobuf")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        self._chunk(FIRST)
        if self.path == "/cut" and self.attempts.count("/cut") == 1:
            self.wfile.flush()
            self.close_connection = True  # the first attempt ends inside the body
            return
        if self.path == "/held":
            self.held_back.append(not self.seen.wait(10))
        self._chunk(SECOND)
        self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("H", (_Handler,), {"seen": threading.Event(), "held_back": [], "attempts": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def _recording(handler: type[_Handler]) -> tuple[list[_Sink], Callable[[], _Sink]]:
    """A sink factory, and the list of every sink it made (one per attempt)."""
    sinks: list[_Sink] = []

    def sink() -> _Sink:
        sinks.append(_Sink(handler.seen))
        return sinks[-1]

    return sinks, sink


def test_the_blocking_transport_feeds_the_sink_as_the_body_arrives(server: tuple[str, type[_Handler]]) -> None:
    url, handler = server
    sinks, sink = _recording(handler)

    transport = HttpTransport(url, attempts=3, max_wait=0.05)
    try:
        response = transport.request_streamed("/held", b"x", "application/protobuf", 30.0, True, sink)
        assert handler.held_back == [False]  # the first piece reached the sink before the second left
        assert response.body == FIRST + SECOND
        assert response.decoded is sinks[-1] and sinks[-1].data == FIRST + SECOND

        sinks.clear()
        response = transport.request_streamed("/cut", b"x", "application/protobuf", 30.0, True, sink)
        assert handler.attempts.count("/cut") == 2  # retried after the body was cut
        assert len(sinks) == 2 and sinks[0].data == FIRST  # a new sink for the new attempt
        assert response.decoded is sinks[1] and sinks[1].data == FIRST + SECOND

        sinks.clear()
        with pytest.raises(RemoteError) as refused:
            transport.request_streamed("/refused", b"x", "application/protobuf", 30.0, False, sink)
        assert refused.value.status == 404
        assert [s.data for s in sinks] == [b""]  # an error's body is not fed
    finally:
        transport.close()


def test_the_async_transport_feeds_the_sink_as_the_body_arrives(server: tuple[str, type[_Handler]]) -> None:
    url, handler = server
    sinks, sink = _recording(handler)

    async def run() -> None:
        transport = AsyncHttpTransport(url, attempts=3, max_wait=0.05)
        try:
            # the server's wait for the sink must not block the loop the client reads on: it runs
            # in the server's own thread, and the client only awaits
            response = await transport.request_streamed("/held", b"x", "application/protobuf", 30.0, True, sink)
            assert handler.held_back == [False]
            assert response.decoded is sinks[-1] and sinks[-1].data == FIRST + SECOND
            response = await transport.request_streamed("/cut", b"x", "application/protobuf", 30.0, True, sink)
            assert response.decoded is sinks[-1] and sinks[-1].data == FIRST + SECOND
            assert len(sinks) == 3
        finally:
            await transport.aclose()

    asyncio.run(run())


def _value(prefix: str, i: int) -> str:
    """A row's text that zstd cannot shrink much, so the answer spans many reads."""
    return f"{prefix}{i}-" + "".join(hashlib.sha512(f"{prefix}{i}.{k}".encode()).hexdigest() for k in range(7))


def _fill(url: str, prefix: str, rows: int) -> None:
    pipeline(
        url,
        "DROP TABLE IF EXISTS t",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
        *[("INSERT INTO t VALUES (?, ?)", [i, _value(prefix, i)]) for i in range(rows)],
    )


def test_a_replica_decodes_the_pieces_as_they_come(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fed: list[int] = []  # pages completed by each piece fed
    feed = remote.PullSink.feed

    def counted(self: remote.PullSink, data: bytes) -> None:
        before = len(self.pages)
        feed(self, data)
        fed.append(len(self.pages) - before)

    monkeypatch.setattr(remote.PullSink, "feed", counted)
    with primary(tmp_path / "server") as url:
        _fill(url, "a", 10)
        replica = turso_sync.connect(tmp_path / "r.db", url)
        try:
            _fill(url, "b", 600)
            fed.clear()
            assert replica.pull() is True
            assert sum(1 for pages in fed if pages) >= 2  # decoded piece by piece, not once at the end
            rows = replica.execute("SELECT id, v FROM t ORDER BY id").fetchall()
            assert rows == [(i, _value("b", i)) for i in range(600)]
            assert replica.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            replica.close()


def test_a_transport_that_overrides_request_alone_sees_every_request() -> None:
    """A subclass that overrides ``request`` (a fault injector, a wrapper) is never bypassed by
    ``request_streamed``: its pulls go through its ``request``, decoded afterwards."""

    class Wrapped(HttpTransport):
        def request(self, path: str, body: bytes, content_type: str, timeout: float, idempotent: bool) -> HttpResponse:
            return super().request(path, body, content_type, timeout, idempotent)

    class Both(HttpTransport):
        def request(self, path: str, body: bytes, content_type: str, timeout: float, idempotent: bool) -> HttpResponse:
            return super().request(path, body, content_type, timeout, idempotent)

        def request_streamed(self, *args: Any) -> HttpResponse:
            return super().request_streamed(*args)

    transports = [HttpTransport("http://127.0.0.1:9"), Wrapped("http://127.0.0.1:9"), Both("http://127.0.0.1:9")]
    patched = HttpTransport("http://127.0.0.1:9")
    patched.request = patched.request  # type: ignore[method-assign]  # an instance's own request
    try:
        assert [streams(t) for t in transports] == [True, False, True]
        assert not streams(patched)
        assert not streams(MockTransport(lambda *args: HttpResponse(200, b"")))
    finally:
        for transport in [*transports, patched]:
            transport.close()
