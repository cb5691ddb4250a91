"""An install records its commit in SQLite's wal-index itself, as SQLite's own writer would (issue 12).

Marking the wal-index stale made every connection's next read run SQLite's recovery, which reads
and checksums the whole WAL (up to about 250 frames between a replica's checkpoints, decrypted
when encrypted).  Where it can, the install now writes the page numbers, hash slots and header
of its commit into ``-shm`` (``walindex.index_commit``).  The oracle is SQLite itself: after each
install the wal-index is compared byte for byte with the one SQLite's recovery builds from the
file, and every connection (the engine's own, another in this process, one in another process)
must read the installed state, with its page cache from before dropped.
"""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.childlines import ChildLines
from tests.conftest import KEY256
from turso_sync.local import install, walindex
from turso_sync.local.engine import LocalDatabase
from turso_sync.local.install import invalidate_wal_index

_NATIVE = "<" if sys.byteorder == "little" else ">"


def _database(path: Path, key: str | None, rows: int = 40) -> tuple[LocalDatabase, object]:
    db = LocalDatabase(path, encryption_key=key)
    app = db.connect()
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    app.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"row {i:03d} " * 20) for i in range(rows)])
    app.commit()
    db.checkpoint()
    app.execute("INSERT INTO t VALUES (1000, 'after the checkpoint')")  # the WAL holds a commit
    app.commit()
    return db, app


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """What ``index_commit`` answered for each install (True: written in place)."""
    answers: list[bool] = []
    real = walindex.index_commit

    def spying(db_path: str, commit: walindex.IndexedCommit) -> bool:
        answers.append(real(db_path, commit))
        return answers[-1]

    monkeypatch.setattr(install, "index_commit", spying)
    return answers


def _install(db: LocalDatabase, edit: dict[int, bytes] | None = None, user_version: int | None = None) -> None:
    """Install page 1 (its user_version set) and the pages of ``edit`` through the engine."""
    with db.write_lock() as conn:
        size = int(db.query("PRAGMA page_count")[0][0])
        read = db.page_reader()
        pages = {1: read(1), **(edit or {})}
        if user_version is not None:
            pages[1] = pages[1][:60] + user_version.to_bytes(4, "big") + pages[1][64:]
        db.install_locked(conn, pages, size)


def _shm(db: LocalDatabase) -> bytes:
    with open(str(db.path) + "-shm", "rb") as f:
        return f.read(32768)


def _recovered(db: LocalDatabase, app: object) -> bytes:
    """The wal-index SQLite's recovery builds from the file as it is now."""
    invalidate_wal_index(str(db.path))
    app.execute("SELECT count(*) FROM sqlite_schema").fetchall()  # type: ignore[attr-defined]
    return _shm(db)


def _same_as_recovery(written: bytes, recovered: bytes) -> None:
    # the header from mxFrame on (mxFrame, nPage, the checksum chain, salts), then the page numbers
    # and the hash table; the change counter and the header's own checksum differ by design
    assert struct.unpack_from(_NATIVE + "IIIIII", written, 16) == struct.unpack_from(_NATIVE + "IIIIII", recovered, 16)
    assert written[136:] == recovered[136:]


