"""Files move between turso_sync and the real pyturso 0.8.3 in both directions, rows equal.

pyturso caches databases per path per process, so every pyturso step runs in a fresh child
process.  The workload is a list of transactions (SQL plus parameters); the expected rows come
from running the same list through stdlib ``sqlite3`` in memory, so neither engine grades itself.
"""

from __future__ import annotations

import ast
import importlib.metadata
import pickle
import random
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import turso_sync
from tests.childlines import ChildLines

pytestmark = pytest.mark.peers

KEYS = {
    "aes128gcm": "5f4dcc3b5aa765d61d8327deb882cf99",
    "aes256gcm": "9a0b1c2d3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5061728394a5b6c7d8e9",
}
TABLES = ("items", "notes")  # the pyturso child script below lists the same two

Txn = list[tuple[str, tuple[Any, ...]]]

# One pyturso step.  argv: path cipher hexkey mode [ops pickle] [copy-to directory]
#   read         print the rows of every table and integrity_check
#   write        run the transactions in the pickle, then close
#   write-copy   run them, copy db and -wal to the directory while still open, exit without closing
#   write-crash  run them and exit without closing (the WAL stays where it is)
_PYTURSO = textwrap.dedent(
    """
    import os, pickle, shutil, sys
    import turso

    path, cipher, hexkey, mode = sys.argv[1:5]
    conn = turso.connect(
        path,
        experimental_features="encryption",
        encryption=turso.EncryptionOpts(cipher=cipher, hexkey=hexkey),
    )

    def dump():
        out = {}
        for table in ("items", "notes"):
            out[table] = [tuple(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()]
        out["integrity_check"] = conn.execute("PRAGMA integrity_check").fetchall()
        return out

    if mode == "read":
        print("RESULT", repr(dump()), flush=True)
        conn.close()
        sys.exit(0)
    with open(sys.argv[5], "rb") as f:
        txns = pickle.load(f)
    for txn in txns:
        for sql, params in txn:
            conn.execute(sql, params)
        conn.commit()
    if mode == "write":
        conn.close()
        print("RESULT 'closed'", flush=True)
        sys.exit(0)
    if mode == "write-copy":
        for suffix in ("", "-wal"):
            shutil.copyfile(path + suffix, os.path.join(sys.argv[6], os.path.basename(path) + suffix))
    print("RESULT 'left open'", flush=True)
    os._exit(0)
    """
)


def pyturso(path: Path, cipher: str, mode: str, txns: list[Txn] | None = None, copy_to: Path | None = None) -> Any:
    """Run one pyturso step in a fresh process and return what it printed after RESULT."""
    args = [sys.executable, "-c", _PYTURSO, str(path), cipher, KEYS[cipher], mode]
    if txns is not None:
        ops = path.parent / f"ops-{random.getrandbits(32):08x}.pickle"
        ops.write_bytes(pickle.dumps(txns))
        args.append(str(ops))
    if copy_to is not None:
        args.append(str(copy_to))
    proc = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"pyturso {mode} failed:\n{proc.stderr[-3000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout
    return ast.literal_eval(lines[-1][len("RESULT ") :])


def workload(seed: int, first_id: int = 1, txns: int = 8) -> list[Txn]:
    """Inserts (some values spill to overflow pages), updates and deletes, in several transactions."""
    rnd = random.Random(seed)
    out: list[Txn] = []
    if first_id == 1:
        out.append(
            [
                ("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INT, price REAL, data BLOB)", ()),
                ("CREATE INDEX items_by_name ON items(name)", ()),
                ("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)", ()),
            ]
        )
    next_id = first_id
    for t in range(txns):
        txn: Txn = []
        for _ in range(rnd.randint(20, 80)):
            size = rnd.choice((0, 1, 100, 900, 5000, 20000))
            txn.append(
                (
                    "INSERT INTO items (id, name, qty, price, data) VALUES (?, ?, ?, ?, ?)",
                    (
                        next_id,
                        f"item-{seed}-{next_id}-" + "é" * rnd.randint(0, 30),
                        rnd.choice((None, 0, -7, 2**40, 2**63 - 1, -(2**63))),
                        rnd.choice((None, 0.5, -1e300, 3.14159, 1e-12)),
                        rnd.randbytes(size) if size else rnd.choice((None, b"")),
                    ),
                )
            )
            next_id += 1
        txn.append(
            ("INSERT INTO notes (id, body) VALUES (?, ?)", (seed * 1000 + t, f"note {t} " * rnd.randint(1, 6000)))
        )
        if t % 3 == 2:
            txn.append(("UPDATE items SET qty = coalesce(qty, 0) + 1, name = name || '+' WHERE id % 5 = ?", (t % 5,)))
        if t % 4 == 3:
            txn.append(("DELETE FROM items WHERE id % 7 = ? AND id >= ?", (t % 7, first_id)))
        out.append(txn)
    return out


