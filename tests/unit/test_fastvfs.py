"""The VFS in C in front of the Python one (``turso_sync/_fastvfs.c``).

Where the module is built, connections open the shim ``turso_sync_c``; its files wrap the Python
VFS's.  On a main database file in Turso's format it reads whole pages but page 1 itself (pread,
AES-GCM through libgcrypt) and sends the calls the file's class leaves to the unix file straight
there; everything else, and every page it cannot read or verify, goes to the Python file.  A
damaged page and a replica that becomes partial are tested in ``test_page_reader.py``, which
checks the shim's counts too.  These tests spy on the Python file's methods (as instance
attributes, which APSW looks up first) to see which calls still reach Python.  Without the module
(or with ``TURSO_SYNC_PURE_PYTHON``) connections open the Python VFS itself: the first and the
last test check that.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

import turso_sync
from tests.unit.test_page_reader import KEY, P, _make
from turso_sync import _compiled
from turso_sync.local import vfs

ROWS = 400  # what _make writes

_fastvfs = _compiled.fastvfs()
needs_shim = pytest.mark.skipif(_fastvfs is None, reason="turso_sync._fastvfs not built, or refused by the environment")
METHODS = ("xRead", "xLock", "xUnlock", "xCheckReservedLock", "xFileSize", "xFileControl", "xSectorSize")


def _expected(rows: int = ROWS) -> list[tuple[bytes]]:
    return [(bytes([i % 251]) * 300,) for i in range(rows)]


def _spy_opens(monkeypatch: pytest.MonkeyPatch, cls: type[Any]) -> list[Any]:
    """The files of class ``cls`` opened from now on, in order."""
    files: list[Any] = []
    init = cls.__init__

    def spy_init(self: Any, *args: Any) -> None:
        init(self, *args)
        files.append(self)

    monkeypatch.setattr(cls, "__init__", spy_init)
    return files


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[vfs.EncryptedDBFile]]:
    """The main database files opened while the test runs."""
    yield _spy_opens(monkeypatch, vfs.EncryptedDBFile)


def _count_calls(file: vfs.EncryptedDBFile) -> Counter[str]:
    """From now on, count the calls that reach the Python file, by method."""
    seen: Counter[str] = Counter()
    for name in METHODS:
        method = getattr(file, name)

        def spy(*args: Any, _method: Any = method, _name: str = name) -> Any:
            seen[_name] += 1
            return _method(*args)

        file.__dict__[name] = spy
    return seen


def _rows(db: Any) -> list[tuple[bytes]]:
    """Every row's value, in id order."""
    return list(db.execute("SELECT v FROM t ORDER BY id").fetchall())


def test_connections_open_the_shim_exactly_when_the_module_is_there() -> None:
    expected = _fastvfs.SHIM_NAME if _fastvfs is not None else vfs.VFS_NAME
    assert vfs.ensure_vfs() == expected


@needs_shim
def test_pages_are_read_and_verified_in_c_and_the_rows_are_right(
    tmp_path: Path, opened: list[vfs.EncryptedDBFile]
) -> None:
    path = tmp_path / "db"
    _make(path)
    pages = path.stat().st_size // P
    opened.clear()
    db = turso_sync.connect(path, encryption_key=KEY, record_frames=False)
    assert db.execute("SELECT count(*) FROM t").fetchone() == (ROWS,)
    (main,) = opened
    key = db._state._page_key
    assert key is not None and key.enabled
    seen = _count_calls(main)
    before = key.hits
    db.apsw_connection.release_memory()  # SQLite's cache is empty: every page is read again
    assert _rows(db) == _expected()
    assert key.hits - before >= pages - 2  # every page but page 1 (and the freelist's) read in C
    assert seen["xRead"] <= 1  # page 1 at most, through Python
    assert key.fallbacks == 0
    db.close()


