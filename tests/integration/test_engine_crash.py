"""kill -9 during an install and during writes: the database and its history stay whole."""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import KEY256
from turso_sync.local.engine import LocalDatabase

pytestmark = pytest.mark.slow
P = 4096

_INSTALLER = textwrap.dedent(
    """
    import pickle, sys
    from turso_sync.local.engine import LocalDatabase
    db = LocalDatabase(sys.argv[1], encryption_key=sys.argv[2])
    reader = db.connect()
    reader.execute("SELECT count(*) FROM t").fetchone()
    with open(sys.argv[3], "rb") as f:
        pages, size = pickle.load(f)
    print("ready", flush=True)
    sys.stdin.readline()
    db.install_pages(pages, size)
    print("installed", flush=True)
    sys.stdin.readline()
    """
)


def _digest(db: LocalDatabase) -> str:
    conn = db.connect()
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return hashlib.sha256(conn.apsw_connection.serialize("main")).hexdigest()
    finally:
        conn.close()


def test_kill_during_install_leaves_old_or_new_state(tmp_path):
    seed = int(os.environ.get("CRASH_SEED", random.randrange(1 << 30)))
    print("seed", seed)
    rnd = random.Random(seed)
    src_path = tmp_path / "src.db"
    src_db = LocalDatabase(src_path, encryption_key=KEY256)
    src = src_db.connect()
    src.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    src.executemany("INSERT INTO t(v) VALUES (?)", [(f"base {i}" * 20,) for i in range(300)])
    src.commit()
    src_db.checkpoint()
    base_seq = src_db.current_seq()
    base_files = {s: (tmp_path / f"src.db{s}").read_bytes() for s in ("", "-frames")}
    old_digest = _digest(src_db)
    src.executemany("INSERT INTO t(v) VALUES (?)", [(os.urandom(600).hex(),) for _ in range(2500)])
    src.execute("UPDATE t SET v = 'changed' WHERE id < 100")
    src.commit()
    new_digest = _digest(src_db)
    pages: dict[int, bytes] = {}
    size = 0
    for txn in src_db.history(base_seq):
        pages.update(txn.pages)
        size = txn.db_size
    pages = {p: v for p, v in pages.items() if p <= size}
    batch = tmp_path / "batch.pickle"
    batch.write_bytes(pickle.dumps((pages, size)))
    src.close()
    src_db.close()

    outcomes = {"old": 0, "new": 0}
    for run in range(50):
        target = tmp_path / f"dst{run}.db"
        for suffix, data in base_files.items():
            (tmp_path / f"dst{run}.db{suffix}").write_bytes(data)
        child = subprocess.Popen(
            [sys.executable, "-c", _INSTALLER, str(target), KEY256, str(batch)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdin is not None and child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        child.stdin.write("\n")
        child.stdin.flush()
        # a random point inside the install (it takes tens of milliseconds for these pages)
        os.sched_yield()
        _spin(rnd.uniform(0, 0.25))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        db = LocalDatabase(target, encryption_key=KEY256)
        digest = _digest(db)
        db.close()
        assert digest in (old_digest, new_digest), f"run {run}: neither the old nor the new state"
        outcomes["old" if digest == old_digest else "new"] += 1
    print("outcomes", outcomes)
    assert sum(outcomes.values()) == 50


def _spin(seconds: float) -> None:
    """Busy-wait: picks the kill moment (this is not waiting for a condition)."""
    import time

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


_WRITER = textwrap.dedent(
    """
    import os, random, sys
    import turso_sync
    conn = turso_sync.connect(sys.argv[1], encryption_key=sys.argv[2])
    rnd = random.Random(int(sys.argv[3]))
    if rnd.random() < 0.5:
        conn.execute("PRAGMA cache_size=10")
    for i in range(100000):
        rows = [(os.urandom(rnd.randint(10, 1500)).hex(),) for _ in range(rnd.randint(1, 40))]
        conn.executemany("INSERT INTO t(v) VALUES (?)", rows)
        conn.commit()
        print(i, flush=True)
        if rnd.random() < 0.1:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    """
)


def test_kill_during_writes_keeps_history_complete(tmp_path):
    seed = int(os.environ.get("CRASH_SEED", random.randrange(1 << 30)))
    print("seed", seed)
    rnd = random.Random(seed)
    path = tmp_path / "w.db"
    db = LocalDatabase(path, encryption_key=KEY256)
    conn = db.connect()
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.commit()
    base_seq, base = db.current_seq(), conn.apsw_connection.serialize("main")
    conn.close()
    db.close()
    for run in range(20):
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), KEY256, str(rnd.randrange(1 << 30))],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        wanted = rnd.randint(1, 60)
        for _ in range(wanted):
            if not child.stdout.readline():
                break
        _spin(rnd.uniform(0, 0.02))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        db = LocalDatabase(path, encryption_key=KEY256)
        conn = db.connect()
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        history = list(db.history(base_seq))
        assert [t.seq for t in history] == list(range(base_seq + 1, base_seq + 1 + len(history))), f"run {run}"
        img = bytearray(base)
        for txn in history:
            img[txn.db_size * P :] = b""
            img += bytes(max(0, txn.db_size * P - len(img)))
            for pgno, data in txn.pages.items():
                img[(pgno - 1) * P : pgno * P] = data
        assert bytes(img) == conn.apsw_connection.serialize("main"), f"run {run}: history does not rebuild the db"
        conn.close()
        db.close()
