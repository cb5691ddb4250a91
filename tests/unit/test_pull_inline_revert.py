"""A pull keeps a small revert inside the sync state, a large one in a file (``sync/state.py``).

A typical pull (page 1 and the few pages its rebase rewrote) writes no revert file and removes
none: its bookkeeping is one durable file write.  A large rebase still writes a file; a state of
the old shape (a revert file named by ``revert_seq``, no ``revert_inline``) is read, and the next
pull moves it to the new shape.  A damaged inline revert is damage, named like a damaged file.
"""

from __future__ import annotations

import base64
import glob
import json
import os
import re
from pathlib import Path

import pytest

import turso_sync
from tests.conftest import KEY256
from tests.unit.fake_remote import FakeRemote, sqlite_pages
from turso_sync.sync import state as state_mod
from turso_sync.sync.files import ReplicaFiles
from turso_sync.sync.state import (
    INLINE_REVERT_DAMAGED,
    INLINE_REVERT_PAGES,
    SyncState,
    read_inline_revert,
    revert_path,
    swept_reverts,
    write_revert,
)

URL = "https://remote.invalid"
ROWS = 200  # the remote's table spans more pages than INLINE_REVERT_PAGES
SCHEMA = (
    "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);"
    f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS}) "
    "INSERT INTO t SELECT i, printf('base-%d-%.300c', i, 'x') FROM n;"
)


