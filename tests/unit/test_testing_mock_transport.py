"""``turso_sync.testing``: a replica against a function instead of a server; no network at all."""

from __future__ import annotations

import socket

import pytest

import turso_sync
from turso_sync import NetworkError, RemoteError, SyncError
from turso_sync.testing import HttpResponse, MockTransport, pull_answer
from turso_sync.wire.pull import PullRequest

URL = "https://remote.invalid"  # never resolved: every request goes to the handler


@pytest.fixture(autouse=True)
def no_sockets(monkeypatch):
    """Any attempt to open a socket fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a socket was opened")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_a_bootstrap_from_an_empty_remote_gives_a_working_replica(tmp_path):
    seen: list[PullRequest] = []

    def handler(path: str, body: bytes, content_type: str) -> HttpResponse:
        assert path == "/pull-updates" and content_type == "application/protobuf"
        seen.append(PullRequest.from_bytes(body))
        return pull_answer("rev-7")

    mock = MockTransport(handler)
    conn = turso_sync.connect(tmp_path / "a.db", URL, transport=mock)
    try:
        assert isinstance(conn, turso_sync.SyncConnection)
        assert conn.replica.transport is mock
        assert seen[0].client_revision == ""  # a bootstrap asks for everything
        assert conn.replica.state.synced_revision == "rev-7"
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.commit()
        assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
        stats = conn.stats()
        assert stats.pending_changes >= 1 and stats.revision == "rev-7"
        assert stats.network_received_bytes == len(pull_answer("rev-7").body)
        assert stats.network_sent_bytes == len(mock.requests[0].body)
        assert [r.path for r in mock.requests] == ["/pull-updates"] and mock.requests[0].idempotent
    finally:
        conn.close()
    assert mock.closed


@pytest.mark.parametrize("status", [401, 403, 503])
def test_a_refused_bootstrap_raises_remote_error_once(tmp_path, status):
    mock = MockTransport(lambda path, body, content_type: HttpResponse(status, b"no entry for the test"))
    with pytest.raises(RemoteError) as caught:
        turso_sync.connect(tmp_path / "a.db", URL, transport=mock)
    assert isinstance(caught.value, SyncError)
    assert caught.value.status == status
    assert "no entry for the test" in str(caught.value)
    assert len(mock.requests) == 1  # the mock never retries


def test_an_unreachable_remote_raises_network_error(tmp_path):
    def handler(path: str, body: bytes, content_type: str) -> HttpResponse:
        raise NetworkError(f"cannot reach {URL}{path}: refused by the test")

    with pytest.raises(NetworkError, match="refused by the test"):
        turso_sync.connect(tmp_path / "a.db", URL, transport=MockTransport(handler))


def test_a_malformed_pull_answer_is_a_sync_error(tmp_path):
    mock = MockTransport(lambda path, body, content_type: HttpResponse(200, b"\x05abc"))
    with pytest.raises(SyncError):
        turso_sync.connect(tmp_path / "a.db", URL, transport=mock)


def test_pull_answer_checks_its_pages():
    with pytest.raises(ValueError, match="page 1"):
        pull_answer("r", {1: b"short"})
    with pytest.raises(ValueError, match="page 0"):
        pull_answer("r", {0: bytes(4096)})


def test_a_bootstrap_with_pages_brings_the_remote_tables(tmp_path):
    import sqlite3

    source = tmp_path / "remote.db"
    with sqlite3.connect(source) as db:
        db.execute("PRAGMA page_size = 4096")
        db.execute("CREATE TABLE fruit (name TEXT)")
        db.execute("INSERT INTO fruit VALUES ('fig')")
    db.close()
    data = source.read_bytes()
    pages = {i // 4096 + 1: data[i : i + 4096] for i in range(0, len(data), 4096)}
    mock = MockTransport(lambda path, body, content_type: pull_answer("rev-2", pages))
    conn = turso_sync.connect(tmp_path / "a.db", URL, transport=mock)
    try:
        assert conn.execute("SELECT name FROM fruit").fetchall() == [("fig",)]
    finally:
        conn.close()


def test_the_example_in_docs_sync_md_runs(tmp_path):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "sync.md").read_text()
    section = text.split("### Testing your application without a server", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, re.S)
    assert example is not None
    namespace = {"turso_sync": turso_sync, "pytest": pytest, "tmp_path": tmp_path}
    exec(example.group(1), namespace)  # our own documentation
    assert [r.path for r in namespace["mock"].requests] == ["/pull-updates", "/v2/pipeline"]
    namespace["conn"].close()


def test_the_async_twin_takes_an_async_mock_transport(tmp_path):
    import asyncio

    import turso_sync.aio
    from turso_sync.testing import AsyncMockTransport

    def handler(path: str, body: bytes, content_type: str) -> HttpResponse:
        if path == "/pull-updates":
            return pull_answer("rev-3")
        return HttpResponse(503, b"down for the test")

    async def scenario() -> None:
        mock = AsyncMockTransport(handler)
        conn = await turso_sync.aio.connect(tmp_path / "a.db", URL, transport=mock)
        await conn.execute("CREATE TABLE t (x)")
        await conn.commit()
        with pytest.raises(RemoteError) as caught:
            await conn.push()  # one request: a new replica knows the remote holds no push mark for it
        assert caught.value.status == 503
        # a 503 to a batch leaves it in doubt (a server may have committed it), so the next pull
        # first records a push fence, which meets the same 503: nothing is pulled
        with pytest.raises(RemoteError) as caught:
            await conn.pull()
        assert caught.value.status == 503
        assert [r.path for r in mock.requests] == ["/pull-updates", "/v2/pipeline", "/pull-updates", "/v2/pipeline"]
        await conn.close()
        assert mock.closed

    asyncio.run(scenario())
