"""A killed install while another process holds the database: the engine honours the wal-index.

The installer (a child process) appends its frames, syncs them, and is killed with SIGKILL right
before it tells the wal-index (in place, or by marking it stale: ``install.publish``).  The parent
keeps the database open the whole time, so its SQLite trusts the wal-index (``mxFrame``) and never
sees those frames; its next commit overwrites them.  Nothing may count the dead install: not
``current_seq``, not the history, not the frame log once archived; and the parent's commit must be
numbered, archived and replayable exactly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.childlines import ChildLines
from tests.conftest import KEY256
from turso_sync.local.engine import LocalDatabase

P = 4096

_INSTALLER = textwrap.dedent(
    """
    import sys
    from turso_sync.local import install
    from turso_sync.local.engine import LocalDatabase

    def stop_here(db_path, commit, handed=None):  # the frames are durable; the wal-index is not told yet
        print("frames-durable", flush=True)
        sys.stdin.readline()  # killed here

    install.publish = stop_here
    db = LocalDatabase(sys.argv[1], encryption_key=sys.argv[2] or None)
    page = db.snapshot(pgnos=[int(sys.argv[3])]).pages[int(sys.argv[3])]
    marked = page.replace(b"parent-row", b"INSTALLED!", 1)
    size = db.snapshot(pgnos=[1]).db_size
    print("ready", flush=True)
    db.install_pages({int(sys.argv[3]): marked, 1: db.snapshot(pgnos=[1]).pages[1]}, size)
    """
)


@pytest.mark.parametrize("key", [None, KEY256], ids=["plaintext", "encrypted"])
def test_killed_install_is_not_counted_and_the_next_commit_is(tmp_path, key):
    path = tmp_path / "db"
    db = LocalDatabase(path, encryption_key=key)
    app = db.connect()
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    app.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"parent-row {i}") for i in range(50)])
    app.commit()
    (leaf,) = app.execute("SELECT rootpage FROM sqlite_schema WHERE name = 't'").fetchone()
    before = db.current_seq()
    rows_before = app.execute("SELECT * FROM t ORDER BY id").fetchall()

    child = subprocess.Popen(
        [sys.executable, "-c", _INSTALLER, str(path), key or "", str(leaf)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        lines = ChildLines(child)
        assert lines.readline() == "ready"
        assert lines.readline() == "frames-durable"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    # the frames are on disk, committed by their checksums, but SQLite here never saw them
    assert app.execute("SELECT * FROM t ORDER BY id").fetchall() == rows_before
    assert db.current_seq() == before, "the dead install was numbered"
    assert [txn.seq for txn in db.history(before)] == []

    # the parent's next commit reuses those frame slots; it is the one that gets the next number
    app.execute("UPDATE t SET v = 'after the kill' WHERE id = 7")
    app.commit()
    assert db.current_seq() == before + 1
    (txn,) = list(db.history(before))
    assert txn.pages == db.snapshot(pgnos=list(txn.pages)).pages  # its images are what SQLite has
    db.checkpoint()  # archived: the frame log keeps exactly that transaction
    (archived,) = list(db.history(before))
    assert archived.seq == before + 1 and archived.pages == txn.pages
    # a fresh process agrees: the parent's write, no trace of the install, an intact file
    other = LocalDatabase(path, encryption_key=key)
    check = other.connect()
    assert check.execute("SELECT v FROM t WHERE id = 7").fetchone() == ("after the kill",)
    assert check.execute("SELECT count(*) FROM t WHERE v LIKE 'INSTALLED%'").fetchone() == (0,)
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    check.close()
    other.close()
    # and a later install by the surviving process is counted once, after it
    page = db.snapshot(pgnos=[leaf]).pages[leaf]
    size = db.snapshot(pgnos=[1]).db_size
    seq = db.install_pages({leaf: page.replace(b"parent-row", b"REINSTALLD", 1)}, size)
    assert seq == before + 2
    assert app.execute("SELECT count(*) FROM t WHERE v LIKE 'REINSTALLD%'").fetchone() == (1,)
    app.close()
    db.close()