def expected_rows(txns: list[Txn]) -> dict[str, list[tuple[Any, ...]]]:
    """The truth: the same transactions run through stdlib sqlite3."""
    ref = sqlite3.connect(":memory:")
    for txn in txns:
        for sql, params in txn:
            ref.execute(sql, params)
        ref.commit()
    rows = {t: ref.execute(f"SELECT * FROM {t} ORDER BY id").fetchall() for t in TABLES}
    ref.close()
    return rows


def write_with_turso_sync(conn: turso_sync.Connection, txns: list[Txn]) -> None:
    for txn in txns:
        for sql, params in txn:
            conn.execute(sql, params)
        conn.commit()


def read_with_turso_sync(path: Path, cipher: str) -> dict[str, Any]:
    conn = turso_sync.connect(path, encryption_key=KEYS[cipher], cipher=cipher)
    try:
        out: dict[str, Any] = {t: conn.execute(f"SELECT * FROM {t} ORDER BY id").fetchall() for t in TABLES}
        out["integrity_check"] = conn.execute("PRAGMA integrity_check").fetchall()
        return out
    finally:
        conn.close()


def assert_same(got: dict[str, Any], want: dict[str, list[tuple[Any, ...]]]) -> None:
    assert got["integrity_check"] == [("ok",)]
    for table in TABLES:
        assert len(got[table]) == len(want[table]), table
        assert got[table] == want[table], table
    assert len(want["items"]) > 50 and len(want["notes"]) >= 2  # the comparison is not vacuous


def assert_wal_has_frames(wal: Path) -> None:
    assert wal.exists() and wal.stat().st_size >= 32 + 24 + 4096, f"{wal.name} holds no frames"


def test_the_peer_is_pyturso_0_8_3():
    assert importlib.metadata.version("pyturso") == "0.8.3"


@pytest.mark.parametrize("cipher", ["aes128gcm", "aes256gcm"])
@pytest.mark.parametrize("state", ["closed", "WAL in place"])
def test_file_written_by_turso_sync_opens_in_pyturso(tmp_path, cipher, state):
    txns = workload(seed=11)
    path = tmp_path / "ours.db"
    conn = turso_sync.connect(path, encryption_key=KEYS[cipher], cipher=cipher)
    write_with_turso_sync(conn, txns)
    if state == "WAL in place":
        # copy db and WAL while the writer still has them open: what a backup or a crash leaves
        copy_dir = tmp_path / "copy"
        copy_dir.mkdir()
        for suffix in ("", "-wal"):
            shutil.copyfile(f"{path}{suffix}", copy_dir / f"ours.db{suffix}")
        conn.close()
        path = copy_dir / "ours.db"
        assert_wal_has_frames(copy_dir / "ours.db-wal")
    else:
        conn.close()
    assert path.read_bytes()[:7] == b"Turso\x00" + bytes([1 if cipher == "aes128gcm" else 2])
    assert_same(pyturso(path, cipher, "read"), expected_rows(txns))


@pytest.mark.parametrize("cipher", ["aes128gcm", "aes256gcm"])
@pytest.mark.parametrize("state", ["closed", "WAL in place"])
def test_file_written_by_pyturso_opens_in_turso_sync(tmp_path, cipher, state):
    txns = workload(seed=22)
    path = tmp_path / "theirs.db"
    if state == "WAL in place":
        copy_dir = tmp_path / "copy"
        copy_dir.mkdir()
        assert pyturso(path, cipher, "write-copy", txns, copy_to=copy_dir) == "left open"
        path = copy_dir / "theirs.db"
        assert_wal_has_frames(copy_dir / "theirs.db-wal")
    else:
        assert pyturso(path, cipher, "write", txns) == "closed"
    assert_same(read_with_turso_sync(path, cipher), expected_rows(txns))