@pytest.mark.parametrize("key", [None, KEY256], ids=["plaintext", "encrypted"])
def test_the_wal_index_written_in_place_is_the_one_recovery_builds(tmp_path, key, monkeypatch):
    db, app = _database(tmp_path / "db", key)
    answers = _spy(monkeypatch)
    leaf = int(app.execute("SELECT rootpage FROM sqlite_schema WHERE name = 't'").fetchone()[0])  # type: ignore[attr-defined]
    for n in range(1, 25):  # page 1 in every install: its hash slot's probe chain grows each time
        read = db.page_reader()
        _install(db, {leaf + n % 3: read(leaf + n % 3)}, user_version=n)
        written = _shm(db)
        assert answers[-1], f"install {n} marked the wal-index stale"
        _same_as_recovery(written, _recovered(db, app))
        assert app.execute("PRAGMA user_version").fetchone()[0] == n  # type: ignore[attr-defined]
        # a local commit continues the checksum chain the install left in the header: the next
        # recovery (the one above, at the next round) counts it, or its row would be gone
        app.execute("INSERT INTO t VALUES (?, 'local')", (2000 + n,))  # type: ignore[attr-defined]
        app.commit()  # type: ignore[attr-defined]
    assert len(answers) == 24
    assert app.execute("SELECT count(*) FROM t WHERE v = 'local'").fetchone()[0] == 24  # type: ignore[attr-defined]
    app.close()  # type: ignore[attr-defined]
    db.close()
    again = LocalDatabase(tmp_path / "db", encryption_key=key)  # reopened: recovery from the file alone
    assert again.query("SELECT count(*) FROM t WHERE v = 'local'") == [(24,)]
    assert again.query("PRAGMA user_version") == [(24,)]
    assert again.query("PRAGMA integrity_check") == [("ok",)]
    again.close()


def _leave_dead_writer_entries(db: LocalDatabase, pgnos: tuple[int, ...]) -> None:
    """What a writer killed in the middle of a transaction leaves in the wal-index: page numbers
    and hash slots for frames after mxFrame (``pgnos`` as frames mxFrame + 1, + 2, ...), never
    committed; SQLite's next writer clears them (``walCleanupHash``), and so must an install."""
    shm = bytearray(_shm(db))
    (mx_frame,) = struct.unpack_from(_NATIVE + "I", shm, 16)
    with open(str(db.path) + "-shm", "r+b") as f:
        for n, pgno in enumerate(pgnos):
            frame = mx_frame + 1 + n
            struct.pack_into(_NATIVE + "I", shm, 136 + 4 * (frame - 1), pgno)
            slot = (pgno * 383) & 8191
            while struct.unpack_from(_NATIVE + "H", shm, 16384 + 2 * slot)[0]:
                slot = (slot + 1) & 8191
            struct.pack_into(_NATIVE + "H", shm, 16384 + 2 * slot, frame)
        f.seek(136)
        f.write(shm[136:])


@pytest.mark.parametrize("key", [None, KEY256], ids=["plaintext", "encrypted"])
def test_entries_a_dead_writer_left_past_mxframe_are_cleared_first(tmp_path, key, monkeypatch):
    db, app = _database(tmp_path / "db", key)
    answers = _spy(monkeypatch)
    _leave_dead_writer_entries(db, (2, 3))
    _install(db, user_version=7)
    assert answers == [True]
    written = _shm(db)
    _same_as_recovery(written, _recovered(db, app))
    assert app.execute("PRAGMA user_version").fetchone()[0] == 7  # type: ignore[attr-defined]
    assert db.query("PRAGMA integrity_check") == [("ok",)]
    app.close()  # type: ignore[attr-defined]
    db.close()


_READER = textwrap.dedent(
    """
    import sys
    from turso_sync.local.engine import LocalDatabase

    db = LocalDatabase(sys.argv[1], encryption_key=sys.argv[2] or None)
    conn = db.connect()
    read = lambda: conn.execute("SELECT v FROM t WHERE id = 1").fetchone()[0]
    print(read(), flush=True)  # its page cache now holds the leaf
    sys.stdin.readline()
    print(read(), flush=True)
    """
)


