"""``serve --store`` behind a faulty S3 endpoint: a proxy in front of ``weed mini`` that can answer 5xx.

The proxy forwards every request as it came (the ``Host`` header included, so the client's
SigV4 signature still holds) unless told to answer PUTs of revision segments with an error
itself.  A push meanwhile is a 503 naming the store, never a 500, and the replica's retried
push lands exactly once when the store answers again.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

import turso_sync
from tests.integration.primary_harness import PrimaryProcess
from tests.s3_harness import BUCKET, WeedMini

_prefixes = itertools.count()


class FaultyS3:
    """A reverse proxy to ``target`` on 127.0.0.1 (its own event loop thread); ``fail_puts`` makes it
    answer PUTs of segments with ``status`` (a ``SlowDown``-style S3 error) instead of forwarding."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.fail_puts = False
        self.status = 500
        self.refused = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="faulty-s3", daemon=True)
        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)

    async def _start(self) -> str:
        self.session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self.fail_puts and request.method == "PUT" and "/log/" in request.path:
            self.refused += 1
            error = f"<Error><Code>InternalError</Code><Message>injected {self.status}</Message></Error>"
            return web.Response(status=self.status, text=error, content_type="application/xml")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("content-length", "transfer-encoding")}
        async with self.session.request(
            request.method, self.target + request.path_qs, headers=headers, data=body, allow_redirects=False
        ) as resp:
            data = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in ("content-length", "transfer-encoding")}
            return web.Response(status=resp.status, body=data, headers=out)

    def close(self) -> None:
        async def stop() -> None:
            await self.runner.cleanup()
            await self.session.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@pytest.mark.parametrize("status", [500, 503])
def test_a_store_answering_5xx_is_503_and_the_retried_push_lands_once(
    weed: WeedMini, tmp_path: Path, status: int
) -> None:
    proxy = FaultyS3(weed.endpoint)
    proxy.status = status
    prefix = f"faults-{next(_prefixes)}"
    server = PrimaryProcess(
        tmp_path / "data",
        "--store",
        f"s3://{BUCKET}/{prefix}",
        "--s3-endpoint",
        proxy.url,
        "--lease-ttl",
        "60",
        "--access-log",
    )
    try:
        url = server.start()
        a = turso_sync.connect(tmp_path / "a.db", url)
        a.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        a.execute("CREATE TABLE log (n INTEGER)")
        a.commit()
        a.push()
        proxy.fail_puts = True
        a.execute("INSERT INTO notes VALUES (1, 'during 5xx')")
        a.execute("INSERT INTO log VALUES (1)")
        a.commit()
        with pytest.raises(turso_sync.Error) as failed:
            a.push()
        assert "503" in str(failed.value) and "STORE_UNAVAILABLE" in str(failed.value), failed.value
        assert proxy.refused >= 1
        proxy.fail_puts = False
        a.push()
        b = turso_sync.connect(tmp_path / "b.db", url)
        assert b.execute("SELECT id, body FROM notes").fetchall() == [(1, "during 5xx")]
        assert b.execute("SELECT n FROM log").fetchall() == [(1,)]
        b.close()
        a.close()
        assert server.stop() == 0
        log = server.log()
        assert "Traceback" not in log and " 500 " not in log
        assert f"{status}" in log  # the store's answer is named in the server's log
    finally:
        if server.proc is not None:
            server.stop()
        proxy.close()
