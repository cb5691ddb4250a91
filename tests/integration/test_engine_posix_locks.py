"""The engine must not drop SQLite's POSIX locks (found while testing the daemon, issue 5).

SQLite locks the database file and ``-shm`` with fcntl (POSIX) locks, which belong to the
process, not to the descriptor: closing *any* descriptor of the file drops *every* lock the
process holds on it.  SQLite's own VFS never closes a descriptor of a locked file for that
reason.  The engine opens and closes these files itself (``install.invalidate_wal_index``
opens and closes ``-shm``; ``LocalDatabase.page_reader``, ``_read_current`` and the frame log's
``_wal_txns`` open and close the database file), so after a pull every connection of that
process is left without its dead-man-switch lock on ``-shm`` and without its SHARED lock on the
database file, while SQLite believes it still holds them.  Another process may then reset the
wal-index, restart the WAL over frames this process still reads, or take locks it must not get.

Observed effect: with two agents syncing one replica from one process (a puller and a pusher,
as a two-thread daemon did) while another process writes and the primary is killed and
restarted, about one run in ten ends with a replica at the primary's revision but missing rows
the primary has (its local ``pull_gen`` behind the primary's record of it, so every later push
fails).  Never seen with the agents in separate processes.

Each test probes from a child process whether a lock is still held after the engine touched
the file.  The engine now reads and writes these files only through one descriptor per file
that stays open until the process's last connection to the database closes
(``DatabaseState.descriptor`` in turso_sync/local/vfs.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import turso_sync
from tests.conftest import KEY256
from turso_sync.local.engine import LocalDatabase
from turso_sync.local.install import invalidate_wal_index

PROBE = r"""
import fcntl, os, sys
path, offset, length = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(path, os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, length, offset)
    print("free")
except OSError:
    print("held")
"""
SHM_DMS = (128, 1)  # the wal-index dead-man switch: every connection holds it shared
DB_SHARED = (0x40000002, 510)  # SQLite's SHARED lock range on the database file


def lock_state(path: str, where: tuple[int, int]) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE, path, str(where[0]), str(where[1])], capture_output=True)
    return out.stdout.decode().strip()


@pytest.fixture
def conn(tmp_path: Path):
    c = turso_sync.connect(tmp_path / "x.db", encryption_key=KEY256)
    c.execute("CREATE TABLE t (x)")
    c.execute("INSERT INTO t VALUES (1)")
    c.commit()
    c.execute("SELECT * FROM t").fetchall()
    assert lock_state(c.path + "-shm", SHM_DMS) == "held"
    assert lock_state(c.path, DB_SHARED) == "held"
    yield c
    c.close()


def test_invalidating_the_wal_index_keeps_the_processes_shm_locks(conn):
    invalidate_wal_index(conn.path)
    assert lock_state(conn.path + "-shm", SHM_DMS) == "held"


def test_reading_current_pages_keeps_the_processes_database_lock(conn):
    db = LocalDatabase(conn.path, encryption_key=KEY256)
    try:
        with db.write_lock():
            db.page_reader()(1)
        assert lock_state(conn.path, DB_SHARED) == "held"
    finally:
        db.close()