@pytest.mark.parametrize("key", [None, KEY256], ids=["plaintext", "encrypted"])
def test_every_connection_reads_the_install_with_its_old_pages_dropped(tmp_path, key, monkeypatch):
    db, app = _database(tmp_path / "db", key, rows=10)  # the table's root page is its one leaf
    answers = _spy(monkeypatch)
    leaf = int(app.execute("SELECT rootpage FROM sqlite_schema WHERE name = 't'").fetchone()[0])  # type: ignore[attr-defined]
    # every connection has the leaf in its page cache: the engine's own, the app's, another process's
    assert db.query("SELECT v FROM t WHERE id = 1")[0][0].startswith("row 001")
    assert app.execute("SELECT v FROM t WHERE id = 1").fetchone()[0].startswith("row 001")  # type: ignore[attr-defined]
    child = subprocess.Popen(
        [sys.executable, "-c", _READER, str(tmp_path / "db"), key or ""],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        lines = ChildLines(child)
        assert lines.readline().startswith("row 001")
        page = db.page_reader()(leaf)
        assert page[0] == 0x0D and page.count(b"row 001") == 20  # a table leaf, row 1 in it
        _install(db, {leaf: page.replace(b"row 001", b"ROW 001", 1)})
        assert answers == [True]
        assert db.query("SELECT v FROM t WHERE id = 1")[0][0].startswith("ROW 001")
        assert app.execute("SELECT v FROM t WHERE id = 1").fetchone()[0].startswith("ROW 001")  # type: ignore[attr-defined]
        assert child.stdin is not None
        child.stdin.write(b"\n")
        child.stdin.flush()
        assert lines.readline().startswith("ROW 001")
        assert child.wait(timeout=60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    app.close()  # type: ignore[attr-defined]
    db.close()


def test_without_a_commit_in_the_wal_the_install_marks_the_wal_index_stale(tmp_path, monkeypatch):
    """After a TRUNCATE checkpoint the WAL is empty: SQLite's next writer starts it over (new
    header, salts of its choosing), which an install does not imitate; it marks the wal-index
    stale as before, and the one after it writes in place again."""
    db, app = _database(tmp_path / "db", KEY256)
    answers = _spy(monkeypatch)
    db.checkpoint()
    assert os.path.getsize(str(db.path) + "-wal") == 0
    calls: list[str] = []
    real = install.invalidate_wal_index
    monkeypatch.setattr(install, "invalidate_wal_index", lambda path: (calls.append(path), real(path))[1])
    _install(db, user_version=3)
    assert answers == [] and calls == [str(db.path)]
    assert app.execute("PRAGMA user_version").fetchone()[0] == 3  # type: ignore[attr-defined]
    _install(db, user_version=4)
    assert answers == [True] and len(calls) == 1
    assert app.execute("PRAGMA user_version").fetchone()[0] == 4  # type: ignore[attr-defined]
    app.close()  # type: ignore[attr-defined]
    db.close()


_OTHER_WRITER = textwrap.dedent(
    """
    import sys
    from turso_sync.local.engine import LocalDatabase

    db = LocalDatabase(sys.argv[1], encryption_key=sys.argv[2])
    conn = db.connect()
    conn.execute("INSERT INTO t VALUES (3000, 'other process')")
    conn.commit()
    conn.close()
    db.close()
    """
)


def test_an_unknown_plaintext_chain_marks_the_wal_index_stale(tmp_path, monkeypatch):
    """An encrypted WAL whose last frame this process never read or wrote (another process's
    commit): the plaintext checksum SQLite would continue from is not known here without reading
    the WAL, so the install leaves it to SQLite's recovery, as before."""
    db, app = _database(tmp_path / "db", KEY256)
    app.close()  # type: ignore[attr-defined]
    db.close()
    subprocess.run(
        [sys.executable, "-c", _OTHER_WRITER, str(tmp_path / "db"), KEY256],
        check=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    db = LocalDatabase(tmp_path / "db", encryption_key=KEY256)
    answers = _spy(monkeypatch)
    _install(db, user_version=5)
    assert answers == []  # no in-place attempt: the chain was unknown
    _install(db, user_version=6)
    assert answers == [True]  # the first install's recovery recorded it
    assert db.query("SELECT v FROM t WHERE id = 3000") == [("other process",)]
    assert db.query("PRAGMA user_version") == [(6,)]
    db.close()


# --- a property: any sequence of installs, local commits, checkpoints and readers -----------------

_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("install"), st.lists(st.integers(0, 7), max_size=6)),
        st.tuples(st.just("commit"), st.integers(1, 40)),  # rows: several pages when large
        st.tuples(st.just("checkpoint"), st.sampled_from(["PASSIVE", "TRUNCATE", "RESTART"])),
        st.tuples(st.just("reader"), st.lists(st.integers(0, 7), max_size=3)),
        st.tuples(st.just("dead writer"), st.lists(st.integers(1, 9), min_size=1, max_size=4)),
    ),
    min_size=1,
    max_size=14,
)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_STEPS, encrypted=st.booleans())
def test_any_sequence_leaves_the_wal_index_recovery_would_build(tmp_path_factory, steps, encrypted):
    """Installs (of any pages, page 1 always, with the user_version a model predicts), local commits
    of any size, checkpoints of every mode (a PASSIVE one leaves the WAL backfilled, so the next
    local commit starts it over), entries a dead writer left past mxFrame, and installs under a
    reader holding its snapshot: after every
    install written in place, its wal-index is what SQLite's recovery builds from the file; every
    connection reads what the model says; the reader keeps its snapshot until it ends."""
    key = KEY256 if encrypted else None
    folder = tmp_path_factory.mktemp("walindex")
    db, app = _database(folder / "db", key, rows=30)
    version = 0
    rows = int(app.execute("SELECT count(*) FROM t").fetchone()[0])  # type: ignore[attr-defined]
    in_place = 0
    try:
        for step in steps:
            kind = step[0]
            if kind in ("install", "reader"):
                size = int(db.query("PRAGMA page_count")[0][0])
                read = db.page_reader()
                edit = {1 + n % size: read(1 + n % size) for n in step[1]}  # pages as they are
                reader = None
                if kind == "reader":
                    reader = db.connect()
                    reader.execute("BEGIN")
                    assert reader.execute("SELECT count(*) FROM t").fetchone()[0] == rows
                version += 1
                with pytest.MonkeyPatch.context() as patch:  # (a fixture would span every example)
                    answers = _spy(patch)
                    _install(db, edit, user_version=version)
                if answers and answers[0]:
                    in_place += 1
                    written = _shm(db)
                    if reader is None:  # (a reader's open snapshot keeps SQLite from recovering)
                        _same_as_recovery(written, _recovered(db, app))
                if reader is not None:
                    assert reader.execute("PRAGMA user_version").fetchone()[0] == version - 1  # its snapshot
                    reader.execute("COMMIT")
                    assert reader.execute("PRAGMA user_version").fetchone()[0] == version
                    reader.close()
                assert app.execute("PRAGMA user_version").fetchone()[0] == version  # type: ignore[attr-defined]
                assert db.query("PRAGMA user_version") == [(version,)]
            elif kind == "commit":
                start = 10_000 + rows
                app.executemany(  # type: ignore[attr-defined]
                    "INSERT INTO t VALUES (?, ?)", [(start + i, f"local {i} " * 30) for i in range(step[1])]
                )
                app.commit()  # type: ignore[attr-defined]
                rows += step[1]
            elif kind == "dead writer":
                _leave_dead_writer_entries(db, tuple(step[1]))
            else:
                app.execute(f"PRAGMA wal_checkpoint({step[1]})").fetchall()  # type: ignore[attr-defined]
            assert app.execute("SELECT count(*) FROM t").fetchone()[0] == rows  # type: ignore[attr-defined]
        event(f"installs written in place: {min(in_place, 3)}{'+' if in_place >= 3 else ''}")
        app.close()  # type: ignore[attr-defined]
        db.close()
        again = LocalDatabase(folder / "db", encryption_key=key)  # recovery from the file alone
        assert again.query("SELECT count(*) FROM t") == [(rows,)]
        assert again.query("PRAGMA user_version") == [(version,)]
        assert again.query("PRAGMA integrity_check") == [("ok",)]
        again.close()
    finally:
        for handle in (app, db):  # (closing twice is harmless)
            with contextlib.suppress(Exception):
                handle.close()  # type: ignore[attr-defined]
