"""A push batch whose answer never came, delivered before or after the replica's next pull.

The batch may commit at any time.  The pull that follows fences it off first (the push epoch
moves on), so it commits before the fence, and the pull sees it, or never: a change is never
applied twice, even a row of a table without a primary key (which a second insert would
duplicate), and the journal stays empty (no conflict with oneself).  Found by the simulator
(regression ``delayed push batch applied twice``).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

import turso_sync
from tests.servers import primary
from turso_sync.sync.transport import HttpResponse, TransferStats, Transport

pytestmark = pytest.mark.peers


class HoldingTransport:
    """Holds back the first push batch (never sent) and reports a network error instead."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.held: bytes | None = None

    @property
    def stats(self) -> TransferStats:
        return self.inner.stats

    def request(self, path: str, body: bytes, content_type: str, timeout: float, idempotent: bool) -> HttpResponse:
        if self.held is None and path == "/v2/pipeline" and b"BEGIN IMMEDIATE" in body:
            self.held = body
            raise turso_sync.NetworkError("the answer never came (held by the test)")
        return self.inner.request(path, body, content_type, timeout, idempotent)

    def close(self) -> None:
        self.inner.close()


def deliver(url: str, body: bytes) -> bool:
    """Send a held batch to the server as it was; True if it committed."""
    answer = httpx.post(f"{url}/v2/pipeline", content=body, headers={"Content-Type": "application/json"})
    result = answer.json()["results"][0]["response"]["result"]
    commit = len(result["step_results"]) - 2  # a push batch ends with COMMIT, then ROLLBACK
    return result["step_results"][commit] is not None and result["step_errors"][commit] is None


@pytest.mark.parametrize("arrives", ["before the pull", "after the pull"])
def test_a_delayed_push_batch_is_applied_once(tmp_path: Path, arrives: str):
    with primary(tmp_path / "server") as url:
        a = turso_sync.connect(tmp_path / "a.db", url)
        a.executescript(
            "CREATE TABLE log (msg TEXT);"  # no primary key: a second insert would be a second row
            "CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER);"
            "INSERT INTO kv VALUES ('n', 0);"
        )
        a.push()
        holding = HoldingTransport(a.replica.transport)
        a.replica.transport = holding
        a.execute("INSERT INTO log VALUES ('once')")
        a.execute("UPDATE kv SET v = v + 1 WHERE k = 'n'")
        a.commit()
        with pytest.raises(turso_sync.NetworkError):
            a.push()
        assert holding.held is not None and a.stats().pending_changes == 1

        if arrives == "before the pull":
            assert deliver(url, holding.held)
        a.pull()  # fences the held batch off, then rebases the pending change
        if arrives == "after the pull":
            assert not deliver(url, holding.held), "a batch from before the fence committed"
        a.push()
        a.pull()

        b = turso_sync.connect(tmp_path / "b.db", url)
        for conn in (a, b):
            assert conn.execute("SELECT msg FROM log").fetchall() == [("once",)]
            assert conn.execute("SELECT v FROM kv").fetchall() == [(1,)]
            assert conn.stats().pending_changes == 0
        assert a.conflicts() == []
        a.close()
        b.close()
