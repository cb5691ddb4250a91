"""A commit's answer does not wait for the WAL to be emptied.

After a commit the primary empties its WAL into the database file (the frame log archives it
first; docs/primary.md). That is the database worker's next job, not part of the commit's: the
answer leaves once the commit is durable, and the jobs the answer leads to (the client's pull)
are queued behind the emptying, so they still find the WAL empty. A real primary in this
process (so its checkpoint can be held), on loopback; real HTTP requests.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import httpx
import pytest

from tests.sim.primary import InProcessPrimary, hrana_query
from turso_sync.primary import database as database_mod


@pytest.fixture
def held_checkpoint(monkeypatch: pytest.MonkeyPatch):
    """Every WAL emptying of the primary waits for ``release`` (started, done: events it sets)."""
    release, started, done = threading.Event(), threading.Event(), threading.Event()
    real = database_mod.HostedDatabase._truncate_wal

    def held(self: database_mod.HostedDatabase) -> None:
        started.set()
        assert release.wait(30), "the test never released the checkpoint"
        real(self)
        done.set()

    monkeypatch.setattr(database_mod.HostedDatabase, "_truncate_wal", held)
    yield release, started, done
    release.set()


def _wal_size(data_dir: Path) -> int:
    try:
        return os.path.getsize(data_dir / "databases" / "default" / "db-wal")
    except FileNotFoundError:
        return 0


def test_the_answer_leaves_before_the_wal_is_emptied_and_the_next_request_waits_for_it(tmp_path, held_checkpoint):
    release, started, done = held_checkpoint
    primary = InProcessPrimary(tmp_path / "srv")
    url = primary.start()
    try:
        with httpx.Client(timeout=20) as http:
            hrana_query(http, url, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            assert started.wait(10)  # the create's emptying: let it through
            release.set()
            assert done.wait(10)
            release.clear()
            started.clear()
            done.clear()

            # a write is answered while its checkpoint is held: the answer does not wait for it
            hrana_query(http, url, "INSERT INTO t VALUES (1, 'one')")
            assert started.wait(10) and not done.is_set()
            assert _wal_size(tmp_path / "srv") > 0  # the commit is in the WAL, not yet emptied

            # the next request of the database queues behind the emptying
            answer: list[list[list[object]]] = []
            reader = threading.Thread(target=lambda: answer.append(hrana_query(http, url, "SELECT v FROM t")))
            reader.start()
            reader.join(0.5)
            assert reader.is_alive() and not answer  # waiting for the worker, which empties the WAL
            release.set()
            reader.join(20)
            assert done.is_set() and answer == [[["one"]]]
    finally:
        release.set()
        primary.close()