class Remote:
    """A fake remote whose database moves on one script at a time."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.file = tmp_path / "remote-1.db"
        self.fake = FakeRemote("r1", sqlite_pages(self.file, SCHEMA))
        self.n = 1

    def advance(self, script: str) -> None:
        self.n += 1
        nxt = self.dir / f"remote-{self.n}.db"
        self.fake.pages = sqlite_pages(nxt, script, start_from=self.file)
        self.file = nxt
        self.fake.revision = f"r{self.n}"


def open_replica(path: Path, remote: Remote, key: str | None) -> turso_sync.Connection:
    return turso_sync.connect(path, URL, transport=remote.fake.transport(), encryption_key=key)


def revert_files(path: Path) -> list[str]:
    return sorted(glob.glob(f"{path}-revert-*"))


def saved_state(path: Path) -> SyncState:
    state = SyncState.load(str(path))
    assert state is not None
    return state


def local_update(conn: turso_sync.Connection, where: str = "id = 1", value: str = "local") -> None:
    conn.execute(f"UPDATE t SET v = ? || id WHERE {where}", (value,))  # pending: the next pull replays it
    conn.commit()


@pytest.fixture(params=["plaintext", "encrypted"])
def key(request: pytest.FixtureRequest) -> str | None:
    return KEY256 if request.param == "encrypted" else None


def test_a_small_revert_is_kept_in_the_state_and_no_revert_file_is_written(tmp_path, key):
    remote = Remote(tmp_path)
    path = tmp_path / "a.db"
    conn = open_replica(path, remote, key)
    try:
        local_update(conn)
        remote.advance("INSERT INTO t VALUES (1001, 'remote');")
        assert conn.pull()
        assert revert_files(path) == []
        state = saved_state(path)
        assert state.revert_seq == state.synced_seq and state.revert_inline is not None
        pages = read_inline_revert(conn.replica.path, state, conn.replica.db.codec)
        assert 1 in pages and len(pages) <= INLINE_REVERT_PAGES
        # the next pull rebuilds the synced base from those images
        local_update(conn, "id = 2")
        remote.advance("INSERT INTO t VALUES (1002, 'remote'); UPDATE t SET v = 'remote' WHERE id = 3;")
        assert conn.pull()
        assert revert_files(path) == []
        rows = conn.execute("SELECT id, v FROM t WHERE id IN (1, 2, 3, 1001, 1002) ORDER BY id").fetchall()
        assert rows == [(1, "local1"), (2, "local2"), (3, "remote"), (1001, "remote"), (1002, "remote")]
    finally:
        conn.close()
    assert ReplicaFiles(path).check(key) == []


def test_a_large_rebase_writes_a_revert_file_and_a_small_one_moves_back_into_the_state(tmp_path, key):
    remote = Remote(tmp_path)
    path = tmp_path / "a.db"
    conn = open_replica(path, remote, key)
    try:
        local_update(conn, "1")  # every row: the rebase rewrites every page of the table
        remote.advance("INSERT INTO t VALUES (1001, 'remote');")
        assert conn.pull()
        state = saved_state(path)
        assert state.revert_inline is None
        assert revert_files(path) == [revert_path(str(path), state.synced_seq)]
        assert ReplicaFiles(path).check(key) == []
        conn.push()  # nothing pending any more (the fake remote keeps its pages as they are)
        remote.advance("INSERT INTO t VALUES (1002, 'remote');")
        local_update(conn, "id = 5", "again")
        assert conn.pull()
        state = saved_state(path)
        assert state.revert_inline is not None and revert_files(path) == []
        rows = conn.execute("SELECT id, v FROM t WHERE id IN (5, 1001, 1002) ORDER BY id").fetchall()
        assert rows == [(5, "again5"), (1001, "remote"), (1002, "remote")]
    finally:
        conn.close()
    assert ReplicaFiles(path).check(key) == []


def test_an_old_shape_state_with_a_revert_file_is_read_and_then_moved_into_the_state(tmp_path, key):
    remote = Remote(tmp_path)
    path = tmp_path / "a.db"
    conn = open_replica(path, remote, key)
    local_update(conn)
    remote.advance("INSERT INTO t VALUES (1001, 'remote');")
    conn.pull()
    state = saved_state(path)
    codec = conn.replica.db.codec
    pages = read_inline_revert(conn.replica.path, state, codec)
    conn.close()
    # what a pull of the previous version leaves: a revert file, and a state without the field
    assert state.revert_seq is not None
    write_revert(str(path), state.revert_seq, pages, codec)
    raw = json.loads((tmp_path / "a.db-sync").read_text())
    del raw["revert_inline"]
    (tmp_path / "a.db-sync").write_text(json.dumps(raw, indent=1, sort_keys=True))
    old = saved_state(path)
    assert old.revert_inline is None and old.revert_seq == state.revert_seq
    assert ReplicaFiles(path).check(key) == []

    conn = open_replica(path, remote, key)
    try:
        local_update(conn, "id = 2")
        remote.advance("UPDATE t SET v = 'remote' WHERE id = 3;")
        assert conn.pull()
        new = saved_state(path)
        assert new.revert_inline is not None and new.revert_seq == new.synced_seq
        assert revert_files(path) == []  # the old file went once the state no longer named it
        rows = conn.execute("SELECT id, v FROM t WHERE id IN (1, 2, 3, 1001) ORDER BY id").fetchall()
        assert rows == [(1, "local1"), (2, "local2"), (3, "remote"), (1001, "remote")]
    finally:
        conn.close()
    assert ReplicaFiles(path).check(key) == []


def tamper_inline(path: Path, change) -> None:
    state_file = Path(f"{path}-sync")
    raw = json.loads(state_file.read_text())
    raw["revert_inline"] = change(raw["revert_inline"])
    state_file.write_text(json.dumps(raw, indent=1, sort_keys=True))


def flip_last_image_byte(value: str) -> str:
    data = bytearray(base64.b64decode(value))
    data[-1] ^= 1
    return base64.b64encode(bytes(data)).decode()


@pytest.mark.parametrize(
    "change",
    [flip_last_image_byte, lambda value: value[:-8], lambda value: "not base64!"],
    ids=["a flipped byte", "cut short", "not base64"],
)
def test_a_damaged_inline_revert_is_reported_by_verify_and_refused_on_open(tmp_path, key, change):
    remote = Remote(tmp_path)
    path = tmp_path / "a.db"
    conn = open_replica(path, remote, key)
    local_update(conn)
    remote.advance("INSERT INTO t VALUES (1001, 'remote');")
    conn.pull()
    conn.close()
    tamper_inline(path, change)
    found = ReplicaFiles(path).check(key)
    assert [d.file for d in found] == [str(tmp_path / "a.db-sync")]
    assert found[0].what.startswith(INLINE_REVERT_DAMAGED) and not found[0].database
    with pytest.raises(turso_sync.ReplicaDamagedError) as refused:
        open_replica(path, remote, key)
    # the URL is still readable: the remedy is a plain repair
    assert "verify --repair" in refused.value.remedy and "--remote URL" not in refused.value.remedy


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"revert_seq": 3, "revert_inline": 5}, "'revert_inline' holds 5"),
        ({"revert_seq": 3, "revert_inline": ["x"]}, "'revert_inline' holds"),
        ({"revert_seq": None, "revert_inline": "VFNSRVZSVDE="}, "no revert_seq"),
    ],
)
def test_a_malformed_inline_revert_field_is_damage_not_a_python_error(tmp_path, fields, said):
    state_file = tmp_path / "a.db-sync"
    state_file.write_text(json.dumps({"remote_url": URL, "client_id": "c", **fields}))
    with pytest.raises(turso_sync.ReplicaDamagedError, match=said) as damaged:
        SyncState.load(str(tmp_path / "a.db"))
    assert damaged.value.file == str(state_file)


def test_a_typical_pull_neither_lists_nor_removes_revert_files(tmp_path, monkeypatch):
    remote = Remote(tmp_path)
    path = tmp_path / "a.db"
    conn = open_replica(path, remote, None)
    try:
        local_update(conn)
        remote.advance("INSERT INTO t VALUES (1001, 'remote');")
        conn.pull()  # the first pull of this process on the replica looks for leftovers once
        calls: list[str] = []
        real_listdir, real_remove = os.listdir, os.remove
        monkeypatch.setattr(state_mod.os, "listdir", lambda p: calls.append("listdir") or real_listdir(p))
        monkeypatch.setattr(state_mod.os, "remove", lambda p: calls.append("remove") or real_remove(p))
        events: list[str] = []
        real_replace, real_fsync_dir = os.replace, state_mod.fsync_dir
        monkeypatch.setattr(
            state_mod.os, "replace", lambda s, d: events.append(os.path.basename(d)) or real_replace(s, d)
        )
        monkeypatch.setattr(state_mod, "fsync_dir", lambda p: events.append("sync folder") or real_fsync_dir(p))
        local_update(conn, "id = 2")
        remote.advance("INSERT INTO t VALUES (1002, 'remote');")
        assert conn.pull()
        monkeypatch.undo()
        assert calls == []
        assert events == ["a.db-sync", "sync folder"]  # one file renamed into place, then the folder synced
    finally:
        conn.close()


def test_a_revert_file_no_state_names_is_removed_by_the_first_pull_of_a_process(tmp_path):
    remote = Remote(tmp_path)
    path = tmp_path / "a.db"
    conn = open_replica(path, remote, None)
    try:
        local_update(conn)
        remote.advance("INSERT INTO t VALUES (1001, 'remote');")
        conn.pull()
        # what a process killed between a revert file's rename and its state's leaves
        stray = revert_path(conn.replica.path, 99)
        Path(stray).write_bytes(b"left by a killed pull")
        Path(stray + ".tmp").write_bytes(b"cut short")
        remote.advance("INSERT INTO t VALUES (1002, 'remote');")
        conn.pull()
        assert os.path.exists(stray)  # this process has looked already
        swept_reverts.discard(conn.replica.path)  # as in a new process
        remote.advance("INSERT INTO t VALUES (1003, 'remote');")
        conn.pull()
        assert revert_files(path) == []
    finally:
        conn.close()


def killed_pull(path: Path, remote: Remote, at: int) -> list[str]:
    """Pull in a child process that dies (``os._exit``, like kill -9: nothing is closed or cleaned)
    at the ``at``-th step of the pull's bookkeeping: a rename, the folder's sync or a removal."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        steps: list[str] = []

        def step(name: str) -> None:
            steps.append(name)
            os.write(write, (name + "\n").encode())
            if len(steps) == at:
                os._exit(0)

        real_replace, real_remove, real_fsync_dir = os.replace, os.remove, state_mod.fsync_dir
        state_mod.os.replace = lambda s, d: step("rename " + os.path.basename(d)) or real_replace(s, d)
        state_mod.os.remove = lambda p: step("remove " + os.path.basename(p)) or real_remove(p)
        state_mod.fsync_dir = lambda p: step("sync folder") or real_fsync_dir(p)
        try:
            conn = open_replica(path, remote, None)
            conn.pull()
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as lines:
        seen = lines.read().splitlines()
    os.waitpid(pid, 0)
    return seen


