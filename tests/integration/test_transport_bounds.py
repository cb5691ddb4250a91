"""The client's transports bound what a compressed answer may unpack to (a hostile or broken
remote's gzip bomb gets a clear ProtocolError, not the client's memory); uncoded answers and
compressed ones under the bound arrive whole, byte for byte.  A real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from turso_sync.errors import ProtocolError
from turso_sync.sync.transport import MAX_DECODED_ANSWER, AsyncHttpTransport, HttpTransport

LIMIT = 1 << 20
BOMB = gzip.compress(bytes(256 << 20), compresslevel=9)  # 256 MiB of zeros in about 255 KiB
UNDER = bytes(range(256)) * (LIMIT // 256)  # exactly the limit, gzip-compressed on the way
BIG_PLAIN = b"p" * (3 * LIMIT)  # uncoded: bounded by what the server sends, not by the limit


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        coding, body = {
            "/bomb": ("gzip", BOMB),
            "/under": ("gzip", gzip.compress(UNDER)),
            "/plain": ("", BIG_PLAIN),
            "/zstd": ("zstd", b"(\xb5/\xfd"),  # a coding the client never asks for
            "/cut": ("gzip", gzip.compress(UNDER)[:-100]),  # whole as sent, but the gzip stream stops short
        }[self.path]
        self.send_response(200)
        self.send_header("content-type", "application/json")
        if coding:
            self.send_header("content-encoding", coding)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading the bomb: what it should do

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_default_bound_is_a_gibibyte():
    assert MAX_DECODED_ANSWER == 1 << 30


def test_a_gzip_bomb_is_refused_and_answers_within_the_bound_arrive_whole(url: str) -> None:
    transport = HttpTransport(url, max_decoded_answer=LIMIT, attempts=1)
    try:
        with pytest.raises(ProtocolError, match=r"/bomb unpacks to more than 1048576 bytes"):
            transport.request("/bomb", b"{}", "application/json", 10.0, True)
        assert transport.request("/under", b"{}", "application/json", 10.0, True).body == UNDER
        assert transport.request("/plain", b"{}", "application/json", 10.0, True).body == BIG_PLAIN
        with pytest.raises(ProtocolError, match="content coding 'zstd', which was not asked for"):
            transport.request("/zstd", b"{}", "application/json", 10.0, True)
        with pytest.raises(ProtocolError, match="ends inside its gzip stream"):
            transport.request("/cut", b"{}", "application/json", 10.0, True)
        # and the transport still works after refused answers (their connections dropped, not reused half-read)
        assert transport.request("/under", b"{}", "application/json", 10.0, True).body == UNDER
    finally:
        transport.close()


def test_the_progress_callback_sees_the_bomb_stop_at_the_bound(url: str) -> None:
    seen: list[int] = []
    transport = HttpTransport(url, max_decoded_answer=LIMIT, attempts=1, progress=lambda _p, n, _t: seen.append(n))
    try:
        with pytest.raises(ProtocolError):
            transport.request("/bomb", b"{}", "application/json", 10.0, True)
    finally:
        transport.close()
    # bytes as they travel: it stopped reading long before the end of the bomb's 255 KiB
    assert seen and seen[-1] < len(BOMB) // 2


def test_the_async_transport_refuses_the_bomb_too(url: str) -> None:
    async def main() -> None:
        transport = AsyncHttpTransport(url, max_decoded_answer=LIMIT, attempts=1)
        try:
            with pytest.raises(ProtocolError, match="unpacks to more than"):
                await transport.request("/bomb", b"{}", "application/json", 10.0, True)
            assert (await transport.request("/under", b"{}", "application/json", 10.0, True)).body == UNDER
            assert (await transport.request("/plain", b"{}", "application/json", 10.0, True)).body == BIG_PLAIN
        finally:
            await transport.aclose()

    asyncio.run(main())
