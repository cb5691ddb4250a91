"""LocalDatabase: history, rebuild, atomic install, discard, sequence numbers."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap

import pytest

import turso_sync
from turso_sync.local.engine import LocalDatabase, RevisionGone
from turso_sync.local.framelog import FrameLog

P = 4096


def image(conn: turso_sync.Connection) -> bytes:
    """The plaintext database image as the connection sees it."""
    return conn.apsw_connection.serialize("main")


def apply(base: bytes, txns) -> bytes:
    img = bytearray(base)
    for txn in txns:
        img[txn.db_size * P :] = b""
        img += bytes(max(0, txn.db_size * P - len(img)))
        for pgno, data in txn.pages.items():
            img[(pgno - 1) * P : pgno * P] = data
    return bytes(img)


def workload(conn: turso_sync.Connection, db: LocalDatabase, rnd: random.Random, steps: int) -> dict[int, bytes]:
    """Inserts, updates, deletes, new tables and checkpoints; returns the image after each seq."""
    images = {}
    for i in range(steps):
        action = rnd.random()
        if action < 0.1:
            conn.execute(f"CREATE TABLE IF NOT EXISTS extra{i % 3} (k INTEGER PRIMARY KEY, v BLOB)")
        elif action < 0.3:
            conn.execute("DELETE FROM t WHERE id % 7 = ?", (i % 7,))
        elif action < 0.4:
            conn.execute("UPDATE t SET v = v || 'u' WHERE id % 3 = 0")
        else:
            rows = [(rnd.randbytes(rnd.randint(10, 3000)).hex(),) for _ in range(rnd.randint(1, 120))]
            conn.executemany("INSERT INTO t(v) VALUES (?)", rows)
        conn.commit()
        if rnd.random() < 0.15:
            db.checkpoint()
        images[db.current_seq()] = image(conn)
    return images


@pytest.fixture
def fresh(tmp_path, key):
    db = LocalDatabase(tmp_path / "a.db", encryption_key=key)
    conn = db.connect()
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.commit()
    yield db, conn
    conn.close()
    db.close()


def test_rebuild_from_base_plus_history_is_byte_equal(fresh):
    db, conn = fresh
    base_seq, base = db.current_seq(), image(conn)
    workload(conn, db, random.Random(1), 40)
    assert apply(base, db.history(base_seq)) == image(conn)


def test_sequence_numbers_strictly_increase_and_survive_restart_and_wal_reset(tmp_path, key):
    path = tmp_path / "s.db"
    db = LocalDatabase(path, encryption_key=key)
    conn = db.connect()
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.commit()
    seqs = [db.current_seq()]
    for i in range(5):
        conn.execute("INSERT INTO t(v) VALUES (?)", (str(i),))
        conn.commit()
        seqs.append(db.current_seq())
        if i == 2:
            db.checkpoint()  # WAL truncated: the next commit starts a new WAL generation
    conn.close()
    db.close()
    db = LocalDatabase(path, encryption_key=key)
    assert db.current_seq() == seqs[-1]
    conn = db.connect()
    conn.execute("INSERT INTO t(v) VALUES ('after restart')")
    conn.commit()
    seqs.append(db.current_seq())
    assert seqs == sorted(set(seqs)) and seqs[-1] == seqs[-2] + 1
    assert [t.seq for t in db.history(seqs[0])] == seqs[1:]
    conn.close()
    db.close()


def test_rolled_back_transactions_are_not_recorded(fresh):
    db, conn = fresh
    before = db.current_seq()
    conn.execute("PRAGMA cache_size=5")  # make the transaction spill frames into the WAL
    conn.executemany("INSERT INTO t(v) VALUES (?)", [("x" * 2000,) for _ in range(300)])
    conn.rollback()
    assert db.current_seq() == before
    db.checkpoint()
    assert list(db.history(before)) == []
    conn.execute("INSERT INTO t(v) VALUES ('kept')")
    conn.commit()
    (txn,) = db.history(before)
    assert txn.seq == before + 1


def test_install_pages_from_another_database_with_readers_open(tmp_path, key):
    src_db = LocalDatabase(tmp_path / "src.db", encryption_key=key)
    src = src_db.connect()
    src.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    src.executemany("INSERT INTO t(v) VALUES (?)", [(f"row {i}",) for i in range(500)])
    src.commit()
    src_db.checkpoint()
    base_seq = src_db.current_seq()
    for suffix in ("", "-frames"):
        (tmp_path / f"dst.db{suffix}").write_bytes((tmp_path / f"src.db{suffix}").read_bytes())
    dst_db = LocalDatabase(tmp_path / "dst.db", encryption_key=key)
    reader = dst_db.connect()
    idle = dst_db.connect()
    assert idle.execute("SELECT count(*) FROM t").fetchone() == (500,)  # warm cache
    workload(src, src_db, random.Random(2), 25)

    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM t").fetchone() == (500,)
    other_process = subprocess.Popen(
        [sys.executable, "-c", _READER_PROCESS, str(tmp_path / "dst.db"), key or ""],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert other_process.stdout is not None and other_process.stdin is not None
    assert other_process.stdout.readline().strip() == "500"

    changed: dict[int, bytes] = {}
    size = 0
    for txn in src_db.history(base_seq):
        changed.update(txn.pages)
        size = txn.db_size
    changed = {p: v for p, v in changed.items() if p <= size}
    seq = dst_db.install_pages(changed, size)
    assert seq > base_seq

    # the open read transaction keeps its snapshot until it ends
    assert reader.execute("SELECT count(*) FROM t").fetchone() == (500,)
    reader.rollback()
    expected = src.execute("SELECT count(*), sum(length(v)) FROM t").fetchone()
    assert reader.execute("SELECT count(*), sum(length(v)) FROM t").fetchone() == expected
    assert idle.execute("SELECT count(*), sum(length(v)) FROM t").fetchone() == expected
    other_process.stdin.write("\n")
    other_process.stdin.flush()
    assert other_process.stdout.readline().strip() == str(expected[0])
    other_process.wait(timeout=30)
    assert image(idle) == image(src)
    assert idle.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    for c in (src, reader, idle):
        c.close()
    src_db.close()
    dst_db.close()


_READER_PROCESS = textwrap.dedent(
    """
    import sys, turso_sync
    conn = turso_sync.connect(sys.argv[1], encryption_key=sys.argv[2] or None)
    print(conn.execute("SELECT count(*) FROM t").fetchone()[0], flush=True)
    sys.stdin.readline()
    print(conn.execute("SELECT count(*) FROM t").fetchone()[0], flush=True)
    """
)


def test_discard_after_watermark_returns_pages_byte_for_byte(fresh):
    db, conn = fresh
    base_seq, base = db.current_seq(), image(conn)
    images = workload(conn, db, random.Random(3), 30)
    mid = sorted(images)[12]
    db.discard_after(mid)
    assert image(conn) == images[mid]
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    # later writes keep working, and discarding everything returns to the base
    conn.execute("INSERT INTO t(v) VALUES ('after discard')")
    conn.commit()
    db.discard_after(base_seq)
    assert image(conn) == base
    assert db.discard_after(db.current_seq()) == db.current_seq()  # nothing to undo


def test_discard_then_checkpoint_leaves_plaintext_file_byte_equal(tmp_path):
    db = LocalDatabase(tmp_path / "p.db")
    conn = db.connect()
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.commit()
    db.checkpoint()
    base_seq = db.current_seq()
    base_file = (tmp_path / "p.db").read_bytes()
    workload(conn, db, random.Random(4), 15)
    db.discard_after(base_seq)
    db.checkpoint()
    assert (tmp_path / "p.db").read_bytes() == base_file
    conn.close()
    db.close()


def test_prune_forgets_history_and_old_revisions_are_refused(fresh):
    db, conn = fresh
    first = db.current_seq()
    workload(conn, db, random.Random(5), 10)
    db.checkpoint()
    mid = first + 5
    db.prune_history(mid)
    with pytest.raises(RevisionGone):
        list(db.history(first))
    with pytest.raises(RevisionGone):
        list(db.history(db.current_seq() + 1))
    assert [t.seq for t in db.history(mid)] == list(range(mid + 1, db.current_seq() + 1))


def test_snapshot_is_consistent_and_filters(fresh):
    db, conn = fresh
    full = db.snapshot()
    assert full.db_size == len(image(conn)) // P
    assert b"".join(full.pages[p] for p in range(1, full.db_size + 1)) == image(conn)
    seq = full.seq
    conn.execute("INSERT INTO t(v) VALUES ('one more')")
    conn.commit()
    delta = db.snapshot(since=seq)
    assert delta.seq == seq + 1 and delta.pages and set(delta.pages) <= set(range(1, delta.db_size + 1))
    img = image(conn)
    for pgno, data in delta.pages.items():
        assert data == img[(pgno - 1) * P : pgno * P]
    assert db.snapshot(pgnos={1}).pages.keys() == {1}


def test_torn_frame_log_tail_is_cut_and_history_still_complete(fresh):
    db, conn = fresh
    base_seq, base = db.current_seq(), image(conn)
    workload(conn, db, random.Random(6), 8)
    db.checkpoint()
    log = db.path + "-frames"
    intact = os.path.getsize(log)
    with open(log, "ab") as f:
        f.write(b"TSFR" + os.urandom(100))  # a torn append after the last record
    db2 = LocalDatabase(db.path, encryption_key=db._options["encryption_key"])
    assert apply(base, db2.history(base_seq)) == image(conn)
    conn.execute("INSERT INTO t(v) VALUES ('after the tear')")
    conn.commit()
    db2.checkpoint()  # archiving takes the exclusive lock, cuts the torn bytes, then appends
    with open(log, "rb") as f:
        f.seek(intact)
        assert f.read(4) == b"TSFR"  # the new record starts exactly where the intact log ended
    assert apply(base, db2.history(base_seq)) == image(conn)
    db2.close()


def test_multi_process_writers_keep_one_complete_history(tmp_path, key):
    path = tmp_path / "m.db"
    db = LocalDatabase(path, encryption_key=key)
    conn = db.connect()
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, who INTEGER, v TEXT)")
    conn.commit()
    base_seq, base = db.current_seq(), image(conn)
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER_PROCESS, str(path), key or "", str(n)]) for n in range(3)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    history = list(db.history(base_seq))
    assert [t.seq for t in history] == list(range(base_seq + 1, base_seq + 1 + len(history)))
    assert apply(base, history) == image(conn)
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (3 * 150,)
    conn.close()
    db.close()


_WRITER_PROCESS = textwrap.dedent(
    """
    import sys, turso_sync
    conn = turso_sync.connect(sys.argv[1], encryption_key=sys.argv[2] or None, timeout=30)
    who = int(sys.argv[3])
    for i in range(150):
        conn.execute("INSERT INTO t(who, v) VALUES (?, ?)", (who, "w" * (i * 7 % 900)))
        conn.commit()
        if i % 40 == who:
            conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
    conn.close()
    """
)


def test_frame_log_records_even_when_connections_did_not_ask(tmp_path):
    path = tmp_path / "r.db"
    turso_sync.connect(path).close()
    assert not FrameLog.exists(str(path))  # a plain local database records only when asked
    turso_sync.connect(path, record_frames=True).close()
    assert FrameLog.exists(str(path))
    conn = turso_sync.connect(path, record_frames=False)  # the log exists: it is kept up anyway
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()  # checkpoints on close: archived first
    db = LocalDatabase(path)
    assert [t.seq for t in db.history(0)] == [1]
    db.close()


def test_a_failed_archive_refuses_the_checkpoint_and_loses_nothing(fresh):
    db, conn = fresh
    base_seq, base = db.current_seq(), image(conn)
    conn.executemany("INSERT INTO t(v) VALUES (?)", [("kept",) for _ in range(50)])
    conn.commit()
    seq = db.current_seq()
    state = conn._state
    real = state.before_checkpoint

    def disk_full() -> None:
        raise OSError(28, "No space left on device")

    state.before_checkpoint = disk_full
    db_file = open(db.path, "rb").read()
    with pytest.raises(turso_sync.OperationalError, match="frame log could not archive"):
        db.checkpoint()
    assert open(db.path, "rb").read() == db_file  # nothing was copied into the database file
    state.before_checkpoint = real
    db.checkpoint()  # archives, then checkpoints
    conn.execute("INSERT INTO t(v) VALUES ('next')")
    conn.commit()
    assert db.current_seq() == seq + 1  # no sequence number reused
    assert apply(base, db.history(base_seq)) == image(conn)


def test_current_pages_reads_runs_of_the_file_with_one_pread_each(fresh, monkeypatch):
    """What ``page_reader`` reads page by page, with one ``pread`` per run of pages next to each other
    in the file (the pages in the WAL come from there), at most ``READ_RUN`` pages each."""
    from turso_sync.local import engine

    db, conn = fresh
    conn.executemany("INSERT INTO t(v) VALUES (?)", [("x" * 900,) for _ in range(120)])
    conn.commit()
    db.checkpoint()
    conn.execute("UPDATE t SET v = 'changed' WHERE id IN (5, 60)")  # a few pages in the WAL now
    conn.commit()
    monkeypatch.setattr(engine, "READ_RUN", 8)
    with db.write_lock():
        size = int(db.query("PRAGMA page_count")[0][0])
        read = db.page_reader()
        expected = {pgno: read(pgno) for pgno in range(1, size + 1)}
        in_wal = {frame.pgno for txn in engine.committed_wal(db.path).txns for frame in txn.frames}
        preads: list[int] = []
        real = os.pread

        def counting(fd: int, n: int, offset: int) -> bytes:
            if n >= db.slot_size:  # a page or more (not a WAL header's or a frame header's bytes)
                preads.append(n // db.slot_size)
            return real(fd, n, offset)

        monkeypatch.setattr(os, "pread", counting)
        got = db.current_pages(list(range(1, size + 1)))
        monkeypatch.setattr(os, "pread", real)
    assert size > 20 and 0 < len(in_wal) < size
    assert got == expected
    assert sum(preads) == size - len(in_wal) and max(preads) == 8
    runs: list[int] = []  # lengths of the runs of pages next to each other that are not in the WAL
    for pgno in range(1, size + 1):
        if pgno in in_wal:
            continue
        if pgno == 1 or pgno - 1 in in_wal:
            runs.append(0)
        runs[-1] += 1
    assert len(preads) == sum(-(-n // 8) for n in runs)


def test_a_snapshot_reads_runs_of_the_file_with_one_pread_each(fresh, monkeypatch):
    """A snapshot (what the primary sends a pull) reads pages as ``current_pages`` does: the pages
    in the WAL from there, the rest one ``pread`` per run of pages next to each other in the file,
    not one ``pread`` per page."""
    from turso_sync.local import engine

    db, conn = fresh
    since = db.current_seq()
    conn.executemany("INSERT INTO t(v) VALUES (?)", [("x" * 900,) for _ in range(120)])
    conn.commit()
    db.checkpoint()
    conn.execute("UPDATE t SET v = 'changed' WHERE id IN (5, 60)")
    conn.commit()
    with db.write_lock():
        size = int(db.query("PRAGMA page_count")[0][0])
        read = db.page_reader()
        expected = {pgno: read(pgno) for pgno in range(1, size + 1)}
    preads: list[int] = []
    real = os.pread

    def counting(fd: int, n: int, offset: int) -> bytes:
        if n >= db.slot_size:
            preads.append(n // db.slot_size)
        return real(fd, n, offset)

    monkeypatch.setattr(os, "pread", counting)
    whole = db.snapshot()
    changed = db.snapshot(since)
    monkeypatch.setattr(os, "pread", real)
    assert whole.pages == expected and whole.db_size == size > 20
    assert changed.pages == {pgno: expected[pgno] for pgno in changed.pages} and len(changed.pages) > 20
    in_wal = {frame.pgno for txn in engine.committed_wal(db.path).txns for frame in txn.frames}
    from_file = (size - len(in_wal)) + len(set(changed.pages) - in_wal)
    # every page not in the WAL read once (a frame log read or two besides), in runs, not page by page
    assert from_file <= sum(preads) <= from_file + 4 and from_file > 40
    assert len(preads) < from_file / 4