@pytest.mark.parametrize("at", range(1, 6))
@pytest.mark.parametrize("shape", ["small after small", "large after small", "small after large"])
def test_a_pull_killed_at_any_step_of_its_bookkeeping_leaves_a_consistent_pair(tmp_path, shape, at):
    remote = Remote(tmp_path)
    path = tmp_path / "a.db"
    conn = open_replica(path, remote, None)
    first_large, second_large = shape == "small after large", shape == "large after small"
    every_row = f"id <= {ROWS}"  # the rebase rewrites every page of the table
    local_update(conn, every_row if first_large else "id = 1")
    remote.advance("INSERT INTO t VALUES (1001, 'remote');")
    conn.pull()
    assert (revert_files(path) != []) == first_large
    if first_large:
        conn.push()  # nothing pending any more (the fake remote keeps its pages as they are)
    local_update(conn, every_row if second_large else "id = 2", "again")
    conn.close()
    remote.advance("INSERT INTO t VALUES (1002, 'remote');")
    seen = [re.sub(r"revert-\d+", "revert-N", step) for step in killed_pull(path, remote, at)]
    whole = {  # then the frame log's prune (os.replace is the os module's: its rename is a step too)
        "small after small": ["rename a.db-sync", "sync folder", "rename a.db-frames"],
        "large after small": ["rename a.db-revert-N", "rename a.db-sync", "sync folder", "rename a.db-frames"],
        "small after large": ["rename a.db-sync", "sync folder", "remove a.db-revert-N", "rename a.db-frames"],
    }[shape]
    assert seen == whole[:at]
    assert ReplicaFiles(path).check() == []
    swept_reverts.discard(str(path.resolve()))  # the next pull is a new process's first
    remote.advance("INSERT INTO t VALUES (1003, 'remote');")  # so that it installs
    conn = open_replica(path, remote, None)
    try:
        conn.pull()
        rows = conn.execute("SELECT id, v FROM t WHERE id IN (2, 1001, 1002, 1003) ORDER BY id").fetchall()
        assert rows == [(2, "again2"), (1001, "remote"), (1002, "remote"), (1003, "remote")]
        state = saved_state(path)
        kept = [revert_path(str(path.resolve()), state.revert_seq)] if state.revert_inline is None else []
        assert revert_files(path) == kept  # nothing left behind by the killed pull
    finally:
        conn.close()
    assert ReplicaFiles(path).check() == []
