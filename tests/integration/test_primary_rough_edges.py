"""The primary's rough edges from issue 11: a full disk is a retryable 503, and the log stays quiet.

The full disk is stood in for by SQLite's ``PRAGMA max_page_count`` on the connections that run
clients' SQL: a write that needs one more page fails with SQLITE_FULL, exactly as it does when
the file system has no room left (SQLite maps ENOSPC to SQLITE_FULL too).  The requests go
through the real application on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import httpx
import pytest

from tests.conftest import wait_for
from tests.integration.primary_harness import PrimaryProcess
from tests.unit.test_sync_stream import batch_of
from turso_sync import errors
from turso_sync.cli.exit_codes import ExitCode, classify
from turso_sync.primary import PrimaryServer, ServerConfig
from turso_sync.primary.sql_policy import Access, install
from turso_sync.sync import stream
from turso_sync.sync.transport import HttpTransport
from turso_sync.wire.pull import PullRequest, PullResponseDecoder


class InProcessPrimary:
    """Our server on 127.0.0.1 from a background event loop (development mode)."""

    def __init__(self, root: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="full-disk-primary", daemon=True)
        self.thread.start()
        self.server = PrimaryServer(ServerConfig(str(root / "data"), host="127.0.0.1", port=0))
        self.url = self.run(self.server.start())

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)

    def fill_disk(self, full: bool) -> None:
        """Stand in for a full disk (or free it): no client connection may grow the database."""
        store = self.server.store
        assert store is not None

        def limit(connections: list[apsw.Connection]) -> None:
            for conn in connections:
                with install(conn).acting_as(Access.SERVER):
                    pages = conn.execute("PRAGMA page_count").get if full else 1 << 30
                    conn.execute(f"PRAGMA max_page_count = {pages}")

        async def apply() -> None:
            db = await store.get("default", create=False)
            await db.call(lambda: limit(db.client_connections()))

        self.run(apply())

    def close(self) -> None:
        self.run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture
def primary(tmp_path: Path) -> Iterator[InProcessPrimary]:
    server = InProcessPrimary(tmp_path)
    try:
        yield server
    finally:
        server.close()


def post(url: str, requests: list[dict[str, Any]], baton: str | None = None) -> httpx.Response:
    return httpx.post(url + "/v2/pipeline", json={"baton": baton, "requests": requests}, timeout=60)


def ex(sql: str) -> dict[str, Any]:
    return {"type": "execute", "stmt": {"sql": sql}}


PUSH = {
    "type": "batch",
    "batch": {
        "steps": [
            {"stmt": {"sql": "BEGIN IMMEDIATE"}},
            {"condition": {"type": "ok", "step": 0}, "stmt": {"sql": "INSERT INTO t VALUES (1, zeroblob(200000))"}},
            {"condition": {"type": "ok", "step": 1}, "stmt": {"sql": "COMMIT"}},
            {"condition": {"type": "not", "cond": {"type": "ok", "step": 2}}, "stmt": {"sql": "ROLLBACK"}},
        ]
    },
}


def test_a_full_disk_is_a_retryable_503_not_a_rejected_change(primary: InProcessPrimary) -> None:
    assert post(primary.url, [ex("CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)")]).status_code == 200
    primary.fill_disk(True)
    resp = post(primary.url, [PUSH])
    assert resp.status_code == 503, resp.text
    assert resp.json() == {
        "error": "the server's disk is full: nothing of this request was kept; try again later",
        "code": "DISK_FULL",
    }
    assert resp.headers["Retry-After"]
    # our client: a RemoteError with status 503, which the CLI reports as exit 3 (network: retry)
    transport = HttpTransport(primary.url, attempts=1)
    body = httpx.Request("POST", "/", json={"baton": None, "requests": [PUSH]}).read()
    with pytest.raises(errors.RemoteError) as caught:
        transport.request("/v2/pipeline", body, "application/json", 30.0, False)
    assert caught.value.status == 503 and classify(caught.value) == ExitCode.NETWORK
    primary.fill_disk(False)
    again = post(primary.url, [PUSH, ex("SELECT count(*) FROM t")])
    assert again.status_code == 200 and again.json()["results"][1]["response"]["result"]["rows"] == [
        [{"type": "integer", "value": "1"}]
    ]
    transport.close()


def test_a_full_disk_mid_stream_ends_the_stream_with_a_503(primary: InProcessPrimary) -> None:
    assert post(primary.url, [ex("CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)")]).status_code == 200
    opened = post(primary.url, [ex("BEGIN IMMEDIATE"), ex("INSERT INTO t VALUES (1, x'00')")])
    baton = opened.json()["baton"]
    assert baton
    primary.fill_disk(True)
    resp = post(primary.url, [ex("INSERT INTO t VALUES (2, zeroblob(200000))")], baton)
    assert resp.status_code == 503 and resp.json()["code"] == "DISK_FULL", resp.text
    assert post(primary.url, [ex("SELECT 1")], baton).status_code == 400, "the stream ended"
    # a stream push meeting it: a retryable NetworkError, nothing committed
    primary.fill_disk(True)
    transport = HttpTransport(primary.url, attempts=1)
    try:
        assert stream.supports_streams(transport, 10.0)
        with pytest.raises(errors.NetworkError, match="503"):
            stream.push_transaction(transport, batch_of(400, value_bytes=1000, first=10), 30.0, max_body=32 * 1024)
    finally:
        transport.close()
    primary.fill_disk(False)
    count = post(primary.url, [ex("SELECT count(*) FROM t")]).json()["results"][0]["response"]["result"]["rows"]
    assert count == [[{"type": "integer", "value": "0"}]]


@pytest.fixture
def quiet_server(tmp_path: Path) -> Iterator[PrimaryProcess]:
    proc = PrimaryProcess(tmp_path / "data", "--log-level", "debug")
    proc.start()
    try:
        yield proc
    finally:
        proc.close()


def test_a_client_leaving_mid_long_poll_is_one_debug_line(quiet_server: PrimaryProcess) -> None:
    url = quiet_server.url
    assert post(url, [ex("CREATE TABLE t (x)")]).status_code == 200
    pulled = httpx.post(url + "/pull-updates", content=b"", timeout=30)
    decoder = PullResponseDecoder()
    list(decoder.feed(pulled.content))
    decoder.close()
    assert decoder.header is not None
    # a long-poll for anything after the current revision, abandoned by its client
    body = PullRequest(client_revision=decoder.header.server_revision, long_poll_timeout_ms=1500).to_bytes()
    with pytest.raises(httpx.TimeoutException):
        httpx.post(url + "/pull-updates", content=body, timeout=0.3)
    wait_for(lambda: "client disconnected" in quiet_server.log(), 30, "the long-poll's hang-up line")
    log = quiet_server.log()
    line = next(x for x in log.splitlines() if "client disconnected" in x)
    assert " DEBUG " in line
    assert "Traceback" not in log and " ERROR " not in log and " WARNING turso_sync.primary: POST" not in log


def test_the_default_level_writes_no_line_per_request(tmp_path: Path) -> None:
    proc = PrimaryProcess(tmp_path / "data")
    proc.start()
    try:
        for _ in range(20):
            assert post(proc.url, [ex("SELECT 1")]).status_code == 200
            assert httpx.post(proc.url + "/pull-updates", content=b"", timeout=30).status_code == 200
        before = proc.log()
        assert httpx.get(proc.url + "/health").status_code == 200
        assert "/v2/pipeline" not in before and "/pull-updates" not in before, before
    finally:
        proc.close()
    logged = PrimaryProcess(tmp_path / "data2", "--access-log")
    logged.start()
    try:
        assert post(logged.url, [ex("SELECT 1")]).status_code == 200
        wait_for(lambda: '"POST /v2/pipeline" 200' in logged.log(), 30, "the access line with --access-log")
    finally:
        logged.close()
