"""``passwd`` needs the database to itself: another process keeps its own copy of page 1's
parameters and would write the old wrap back with its next page-1 write."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import turso_sync
from turso_sync.crypto import keys
from turso_sync.local.rekey import change_passphrase

HOLDER = r"""
import sys
import turso_sync
conn = turso_sync.connect(sys.argv[1], encryption_key=sys.stdin.readline().strip(), cipher="hardened-passphrase")
conn.execute("SELECT count(*) FROM t").fetchall()
print("open", flush=True)
sys.stdin.readline()  # until the test says so
conn.close()
"""


def test_passwd_is_refused_while_another_process_has_the_database_open(tmp_path: Path) -> None:
    path = tmp_path / "pw.db"
    conn = turso_sync.connect(str(path), encryption_key="old words", cipher="hardened-passphrase")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    conn.close()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write("old words\n")  # the passphrase on a pipe, not on the command line
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "open"
        before = path.read_bytes()
        with pytest.raises(turso_sync.OperationalError, match=rf"open in another process \(pid {holder.pid}\)"):
            change_passphrase(path, "old words", "new words", argon2=keys.ARGON2_FLOOR)
        assert path.read_bytes() == before
        holder.stdin.write("close\n")
        holder.stdin.flush()
        assert holder.wait(timeout=30) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    change_passphrase(path, "old words", "new words", argon2=keys.ARGON2_FLOOR)
    conn = turso_sync.connect(str(path), encryption_key="new words", cipher="hardened-passphrase")
    assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
    conn.close()
