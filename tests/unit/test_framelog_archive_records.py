"""``FrameLog.archive`` writes its records in one joined write and updates its index without reading
them back: the index it keeps must be the one a fresh read of the file builds, the records must be
byte for byte what ``_encode`` makes of each transaction, and a short write (a disk filling up)
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


def test_the_index_kept_is_the_one_a_fresh_read_builds_and_the_records_are_encode_s(tmp_path):
    db, conn = _database_with_history(tmp_path / "db", 40)
    log = db.log
    with log._locked(exclusive=True):  # as the archive reads them: the index loaded first
        before_end = log._end
        pending = log._wal_txns()  # what the archive is about to write
    expected = b"".join(log._encode(txn) for txn in pending)
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
