"""Several processes write one envelope database at once: SQLite's WAL locking over the slot mapping.

Each writer commits transactions of varied size (some with a 10-page cache, so uncommitted pages
spill into the WAL and frame headers are rewritten at commit), reads the table now and then and
runs passive checkpoints.  Every process sees the others' frames through the shared ``-shm``
index, whose frame numbers are SQLite's, while the frames on disk are slots of ``P + 32`` bytes.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import KEY256
from turso_sync.crypto.envelope import is_envelope
from turso_sync.local.connection import Connection

WRITERS = 3
TRANSACTIONS = 120

_WRITER = textwrap.dedent(
    """
    import random, sys
    from turso_sync.local.connection import Connection

    path, key, writer, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rnd = random.Random(writer)
    conn = Connection(path, encryption_key=key, timeout=60)
    for i in range(count):
        conn.execute(f"PRAGMA cache_size={rnd.choice((10, 2000))}")
        rows = [(writer, i, j, rnd.randbytes(rnd.choice((10, 3000, 9000)))) for j in range(rnd.randint(1, 20))]
        conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", rows)
        conn.commit()
        if i % 10 == 0:
            conn.execute("SELECT count(*), sum(length(v)) FROM t").fetchone()
        if i % 37 == 0:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    conn.close()
    """
)


def test_concurrent_writers_in_other_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    conn = Connection(path, encryption_key=KEY256, cipher="envelope")
    conn.execute("CREATE TABLE t (writer INTEGER, txn INTEGER, j INTEGER, v BLOB)")
    conn.commit()
    conn.close()
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), KEY256, str(w), str(TRANSACTIONS)])
        for w in range(WRITERS)
    ]
    assert [p.wait(timeout=600) for p in procs] == [0] * WRITERS
    conn = Connection(path, encryption_key=KEY256)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT writer, count(DISTINCT txn) FROM t GROUP BY writer ORDER BY writer").fetchall() == [
            (w, TRANSACTIONS) for w in range(WRITERS)
        ]
        # every transaction whole: its rows numbered 0..n-1
        for _writer, _txn, count, top in conn.execute(
            "SELECT writer, txn, count(*), max(j) FROM t GROUP BY writer, txn"
        ):
            assert count == top + 1
    finally:
        conn.close()
    assert is_envelope(path.read_bytes()[:100])
