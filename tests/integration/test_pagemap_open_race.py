"""A connection's first read of page 1, while another process's checkpoint is writing it (hardened files).

SQLite reads page 1 from the database file before it opens the WAL: on a connection's first
read, when it found no WAL file yet, it reads page 1 from the file, sees the header say "WAL",
opens the WAL and reads page 1 again through it.  That first read is outside the WAL's
protection: another process may have created the WAL since, committed and be checkpointing page 1
into the file.  A hardened file's page map records the new image only when the checkpoint's
write cycle ends, so the image read in between is one the map does not hold yet, and the open
failed with "an older image of the page was put back" (seen once in CI in
``test_envelope_processes.py``, and about once in 500 opens of three to six writing processes).

Here the race is made certain: a child process commits a change to page 1 and checkpoints it,
holding its write cycle open after writing the page; the parent opens a connection that is told
no WAL exists (the state SQLite saw before the child created it) and reads.  The read must wait
for the cycle, then take the image the map now records; a page 1 actually changed on disk is
still refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import apsw
import pytest

from tests.childlines import ChildLines
from tests.conftest import KEY256
from turso_sync import errors
from turso_sync.local import vfs
from turso_sync.local.connection import Connection

_CHECKPOINTER = textwrap.dedent(
    """
    import sys
    from turso_sync.local import pagemap
    from turso_sync.local.connection import Connection

    real_finish = pagemap.PageMap.finish
    armed = []

    def paused_finish(self):
        if armed and self.in_cycle:  # the checkpoint wrote its pages; the map is not saved yet
            armed.clear()
            print("page-1-written", flush=True)
            sys.stdin.readline()
        real_finish(self)

    pagemap.PageMap.finish = paused_finish
    conn = Connection(sys.argv[1], encryption_key=sys.argv[2])
    conn.execute("CREATE TABLE u (x)")  # a schema change: page 1 changes
    conn.commit()
    armed.append(True)
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    print("checkpointed", flush=True)
    sys.stdin.readline()
    conn.close()
    """
)


def _hide_the_wal_once(monkeypatch: pytest.MonkeyPatch, db_path: str) -> list[str]:
    """Make this process's next look for ``<db>-wal`` find none, as before the child made it."""
    hidden: list[str] = []

    def x_access(self: vfs.TursoVFS, name: str, flags: int) -> bool:
        if name.endswith("-wal") and not hidden and os.path.realpath(name[:-4]) == os.path.realpath(db_path):
            hidden.append(name)
            return False
        return apsw.VFS.xAccess(self, name, flags)

    monkeypatch.setattr(vfs.TursoVFS, "xAccess", x_access, raising=False)
    return hidden


def _database(path: Path) -> None:
    conn = Connection(path, encryption_key=KEY256, cipher="envelope")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"row {i}") for i in range(50)])
    conn.commit()
    conn.close()  # the last connection: the WAL is checkpointed and removed


def _child(path: Path) -> tuple[subprocess.Popen[bytes], ChildLines]:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHECKPOINTER, str(path), KEY256],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    return child, ChildLines(child)


def _tell(child: subprocess.Popen[bytes]) -> None:
    assert child.stdin is not None
    child.stdin.write(b"\n")
    child.stdin.flush()


def test_a_first_read_during_a_checkpoint_of_page_1_waits_for_it(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "db"
    _database(path)
    child, lines = _child(path)
    try:
        assert lines.readline() == "page-1-written"
        hidden = _hide_the_wal_once(monkeypatch, str(path))
        released: list[bool] = []

        def release_later() -> None:  # the cycle ends while the parent's read waits for it
            threading.Event().wait(0.3)
            released.append(True)
            _tell(child)

        releaser = threading.Thread(target=release_later)
        releaser.start()
        conn = Connection(path, encryption_key=KEY256)
        try:
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (50,)
            assert conn.execute("SELECT count(*) FROM sqlite_schema WHERE name = 'u'").fetchone() == (1,)
        finally:
            conn.close()
        releaser.join()
        assert hidden, "SQLite never looked for the WAL: the test no longer reaches the race"
        assert released == [True]
        assert lines.readline() == "checkpointed"
        _tell(child)
        assert child.wait(timeout=60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_page_1_changed_on_disk_is_still_refused_after_waiting(tmp_path: Path) -> None:
    path = tmp_path / "db"
    _database(path)
    with open(path, "r+b") as f:  # one byte of page 1's ciphertext flipped: no write is under way
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(errors.Error):
        conn = Connection(path, encryption_key=KEY256)
        try:
            conn.execute("SELECT count(*) FROM t").fetchone()
        finally:
            conn.close()
