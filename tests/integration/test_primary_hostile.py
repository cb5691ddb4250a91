"""The primary against a hostile client with a valid token: every bound holds and says so (issue 13).

Each test starts ``turso-sync serve`` with small bounds, pushes one bound past its limit over
real sockets, and checks what the client sees (a 4xx or 503, never a 500), that the server
stays up, and what the server log says.  No test asserts a timing: "closed before a generous
deadline" only.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import wait_for
from tests.integration.primary_harness import PrimaryProcess
from turso_sync.wire.pull import PullRequest, PullResponseDecoder

WRITER = "writer-" + os.urandom(12).hex()
OTHER = "other-" + os.urandom(12).hex()
READER = "reader-" + os.urandom(12).hex()

#: How long a test waits for the server to act on a bound of about a second before it fails.
GENEROUS = 30.0


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """Start a server with a token file and the given extra options; stopped after the test."""
    started: list[PrimaryProcess] = []

    def start(*args: str) -> PrimaryProcess:
        tokens = tmp_path / "tokens"
        tokens.write_text(f"{WRITER} rw *\n{OTHER} rw *\n{READER} r *\n")
        tokens.chmod(0o600)
        proc = PrimaryProcess(tmp_path / f"data{len(started)}", "--token-file", str(tokens), *args)
        started.append(proc)
        proc.start()
        return proc

    yield start
    for proc in started:
        proc.close()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def execute(server: PrimaryProcess, path: str, sql: str, token: str = WRITER) -> httpx.Response:
    body = {"baton": None, "requests": [{"type": "execute", "stmt": {"sql": sql}}]}
    return httpx.post(server.url + path, json=body, headers=auth(token), timeout=60)


def raw(server: PrimaryProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=GENEROUS)
    return sock


def read_until_closed(sock: socket.socket, deadline: float = GENEROUS) -> bytes:
    """Everything the server sends until it closes the connection; fails if it is still open at ``deadline``."""
    end = time.monotonic() + deadline
    data = b""
    while True:
        sock.settimeout(max(0.01, end - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"the server still holds the connection after {deadline}s") from None
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def server_pid(server: PrimaryProcess) -> int:
    assert server.proc is not None
    return server.proc.pid


def threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def fds_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --- slow clients -------------------------------------------------------------------------------


def test_half_sent_headers_and_idle_connections_are_closed(serve: Any) -> None:
    server = serve("--idle-timeout", "1")
    half = raw(server)
    half.sendall(b"POST /v2/pipeline HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ")
    silent = raw(server)
    assert read_until_closed(half) == b""  # no answer: it never made a request
    assert read_until_closed(silent) == b""
    # a keep-alive connection idle after an answer is closed too
    kept = raw(server)
    kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_until_closed(kept).startswith(b"HTTP/1.1 200")
    for sock in (half, silent, kept):
        sock.close()
    assert server.health()["status"] == "ok"


def test_half_sent_body_gets_408_and_the_connection_closed(serve: Any) -> None:
    server = serve("--body-timeout", "1")
    sock = raw(server)
    sock.sendall(
        b"POST /v2/pipeline HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + WRITER.encode()
        + b'\r\nContent-Length: 100\r\n\r\n{"baton"'
    )
    answer = read_until_closed(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"REQUEST_TIMEOUT"' in answer
    assert server.health()["databases_open"] == 0  # the database was never opened for it


def test_a_client_that_stops_reading_is_cut_off(serve: Any) -> None:
    server = serve("--send-timeout", "1")
    execute(server, "/db/big/v2/pipeline", "CREATE TABLE b(x)").raise_for_status()
    fill = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 40) "
    execute(server, "/db/big/v2/pipeline", fill + "INSERT INTO b SELECT randomblob(1000000) FROM n").raise_for_status()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(
        f"POST /db/big/pull-updates HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WRITER}\r\n"
        "Content-Length: 0\r\n\r\n".encode()
    )  # and never read the 40 MB answer
    wait_for(lambda: "client stopped reading" in server.log(), timeout=GENEROUS, what="the server to cut the reader")
    sock.close()
    assert server.health()["status"] == "ok"


# --- open requests per client -------------------------------------------------------------------


def long_poll(server: PrimaryProcess, revision: str, token: str, answers: list[int]) -> None:
    req = PullRequest(client_revision=revision, long_poll_timeout_ms=120_000)
    resp = httpx.post(
        server.url + "/db/lp/pull-updates", content=req.to_bytes(), headers=auth(token), timeout=GENEROUS * 4
    )
    answers.append(resp.status_code)


def test_open_requests_per_client_are_bounded_and_long_polls_count(serve: Any) -> None:
    server = serve("--max-requests-per-client", "2")
    execute(server, "/db/lp/v2/pipeline", "CREATE TABLE t(x)").raise_for_status()
    resp = httpx.post(server.url + "/db/lp/pull-updates", content=PullRequest().to_bytes(), headers=auth(WRITER))
    decoder = PullResponseDecoder()
    list(decoder.feed(resp.content))
    revision = decoder.header.server_revision
    answers: list[int] = []
    pollers = [threading.Thread(target=long_poll, args=(server, revision, WRITER, answers)) for _ in range(2)]
    for t in pollers:
        t.start()
    wait_for(lambda: server.health()["long_polls_waiting"] == 2, timeout=GENEROUS, what="two long-polls to park")

    over = execute(server, "/db/lp/v2/pipeline", "SELECT 1")
    assert over.status_code == 429, over.text
    assert over.headers["Retry-After"] == "1"
    assert over.json()["code"] == "TOO_MANY_REQUESTS" and "long-polls included" in over.json()["error"]
    # another token is another client: unaffected
    assert execute(server, "/db/lp/v2/pipeline", "INSERT INTO t VALUES (1)", token=OTHER).status_code == 200
    for t in pollers:
        t.join(GENEROUS)
        assert not t.is_alive()
    assert answers == [200, 200]  # the write woke both
    # the slots were given back
    assert execute(server, "/db/lp/v2/pipeline", "SELECT 1").status_code == 200


# --- databases per token, threads and files per process -----------------------------------------


def test_databases_per_token_are_bounded(serve: Any) -> None:
    server = serve("--max-databases-per-token", "3")
    for i in range(3):
        assert execute(server, f"/db/mine{i}/v2/pipeline", "CREATE TABLE t(x)").status_code == 200
    over = execute(server, "/db/mine3/v2/pipeline", "CREATE TABLE t(x)")
    assert over.status_code == 403 and over.json()["code"] == "DATABASE_LIMIT", over.text
    assert "mine3" in over.json()["error"] and "--max-databases-per-token" in over.json()["error"]
    # existing databases still work for it, and another token has its own quota
    assert execute(server, "/db/mine0/v2/pipeline", "INSERT INTO t VALUES (1)").status_code == 200
    assert execute(server, "/db/theirs/v2/pipeline", "CREATE TABLE t(x)", token=OTHER).status_code == 200
    # the quota survives a restart
    server.restart()
    assert execute(server, "/db/mine3/v2/pipeline", "CREATE TABLE t(x)").status_code == 403


def test_threads_and_files_are_bounded_by_open_databases(serve: Any) -> None:
    server = serve("--max-open-databases", "4", "--max-databases-per-token", "1000")
    pid = server_pid(server)
    threads0, fds0 = threads_of(pid), fds_of(pid)
    for i in range(4):
        execute(server, f"/db/n{i}/v2/pipeline", "CREATE TABLE t(x)").raise_for_status()
    threads4, fds4 = threads_of(pid), fds_of(pid)
    for i in range(4, 40):
        execute(server, f"/db/n{i}/v2/pipeline", "CREATE TABLE t(x)").raise_for_status()
        execute(server, f"/db/n{i}/v2/pipeline", f"INSERT INTO t VALUES ({i})").raise_for_status()
    assert server.health()["databases_open"] == 4
    assert threads_of(pid) <= threads4, (threads0, threads4, threads_of(pid))
    assert fds_of(pid) <= fds4 + 2, (fds0, fds4, fds_of(pid))  # +2: the test's own connections
    # a closed database opens again on demand, with its data
    resp = execute(server, "/db/n5/v2/pipeline", "SELECT x FROM t")
    rows = resp.json()["results"][0]["response"]["result"]["rows"]
    assert rows == [[{"type": "integer", "value": "5"}]]


def test_every_open_database_busy_is_503_not_500(serve: Any) -> None:
    server = serve("--max-open-databases", "1")
    execute(server, "/db/a/v2/pipeline", "CREATE TABLE t(x)").raise_for_status()
    resp = httpx.post(server.url + "/db/a/pull-updates", content=PullRequest().to_bytes(), headers=auth(WRITER))
    decoder = PullResponseDecoder()
    list(decoder.feed(resp.content))
    answers: list[int] = []
    poller = threading.Thread(target=long_poll_on, args=(server, "/db/a", decoder.header.server_revision, answers))
    poller.start()
    wait_for(lambda: server.health()["long_polls_waiting"] == 1, timeout=GENEROUS, what="the long-poll to park")
    busy = execute(server, "/db/b/v2/pipeline", "CREATE TABLE t(x)")
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1", busy.text
    assert busy.json()["code"] == "SERVER_BUSY"
    execute(server, "/db/a/v2/pipeline", "INSERT INTO t VALUES (1)").raise_for_status()
    poller.join(GENEROUS)
    assert answers == [200]
    assert execute(server, "/db/b/v2/pipeline", "CREATE TABLE t(x)").status_code == 200


def long_poll_on(server: PrimaryProcess, prefix: str, revision: str, answers: list[int]) -> None:
    req = PullRequest(client_revision=revision, long_poll_timeout_ms=120_000)
    resp = httpx.post(server.url + prefix + "/pull-updates", content=req.to_bytes(), headers=auth(WRITER), timeout=120)
    answers.append(resp.status_code)


def test_connections_per_process_are_bounded(serve: Any) -> None:
    server = serve("--max-connections", "3")
    held = []
    for _ in range(3):
        sock = raw(server)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")  # answered: the server counts it
        held.append(sock)
    extra = raw(server)
    answer = read_until_closed(extra)
    extra.close()
    assert answer.startswith(b"HTTP/1.1 503"), answer
    assert b"Retry-After: 1" in answer and b"SERVER_BUSY" in answer
    for sock in held:
        sock.close()
    wait_for(lambda: server_answers(server), timeout=GENEROUS, what="a connection slot to free up")


def server_answers(server: PrimaryProcess) -> bool:
    try:
        return httpx.get(server.url + "/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


# --- noise, leaks, order of checks --------------------------------------------------------------


def test_hang_ups_and_malformed_requests_log_one_quiet_line(serve: Any) -> None:
    server = serve("--log-level", "debug")  # the reasons are DEBUG lines; at INFO only the access lines
    sock = raw(server)
    sock.sendall(
        b"POST /v2/pipeline HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + WRITER.encode()
        + b'\r\nContent-Length: 100\r\n\r\n{"ba'
    )
    sock.close()  # mid-body
    bad = raw(server)
    bad.sendall(b"POST /v2/pipeline HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    answer = read_until_closed(bad)
    bad.close()
    assert answer.startswith(b"HTTP/1.1 400") or answer.startswith(b"HTTP/1.0 400"), answer
    garbage = raw(server)
    garbage.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64) + b"\r\n\r\n")
    read_until_closed(garbage)
    garbage.close()
    wait_for(lambda: "malformed HTTP request" in server.log(), timeout=GENEROUS, what="the parse error's log line")
    wait_for(lambda: '"POST /v2/pipeline" 400' in server.log(), timeout=GENEROUS, what="the hang-up's access line")
    assert server.health()["status"] == "ok"
    log = server.log()
    assert "Traceback" not in log and " ERROR " not in log and " 500 " not in log, log


def test_no_version_path_or_trace_in_any_answer(serve: Any) -> None:
    server = serve()
    answers = [
        httpx.get(server.url + "/health"),
        httpx.get(server.url + "/nope"),
        httpx.post(server.url + "/v2/pipeline", content=b"{"),
        execute(server, "/v2/pipeline", "SELECT 1"),
        execute(server, "/db/x/v2/pipeline", "SELECT 1", token=READER),
        httpx.post(server.url + "/db/" + "x" * 65 + "/v2/pipeline", headers=auth(WRITER)),
    ]
    sock = raw(server)
    sock.sendall(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
    malformed = read_until_closed(sock)
    sock.close()
    data_dir = str(server.data_dir)
    for resp in answers:
        assert resp.headers["Server"] == "turso-sync", resp.headers
        assert data_dir not in resp.text and "Traceback" not in resp.text and "aiohttp" not in resp.text
    assert b"Server: turso-sync\r\n" in malformed and b"Python" not in malformed and b"aiohttp" not in malformed


def test_auth_comes_before_the_body_and_the_database(serve: Any) -> None:
    server = serve("--body-timeout", "600")
    for token, status in ((None, 401), ("wrong-token-123", 401), (READER, 404)):
        sock = raw(server)
        header = f"Authorization: Bearer {token}\r\n" if token else ""
        # a body announced but never sent: answered at once, so the body was not waited for
        sock.sendall(f"POST /db/fresh/v2/pipeline HTTP/1.1\r\nHost: x\r\n{header}Content-Length: 1000\r\n\r\n".encode())
        sock.settimeout(GENEROUS)
        answer = sock.recv(4096)
        sock.close()
        assert answer.startswith(f"HTTP/1.1 {status}".encode()), answer
    assert server.health()["databases_open"] == 0
    assert not (server.data_dir / "databases" / "fresh").exists()


def test_health_reveals_only_totals(serve: Any) -> None:
    server = serve()
    execute(server, "/db/secret-name/v2/pipeline", "CREATE TABLE t(x)").raise_for_status()
    body = httpx.get(server.url + "/health").json()
    assert set(body) == {"status", "databases_open", "long_polls_waiting", "pulls", "pages_sent"}
    assert "secret-name" not in json.dumps(body)


def test_http10_bootstrap_is_streamed_until_close_not_a_500(serve: Any) -> None:
    """Found by the fuzzer: a bootstrap asked over HTTP/1.0 (no chunked encoding there) was a 500."""
    server = serve()
    execute(server, "/db/old/v2/pipeline", "CREATE TABLE t(x)").raise_for_status()
    sock = raw(server)
    sock.sendall(f"POST /db/old/pull-updates HTTP/1.0\r\nAuthorization: Bearer {WRITER}\r\n\r\n".encode())
    answer = read_until_closed(sock)
    sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head
    assert b"chunked" not in head.lower()
    decoder = PullResponseDecoder()
    pages = list(decoder.feed(body))
    decoder.close()
    assert len(pages) == decoder.header.db_size >= 2
    assert "Traceback" not in server.log()


def test_expect_100_continue_is_refused_before_the_body_without_a_valid_token(serve: Any) -> None:
    server = serve()
    body = json.dumps({"baton": None, "requests": [{"type": "execute", "stmt": {"sql": "SELECT 1"}}]}).encode()
    head = "POST /v2/pipeline HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n{}\r\n"
    sock = raw(server)
    sock.sendall(head.format(len(body), "Authorization: Bearer wrong-token-123\r\n").encode())
    refused = sock.recv(4096)
    sock.close()
    assert refused.startswith(b"HTTP/1.1 401"), refused  # no "100 Continue": the body is never asked for
    sock = raw(server)
    sock.sendall(head.format(len(body), f"Authorization: Bearer {WRITER}\r\n").encode())
    assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue")
    sock.sendall(body)
    answer = sock.recv(65536)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer
