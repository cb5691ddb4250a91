"""Network faults during sync: the local database stays intact, nothing is lost or applied twice.

Faults are injected at the transport seam (``turso_sync.sync.transport``) around a real
transport talking to a real primary on 127.0.0.1, so "lost after the server committed" is real:
the server did commit, only the answer is dropped.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
import respx

import turso_sync
from tests.servers import free_port, primary
from turso_sync.errors import NetworkError, RemoteError
from turso_sync.sync.transport import HttpResponse, HttpxTransport

pytestmark = pytest.mark.peers


class FaultyTransport:
    """Wraps a real transport; ``faults`` maps a path to the faults to inject, in order."""

    def __init__(self, real: HttpxTransport) -> None:
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
    assert isinstance(real, HttpxTransport)
    faulty = FaultyTransport(real)
    conn.replica.transport = faulty
    return conn, faulty


def test_connect_takes_a_transport_and_every_request_goes_through_it(tmp_path):
    """``turso_sync.connect(..., transport=)``: the public seam, from the bootstrap on."""
    with primary(tmp_path / "server") as url:
        faulty = FaultyTransport(HttpxTransport(url))
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


def test_transport_retries_only_where_safe():
    url = f"http://127.0.0.1:{free_port()}"
    with respx.mock(assert_all_called=False) as mock:
        pull = mock.post(url + "/pull-updates").mock(
            side_effect=[httpx.Response(503), httpx.Response(502), httpx.Response(200, content=b"ok")]
        )
        pipe = mock.post(url + "/v2/pipeline").mock(side_effect=httpx.ReadTimeout("slow"))
        transport = HttpxTransport(url, attempts=5, max_wait=0.01)
        assert transport.request("/pull-updates", b"", "application/protobuf", 1, True).body == b"ok"
        assert pull.call_count == 3  # read-only: retried through two 5xx
        with pytest.raises(NetworkError):
            transport.request("/v2/pipeline", b"{}", "application/json", 1, False)
        assert pipe.call_count == 1  # a write that may have reached the server is never resent blindly
        refused = mock.post(url + "/refused").mock(
            side_effect=[httpx.ConnectError("refused"), httpx.Response(200, content=b"x")]
        )
        assert transport.request("/refused", b"{}", "application/json", 1, False).body == b"x"
        assert refused.call_count == 2  # never reached the server: safe to retry even a write
        transport.close()
