"""Conditional pushes against both servers: our primary and Turso's ``tursodb --sync-server``.

The compare-and-set guard is plain SQL (``abs(-9223372036854775808)`` fails with "integer
overflow" on both), so a push that meets a remote change it has not seen is refused by either
server, pulls, and the policy settles the clash.  An encrypted replica never pushes into a
remote whose pages it could not hold (a default tursodb reserves no bytes per page).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

import turso_sync
from tests.conftest import KEY256
from tests.servers import primary, tursodb

pytestmark = pytest.mark.peers

SERVERS: dict[str, Callable[[Path], AbstractContextManager[str]]] = {"tursodb": tursodb, "primary": primary}


@pytest.fixture(params=list(SERVERS))
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with SERVERS[request.param](tmp_path / "srv") as u:
        yield u


@pytest.mark.parametrize("policy", ["remote_wins", "last_push_wins"])
def test_a_push_never_overwrites_an_unseen_remote_change(url: str, tmp_path: Path, policy: str):
    a = turso_sync.connect(tmp_path / "a.db", url, conflict=policy)
    a.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, n INTEGER); INSERT INTO t VALUES (1, 'base', 0);")
    a.push()
    b = turso_sync.connect(tmp_path / "b.db", url, conflict=policy)
    b.pull()
    a.execute("UPDATE t SET v = 'A' WHERE id = 1")
    a.commit()
    b.execute("UPDATE t SET v = 'B', n = 7 WHERE id = 1")
    b.commit()
    a.sync()
    b.sync()
    a.pull()
    want = ("B", 7) if policy == "last_push_wins" else ("A", 7)  # n was B's alone: it survives either way
    for conn in (a, b):
        assert conn.execute("SELECT v, n FROM t WHERE id = 1").fetchone() == want
    (conflict,) = b.conflicts()
    assert (conflict.kind, conflict.remote and conflict.remote["v"], conflict.local and conflict.local["v"]) == (
        "update/update",
        "A",
        "B",
    )
    assert a.conflicts() == []
    a.close()
    b.close()


def test_encrypted_replica_refuses_a_remote_without_reserved_bytes(tmp_path: Path):
    """A replica in Turso's format (made without creating the remote's database, so its empty file
    reserves 28 bytes per page) cannot take the remote's pages: it refuses before pushing anything.
    (A new encrypted replica takes the envelope layout instead: tests/integration/test_envelope_sync.py.)"""
    with tursodb(tmp_path / "srv") as url:
        enc = turso_sync.connect(tmp_path / "enc.db", url, encryption_key=KEY256, bootstrap_if_empty=False)
        enc.executescript("CREATE TABLE secret (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO secret VALUES (1, 'x');")
        pending = enc.stats().pending_changes
        assert pending > 0
        with pytest.raises(turso_sync.EncryptionError, match="reserves 0 bytes per page"):
            enc.push()
        assert enc.stats().pending_changes == pending, "every write stays pending"
        with pytest.raises(turso_sync.EncryptionError):
            enc.sync()
        enc.close()
        # nothing of the user's reached the remote: a plain replica sees no table of theirs
        plain = turso_sync.connect(tmp_path / "plain.db", url)
        names = [r[0] for r in plain.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")]
        assert "secret" not in names
        plain.close()
