"""One request per push, against both servers: the mark check travels inside the batch.

A replica pushes on the push mark it believes the remote holds; the mark is read (a request of
its own) only on the first push, after a push whose answer was lost, and after a batch met a
mark it did not expect.  A replica restored from an old copy, and two connections sharing one
replica, still push every change exactly once, without a pull and without a journaled conflict.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

import turso_sync
from tests.servers import primary, tursodb
from turso_sync.errors import NetworkError
from turso_sync.sync.push import LAST_CHANGE_SELECT
from turso_sync.sync.transport import HttpResponse, Transport

pytestmark = pytest.mark.peers

SERVERS: dict[str, Callable[[Path], AbstractContextManager[str]]] = {"tursodb": tursodb, "primary": primary}


class CountingTransport:
    """Wraps the replica's transport: records each request as ``"mark"`` (the mark read) or its path,
    and loses the answer to the next pipeline request when ``lose_next`` is set (it still arrives)."""

    def __init__(self, real: Transport) -> None:
        self.real = real
        self.stats = real.stats
        self.sent: list[str] = []
        self.lose_next = False

    def request(self, path: str, body: bytes, content_type: str, timeout: float, idempotent: bool) -> HttpResponse:
        self.sent.append("mark" if LAST_CHANGE_SELECT.encode() in body else path)
        response = self.real.request(path, body, content_type, timeout, idempotent)
        if self.lose_next and path == "/v2/pipeline":
            self.lose_next = False
            raise NetworkError(f"cannot reach {path}: RemoteProtocolError (injected after the server answered)")
        return response

    def close(self) -> None:
        self.real.close()

    def take(self) -> list[str]:
        sent, self.sent = self.sent, []
        return sent


def counted(path: Path, url: str) -> tuple[turso_sync.Connection, CountingTransport]:
    conn = turso_sync.connect(path, url)
    counting = CountingTransport(conn.replica.transport)
    conn.replica.transport = counting
    return conn, counting


@pytest.fixture(params=list(SERVERS))
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with SERVERS[request.param](tmp_path / "srv") as u:
        yield u


def remote_rows(url: str, tmp_path: Path, name: str) -> list[tuple[object, ...]]:
    clone = turso_sync.connect(tmp_path / f"{name}.db", url)
    rows = clone.execute("SELECT id, n FROM t ORDER BY id").fetchall()
    clone.close()
    return [tuple(r) for r in rows]


def test_a_push_is_one_request(url: str, tmp_path: Path) -> None:
    conn, counting = counted(tmp_path / "a.db", url)
    conn.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER)")
    assert conn.push() == 1
    # the first too: a new replica's client id has no push mark on the remote yet
    assert counting.take() == ["/v2/pipeline"], "the first push builds on 'no mark yet'"
    for i in range(1, 6):
        conn.execute("INSERT INTO t VALUES (?, 0)", (i,))
        conn.commit()
        assert conn.push() == 1
        assert counting.take() == ["/v2/pipeline"], f"push {i}"
    conn.execute("UPDATE t SET n = n + 1")
    conn.commit()
    assert conn.push() == 1 and counting.take() == ["/v2/pipeline"]
    assert conn.push() == 0 and counting.take() == [], "nothing pending: no request"
    conn.close()
    reopened, counting = counted(tmp_path / "a.db", url)
    reopened.execute("INSERT INTO t VALUES (6, 0)")
    reopened.commit()
    assert reopened.push() == 1 and counting.take() == ["/v2/pipeline"], "the belief is in the replica's state"
    reopened.close()
    assert remote_rows(url, tmp_path, "check") == [(i, 1) for i in range(1, 6)] + [(6, 0)]


def test_a_replica_restored_from_an_old_copy_pushes_nothing_twice(url: str, tmp_path: Path) -> None:
    folder = tmp_path / "replica"
    folder.mkdir()
    conn, _ = counted(folder / "a.db", url)
    conn.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER); INSERT INTO t VALUES (1, 0)")
    conn.push()
    conn.execute("UPDATE t SET n = 1 WHERE id = 1")
    conn.commit()
    conn.close()
    shutil.copytree(folder, tmp_path / "copy")  # the old copy: the update pending, the old belief
    conn, _ = counted(folder / "a.db", url)
    assert conn.push() == 1
    conn.close()
    shutil.rmtree(folder)
    shutil.copytree(tmp_path / "copy", folder)
    restored, counting = counted(folder / "a.db", url)
    result = restored.replica.push()
    assert (int(result), result.pulled, restored.conflicts()) == (0, False, []), "no conflict, no pull"
    assert counting.take() == ["/v2/pipeline", "mark"], "the batch met a mark it did not expect; then read it"
    assert restored.stats().pending_changes == 0
    restored.execute("UPDATE t SET n = 2 WHERE id = 1")
    restored.commit()
    assert restored.push() == 1 and counting.take() == ["/v2/pipeline"]
    restored.close()
    assert remote_rows(url, tmp_path, "check") == [(1, 2)]


def test_a_replica_restored_from_before_a_fence_fences_anew_and_pushes_once(url: str, tmp_path: Path) -> None:
    folder = tmp_path / "replica"
    folder.mkdir()
    conn, counting = counted(folder / "a.db", url)
    conn.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER); INSERT INTO t VALUES (1, 0)")
    conn.push()
    conn.execute("UPDATE t SET n = 1 WHERE id = 1")
    conn.commit()
    conn.close()
    shutil.copytree(folder, tmp_path / "copy")  # the old copy: push epoch 0, the update pending
    conn, counting = counted(folder / "a.db", url)
    counting.lose_next = True  # a lost answer: the next pull fences, the remote's epoch moves on
    with pytest.raises(NetworkError, match="injected"):
        conn.push()
    assert conn.pull() in (True, False) and conn.replica.state.push_epoch == 1
    conn.close()
    shutil.rmtree(folder)
    shutil.copytree(tmp_path / "copy", folder)
    restored, _ = counted(folder / "a.db", url)
    assert not restored.replica.state.push_epoch  # behind the remote's fence (epoch 1)
    restored.execute("UPDATE t SET n = 2 WHERE id = 1")
    restored.commit()
    result = restored.replica.push()  # refused at the fence once, fenced anew by its pull, then lands
    assert result.pulled and restored.stats().pending_changes == 0
    assert (restored.replica.state.push_epoch or 0) >= 1 and restored.conflicts() == []
    restored.close()
    assert remote_rows(url, tmp_path, "check") == [(1, 2)]


def test_a_push_whose_answer_was_lost_reads_the_mark_first_and_sends_nothing_twice(url: str, tmp_path: Path) -> None:
    conn, counting = counted(tmp_path / "a.db", url)
    conn.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER); INSERT INTO t VALUES (1, 0)")
    conn.push()
    conn.execute("UPDATE t SET n = n + 1 WHERE id = 1")
    conn.commit()
    counting.take()
    counting.lose_next = True
    with pytest.raises(NetworkError, match="injected"):
        conn.push()
    assert conn.replica.state.push_in_doubt and conn.stats().pending_changes == 1
    assert conn.push() == 0, "it had committed: nothing is sent again"
    assert counting.take() == ["/v2/pipeline", "mark"]
    assert conn.stats().pending_changes == 0 and conn.conflicts() == []
    conn.execute("UPDATE t SET n = n + 1 WHERE id = 1")
    conn.commit()
    assert conn.push() == 1 and counting.take() == ["/v2/pipeline"]
    conn.close()
    assert remote_rows(url, tmp_path, "check") == [(1, 2)]


def test_two_connections_sharing_a_replica_each_push_in_one_request(url: str, tmp_path: Path) -> None:
    """Each push reads the replica's state under the sync lock: the other's pushes moved the belief."""
    first, one = counted(tmp_path / "a.db", url)
    first.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER)")
    first.push()
    second, two = counted(tmp_path / "a.db", url)
    one.take()
    two.take()
    for i in range(1, 7):
        conn, counting = (first, one) if i % 2 else (second, two)
        conn.execute("INSERT INTO t VALUES (?, ?)", (i, i))
        conn.commit()
        assert conn.push() == 1 and counting.take() == ["/v2/pipeline"], f"push {i}"
    first.close()
    second.close()
    assert remote_rows(url, tmp_path, "check") == [(i, i) for i in range(1, 7)]