@pytest.mark.parametrize("cipher", ["aes128gcm", "aes256gcm"])
@pytest.mark.parametrize("pyturso_exit", ["close", "exit without closing"])
def test_pyturso_writes_to_our_file_and_we_read_it_back(tmp_path, cipher, pyturso_exit):
    first, second, third = workload(seed=33), workload(seed=44, first_id=10_000), workload(seed=55, first_id=20_000)
    path = tmp_path / "shared.db"
    conn = turso_sync.connect(path, encryption_key=KEYS[cipher], cipher=cipher)
    write_with_turso_sync(conn, first)
    conn.close()

    # pyturso reads what we wrote, then writes on top of it
    assert_same(pyturso(path, cipher, "read"), expected_rows(first))
    mode = "write" if pyturso_exit == "close" else "write-crash"
    pyturso(path, cipher, mode, second)
    if mode == "write-crash":
        assert_wal_has_frames(tmp_path / "shared.db-wal")  # its last commits are only in its WAL
    assert_same(read_with_turso_sync(path, cipher), expected_rows(first + second))

    # and back once more: we write, pyturso reads everything
    conn = turso_sync.connect(path, encryption_key=KEYS[cipher], cipher=cipher)
    write_with_turso_sync(conn, third)
    conn.close()
    assert_same(pyturso(path, cipher, "read"), expected_rows(first + second + third))


def test_pyturso_refuses_our_file_with_a_wrong_key(tmp_path):
    path = tmp_path / "ours.db"
    conn = turso_sync.connect(path, encryption_key=KEYS["aes256gcm"])
    write_with_turso_sync(conn, workload(seed=66, txns=2))
    conn.close()
    before = path.read_bytes()
    wrong = "11" * 32
    proc = subprocess.run(
        [sys.executable, "-c", _PYTURSO, str(path), "aes256gcm", wrong, "read"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode != 0
    assert "Decryption failed for page=1" in proc.stderr
    assert path.read_bytes() == before


_PYTURSO_HOLDER = textwrap.dedent(
    """
    import sys
    import turso

    conn = turso.connect(
        sys.argv[1],
        experimental_features="encryption",
        encryption=turso.EncryptionOpts(cipher="aes256gcm", hexkey=sys.argv[2]),
    )
    conn.execute("INSERT INTO items (id, name) VALUES (-1, 'from pyturso')")
    conn.commit()
    print("open", flush=True)
    sys.stdin.readline()
    conn.close()
    """
)


def test_the_two_engines_never_have_the_file_open_at_once(tmp_path):
    """docs/encryption.md promises that each engine refuses the file while the other holds it."""
    key = KEYS["aes256gcm"]
    txns = workload(seed=77, txns=2)
    path = tmp_path / "excl.db"
    conn = turso_sync.connect(path, encryption_key=key)
    write_with_turso_sync(conn, txns)
    proc = subprocess.run(
        [sys.executable, "-c", _PYTURSO, str(path), "aes256gcm", key, "read"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode != 0 and "locked" in proc.stderr.lower(), proc.stderr[-2000:]
    conn.close()

    holder = subprocess.Popen(
        [sys.executable, "-c", _PYTURSO_HOLDER, str(path), key], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert holder.stdin is not None
    lines = ChildLines(holder)
    try:
        assert lines.readline(timeout=60) == "open"
        with pytest.raises(turso_sync.OperationalError, match="locked"):
            other = turso_sync.connect(path, encryption_key=key, timeout=0.2)
            try:
                other.execute("SELECT count(*) FROM items").fetchall()
            finally:
                other.close()
        holder.stdin.write(b"\n")
        holder.stdin.flush()
        assert holder.wait(timeout=60) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        lines.close()
    want = expected_rows(txns)
    want["items"].insert(0, (-1, "from pyturso", None, None, None))
    assert_same(read_with_turso_sync(path, "aes256gcm"), want)
