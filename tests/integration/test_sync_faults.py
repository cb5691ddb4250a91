"""Network faults during sync: the local database stays intact, nothing is lost or applied twice.

Faults are injected at the transport seam (``turso_sync.sync.transport``) around a real
transport talking to a real primary on 127.0.0.1, so "lost after the server committed" is real:
the server did commit, only the answer is dropped.
"""

from __future__ import annotations

import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import turso_sync
from tests.servers import free_port, primary
from turso_sync.errors import NetworkError, RemoteError
from turso_sync.sync.transport import HttpResponse, HttpTransport

pytestmark = pytest.mark.peers


class FaultyTransport:
    """Wraps a real transport; ``faults`` maps a path to the faults to inject, in order."""

    def __init__(self, real: HttpTransport) -> None:
        self.real = real
        self.stats = real.stats
        self.faults: dict[str, list[str]] = {}
        self.sent: list[str] = []

    def request(self, path, body, content_type, timeout, idempotent) -> HttpResponse:
        queue = self.faults.get(path, [])
        fault = queue.pop(0) if queue else None
        self.sent.append(path)
        if fault == "refused":
            raise NetworkError(f"cannot reach {path}: ConnectError (injected)")
        if fault == "timeout":
            raise NetworkError(f"cannot reach {path}: ReadTimeout (injected)")
        if fault == "5xx":
            raise RemoteError(503, b"injected outage", path)
        response = self.real.request(path, body, content_type, timeout, idempotent)
        if fault == "lost":
            raise NetworkError(f"cannot reach {path}: RemoteProtocolError (injected after the server answered)")
        if fault == "truncated":
            return HttpResponse(200, response.body[: len(response.body) // 2 + 3])
        return response

    def close(self) -> None:
        self.real.close()


def snapshot(conn) -> tuple[str, int]:
    img = conn.apsw_connection.serialize("main")
    return hashlib.sha256(img).hexdigest(), conn.stats().pending_changes


def faulty_replica(path: Path, url: str) -> tuple[turso_sync.Connection, FaultyTransport]:
    conn = turso_sync.connect(path, url)
    real = conn.replica.transport
    assert isinstance(real, HttpTransport)
    faulty = FaultyTransport(real)
    conn.replica.transport = faulty
    return conn, faulty


def test_connect_takes_a_transport_and_every_request_goes_through_it(tmp_path):
    """``turso_sync.connect(..., transport=)``: the public seam, from the bootstrap on."""
    with primary(tmp_path / "server") as url:
        faulty = FaultyTransport(HttpTransport(url))
        conn = turso_sync.connect(tmp_path / "a.db", url, transport=faulty)
        assert conn.replica.transport is faulty
        assert faulty.sent and set(faulty.sent) == {"/pull-updates"}  # the bootstrap came through it
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
        faulty.faults["/v2/pipeline"] = ["refused"]
        with pytest.raises(NetworkError, match="injected"):
            conn.push()
        assert conn.stats().pending_changes == 1
        conn.push()
        assert "/v2/pipeline" in faulty.sent and conn.stats().pending_changes == 0
        conn.close()


@pytest.mark.parametrize("fault", ["refused", "timeout", "5xx", "truncated", "lost"])
def test_faults_leave_the_replica_intact_and_the_next_sync_converges(tmp_path, fault):
    with primary(tmp_path / "server") as url:
        other = turso_sync.connect(tmp_path / "other.db", url)
        other.executescript("CREATE TABLE log (who TEXT, n INTEGER); INSERT INTO log VALUES ('other', 0);")
        other.push()
        a, faulty = faulty_replica(tmp_path / "a.db", url)
        a.executemany("INSERT INTO log VALUES ('a', ?)", [(i,) for i in range(5)])
        a.commit()
        other.execute("INSERT INTO log VALUES ('other', 1)")
        other.commit()
        other.push()

        # push under the fault
        before = snapshot(a)
        faulty.faults["/v2/pipeline"] = [fault] if fault != "truncated" else []
        if fault == "truncated":
            faulty.faults["/pull-updates"] = ["truncated"]
            with pytest.raises(NetworkError):
                a.pull()
        elif fault == "lost":
            # the remote commits the batch; the answer never arrives
            faulty.faults["/v2/pipeline"] = ["lost"]  # the batch is the push's one request
            with pytest.raises(NetworkError):
                a.push()
        else:
            with pytest.raises((NetworkError, RemoteError)):
                a.push()
            faulty.faults["/pull-updates"] = [fault]
            with pytest.raises((NetworkError, RemoteError)):
                a.pull()
        assert snapshot(a) == before, "a failed sync step changed the local database"
        assert a.execute("PRAGMA integrity_check").fetchone() == ("ok",)

        # no more faults: everything converges, each change exactly once
        a.sync()
        other.pull()
        expected = [("a", i) for i in range(5)] + [("other", 0), ("other", 1)]
        for conn in (a, other):
            assert sorted(conn.execute("SELECT who, n FROM log")) == expected
            assert conn.stats().pending_changes == 0
        a.close()
        other.close()


def test_connection_refused_by_a_real_closed_port(tmp_path):
    with primary(tmp_path / "server") as url:
        a = turso_sync.connect(tmp_path / "a.db", url)
        a.executescript("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
    # the server is gone now
    before = snapshot(a)
    with pytest.raises(NetworkError, match="cannot reach"):
        a.push()
    with pytest.raises(NetworkError):
        a.pull()
    assert snapshot(a) == before
    assert a.execute("SELECT x FROM t").fetchall() == [(1,)]  # offline reads and writes keep working
    a.execute("INSERT INTO t VALUES (2)")
    a.commit()
    a.close()


class _Scripted(BaseHTTPRequestHandler):
    """Answers each path from its script (one step per request, the last one repeated) and counts
    the requests that reached it: ``(status, body)`` or ``"slow"`` (answers after 1 s)."""

    protocol_version = "HTTP/1.1"
    scripts: dict[str, list[tuple[int, bytes] | str]] = {}
    reached: dict[str, int] = {}

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.reached[self.path] = self.reached.get(self.path, 0) + 1
        script = self.scripts[self.path]
        step = script.pop(0) if len(script) > 1 else script[0]
        if step == "slow":
            time.sleep(1.0)
            step = (200, b"late")
        status, body = step
        try:
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting: what it should do

    def log_message(self, *args: object) -> None:
        pass


def test_transport_retries_only_where_safe():
    """A real HTTP server on loopback, scripted: 5xx answers, a slow answer, a closed port."""
    _Scripted.scripts = {
        "/pull-updates": [(503, b""), (502, b""), (200, b"ok")],
        "/v2/pipeline": ["slow"],
    }
    _Scripted.reached = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    transport = HttpTransport(f"http://127.0.0.1:{server.server_address[1]}", attempts=5, max_wait=0.01)
    try:
        assert transport.request("/pull-updates", b"", "application/protobuf", 5, True).body == b"ok"
        assert _Scripted.reached["/pull-updates"] == 3  # read-only: retried through two 5xx
        with pytest.raises(NetworkError, match="ReadTimeoutError"):
            transport.request("/v2/pipeline", b"{}", "application/json", 0.3, False)
        # a write that may have reached the server is never resent blindly
        assert _Scripted.reached["/v2/pipeline"] == 1
    finally:
        transport.close()
        server.shutdown()
        server.server_close()
    # a closed port: the write never reached a server, so every attempt is made (a spy counts them)
    closed = HttpTransport(f"http://127.0.0.1:{free_port()}", attempts=3, max_wait=0.01)
    attempts = []
    real_open = closed._pool.urlopen

    def counted(*args, **kwargs):
        attempts.append(args[1])
        return real_open(*args, **kwargs)

    closed._pool.urlopen = counted  # type: ignore[method-assign]
    with pytest.raises(NetworkError, match="NewConnectionError"):
        closed.request("/refused", b"{}", "application/json", 1, False)
    assert attempts == ["/refused"] * 3  # never reached the server: safe to retry even a write
    closed.close()
