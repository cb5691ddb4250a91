"""kill -9 an encrypted writer at random points: committed work survives, uncommitted work never shows.

A child process commits transactions of varied shape and announces each one on stdout: ``begin
<id> <commit|rollback>`` before it starts and ``commit <id>`` only after ``commit()`` returned.
The parent SIGKILLs it at a random moment, reopens the database and checks:

* ``PRAGMA integrity_check`` is ok;
* every transaction is all-or-none: each carries ``n`` rows numbered ``0..n-1``;
* every id announced as committed is present (or was deleted by a transaction that is present);
* nothing else is present, except possibly the one in flight if it was going to commit;
* a delete made in the same transaction as an insert is visible exactly when the insert is.

Transactions vary: one row to hundreds, blobs up to 200 KB (overflow chains), some run with
``PRAGMA cache_size=10`` so uncommitted pages spill into the WAL, some roll back, and
``PRAGMA wal_checkpoint(TRUNCATE)`` runs in between.  Databases take turns in Turso's format
(AES-256-GCM, AES-128-GCM) and the hardened one, whose page map must never refuse a page after
a kill.  Set CRASH_SEED to replay a run.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import turso_sync
from tests.childlines import kill_after_commits

pytestmark = pytest.mark.slow

KEYS = {
    "aes256gcm": "d1e2f3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60",
    "aes128gcm": "a1b2c3d4e5f60718293a4b5c6d7e8f90",
    "hardened": "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0",  # and its page map
}
CIPHER_IDS = {"aes256gcm": 2, "aes128gcm": 1, "hardened": 0x80}
CIPHER_ORDER = ("aes256gcm", "aes128gcm", "hardened")
DATABASES = 6  # a fresh database every RUNS_PER_DATABASE kills keeps the files (and the runtime) bounded
RUNS_PER_DATABASE = 15
EPHEMERAL = 7  # transactions with id % 10 == 7 may later be deleted, by a transaction that records it

_WRITER = textwrap.dedent(
    """
    import random, sys
    import turso_sync

    path, key, cipher, start, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    rnd = random.Random(seed)
    conn = turso_sync.connect(path, encryption_key=key, cipher=cipher)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS txn_rows (txn INTEGER NOT NULL, n INTEGER NOT NULL, i INTEGER NOT NULL,"
        " deletes INTEGER, payload BLOB, PRIMARY KEY (txn, i))"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS txn_rows_by_deletes ON txn_rows(deletes)")
    alive = [
        t for (t,) in conn.execute(
            "SELECT DISTINCT txn FROM txn_rows WHERE txn % 10 = 7"
            " AND txn NOT IN (SELECT deletes FROM txn_rows WHERE deletes IS NOT NULL)"
        )
    ]
    print("ready", flush=True)
    txn = start
    while True:
        if rnd.random() < 0.1:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            print("checkpoint", flush=True)
            continue
        rollback = rnd.random() < 0.12
        print(f"begin {txn} {'rollback' if rollback else 'commit'}", flush=True)
        conn.execute(f"PRAGMA cache_size={10 if rnd.random() < 0.3 else 2000}")
        if rnd.random() < 0.2:
            n = rnd.randint(1, 4)
            sizes = [rnd.randint(20_000, 200_000) for _ in range(n)]
        else:
            n = rnd.choice((1, 2, 5, 20, 60, 200, 400))
            sizes = [rnd.choice((0, 16, 300, 1500, 5000)) for _ in range(n)]
        deletes = None
        if alive and txn % 10 != 7 and rnd.random() < 0.4:
            deletes = alive.pop(rnd.randrange(len(alive)))
            conn.execute("DELETE FROM txn_rows WHERE txn = ?", (deletes,))
        rows = [(txn, n, i, deletes, rnd.randbytes(size)) for i, size in enumerate(sizes)]
        rnd.shuffle(rows)  # rows land on pages in no particular order
        conn.executemany("INSERT INTO txn_rows (txn, n, i, deletes, payload) VALUES (?, ?, ?, ?, ?)", rows)
        if rollback:
            conn.rollback()
            if deletes is not None:
                alive.append(deletes)
            print(f"rolledback {txn}", flush=True)
        else:
            conn.commit()
            print(f"commit {txn}", flush=True)
            if txn % 10 == 7:
                alive.append(txn)
        txn += 1
    """
)


@dataclass
class History:
    """What the parent knows from every child so far, for one database."""

    committed: set[int] = field(default_factory=set)
    next_id: int = 1
    kills: int = 0
    commits_seen: int = 0
    checkpoints_seen: int = 0
    rollbacks_seen: int = 0
    killed_inside_a_transaction: int = 0
    in_flight_found_committed: int = 0


def run_child_and_kill(path: Path, cipher: str, history: History, rnd: random.Random, stderr_path: Path) -> list[str]:
    """Start a writer, SIGKILL it at a random moment, and return everything it printed."""
    target_commits = rnd.choice((0, 1, 1, 2, 3, 5, 8))
    extra_window = rnd.uniform(0.0, 0.08)  # then let it run a little further, into the next transaction
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WRITER,
                str(path),
                KEYS[cipher],
                cipher,
                str(history.next_id),
                str(rnd.getrandbits(32)),
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    return kill_after_commits(proc, target_commits, extra_window, stderr_path)


def check_after_crash(path: Path, cipher: str, history: History, seen: list[str], context: str) -> None:
    in_flight: tuple[int, str] | None = None
    for line in seen[1:]:
        word, *rest = line.split()
        if word == "begin":
            in_flight = (int(rest[0]), rest[1])
            history.next_id = int(rest[0]) + 1
        elif word == "commit":
            assert in_flight is not None and in_flight[0] == int(rest[0]), context
            history.committed.add(int(rest[0]))
            history.commits_seen += 1
            in_flight = None
        elif word == "rolledback":
            history.rollbacks_seen += 1
            in_flight = None
        elif word == "checkpoint":
            history.checkpoints_seen += 1
        else:
            raise AssertionError(f"unexpected line from the writer {line!r} ({context})")

    conn = turso_sync.connect(path, encryption_key=KEYS[cipher], cipher=cipher)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], context
        groups = conn.execute(
            "SELECT txn, min(n), max(n), count(*), count(DISTINCT i), min(i), max(i),"
            " count(deletes), min(deletes), max(deletes) FROM txn_rows GROUP BY txn"
        ).fetchall()
    finally:
        conn.close()

    present = set()
    deleted_by: dict[int, int] = {}
    for txn, n_min, n_max, count, distinct, i_min, i_max, with_deletes, d_min, d_max in groups:
        assert n_min == n_max == count == distinct and i_min == 0 and i_max == n_min - 1, (
            f"transaction {txn} is partial: n={n_min}..{n_max}, {count} rows, i={i_min}..{i_max} ({context})"
        )
        assert with_deletes in (0, count) and d_min == d_max, f"transaction {txn} is partial ({context})"
        present.add(txn)
        if d_min is not None:
            deleted_by[d_min] = txn

    may_exist = set(history.committed)
    if in_flight is not None:
        history.killed_inside_a_transaction += 1
        if in_flight[1] == "commit":
            may_exist.add(in_flight[0])  # commit() may have returned just before the kill
    assert present <= may_exist, f"rows of uncommitted transactions {sorted(present - may_exist)} ({context})"
    for gone, by in deleted_by.items():
        assert gone % 10 == EPHEMERAL and gone not in present, (
            f"transaction {by} deleted {gone}, yet {gone} is still there ({context})"
        )
    missing = history.committed - present - set(deleted_by)
    assert not missing, f"committed transactions lost: {sorted(missing)} ({context})"
    if in_flight is not None and in_flight[0] in present:
        history.in_flight_found_committed += 1
    history.committed = present | (history.committed & set(deleted_by))
    history.kills += 1


def test_kill_9_at_random_points_loses_no_commit_and_shows_no_partial_transaction(tmp_path):
    seed = int(os.environ.get("CRASH_SEED", random.randrange(1 << 30)))
    print(f"crash test seed: {seed} (rerun with CRASH_SEED={seed})")
    rnd = random.Random(seed)
    totals = History()
    for db_index in range(DATABASES):
        cipher = CIPHER_ORDER[db_index % len(CIPHER_ORDER)]
        path = tmp_path / f"crash{db_index}.db"
        history = History()
        for run in range(RUNS_PER_DATABASE):
            context = f"seed {seed}, database {db_index} ({cipher}), kill {run}"
            seen = run_child_and_kill(path, cipher, history, rnd, tmp_path / "writer.stderr")
            check_after_crash(path, cipher, history, seen, context)
        assert len(history.committed) >= RUNS_PER_DATABASE  # the writers really made progress
        for name in (
            "kills",
            "commits_seen",
            "checkpoints_seen",
            "rollbacks_seen",
            "killed_inside_a_transaction",
            "in_flight_found_committed",
        ):
            setattr(totals, name, getattr(totals, name) + getattr(history, name))
        # the database is still encrypted, and usable for new writes after all those kills
        assert path.read_bytes()[:7] == b"Turso\x00" + bytes([CIPHER_IDS[cipher]])
        conn = turso_sync.connect(path, encryption_key=KEYS[cipher], cipher=cipher)
        conn.execute("INSERT INTO txn_rows (txn, n, i) VALUES (-1, 1, 0)")
        conn.commit()
        assert conn.execute("SELECT count(*) FROM txn_rows WHERE txn = -1").fetchone() == (1,)
        conn.close()
    print(
        f"{totals.kills} kills, {totals.commits_seen} commits, {totals.rollbacks_seen} rollbacks, "
        f"{totals.checkpoints_seen} checkpoints; {totals.killed_inside_a_transaction} kills inside a transaction, "
        f"{totals.in_flight_found_committed} of them just after its commit"
    )
    assert totals.kills >= 90
    assert totals.checkpoints_seen > 0 and totals.rollbacks_seen > 0
    assert totals.killed_inside_a_transaction >= totals.kills // 4  # the kills land mid-write, not between runs
