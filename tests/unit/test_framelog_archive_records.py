"""``FrameLog.archive`` writes its records in one joined write and updates its index without reading
them back: the index it keeps must be the one a fresh read of the file builds, the records must be
byte for byte what ``_encode_into`` makes of each transaction on its own, and a short write (a disk filling up)
must fail the archive (so the checkpoint keeps the WAL's frames) instead of passing as done.
"""

from __future__ import annotations

import errno
import os

import pytest

from turso_sync.local import framelog
from turso_sync.local.engine import LocalDatabase
from turso_sync.local.framelog import FrameLog


def _database_with_history(path, writes: int):
    db = LocalDatabase(path)
    conn = db.connect()
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.commit()
    for i in range(writes):
        # some transactions touch one page, some several (a long value spills into overflow pages)
        conn.execute("INSERT INTO t VALUES (?, ?)", (i, "x" * (100 if i % 3 else 9000)))
        if i % 4 == 0:
            conn.execute("DELETE FROM t WHERE id = ?", (i - 2,))
        conn.commit()
    return db, conn


def _encode(log: FrameLog, txn) -> bytes:
    """One record's bytes, encoded on its own."""
    parts: list[bytes] = []
    log._encode_into(txn, parts)
    return b"".join(parts)


def test_the_index_kept_is_the_one_a_fresh_read_builds_and_the_records_are_encode_s(tmp_path):
    db, conn = _database_with_history(tmp_path / "db", 40)
    log = db.log
    with log._locked(exclusive=True):  # as the archive reads them: the index loaded first
        before_end = log._end
        pending = log._wal_txns()  # what the archive is about to write
    expected = b"".join(_encode(log, txn) for txn in pending)
    assert log.archive() == len(pending) > 10
    with open(log.path, "rb") as f:
        f.seek(before_end)
        assert f.read() == expected  # the joined write is the records, byte for byte
    fresh = FrameLog(db.path, None, db.page_size)
    fresh.current_seq()  # loads the file
    assert fresh._index == log._index and fresh._end == log._end == os.path.getsize(log.path)
    # and the history reads back through the kept index
    assert [txn.seq for txn in log.history(log.base_seq)] == [rec.seq for rec in fresh._index]
    conn.close()
    db.close()


def test_a_short_write_fails_the_archive_and_the_index_stays_as_it_was(tmp_path, monkeypatch):
    db, conn = _database_with_history(tmp_path / "db", 12)
    log = db.log
    with log._locked(exclusive=True):
        index, end = list(log._index), log._end
        pending = [txn.seq for txn in log._wal_txns()]
    real = os.pwrite

    def short(fd: int, data: bytes, offset: int) -> int:
        return real(fd, data[: len(data) // 2], offset)  # what a file system near full may do

    monkeypatch.setattr(framelog.os, "pwrite", short)
    with pytest.raises(OSError) as raised:
        log.archive()
    assert raised.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert log._index == index and log._end == end
    # the next archive keeps the whole records that made it, cuts the torn one and writes the rest
    again = log.archive()
    assert 0 < again < len(pending)
    fresh = FrameLog(db.path, None, db.page_size)
    fresh.current_seq()
    assert fresh._index == log._index
    assert [rec.seq for rec in fresh._index][-len(pending) :] == pending
    conn.close()
    db.close()


def _shape(txns) -> list[tuple[object, ...]]:
    return [
        (
            t.seq,
            t.salts,
            t.commit_frame,
            t.db_size,
            t.size_before,
            [(p.pgno, p.post, p.pre, p.pre_missing) for p in t.pages],
        )
        for t in txns
    ]


def test_history_after_a_revision_builds_only_the_wal_s_later_transactions_and_reads_the_same(tmp_path, monkeypatch):
    """``history(since)`` and ``first_touches(since)`` number the WAL's transactions up to ``since``
    without building them (no page reads); what they return is what building every one gives."""
    db, conn = _database_with_history(tmp_path / "db", 10)
    db.checkpoint()  # archived and backfilled: the log's records
    for i in range(100, 130):
        conn.execute("INSERT INTO t VALUES (?, ?)", (i, "y" * (100 if i % 5 else 5000)))
        conn.commit()
    log = db.log
    log.archive()  # half the WAL archived, the rest not
    for i in range(200, 215):
        conn.execute("UPDATE t SET v = ? WHERE id = ?", ("z" * 50, i - 100))
        conn.commit()
    with log._locked(exclusive=False):
        every_wal_txn, _latest, newest = log._wal_state()  # every one built, as before
    assert len(every_wal_txn) == 15 and newest == every_wal_txn[-1].seq
    built: list[int] = []
    real = FrameLog._txn_from_wal

    def counting(self, seq, *args):
        built.append(seq)
        return real(self, seq, *args)

    monkeypatch.setattr(FrameLog, "_txn_from_wal", counting)
    for since in range(log.base_seq, newest + 1):
        built.clear()
        got = list(log.history(since))
        assert built == [t.seq for t in every_wal_txn if t.seq > since]  # the others were not built
        # the WAL's part is what building every transaction gave, from ``since`` on
        assert _shape([t for t in got if t.seq >= every_wal_txn[0].seq]) == _shape(
            [t for t in every_wal_txn if t.seq > since]
        )
        touched, size = log.first_touches(since, None)
        pages = {}
        for txn in got:
            for page in txn.pages:
                pages.setdefault(page.pgno, page)
        assert {p: (v.pre, v.pre_missing) for p, v in touched.items()} == {
            p: (v.pre, v.pre_missing) for p, v in pages.items()
        }
        assert size == (got[0].size_before if got else None)
    conn.close()
    db.close()