@needs_shim
@pytest.mark.parametrize(("cipher", "key"), [("aes128gcm", "6f" * 16), ("aes256gcm", KEY)])
def test_pages_read_in_c_are_written_back_whole(tmp_path: Path, cipher: str, key: str) -> None:
    """SQLite writes back what it read, reserved bytes included: they must be the zeros Python gives."""
    path = tmp_path / "db"
    db = turso_sync.connect(path, encryption_key=key, cipher=cipher, record_frames=False)
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    db.executemany("INSERT INTO t (v) VALUES (?)", [(bytes([i % 251]) * 300,) for i in range(ROWS)])
    db.commit()
    db.apsw_connection.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    db.apsw_connection.release_memory()
    before = db._state._page_key.hits
    db.execute("UPDATE t SET v = CAST(v || x'01' AS BLOB)")  # every page read (in C), changed and written
    db.commit()
    assert db._state._page_key.hits - before >= 10
    db.apsw_connection.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    db.close()
    db = turso_sync.connect(path, encryption_key=key, cipher=cipher, record_frames=False)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert _rows(db) == [(v + b"\x01",) for (v,) in _expected()]
    db.close()


@needs_shim
def test_a_read_transaction_on_cached_pages_makes_no_python_call(
    tmp_path: Path, opened: list[vfs.EncryptedDBFile]
) -> None:
    path = tmp_path / "db"
    _make(path)
    opened.clear()
    db = turso_sync.connect(path, encryption_key=KEY, record_frames=False)
    for i in range(1, 51):
        db.execute("SELECT v FROM t WHERE id = ?", (i,)).fetchone()
    (main,) = opened
    seen = _count_calls(main)
    for i in range(1, 51):
        assert db.execute("SELECT length(v) FROM t WHERE id = ?", (i,)).fetchone() == (300,)
    # LOCK_TIMEOUT and the size at every read transaction went straight to the unix file
    assert seen == Counter()
    db.close()


@needs_shim
def test_a_plaintext_database_reads_and_locks_without_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = _spy_opens(monkeypatch, vfs.PlainDBFile)
    path = tmp_path / "plain.db"
    db = turso_sync.connect(path, record_frames=False)
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    db.executemany("INSERT INTO t (v) VALUES (?)", _expected())
    db.commit()
    db.apsw_connection.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    db.close()
    files.clear()
    db = turso_sync.connect(path, record_frames=False)
    db.execute("SELECT count(*) FROM t").fetchone()
    (main,) = files
    key = db._state._page_key
    seen = _count_calls(main)
    before = key.hits
    db.apsw_connection.release_memory()
    assert _rows(db) == _expected()
    for i in range(1, 51):
        assert db.execute("SELECT length(v) FROM t WHERE id = ?", (i,)).fetchone() == (300,)
    assert key.hits - before >= 10  # every page read straight from the unix file
    assert seen == Counter()  # no read, lock, size or lock-timeout call reached Python
    db.close()


