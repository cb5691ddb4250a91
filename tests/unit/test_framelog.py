"""The frame log across processes: a prune that replaces the file never swallows another's archive."""

from __future__ import annotations

import os

from turso_sync.local import framelog
from turso_sync.local.engine import LocalDatabase
from turso_sync.local.framelog import FrameLog


def test_archive_that_waited_on_a_pruned_log_lands_in_the_new_file(tmp_path, monkeypatch):
    db = LocalDatabase(tmp_path / "db")
    conn = db.connect()
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.commit()
    for i in range(5):
        conn.execute("INSERT INTO t VALUES (?, ?)", (i, "x" * 100))
        conn.commit()
    db.checkpoint()  # archived: seq 1..6 in the log
    conn.execute("INSERT INTO t VALUES (99, 'the one to archive')")
    conn.commit()  # seq 7, still only in the WAL
    newest = db.current_seq()

    # another process's view of the log opens the file, and before it gets the lock the owner
    # prunes (which replaces the file): exactly the interleaving of two real processes
    other = FrameLog(db.path, None, db.page_size)
    real_open = os.open
    pruned = []

    def open_then_prune(path, flags, *args):
        fd = real_open(path, flags, *args)
        if path == other.path and not pruned:
            pruned.append(True)
            db.prune_history(newest - 1)
        return fd

    monkeypatch.setattr(framelog.os, "open", open_then_prune)
    assert other.archive() == 1
    monkeypatch.undo()
    assert pruned

    fresh = FrameLog(db.path, None, db.page_size)
    assert fresh.current_seq() == newest  # (loads the header: base_seq is the pruned point)
    # archived in the file that bears the name (not only still in the WAL, which a checkpoint empties)
    assert [record.seq for record in fresh._index] == [newest]
    (kept,) = list(fresh.history(fresh.base_seq))
    assert b"the one to archive" in b"".join(page.post for page in kept.pages)
    conn.close()
    db.close()


def test_a_deleted_log_refuses_the_checkpoint_instead_of_losing_history(tmp_path):
    db = LocalDatabase(tmp_path / "db")
    conn = db.connect()
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    conn.commit()
    wal_before = os.path.getsize(db.path + "-wal")
    os.remove(db.path + "-frames")
    try:
        db.checkpoint()
    except Exception as exc:  # the VFS refuses the backfill and says why
        assert "frame log" in str(exc)
    assert os.path.getsize(db.path + "-wal") >= wal_before  # every frame still in the WAL
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    conn.close()
    db.close()  # the last close's checkpoint is refused too, quietly: the WAL keeps the frames
    assert os.path.getsize(db.path + "-wal") >= wal_before


def test_a_reused_inode_number_does_not_keep_a_stale_index(tmp_path):
    db = LocalDatabase(tmp_path / "db")
    conn = db.connect()
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.commit()
    db.checkpoint()
    reader = FrameLog(db.path, None, db.page_size)  # another process's view, index cached while small
    assert [txn.seq for txn in reader.history(0)] == [1]
    for i in range(8):
        conn.execute("INSERT INTO t VALUES (?, ?)", (i, "y" * 3000))
        conn.commit()
        db.checkpoint()
    db.prune_history(3)  # a new, larger file; the filesystem may give it the old one's inode number
    st = os.stat(reader.path)
    reader._identity = (st.st_ino, st.st_dev)  # as if it had: the cached index must still go
    assert [txn.seq for txn in reader.history(3)] == [4, 5, 6, 7, 8, 9]
    assert all(page.post for txn in reader.history(3) for page in txn.pages)
    conn.close()
    db.close()
