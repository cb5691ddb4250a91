"""The primary's answers leave in one write: status line, headers and the first body bytes together.

Sent alone, the headers wake the client to parse them, only for it to wait again for the body (one
more send and one more wake-up per pull and per push on every request).  A real aiohttp server on
loopback; the writes are counted on the connection's own transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from turso_sync.primary.app import Limits, _Answer, _send_body


def _counting(handler: Callable[[web.Request], Awaitable[web.StreamResponse]], writes: list[int]):
    async def counted(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        real = transport.write

        def write(data: bytes) -> None:
            writes.append(len(data))
            real(data)

        transport.write = write  # type: ignore[method-assign]
        try:
            return await handler(request)
        finally:
            del transport.write  # the class's method again, for the connection's next request

    return counted


async def _fetch(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> tuple[list[int], bytes]:
    writes: list[int] = []
    app = web.Application()
    app.router.add_post("/x", _counting(handler, writes))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session, session.post(f"http://127.0.0.1:{port}/x", data=b"") as answer:
            body = await answer.read()
    finally:
        await runner.cleanup()
    return writes, body


def test_an_answer_s_headers_leave_with_its_body_in_one_write() -> None:
    async def json_answer(request: web.Request) -> web.StreamResponse:
        return await _send_body(request, b'{"ok": true}', "application/json", Limits())

    writes, body = asyncio.run(_fetch(json_answer))
    assert body == b'{"ok": true}'
    assert len(writes) == 1 and writes[0] > len(body)  # headers and body together


def test_a_pull_answer_s_header_and_pages_follow_its_headers_in_the_first_write() -> None:
    async def paged(request: web.Request) -> web.StreamResponse:
        response = _Answer(status=200, headers={"Content-Type": "application/protobuf"})
        response.content_length = 3 + 5000
        await response.prepare(request)
        await response.write(b"hdr")  # what ``_send_pages`` writes first: the pull's own header
        await response.write(b"p" * 5000)
        await response.write_eof()
        return response

    writes, body = asyncio.run(_fetch(paged))
    assert body == b"hdr" + b"p" * 5000
    assert len(writes) == 2 and writes[0] > 3  # the HTTP headers went with the pull header, not alone
