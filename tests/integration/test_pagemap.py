"""The page map of hardened files (``local/pagemap.py``) on real files and real processes.

* a checkpoint killed after it wrote pages but before the map recorded them leaves a database
  that opens and reads every row (those pages are read from the WAL, which still holds them),
  and the next checkpoint writes and records them, after which an older image of such a page is
  refused again;
* a process that writes and checkpoints while another reads never makes the reader refuse a
  page (the reader reads the map again when an image is newer than its copy);
* ``ReplicaFiles.encryption_report`` (``turso-sync verify``) names a rolled-back page and a
  damaged map.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import turso_sync
from turso_sync import errors
from turso_sync.crypto.hardened import HardenedCodec
from turso_sync.crypto.page_codec import HARDENED_CIPHERS
from turso_sync.local.pagemap import MAP_SUFFIX, PageMap
from turso_sync.sync.files import ReplicaFiles

P = 4096


@pytest.fixture
def key() -> str:
    return secrets.token_hex(32)


def page(path: Path, pgno: int) -> bytes:
    with open(path, "rb") as f:
        f.seek((pgno - 1) * P)
        return f.read(P)


def put_page(path: Path, pgno: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek((pgno - 1) * P)
        f.write(data)


def map_on_disk(path: Path, key: str) -> PageMap:
    """The map as the file holds it now, read with a codec bound to the file."""
    codec = HardenedCodec(HARDENED_CIPHERS["hardened"], bytes.fromhex(key))
    codec.open_file(page(path, 1))

    def read_slot(pgno: int) -> bytes:
        return page(path, pgno)

    pm = PageMap(str(path), codec, read_slot, lambda: None)
    pm.reload()
    return pm


def build(path: Path, key: str, rows: int = 400) -> None:
    conn = turso_sync.connect(path, encryption_key=key, cipher="hardened")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"row-{i:05d}-" + "x" * 80) for i in range(rows)])
    conn.commit()
    conn.close()


def count(path: Path, key: str) -> int:
    conn = turso_sync.connect(path, encryption_key=key, cipher="hardened")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])
    finally:
        conn.close()


_KILLED_CHECKPOINT = textwrap.dedent(
    """
    import os, sys
    import turso_sync
    from turso_sync.local import pagemap

    path, key = sys.argv[1], sys.argv[2]
    conn = turso_sync.connect(path, encryption_key=key, cipher="hardened")
    conn.execute("UPDATE t SET body = 'changed-' || id")
    conn.commit()
    # killed at the end of the checkpoint's page writes, before the map records them
    pagemap.PageMap.finish = lambda self: os._exit(9)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    os._exit(0)  # not reached when the checkpoint wrote a page
    """
)


def test_a_checkpoint_killed_before_the_map_records_it_loses_nothing_and_the_map_recovers(
    tmp_path: Path, key: str
) -> None:
    db = tmp_path / "a.db"
    build(db, key)
    before = {pgno: page(db, pgno) for pgno in range(1, os.path.getsize(db) // P + 1)}
    run = subprocess.run([sys.executable, "-c", _KILLED_CHECKPOINT, str(db), key], capture_output=True, timeout=120)
    assert run.returncode == 9, run.stderr.decode()
    written = [pgno for pgno, old in before.items() if page(db, pgno) != old]
    assert written, "the killed checkpoint wrote no page"
    unrecorded = map_on_disk(db, key)
    assert not any(unrecorded.accepts(pgno, page(db, pgno)) for pgno in written)  # the map never saw them
    # ... and nobody reads them there: their frames are still in the WAL, where every reader reads them
    assert not ReplicaFiles(db).encryption_report(key, "hardened").failures

    conn = turso_sync.connect(db, encryption_key=key, cipher="hardened")
    assert conn.execute("SELECT count(*) FROM t WHERE body LIKE 'changed-%'").fetchone()[0] == 400
    conn.execute("INSERT INTO t VALUES (100000, 'after the kill')")
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()  # writes the killed one's pages again
    conn.close()
    recorded = map_on_disk(db, key)
    assert not recorded.pending and all(recorded.accepts(pgno, page(db, pgno)) for pgno in written)
    assert count(db, key) == 401

    pgno = next(p for p in written if p != 1 and page(db, p) != before[p])
    put_page(db, pgno, before[pgno])  # an image from before the killed checkpoint
    with pytest.raises(errors.EncryptionError, match=f"page {pgno} of the database failed authentication"):
        count(db, key)


_WRITER = textwrap.dedent(
    """
    import sys, time
    import turso_sync

    path, key, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    conn = turso_sync.connect(path, encryption_key=key, cipher="hardened")
    print("ready", flush=True)
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        conn.execute("INSERT INTO t (body) VALUES (?)", ("w" * (50 + n % 500),))
        conn.execute("UPDATE t SET body = body || '.' WHERE id = ?", (n % 400,))
        conn.commit()
        n += 1
        if n % 5 == 0:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    conn.close()
    print(f"wrote {n}", flush=True)
    """
)


def test_a_reader_never_refuses_pages_another_process_checkpoints(tmp_path: Path, key: str) -> None:
    db = tmp_path / "a.db"
    build(db, key)
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(db), key, "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == b"ready"
        reader = turso_sync.connect(db, encryption_key=key, cipher="hardened")
        reads = 0
        last = 0
        while writer.poll() is None:
            (rows,) = reader.execute("SELECT count(*) FROM t").fetchone()
            total = reader.execute("SELECT sum(length(body)) FROM t").fetchone()[0]
            assert rows >= last and total > 0
            last = rows
            reads += 1
            reader.commit()
            time.sleep(0.005)
        reader.close()
        out, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err.decode()
        assert reads > 10 and int(out.split()[-1]) > 20
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert count(db, key) > 400
    assert not map_on_disk(db, key).pending
    assert not map_on_disk(db, key).unknown_pages(os.path.getsize(db) // P)  # every page's image recorded


def test_verify_names_a_rolled_back_page_and_a_damaged_map(tmp_path: Path, key: str) -> None:
    db = tmp_path / "a.db"
    build(db, key)
    old = {pgno: page(db, pgno) for pgno in range(1, os.path.getsize(db) // P + 1)}
    conn = turso_sync.connect(db, encryption_key=key, cipher="hardened")
    conn.execute("UPDATE t SET body = 'new' WHERE id < 50")
    conn.commit()
    conn.close()
    report = ReplicaFiles(db).encryption_report(key, "hardened")
    assert report.page_map and not report.failures
    pgno = next(p for p, image in old.items() if p != 1 and page(db, p) != image)
    put_page(db, pgno, old[pgno])
    report = ReplicaFiles(db).encryption_report(key, "hardened")
    assert [(f.pgno, f.place) for f in report.failures] == [(pgno, "database")]
    assert "not the image last written there" in report.failures[0].line()

    data = bytearray(Path(f"{db}{MAP_SUFFIX}").read_bytes())
    data[-1] ^= 1
    Path(f"{db}{MAP_SUFFIX}").write_bytes(bytes(data))
    report = ReplicaFiles(db).encryption_report(key, "hardened")
    assert [f.place for f in report.failures] == ["page map"]
    assert "the page map failed authentication" in report.failures[0].line()
