"""What a push and a pull wait for the disk for, without a server.

A successful push, and a pull that brought nothing, save the state without syncing the folder
(``SyncState.save(durable=False)``: what they change is safe to lose in a power loss, see
``pusher.push_once``), a push's mark and counters in ``-sync.volatile`` without syncing its data
either (``test_sync_state_volatile.py``); a push left in doubt and a pull that installed pages sync it, so that
state survives a power loss.  Every save is visible to other processes at once either way.
The pusher forgets pushed outbox rows in a commit that does not sync the WAL
(``pusher._forget``), and leaves the engine's connection as it found it.
"""

from __future__ import annotations

import pytest

import turso_sync
from tests.unit.fake_remote import FakeRemote, sqlite_pages
from turso_sync import errors
from turso_sync.sync import pusher
from turso_sync.sync import state as state_mod
from turso_sync.sync.state import PUSH_MARK_KEY, SyncState

URL = "https://remote.invalid"
SCHEMA = "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'base');"


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A replica of a fake remote, and the list of state files whose folder was synced since."""
    remote_file = tmp_path / "remote.db"
    remote = FakeRemote("r1", sqlite_pages(remote_file, SCHEMA))
    conn = turso_sync.connect(tmp_path / "a.db", URL, transport=remote.transport())
    synced: list[str] = []
    real = state_mod.fsync_dir

    def recording(path: str) -> None:
        synced.append(path)
        real(path)

    monkeypatch.setattr(state_mod, "fsync_dir", recording)
    yield conn, remote, remote_file, synced
    conn.close()


def state_syncs(synced: list[str]) -> int:
    return sum(1 for path in synced if path.endswith("-sync"))


def test_a_successful_push_saves_the_state_without_syncing_the_folder(world):
    conn, _remote, _file, synced = world
    conn.execute("INSERT INTO t(v) VALUES ('w')")
    conn.commit()
    written: list[str] = []
    real_write, real_overwrite = state_mod._write_whole, state_mod._overwrite

    def write(path: str, data: bytes, *, sync: bool) -> None:
        written.append(f"{path[len(conn.replica.path) :]} sync={sync}")
        real_write(path, data, sync=sync)

    def overwrite(path: str, data: bytes) -> None:
        written.append(f"{path[len(conn.replica.path) :]} in place")
        real_overwrite(path, data)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(state_mod, "_write_whole", write)
        patch.setattr(state_mod, "_overwrite", overwrite)
        assert conn.replica.push() == 1
    assert state_syncs(synced) == 0
    # the mark and counters go to the volatile file, overwritten in place with no sync at all
    assert written == ["-sync.volatile in place"]
    saved = SyncState.load(conn.replica.path)  # what another process reads
    assert saved is not None and saved.pushes == 1 and saved.extra[PUSH_MARK_KEY][1] >= 1


def test_a_push_left_in_doubt_syncs_the_folder(world):
    conn, remote, _file, synced = world
    conn.execute("INSERT INTO t(v) VALUES ('w')")
    conn.commit()

    def lost(steps):
        raise errors.NetworkError("the answer was lost")

    remote.answer = lost
    with pytest.raises(errors.NetworkError):
        conn.push()
    assert state_syncs(synced) == 1
    saved = SyncState.load(conn.replica.path)
    assert saved is not None and saved.push_in_doubt and PUSH_MARK_KEY not in saved.extra


def test_a_pull_that_installs_syncs_the_folder_and_one_that_brings_nothing_does_not(world):
    conn, remote, remote_file, synced = world
    assert not conn.replica.pull()  # nothing new
    assert state_syncs(synced) == 0
    remote.pages = sqlite_pages(
        remote_file.with_suffix(".r2"), "INSERT INTO t VALUES (2, 'remote');", start_from=remote_file
    )
    remote.revision = "r2"
    assert conn.replica.pull()
    assert state_syncs(synced) == 1
    saved = SyncState.load(conn.replica.path)
    assert saved is not None and saved.synced_revision == "r2"


def test_pushed_rows_are_forgotten_without_syncing_the_wal_and_the_connection_is_left_as_it_was(world, monkeypatch):
    conn, _remote, _file, _synced = world
    db = conn.replica.db
    levels: list[int] = []
    real_forget = pusher.forget

    def recording(database, last_id):
        levels.append(database.query("PRAGMA synchronous")[0][0])
        real_forget(database, last_id)

    monkeypatch.setattr(pusher, "forget", recording)
    assert db.query("PRAGMA synchronous")[0][0] == 2  # FULL: every other commit waits for the disk
    conn.execute("INSERT INTO t(v) VALUES ('w')")
    conn.commit()
    assert conn.replica.push() == 1
    assert levels == [1]  # NORMAL, for the DELETE of the pushed rows only
    assert db.query("PRAGMA synchronous")[0][0] == 2
    assert conn.stats().pending_changes == 0
