"""An offline backlog of inserts is pushed folded (one upsert and one guard per table run of
inserts), against both servers, and the guarantees of the per-row guards hold.

Replica B commits hundreds of single-row inserts while it does not push; replica A meanwhile
pushes a row with one of B's keys.  B's push sends the folded batch, its guard fails, B pulls,
and the rebase settles that one row under the policy and journals it; every other row lands
once, and both replicas end with the same rows.  A remote row equal to B's is no conflict: the
folded batch commits at once, as the per-row guard let it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

import turso_sync
from tests.servers import primary, tursodb
from turso_sync.sync.transport import HttpResponse, Transport

pytestmark = pytest.mark.peers

SERVERS: dict[str, Callable[[Path], AbstractContextManager[str]]] = {"tursodb": tursodb, "primary": primary}
ROWS = 400
CLASH = 250  # the one key both replicas insert


class RecordingTransport:
    """Wraps the replica's transport and keeps the body of every pipeline request it sends."""

    def __init__(self, real: Transport) -> None:
        self.real = real
        self.stats = real.stats
        self.pipelines: list[bytes] = []

    def request(self, path: str, body: bytes, content_type: str, timeout: float, idempotent: bool) -> HttpResponse:
        if path == "/v2/pipeline":
            self.pipelines.append(body)
        return self.real.request(path, body, content_type, timeout, idempotent)

    def close(self) -> None:
        self.real.close()


@pytest.fixture(params=list(SERVERS))
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with SERVERS[request.param](tmp_path / "srv") as u:
        yield u


def replicas(url: str, tmp_path: Path, policy: str) -> tuple[turso_sync.Connection, turso_sync.Connection]:
    a = turso_sync.connect(tmp_path / "a.db", url, conflict=policy)
    a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    a.commit()
    a.push()
    b = turso_sync.connect(tmp_path / "b.db", url, conflict=policy)
    b.pull()
    return a, b


def offline_inserts(conn: turso_sync.Connection) -> None:
    for i in range(1, ROWS + 1):
        conn.execute("INSERT INTO t VALUES (?, ?)", (i, f"B {i}"))
        conn.commit()


def rows(conn: turso_sync.Connection) -> list[tuple[object, ...]]:
    return [tuple(r) for r in conn.execute("SELECT id, v FROM t ORDER BY id").fetchall()]


@pytest.mark.parametrize("policy", ["last_push_wins", "remote_wins"])
def test_a_failed_folded_guard_settles_the_one_clashing_row_under_the_policy(
    url: str, tmp_path: Path, policy: str
) -> None:
    a, b = replicas(url, tmp_path, policy)
    a.execute("INSERT INTO t VALUES (?, 'A')", (CLASH,))
    a.commit()
    a.push()
    offline_inserts(b)
    recording = RecordingTransport(b.replica.transport)
    b.replica.transport = recording

    result = b.replica.push()

    first = recording.pipelines[0]
    assert f"changes() = {ROWS}".encode() in first, "the backlog went as one folded upsert"
    assert first.count(b"SELECT CASE WHEN") == 1, "one guard for the whole backlog"
    assert result.pulled, "the folded guard failed, so the push pulled and settled the clash"
    (conflict,) = b.conflicts()
    assert (conflict.table, conflict.kind, conflict.pk) == ("t", "insert/insert", {"id": CLASH})
    assert conflict.remote is not None and conflict.remote["v"] == "A"
    assert conflict.local is not None and conflict.local["v"] == f"B {CLASH}"
    assert result.pending_changes == 0
    a.pull()
    winner = f"B {CLASH}" if policy == "last_push_wins" else "A"
    expected = [(i, winner if i == CLASH else f"B {i}") for i in range(1, ROWS + 1)]
    assert rows(b) == expected
    assert rows(a) == expected, "the remote holds every row once, the clash as the policy settled it"
    assert a.conflicts() == []
    a.close()
    b.close()


def test_a_remote_row_equal_to_a_backlog_row_is_no_conflict(url: str, tmp_path: Path) -> None:
    a, b = replicas(url, tmp_path, "remote_wins")
    a.execute("INSERT INTO t VALUES (?, ?)", (CLASH, f"B {CLASH}"))
    a.commit()
    a.push()
    offline_inserts(b)
    recording = RecordingTransport(b.replica.transport)
    b.replica.transport = recording

    result = b.replica.push()

    assert result.pushed == ROWS and not result.pulled
    assert len(recording.pipelines) == 1, "one request: the folded guard passed on the equal row"
    assert b.conflicts() == []
    a.pull()
    assert rows(a) == rows(b) == [(i, f"B {i}") for i in range(1, ROWS + 1)]
    a.close()
    b.close()
