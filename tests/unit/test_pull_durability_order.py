"""A pull's files reach the disk in an order a power loss cannot break, with one sync of the folder.

When the revert is too large to travel in the state (``INLINE_REVERT_PAGES``, here set to 0), the
revert file is renamed into place before the state file that names it, and the folder is synced
after both renames, before the pull returns: whatever a crash keeps of the folder, a state that names
a revert file comes with it (``sync/pull.py``, ``write_revert(sync_folder=False)``).  A small revert
is part of the state file (``tests/unit/test_pull_inline_revert.py``).
"""

from __future__ import annotations

import os

import turso_sync
from tests.unit.fake_remote import FakeRemote, sqlite_pages
from turso_sync.sync import pull as pull_mod
from turso_sync.sync import state as state_mod

URL = "https://remote.invalid"
SCHEMA = "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'base');"


def test_the_state_naming_a_revert_file_is_synced_after_the_revert_files_rename(tmp_path, monkeypatch):
    remote_file = tmp_path / "remote.db"
    remote = FakeRemote("r1", sqlite_pages(remote_file, SCHEMA))
    conn = turso_sync.connect(tmp_path / "a.db", URL, transport=remote.transport())
    try:
        conn.execute("UPDATE t SET v = 'local' WHERE id = 1")  # pending: the rebase writes, a revert file is kept
        conn.commit()
        nxt = remote_file.with_suffix(".r2")
        remote.pages = sqlite_pages(nxt, "INSERT INTO t VALUES (2, 'remote');", start_from=remote_file)
        remote.revision = "r2"

        events: list[tuple[str, str]] = []
        real_replace, real_fsync_dir = os.replace, state_mod.fsync_dir

        def replace(src, dst):
            events.append(("rename", os.path.basename(str(dst))))
            real_replace(src, dst)

        def fsync_dir(path):
            events.append(("sync folder", os.path.basename(str(path))))
            real_fsync_dir(path)

        monkeypatch.setattr(pull_mod, "INLINE_REVERT_PAGES", 0)  # every revert in a file
        monkeypatch.setattr(state_mod.os, "replace", replace)
        monkeypatch.setattr(state_mod, "fsync_dir", fsync_dir)
        result = conn.replica.pull()
        monkeypatch.undo()
        assert result and result.changed
        seq = conn.replica.state.revert_seq
        revert, state = f"a.db-revert-{seq}", "a.db-sync"
        assert os.path.exists(tmp_path / revert)
        renames = [name for kind, name in events if kind == "rename"]
        syncs = [i for i, (kind, _name) in enumerate(events) if kind == "sync folder"]
        assert renames.index(revert) < renames.index(state)
        assert len(syncs) == 1, f"one sync of the folder per pull, got {events}"
        assert syncs[0] > events.index(("rename", state))  # after both renames
        assert conn.execute("SELECT id, v FROM t ORDER BY id").fetchall() == [(1, "local"), (2, "remote")]
    finally:
        conn.close()