@needs_shim
def test_a_class_that_overrides_a_lock_method_gets_its_calls(
    tmp_path: Path, opened: list[vfs.EncryptedDBFile], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "db"
    _make(path)
    sizes: list[int] = []

    def size(self: vfs.EncryptedDBFile) -> int:
        got = int(apsw.VFSFile.xFileSize(self))
        sizes.append(got)
        return got

    monkeypatch.setattr(vfs.EncryptedDBFile, "xFileSize", size, raising=False)
    db = turso_sync.connect(path, encryption_key=KEY, record_frames=False)
    for i in range(1, 11):
        db.execute("SELECT v FROM t WHERE id = ?", (i,)).fetchone()
    assert len(sizes) >= 10  # one per read transaction, through the class
    assert db._state._page_key.hits > 0  # its pages are still read in C
    db.close()


_CUT_SHORT = """
import sys, turso_sync
path, key, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
db = turso_sync.connect(path, encryption_key=key, record_frames=False)
db.execute("SELECT count(*) FROM t").fetchone()
with open(path, "r+b") as f:
    f.truncate(size)  # the last pages gone, one of them half, while the connection is open
db.apsw_connection.release_memory()
try:
    db.execute("SELECT sum(length(v)) FROM t").fetchone()
except turso_sync.DatabaseError as exc:
    print(type(exc).__name__, exc)
"""


@needs_shim
def test_a_file_cut_short_while_open_reads_as_it_does_through_python(tmp_path: Path) -> None:
    outs = []
    for pure in ("0", "1"):
        path = tmp_path / f"db{pure}"
        _make(path)
        size = (path.stat().st_size // P - 3) * P + 100
        env = dict(os.environ, TURSO_SYNC_PURE_PYTHON=pure)
        out = subprocess.run(
            [sys.executable, "-c", _CUT_SHORT, str(path), KEY, str(size)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        outs.append(out.stdout.replace(str(path), "DB").strip())
    assert outs[0] == outs[1]
    assert outs[0].startswith("EncryptionError DB: page") and "cut short" in outs[0]


@needs_shim
def test_closing_the_last_connection_stops_the_key(tmp_path: Path) -> None:
    path = tmp_path / "db"
    _make(path)
    db = turso_sync.connect(path, encryption_key=KEY, record_frames=False)
    key = db._state._page_key
    assert key.enabled
    db.close()
    assert not key.enabled  # its descriptor is closed with the state


@needs_shim
def test_a_claim_no_shim_open_takes_is_dropped(tmp_path: Path) -> None:
    assert _fastvfs is not None
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        key = _fastvfs.PageKey(fd, b"k" * 32, P, ())
        held = sys.getrefcount(key)
        _fastvfs.claim(object(), key, True)  # as a file opened through the Python VFS alone would
        assert sys.getrefcount(key) == held + 1
        plain = turso_sync.connect(tmp_path / "plain.db", record_frames=False)  # claims nothing
        plain.execute("CREATE TABLE x (a)")
        plain.close()
        gc.collect()
        assert sys.getrefcount(key) == held  # the next open through the shim let it go
    finally:
        os.close(fd)


@needs_shim
def test_page_key_refuses_bad_input() -> None:
    assert _fastvfs is not None
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        with pytest.raises(ValueError, match="16 or 32 bytes"):
            _fastvfs.PageKey(fd, b"k" * 24, P, ())
        with pytest.raises(ValueError, match="power of two"):
            _fastvfs.PageKey(fd, b"k" * 32, 3000, ())
        with pytest.raises(ValueError, match="needs its descriptor"):
            _fastvfs.PageKey(-1, b"k" * 32, P, ())
        with pytest.raises(TypeError):
            _fastvfs.PageKey(fd, "k" * 32, P, ())  # a key is bytes
        assert _fastvfs.PageKey(-1, None, P, ()).enabled  # a plaintext database's
        with pytest.raises(ValueError, match="at most 8"):
            _fastvfs.PageKey(fd, b"k" * 32, P, range(9))
        with pytest.raises(TypeError):
            _fastvfs.claim(object(), object(), True)
    finally:
        os.close(fd)


def test_without_the_module_connections_open_the_python_vfs(tmp_path: Path) -> None:
    path = tmp_path / "db"
    code = (
        "import turso_sync\n"
        "from turso_sync.local import vfs\n"
        f"db = turso_sync.connect({str(path)!r}, encryption_key={KEY!r}, record_frames=False)\n"
        "db.execute('CREATE TABLE t (a)')\n"
        "db.execute('INSERT INTO t VALUES (1)')\n"
        "db.commit()\n"
        "print(vfs.ensure_vfs(), db._state._page_key, db.execute('SELECT a FROM t').fetchone())\n"
    )
    env = dict(os.environ, TURSO_SYNC_PURE_PYTHON="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == [vfs.VFS_NAME, "None", "(1,)"]


@needs_shim
def test_a_shim_that_does_not_load_leaves_the_python_vfs_working(tmp_path: Path) -> None:
    path = tmp_path / "db"
    code = (
        "import logging, turso_sync\n"
        "from turso_sync.local import vfs\n"
        "logging.basicConfig(level=logging.WARNING, format='%(message)s')\n"
        "vfs._fastvfs.ENTRY_POINT = 'no_such_entry_point'  # SQLite cannot load it\n"
        f"db = turso_sync.connect({str(path)!r}, encryption_key={KEY!r}, record_frames=False)\n"
        "db.execute('CREATE TABLE t (a)')\n"
        "db.execute('INSERT INTO t VALUES (1)')\n"
        "db.commit()\n"
        "print(vfs.ensure_vfs(), vfs._fastvfs, db._state._page_key, db.execute('SELECT a FROM t').fetchone())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == [vfs.VFS_NAME, "None", "None", "(1,)"]
    assert "the compiled VFS shim did not load" in out.stderr and "no_such_entry_point" in out.stderr
