"""What a pull installs, against a real ``turso-sync serve``: the pages that differ, not every page
sent.  An incremental pull installs the pages the remote changed without reading them back; a
full resend (the remote's history no longer reaches the replica's revision) holds every page,
and only those that differ from the replica's go into its WAL.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

import turso_sync
from tests.conftest import wait_for
from tests.integration.primary_harness import pipeline
from tests.servers import primary
from turso_sync.local.engine import LocalDatabase
from turso_sync.sync import pull as pull_mod
from turso_sync.sync.remote import PulledPages

BOUND = 128 * 1024
FLAGS = ("--history-bytes", str(BOUND), "--history-seconds", "0")
FRAME = 24 + 4096  # a WAL frame of a plaintext replica
KEY = "2b7e151628aed2a6abf7158809cf4f3c2b7e151628aed2a6abf7158809cf4f3c"


def _base_seq(data_dir: Path) -> int:
    """The oldest revision the primary's frame log still covers (its header's base)."""
    with open(data_dir / "databases" / "default" / "db-frames", "rb") as f:
        head = f.read(28)
    return int(struct.unpack_from(">Q", head, 20)[0])


def _wal_bytes(path: Path) -> int:
    try:
        return os.path.getsize(str(path) + "-wal")
    except FileNotFoundError:
        return 0


def _push_rows(writer: turso_sync.Connection, start: int, count: int) -> None:
    """One row per leaf page (2,500 bytes), one transaction and push each."""
    for i in range(start, start + count):
        writer.execute("INSERT INTO t VALUES (?, ?)", (i, f"row-{i:06d}-" + "x" * 2500))
        writer.commit()
        assert writer.push() == 1


def _pages(conn: turso_sync.Connection) -> int:
    return int(conn.execute("PRAGMA page_count").fetchone()[0])


def test_a_full_resend_installs_only_the_pages_that_differ(tmp_path: Path) -> None:
    data_dir = tmp_path / "server"
    with primary(data_dir, *FLAGS) as url:
        writer = turso_sync.connect(tmp_path / "w.db", url)
        behind = None
        try:
            writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            writer.commit()
            assert writer.push() == 1
            _push_rows(writer, 0, 60)
            behind = turso_sync.connect(tmp_path / "behind.db", url)
            before_pages = _pages(behind)
            assert before_pages > 60
            _push_rows(writer, 60, 40)  # 40 new leaves: past the history bound
            wait_for(lambda: _base_seq(data_dir) > int(behind.stats().revision), 30, "the history to be pruned")
            wal_before = _wal_bytes(tmp_path / "behind.db")
            assert behind.pull() is True
            installed = (_wal_bytes(tmp_path / "behind.db") - wal_before) // FRAME
            after_pages = _pages(behind)
            new_pages = after_pages - before_pages
            assert new_pages >= 40
            # every page came over the wire; the 60-odd unchanged leaves stayed out of the WAL
            assert new_pages <= installed <= new_pages + 12, (installed, new_pages, after_pages)
            assert behind.execute("SELECT count(*) FROM t").fetchone() == (100,)
            assert behind.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            for conn in (writer, behind):
                if conn is not None:
                    conn.close()


def test_an_incremental_pull_installs_what_the_remote_changed(tmp_path: Path) -> None:
    data_dir = tmp_path / "server"
    with primary(data_dir) as url:
        writer = turso_sync.connect(tmp_path / "w.db", url)
        reader = None
        try:
            writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            writer.commit()
            assert writer.push() == 1
            _push_rows(writer, 0, 30)
            reader = turso_sync.connect(tmp_path / "r.db", url)
            reader.execute("CREATE TABLE mine (x)")  # a local change the pull replays on top
            reader.commit()
            writer.execute("UPDATE t SET v = 'changed' WHERE id IN (3, 17)")
            writer.commit()
            assert writer.push() == 1
            _push_rows(writer, 30, 5)
            assert reader.pull() is True
            assert reader.execute("SELECT count(*) FROM t").fetchone() == (35,)
            assert reader.execute("SELECT id FROM t WHERE v = 'changed' ORDER BY id").fetchall() == [(3,), (17,)]
            assert reader.execute("SELECT count(*) FROM mine").fetchone() == (0,)
            assert reader.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert reader.push() == 1  # the replayed local change still goes out
            assert writer.pull() is True
            assert writer.execute("SELECT count(*) FROM mine").fetchone() == (0,)
        finally:
            for conn in (writer, reader):
                if conn is not None:
                    conn.close()


def test_an_answer_that_changed_every_page_is_installed_without_reading_each_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A table dropped and filled again with more rows (on the primary, as the sync benchmark
    does) rewrites every page: the incremental answer then holds all of them, as a full resend
    would.  A sample of them is read back (COMPARE_SAMPLE); since all of it differs, the rest is
    installed without being read back and decrypted."""
    read_back: list[int] = []
    current_pages = LocalDatabase.current_pages

    def counted(self: LocalDatabase, pgnos: list[int]) -> dict[int, bytes]:
        read_back.extend(pgnos)
        return current_pages(self, pgnos)

    answers: list[tuple[int, int]] = []
    install = pull_mod.install

    def noted(replica: pull_mod.PullContext, result: PulledPages) -> list:
        answers.append((result.count, result.db_size))
        return install(replica, result)

    def fill(prefix: str, rows: int) -> None:
        pipeline(
            url,
            "DROP TABLE IF EXISTS t",
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
            *[("INSERT INTO t VALUES (?, ?)", [i, f"{prefix}{i}" + "x" * 2500]) for i in range(rows)],
        )

    monkeypatch.setattr(LocalDatabase, "current_pages", counted)
    monkeypatch.setattr(pull_mod, "install", noted)
    with primary(tmp_path / "server") as url:
        fill("a", 80)
        reader = turso_sync.connect(tmp_path / "r.db", url, encryption_key=KEY)
        try:
            fill("b", 100)
            answers.clear()
            read_back.clear()
            assert reader.pull() is True
            ((sent, size),) = answers
            assert sent == size > pull_mod.COMPARE_ALONE  # the answer held every page (the case at hand)
            assert 0 < len(read_back) <= pull_mod.COMPARE_SAMPLE, read_back
            rows = reader.execute("SELECT id, v FROM t ORDER BY id").fetchall()
            assert rows == [(i, f"b{i}" + "x" * 2500) for i in range(100)]
            assert reader.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            reader.close()
