"""Random SQL on a hardened database and on a plaintext twin: same rows, no plaintext on disk.

Each seed runs a few hundred random statements (inserts, updates, deletes, overflow blobs,
indexes, rolled-back transactions) against a hardened database opened through
the engine (``LocalDatabase``, so the frame log records every transaction) and against a
stdlib ``sqlite3`` twin, with checkpoints, VACUUM and reopens mixed in.  After every batch both
hold the same rows; at the end ``integrity_check`` passes, the engine's own readers (history,
snapshot) decrypt what they copied, and no file of the hardened database (database, WAL,
shared memory, frame log) contains a marker every row carries.
"""

from __future__ import annotations

import random
import secrets
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import turso_sync
from turso_sync.local.engine import LocalDatabase

MARKER = b"PLAINTEXT-MARKER"


def random_statement(rng: random.Random, next_id: int) -> tuple[str, tuple[Any, ...]]:
    kind = rng.choices(["insert", "update", "delete", "blob"], weights=[6, 3, 2, 1])[0]
    if kind == "insert":
        return "INSERT INTO t (id, a, n) VALUES (?, ?, ?)", (
            next_id,
            f"{MARKER.decode()}-{next_id}-" + "y" * rng.randrange(0, 300),
            rng.random(),
        )
    if kind == "update":
        lo = rng.randrange(0, max(1, next_id))
        return "UPDATE t SET a = ? || id, n = n + 1 WHERE id BETWEEN ? AND ?", (
            f"{MARKER.decode()}-upd-",
            lo,
            lo + rng.randrange(1, 30),
        )
    if kind == "delete":
        lo = rng.randrange(0, max(1, next_id))
        return "DELETE FROM t WHERE id BETWEEN ? AND ?", (lo, lo + rng.randrange(1, 10))
    size = rng.randrange(5_000, 40_000)  # spills into overflow pages
    return "INSERT INTO t (id, a, b) VALUES (?, ?, ?)", (next_id, f"{MARKER.decode()}-blob", MARKER * (size // 16))


def rows(conn: Any) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT id, a, b, n FROM t ORDER BY id").fetchall()


@pytest.mark.parametrize(
    ("seed", "cipher"),
    [(1, "hardened"), (2, "hardened"), (3, "hardened"), (4, "hardened-passphrase")],
)
def test_random_sql_matches_a_plaintext_twin(tmp_path: Path, seed: int, cipher: str) -> None:
    rng = random.Random(seed)
    secret = secrets.token_hex(32) if cipher == "hardened" else "twin passphrase " + str(seed)
    path = tmp_path / "hard.db"

    engine = LocalDatabase(path, encryption_key=secret, cipher=cipher)

    def open_hard() -> Any:
        return engine.connect()

    hard = open_hard()
    twin = sqlite3.connect(tmp_path / "twin.db")
    schema = "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b BLOB, n REAL)"
    for conn in (hard, twin):
        conn.execute(schema)
        conn.commit()
    next_id = 0
    for batch in range(30):
        rollback = rng.random() < 0.15
        for _ in range(rng.randrange(1, 20)):
            sql, params = random_statement(rng, next_id)
            next_id += 1
            for conn in (hard, twin):
                conn.execute(sql, params)
        if rollback:
            hard.rollback()
            twin.rollback()
        else:
            hard.commit()
            twin.commit()
        action = rng.random()
        if action < 0.1:
            hard.close()
            hard = open_hard()
        elif action < 0.2:
            hard.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        elif action < 0.25:
            hard.execute("VACUUM")
        elif action < 0.3:
            index = f"CREATE INDEX IF NOT EXISTS t_a_{batch % 3} ON t (a)"
            for conn in (hard, twin):
                conn.execute(index)
                conn.commit()
        assert rows(hard) == rows(twin), f"seed {seed}, batch {batch}"
        if batch == 15:
            assert_no_marker(tmp_path)  # with the WAL and frame log in use
    assert hard.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert len(rows(hard)) > 50
    hard.close()
    twin.close()
    assert sum(1 for _ in engine.history(0)) > 10  # frame-log copies of WAL images decrypt
    snapshot = engine.snapshot()
    assert snapshot.pages[1][:16] == b"SQLite format 3\x00" and snapshot.pages[1][72:92] == bytes(20)
    engine.close()
    reopened = LocalDatabase(path, encryption_key=secret, cipher=cipher)
    conn = reopened.connect()
    assert rows(conn) == rows(sqlite3.connect(tmp_path / "twin.db"))
    conn.close()
    reopened.close()
    assert_no_marker(tmp_path, frame_log=True)


def assert_no_marker(folder: Path, frame_log: bool = False) -> None:
    files = [p for p in folder.iterdir() if p.name.startswith("hard.db")]
    names = {p.name for p in files}
    assert "hard.db" in names and (not frame_log or "hard.db-frames" in names), names
    for file in files:
        data = file.read_bytes()
        assert MARKER not in data, f"{file.name} holds plaintext"
        assert b"CREATE TABLE" not in data, f"{file.name} holds the schema in plaintext"


_READER = """
import sys, turso_sync
conn = turso_sync.connect(sys.argv[1], encryption_key=sys.argv[2], cipher="hardened")
counts = [conn.execute("SELECT count(*) FROM t").fetchone()[0] for _ in range(int(sys.argv[3]))]
assert counts == sorted(counts), counts  # each read sees the writer's commits in order
print(counts[-1], conn.execute("PRAGMA integrity_check").fetchone()[0])
conn.close()
"""


def test_readers_in_other_processes_bind_to_the_same_file(tmp_path: Path) -> None:
    """Each process learns the file id from page 1 on its own, while a writer commits and checkpoints."""
    key = secrets.token_hex(32)
    path = tmp_path / "shared.db"
    writer = turso_sync.connect(path, encryption_key=key, cipher="hardened")
    writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    writer.commit()
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", _READER, str(path), key, "200"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    for i in range(300):
        writer.execute("INSERT INTO t (v) VALUES (?)", (MARKER.decode() * 30,))
        writer.commit()
        if i % 100 == 99:
            writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    for reader in readers:
        out, err = reader.communicate(timeout=120)
        assert reader.returncode == 0, err.decode()[-2000:]
        seen, check = out.decode().split()
        assert 0 <= int(seen) <= 300 and check == "ok"
    writer.close()
    after = subprocess.run(
        [sys.executable, "-c", _READER, str(path), key, "1"], capture_output=True, text=True, timeout=120
    )
    assert after.stdout.split() == ["300", "ok"], after.stderr[-2000:]


def test_the_file_parameters_survive_checkpoints_and_vacuum(tmp_path: Path) -> None:
    """Page 1 keeps the file id, epoch and passphrase wrap through every rewrite SQLite makes of it."""
    from turso_sync.crypto.hardened import FileParams

    path = tmp_path / "p.db"
    conn = turso_sync.connect(path, encryption_key="survivor passphrase", cipher="hardened-passphrase")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t (v) VALUES (?)", [("v" * 300,)] * 500)
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    first = FileParams.of_page1(path.read_bytes()[:4096])
    conn.execute("DELETE FROM t WHERE id % 2 = 0")
    conn.commit()
    conn.execute("VACUUM")  # rewrites every page, page 1 included
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    conn.close()
    after = FileParams.of_page1(path.read_bytes()[:4096])
    assert after == first and after.argon2 is not None and after.wrapped != bytes(16)
    conn = turso_sync.connect(path, encryption_key="survivor passphrase", cipher="hardened-passphrase")
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (250,)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
