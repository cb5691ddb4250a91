"""kill -9 a writer on an envelope replica: every committed transaction survives, and still pushes.

The replica is an encrypted replica of a default ``tursodb`` (pages reserve no bytes), so its
files are in the envelope layout.  A child process writes transactions of varied shape (one row
to hundreds, blobs over several pages, small page caches that spill uncommitted pages into the
WAL, rollbacks, ``wal_checkpoint(TRUNCATE)`` in between) and prints ``commit <id>`` only after
``commit()`` returned.  The parent SIGKILLs it at seeded random moments, and after each kill
checks that the replica opens with its key, ``integrity_check`` is ok, its files are whole, every
transaction is all-or-none and every announced commit is there.  At the end the replica pushes,
and a plaintext replica of the server sees exactly the transactions the database holds.
Set ENVELOPE_CRASH_SEED to replay a run.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import turso_sync
from tests.childlines import kill_after_commits
from tests.conftest import KEY256
from tests.servers import tursodb
from turso_sync.crypto.envelope import is_envelope
from turso_sync.sync.files import ReplicaFiles

pytestmark = [pytest.mark.slow, pytest.mark.peers]

KILLS = 12
MARKER = b"envelope-crash-marker"

_WRITER = textwrap.dedent(
    """
    import random, sys
    import turso_sync

    path, key, start, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rnd = random.Random(seed)
    conn = turso_sync.connect(path, encryption_key=key)
    print("ready", flush=True)
    txn = start
    while True:
        if rnd.random() < 0.1:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            print("checkpoint", flush=True)
            continue
        rollback = rnd.random() < 0.12
        print(f"begin {txn}", flush=True)
        conn.execute(f"PRAGMA cache_size={10 if rnd.random() < 0.3 else 2000}")
        if rnd.random() < 0.2:
            sizes = [rnd.randint(10_000, 60_000) for _ in range(rnd.randint(1, 3))]
        else:
            sizes = [rnd.choice((0, 16, 300, 1500)) for _ in range(rnd.choice((1, 2, 5, 20, 60, 200)))]
        rows = [(txn, len(sizes), i, b"envelope-crash-marker" + rnd.randbytes(size)) for i, size in enumerate(sizes)]
        conn.executemany("INSERT INTO rows (txn, n, i, payload) VALUES (?, ?, ?, ?)", rows)
        if rollback:
            conn.rollback()
            print(f"rolledback {txn}", flush=True)
        else:
            conn.commit()
            print(f"commit {txn}", flush=True)
        txn += 1
    """
)


def run_and_kill(path: Path, start: int, rnd: random.Random, stderr_path: Path) -> list[str]:
    """Start a writer, SIGKILL it after a few commits and a random extra moment; return what it printed."""
    target = rnd.choice((0, 1, 2, 3, 5, 8))
    extra = rnd.uniform(0.0, 0.08)
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), KEY256, str(start), str(rnd.getrandbits(32))],
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    return kill_after_commits(proc, target, extra, stderr_path)


def transactions(conn: turso_sync.Connection, context: str) -> set[int]:
    """The transactions in the database, each checked to be whole."""
    present = set()
    for txn, n_min, n_max, count, i_min, i_max in conn.execute(
        "SELECT txn, min(n), max(n), count(*), min(i), max(i) FROM rows GROUP BY txn"
    ):
        assert n_min == n_max == count and i_min == 0 and i_max == count - 1, (
            f"transaction {txn} is partial ({context})"
        )
        present.add(txn)
    return present


def test_kill_9_during_writes_loses_no_committed_transaction(tmp_path: Path) -> None:
    seed = int(os.environ.get("ENVELOPE_CRASH_SEED", "1414"))
    rnd = random.Random(seed)
    path = tmp_path / "env.db"
    with tursodb(tmp_path / "srv") as url:
        conn = turso_sync.connect(path, url, encryption_key=KEY256)
        conn.execute(
            "CREATE TABLE rows (txn INTEGER NOT NULL, n INTEGER NOT NULL, i INTEGER NOT NULL, payload BLOB,"
            " PRIMARY KEY (txn, i))"
        )
        conn.commit()
        conn.close()
        committed: set[int] = set()
        next_id = 1
        for kill in range(KILLS):
            context = f"seed {seed}, kill {kill}"
            seen = run_and_kill(path, next_id, rnd, tmp_path / f"writer-{kill}.err")
            in_flight = None
            for line in seen[1:]:
                word, *rest = line.split()
                if word == "begin":
                    in_flight = int(rest[0])
                    next_id = in_flight + 1
                elif word == "commit":
                    committed.add(int(rest[0]))
                    in_flight = None
                elif word == "rolledback":
                    in_flight = None
            assert is_envelope(path.read_bytes()[:100]), context
            assert ReplicaFiles(str(path)).check(KEY256) == [], context
            conn = turso_sync.connect(path, encryption_key=KEY256)
            try:
                assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",), context
                present = transactions(conn, context)
            finally:
                conn.close()
            assert committed <= present, f"lost {sorted(committed - present)[:5]} ({context})"
            extra = present - committed
            assert extra <= ({in_flight} if in_flight is not None else set()), f"{sorted(extra)} ({context})"
            committed = present  # an in-flight commit that reached the disk is committed
        assert committed, "no transaction committed in any run"
        for file in tmp_path.glob("env.db*"):
            assert MARKER not in file.read_bytes(), file
        conn = turso_sync.connect(path, encryption_key=KEY256)
        try:
            conn.push()
        finally:
            conn.close()
        plain = turso_sync.connect(tmp_path / "plain.db", url)
        try:
            assert transactions(plain, f"seed {seed}, the server") == committed
        finally:
            plain.close()
