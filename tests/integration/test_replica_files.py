"""A replica knows its own files: damage on disk is named on open, and repair keeps pending writes.

Every case damages real files of a replica of a real primary on 127.0.0.1, then opens it with
``turso_sync.connect`` (which must refuse with ``ReplicaDamagedError`` naming the file and the
remedy) and repairs it with ``ReplicaFiles.repair`` (re-clone; pending changes carried over when
the database is readable).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import turso_sync
from tests.conftest import KEY256
from tests.servers import primary
from turso_sync.sync import pull as pull_mod
from turso_sync.sync.files import ReplicaFiles
from turso_sync.sync.state import SyncState


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with primary(tmp_path_factory.mktemp("primary")) as url:
        yield url


@pytest.fixture(params=["plaintext", "encrypted"])
def key(request: pytest.FixtureRequest) -> str | None:
    return KEY256 if request.param == "encrypted" else None


def fresh(server: str) -> str:
    return f"{server}/db/f{uuid.uuid4().hex[:12]}"


def synced_pair(tmp_path: Path, url: str, key: str | None) -> tuple[Path, Path]:
    """Two replicas of ``url`` with a shared table of 200 rows; each closed, all synced."""
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    conn = turso_sync.connect(a, url, encryption_key=key)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, "row" * 40) for i in range(200)])
    conn.commit()
    conn.sync()
    conn.close()
    other = turso_sync.connect(b, url, encryption_key=key)
    other.close()
    return a, b


def open_fails(path: Path, key: str | None, file: str) -> turso_sync.ReplicaDamagedError:
    with pytest.raises(turso_sync.ReplicaDamagedError) as caught:
        turso_sync.connect(path, encryption_key=key)
    err = caught.value
    assert err.file.endswith(file), (err.file, file)
    assert "turso-sync verify --repair" in str(err) and str(path.name) in str(err)
    assert isinstance(err, turso_sync.DatabaseError)
    return err


def pending_row(path: Path, key: str | None, value: str) -> None:
    conn = turso_sync.connect(path, encryption_key=key)
    conn.execute("INSERT INTO t VALUES (1000, ?)", (value,))
    conn.commit()
    assert conn.stats().pending_changes == 1
    conn.close()


def value_seen_by(path: Path, key: str | None) -> list[tuple[str]]:
    conn = turso_sync.connect(path, encryption_key=key)
    try:
        conn.pull()
        return conn.execute("SELECT v FROM t WHERE id = 1000").fetchall()
    finally:
        conn.close()


def test_healthy_replicas_pass_at_every_step(tmp_path, server, key):
    a, b = synced_pair(tmp_path, fresh(server), key)
    for path in (a, b):
        assert ReplicaFiles(path).check(key, deep=True) == []
    conn = turso_sync.connect(b, encryption_key=key)
    conn.execute("UPDATE t SET v = 'local' WHERE id < 10")  # pending, in the WAL
    conn.commit()
    assert ReplicaFiles(b).check(key, deep=True) == []
    writer = turso_sync.connect(a, encryption_key=key)
    writer.execute("UPDATE t SET v = 'remote' WHERE id >= 190")
    writer.commit()
    writer.sync()
    writer.close()
    conn.pull()  # rebase: a revert file now
    assert ReplicaFiles(b).check(key, deep=True) == []
    conn.checkpoint()
    assert ReplicaFiles(b).check(key, deep=True) == []
    conn.sync()
    conn.close()
    assert ReplicaFiles(b).check(key, deep=True) == []
    assert {os.path.basename(p) for p in ReplicaFiles(b).existing()} >= {"b.db", "b.db-frames", "b.db-sync"}


def test_emptied_database_is_refused_and_repair_says_what_is_lost(tmp_path, server, key):
    _a, b = synced_pair(tmp_path, fresh(server), key)
    pending_row(b, key, "lost with the file")
    conn = turso_sync.connect(b, encryption_key=key)
    conn.checkpoint()
    conn.close()
    with open(b, "wb"):
        pass  # `: > b.db`
    for name in ("b.db-wal", "b.db-shm"):
        if (tmp_path / name).exists():
            os.remove(tmp_path / name)
    err = open_fails(b, key, "b.db")
    assert "empty" in err.what
    report = ReplicaFiles(b).repair(encryption_key=key)
    assert report.kept_pending is None and "lost" in report.lines[0]
    assert (tmp_path / "b.db.damaged").exists()
    repaired = turso_sync.connect(b, encryption_key=key)
    assert repaired.execute("SELECT count(*) FROM t").fetchone() == (200,)
    assert repaired.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    repaired.close()


def test_truncated_database_is_refused(tmp_path, server, key):
    _a, b = synced_pair(tmp_path, fresh(server), key)
    conn = turso_sync.connect(b, encryption_key=key)
    conn.checkpoint()
    conn.close()
    size = os.path.getsize(b)
    os.truncate(b, (size // 4096 // 2) * 4096)
    err = open_fails(b, key, "b.db")
    assert "truncated" in err.what
    os.truncate(b, size - 100)  # not even whole pages
    assert "whole number of pages" in open_fails(b, key, "b.db").what


def test_database_of_another_replica_is_refused(tmp_path, server, key):
    a, b = synced_pair(tmp_path, fresh(server), key)
    for path in (a, b):
        conn = turso_sync.connect(path, encryption_key=key)
        conn.checkpoint()
        conn.close()
    shutil.copyfile(a, b)  # same remote, same size: only the client id tells them apart
    err = open_fails(b, key, "b.db")
    assert "another replica" in err.what
    assert [d.file for d in ReplicaFiles(b).check(key, deep=True)] == [str(b)]


def test_missing_frame_log_is_refused_and_repair_keeps_the_pending_write(tmp_path, server, key):
    url = fresh(server)
    a, b = synced_pair(tmp_path, url, key)
    pending_row(b, key, "kept through the repair")
    os.remove(tmp_path / "b.db-frames")
    err = open_fails(b, key, "b.db-frames")
    assert "missing" in err.what
    report = ReplicaFiles(b).repair(encryption_key=key)
    assert report.kept_pending == 1
    conn = turso_sync.connect(b, encryption_key=key)
    assert conn.execute("SELECT v FROM t WHERE id = 1000").fetchall() == [("kept through the repair",)]
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (201,)
    assert conn.stats().pending_changes == 1
    conn.sync()
    assert conn.stats().pending_changes == 0
    conn.close()
    assert value_seen_by(a, key) == [("kept through the repair",)]
    assert ReplicaFiles(b).check(key, deep=True) == []


def test_damaged_frame_log_and_state_are_named(tmp_path, server, key):
    _a, b = synced_pair(tmp_path, fresh(server), key)
    frames = tmp_path / "b.db-frames"
    data = bytearray(frames.read_bytes())
    data[0:8] = b"garbage!"
    frames.write_bytes(bytes(data))
    assert "damaged" in open_fails(b, key, "b.db-frames").what
    data[0:8] = b"TSFRMLG1"
    frames.write_bytes(bytes(data))
    assert ReplicaFiles(b).check(key) == []
    state = tmp_path / "b.db-sync"
    original = state.read_bytes()
    state.write_bytes(original[: len(original) // 2])  # a torn JSON document
    assert "sync state is damaged" in open_fails(b, key, "b.db-sync").what
    state.write_bytes(original)
    turso_sync.connect(b, encryption_key=key).close()


@pytest.mark.parametrize("kept", ["file", "inline"])
def test_missing_revert_file_or_damaged_inline_revert_is_named(tmp_path, server, key, kept, monkeypatch):
    a, b = synced_pair(tmp_path, fresh(server), key)
    pending_row(b, key, "pending across a pull")
    writer = turso_sync.connect(a, encryption_key=key)
    writer.execute("UPDATE t SET v = 'remote' WHERE id = 5")
    writer.commit()
    writer.sync()
    writer.close()
    if kept == "file":
        monkeypatch.setattr(pull_mod, "INLINE_REVERT_PAGES", 0)  # every revert in a file of its own
    conn = turso_sync.connect(b, encryption_key=key)
    conn.pull()  # replays the pending row: the pure remote state needs a revert
    conn.close()
    monkeypatch.undo()
    reverts = ReplicaFiles(b).revert_files()
    if kept == "file":
        assert len(reverts) == 1
        os.remove(reverts[0])
        open_fails(b, key, os.path.basename(reverts[0]))
    else:
        assert reverts == []  # kept in b.db-sync
        state_file = tmp_path / "b.db-sync"
        raw = json.loads(state_file.read_text())
        data = bytearray(base64.b64decode(raw["revert_inline"]))
        data[-1] ^= 1
        raw["revert_inline"] = base64.b64encode(bytes(data)).decode()
        state_file.write_text(json.dumps(raw))
        err = open_fails(b, key, "b.db-sync")
        assert "revert images" in err.what and "--remote URL" not in str(err)
    report = ReplicaFiles(b).repair(encryption_key=key)
    assert report.kept_pending == 1
    assert value_seen_by(b, key) == [("pending across a pull",)]


def test_lost_sync_state_is_refused_and_repair_with_the_url_keeps_the_pending_write(tmp_path, server, key):
    url = fresh(server)
    a, b = synced_pair(tmp_path, url, key)
    pending_row(b, key, "kept without -sync")
    os.remove(tmp_path / "b.db-sync")
    with pytest.raises(turso_sync.ReplicaDamagedError) as plain:
        turso_sync.connect(b, encryption_key=key)  # would otherwise open as a plain database
    assert plain.value.file.endswith("b.db-sync") and "--remote URL" in str(plain.value)
    with pytest.raises(turso_sync.ReplicaDamagedError):
        turso_sync.connect(b, url, encryption_key=key)
    with pytest.raises(turso_sync.ProgrammingError, match="remote URL is unknown"):
        ReplicaFiles(b).repair(encryption_key=key)
    report = ReplicaFiles(b).repair(encryption_key=key, remote_url=url)
    assert report.kept_pending == 1
    conn = turso_sync.connect(b, encryption_key=key)
    conn.sync()
    conn.close()
    assert value_seen_by(a, key) == [("kept without -sync",)]


def test_a_wrong_key_is_an_encryption_error_not_damage(tmp_path, server):
    a, b = synced_pair(tmp_path, fresh(server), KEY256)
    pending_row(b, KEY256, "pending across a pull")  # a revert after the next pull
    writer = turso_sync.connect(a, encryption_key=KEY256)
    writer.execute("UPDATE t SET v = 'remote' WHERE id = 5")
    writer.commit()
    writer.sync()
    writer.close()
    conn = turso_sync.connect(b, encryption_key=KEY256)
    conn.pull()
    conn.close()
    state = SyncState.load(str(b))
    assert state is not None and state.revert_seq is not None
    wrong = "ff" * 32
    with pytest.raises(turso_sync.EncryptionError, match="wrong encryption key"):
        turso_sync.connect(b, encryption_key=wrong)
    with pytest.raises(turso_sync.EncryptionError, match="is encrypted"):
        turso_sync.connect(b)


def test_a_repair_that_cannot_reach_the_remote_puts_everything_back(tmp_path, server):
    _a, b = synced_pair(tmp_path, fresh(server), None)
    pending_row(b, None, "still pending")
    os.remove(tmp_path / "b.db-frames")
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(turso_sync.NetworkError):
        ReplicaFiles(b).repair(remote_url="http://127.0.0.1:9/nowhere")
    assert sorted(os.listdir(tmp_path)) == before
    assert ReplicaFiles(b).repair().kept_pending == 1  # its own URL, reachable: nothing was lost
    assert value_seen_by(b, None) == [("still pending",)]
