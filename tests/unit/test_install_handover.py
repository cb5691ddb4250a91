"""An install hands the checksums it computed to the WAL scan cache, and the frame log counts without reading.

``append_transaction`` computes every frame's checksum as it writes; the scan cache then holds the
committed WAL as a read of the file would find it, so the frame log's next look at the WAL does not
checksum those frames again.  What is handed over must equal what the file says, and a handover that
does not describe the file (another header, another file at the path) must not be used.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from turso_sync.local import walformat
from turso_sync.local.engine import LocalDatabase
from turso_sync.local.walformat import WalScan, read_committed, remember_scan, scan_wal
from turso_sync.local.walindex import committed_wal, disk_slot_size

KEY = "5a17" * 16


def _database(tmp_path: Path, encrypted: bool) -> LocalDatabase:
    db = LocalDatabase(tmp_path / "db", encryption_key=KEY if encrypted else None)
    conn = db.connect()
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.commit()
    for i in range(3):
        conn.execute("INSERT INTO t VALUES (?, ?)", (i, "x" * 2000))
        conn.commit()
    conn.close()
    return db


def _install_some_pages(db: LocalDatabase) -> int:
    with db.write_lock() as conn:
        size = int(db.query("PRAGMA page_count")[0][0])
        read = db.page_reader()
        pages = {p: read(p) for p in range(1, size + 1)}
        return db.install_locked(conn, pages, size)


def _as_read(scan: WalScan) -> list[tuple[int, int, tuple[int, int], list[tuple[int, int, int, bytes]]]]:
    return [
        (t.commit_frame, t.db_size, t.cksum, [(f.index, f.pgno, f.db_size, f.body) for f in t.frames])
        for t in scan.txns
    ]


@pytest.mark.parametrize("encrypted", [False, True])
def test_the_handed_over_scan_is_what_the_file_holds(tmp_path: Path, encrypted: bool) -> None:
    db = _database(tmp_path, encrypted)
    before = db.current_seq()
    assert _install_some_pages(db) == before + 1
    wal = str(db.path) + "-wal"
    with walformat._scans_lock:
        cached = walformat._scans[wal][2]
    with open(wal, "rb") as f:
        raw = f.read()
    header, txns = read_committed(raw, disk_slot_size(str(db.path)))
    assert header == cached.header
    assert _as_read(cached) == _as_read(WalScan(header, txns, 0, (0, 0)))
    assert cached.cksum == txns[-1].cksum
    assert cached.end == walformat.WAL_HEADER_SIZE + txns[-1].commit_frame * (len(txns[-1].frames[0].body) + 24)
    db.close()


def test_the_frame_log_does_not_checksum_the_installed_frames_again(tmp_path: Path, monkeypatch) -> None:
    db = _database(tmp_path, encrypted=True)
    committed_wal(str(db.path))  # the local commits' frames, read once (as every install's first look does)
    counted: list[int] = []
    real = walformat.wal_checksum

    def counting(data: bytes, *args: object, **kwargs: object) -> tuple[int, int]:
        counted.append(len(data))
        return real(data, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(walformat, "wal_checksum", counting)  # the scan's checksums (_parse_frames)
    seq = _install_some_pages(db)
    frame_checksums = [n for n in counted if n > 40]  # not the WAL's or the wal-index's header
    assert frame_checksums == [], "the scan after the install read back frames the install had just written"
    assert db.current_seq() == seq
    db.close()


def test_a_handover_for_another_header_is_refused(tmp_path: Path) -> None:
    db = _database(tmp_path, encrypted=False)
    wal = str(db.path) + "-wal"
    scan = committed_wal(str(db.path))
    assert scan.header is not None and scan.txns
    with walformat._scans_lock:
        walformat._scans.pop(wal, None)
    foreign = WalScan(
        walformat.WalHeader.parse(walformat.WalHeader.build(4096, 0, 1, 2)), scan.txns[:1], scan.end, (0, 0)
    )
    fd = os.open(wal, os.O_RDONLY)
    try:
        remember_scan(wal, fd, foreign)
    finally:
        os.close(fd)
    assert wal not in walformat._scans  # another WAL generation's scan: not recorded
    assert _as_read(scan_wal(wal, None, None)) == _as_read(scan)
    db.close()


def test_a_handover_is_not_used_once_another_file_bears_the_name(tmp_path: Path) -> None:
    db = _database(tmp_path, encrypted=False)
    _install_some_pages(db)
    wal = str(db.path) + "-wal"
    handed = scan_wal(wal)
    assert handed.txns
    with open(wal, "rb") as f:
        raw = f.read()
    # the same header, but only the first transaction: a different file (inode) at the path
    first_end = walformat.WAL_HEADER_SIZE + handed.txns[0].commit_frame * (4096 + 24)
    os.rename(wal, wal + ".moved")
    with open(wal, "wb") as f:
        f.write(raw[:first_end])
    try:
        rescanned = scan_wal(wal)
        assert [t.commit_frame for t in rescanned.txns] == [handed.txns[0].commit_frame]
    finally:
        os.replace(wal + ".moved", wal)
    db.close()


@pytest.mark.parametrize("encrypted", [False, True])
def test_current_seq_counts_what_the_history_numbers(tmp_path: Path, encrypted: bool) -> None:
    db = _database(tmp_path, encrypted)
    log = db.log

    def numbered() -> int:
        wal = log._wal_txns()
        return wal[-1].seq if wal else log._last()[0]

    assert log.current_seq() == numbered()
    db.checkpoint()  # archived, then a new WAL generation
    assert log.current_seq() == numbered()
    conn = db.connect()
    conn.execute("INSERT INTO t VALUES (100, 'after the checkpoint')")
    conn.commit()
    assert log.current_seq() == numbered()
    log.archive()  # archived, still in the WAL: the archived ones are a prefix of the WAL's
    conn.execute("INSERT INTO t VALUES (101, 'not archived')")
    conn.commit()
    assert log.current_seq() == numbered()
    _install_some_pages(db)
    assert log.current_seq() == numbered()
    conn.close()
    db.close()
