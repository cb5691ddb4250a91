"""The main database file's page reads in Turso's format: the common one never reaches Python.

With the compiled helper, an ``EncryptedDBFile`` in Turso's format carries ``_speedups.page_reader``
as its instance attribute ``xRead``: a whole page other than page 1 is read and decrypted there,
and everything else (page 1, a partial read, a read past the end, a page that does not verify, a
partial replica) goes to the class's ``xRead``, which keeps its errors and records.  Without the
helper the class's method reads every page.  ``make test`` runs this file with the helper refused
as well.
"""

from __future__ import annotations

import gc
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

import turso_sync
from turso_sync import _compiled
from turso_sync.crypto.page_codec import PageAuthError
from turso_sync.local import vfs

KEY = "4d" * 32
P = 4096

_speedups = _compiled.speedups()
needs_compiled = pytest.mark.skipif(
    _speedups is None, reason="turso_sync._speedups not built, or refused by TURSO_SYNC_PURE_PYTHON"
)


class _State:
    lazy: object = None


class _File:
    """Anything a weak reference can point to."""


@pytest.fixture
def data_fd(tmp_path: Path) -> Iterator[int]:
    """A descriptor of a file of three pages: page n filled with byte n."""
    path = tmp_path / "pages"
    path.write_bytes(b"".join(bytes([n]) * P for n in (1, 2, 3)))
    fd = os.open(path, os.O_RDONLY)
    yield fd
    os.close(fd)


def _reader(fd: int, state: _State, log: list[tuple[object, int, int]], decrypt: Any = None) -> tuple[Any, ...]:
    assert _speedups is not None
    slot, page = bytearray(P), bytearray(P)
    f = _File()

    def base(file: object, amount: int, offset: int) -> bytes:
        log.append((file, amount, offset))
        return b"base"

    def reverse() -> None:  # a stand-in decrypter: slot -> page
        page[:] = slot[::-1]

    reader = _speedups.page_reader(f, base, state, fd, slot, page, decrypt or reverse)
    return reader, f, slot, page


@needs_compiled
def test_reader_reads_whole_pages_itself_and_hands_the_rest_to_base(data_fd: int) -> None:
    log: list[tuple[object, int, int]] = []
    state = _State()
    reader, f, _slot, page = _reader(data_fd, state, log)
    got = reader(P, P)
    assert got is page and bytes(got) == bytes([2]) * P
    assert bytes(reader(P, 2 * P)) == bytes([3]) * P
    assert log == []
    assert reader(P, 0) == b"base"  # page 1
    assert reader(100, 0) == b"base"  # the header
    assert reader(P // 2, P) == b"base"  # part of a page
    assert reader(P, P + 8) == b"base"  # unaligned
    assert reader(P, 3 * P) == b"base"  # past the end
    assert log == [(f, P, 0), (f, 100, 0), (f, P // 2, P), (f, P, P + 8), (f, P, 3 * P)]
    state.lazy = object()  # a partial replica, even one that became so while the file was open
    log.clear()
    assert reader(P, P) == b"base"
    assert log == [(f, P, P)]


@needs_compiled
def test_reader_hands_a_refused_page_to_base_but_lets_interrupts_through(data_fd: int) -> None:
    log: list[tuple[object, int, int]] = []
    refusal: list[BaseException] = [ValueError("does not verify")]

    def refuse() -> None:
        raise refusal[0]

    reader, f, _slot, _page = _reader(data_fd, _State(), log, refuse)
    assert reader(P, P) == b"base"
    assert log == [(f, P, P)]
    refusal[0] = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        reader(P, P)


@needs_compiled
def test_reader_holds_its_file_weakly_and_refuses_bad_input(data_fd: int) -> None:
    assert _speedups is not None
    reader, f, _slot, _page = _reader(data_fd, _State(), [])
    with pytest.raises(TypeError, match="exactly 2 positional arguments"):
        reader(P)
    del f
    gc.collect()
    with pytest.raises(ReferenceError, match="no longer exists"):
        reader(P, 0)

    def base(*_: object) -> bytes:
        return b""

    def good(slot: object = bytearray(P), page: object = bytearray(P), fd: object = data_fd) -> Any:
        return _speedups.page_reader(_File(), base, _State(), fd, slot, page, base)

    with pytest.raises(TypeError, match="must be bytearrays"):
        good(slot=bytes(P))
    with pytest.raises(ValueError, match="same, non-zero size"):
        good(page=bytearray(P - 1))
    with pytest.raises(ValueError, match="not an open descriptor"):
        good(fd=-1)
    with pytest.raises(TypeError, match="must be callable"):
        _speedups.page_reader(_File(), None, _State(), data_fd, bytearray(P), bytearray(P), base)
    slot = bytearray(P)
    held = good(slot=slot)
    with pytest.raises(BufferError):
        slot.extend(b"x")  # the reader's pread target cannot move while it lives
    del held
    slot.extend(b"x")


def _make(path: Path, rows: int = 400) -> None:
    db = turso_sync.connect(path, encryption_key=KEY, record_frames=False)
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    db.executemany("INSERT INTO t (v) VALUES (?)", [(bytes([i % 251]) * 300,) for i in range(rows)])
    db.commit()
    db.apsw_connection.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    db.close()


@pytest.fixture
def spied(monkeypatch: pytest.MonkeyPatch) -> tuple[Counter[str], list[vfs.EncryptedDBFile]]:
    """Counts the class's xRead calls by kind (page 1 / other whole pages / other reads); lists the files opened."""
    seen: Counter[str] = Counter()
    files: list[vfs.EncryptedDBFile] = []
    read, init = vfs.EncryptedDBFile.xRead, vfs.EncryptedDBFile.__init__

    def spy(self: Any, amount: int, offset: int) -> Any:
        seen["page 1" if offset == 0 else "page" if amount == P and not offset % P else "other"] += 1
        return read(self, amount, offset)

    def opened(self: Any, *args: Any) -> None:
        init(self, *args)
        files.append(self)

    monkeypatch.setattr(vfs.EncryptedDBFile, "xRead", spy)
    monkeypatch.setattr(vfs.EncryptedDBFile, "__init__", opened)
    return seen, files


def _read_all(db: turso_sync.Connection, rows: int = 400) -> None:
    for i in range(1, rows + 1, 7):
        assert db.execute("SELECT v FROM t WHERE id = ?", (i,)).fetchone() == (bytes([(i - 1) % 251]) * 300,)


def test_ordinary_page_reads_reach_the_class_only_without_the_helper(
    tmp_path: Path, spied: tuple[Counter[str], list[vfs.EncryptedDBFile]]
) -> None:
    seen, files = spied
    path = tmp_path / "db"
    _make(path)
    seen.clear()
    db = turso_sync.connect(path, encryption_key=KEY, record_frames=False)
    _read_all(db)
    assert (files[-1].__dict__.get("xRead") is not None) == (_speedups is not None)
    db.close()
    assert seen["page 1"] >= 1  # always the class's: its header is authenticated there
    if _speedups is not None:
        assert seen["page"] == 0
    else:
        assert seen["page"] >= 10


def test_a_tampered_page_is_refused_named_and_recorded_either_way(
    tmp_path: Path, spied: tuple[Counter[str], list[vfs.EncryptedDBFile]], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen, _files = spied
    path = tmp_path / "db"
    _make(path)
    pages = path.stat().st_size // P
    victim = pages // 2
    with open(path, "r+b") as f:
        f.seek((victim - 1) * P + 500)
        b = f.read(1)
        f.seek((victim - 1) * P + 500)
        f.write(bytes([b[0] ^ 0x40]))
    recorded: list[PageAuthError] = []
    record = vfs.DatabaseState.record

    def spy_record(self: vfs.DatabaseState, err: PageAuthError) -> None:
        recorded.append(err)
        record(self, err)

    monkeypatch.setattr(vfs.DatabaseState, "record", spy_record)
    seen.clear()
    db = turso_sync.connect(path, encryption_key=KEY, record_frames=False)
    key = db._state._page_key  # the compiled VFS shim's, where it is built (``_fastvfs.c``)
    with pytest.raises(turso_sync.EncryptionError, match=rf"\bpage {victim}\b"):
        db.execute("SELECT sum(length(v)) FROM t").fetchone()
    db.close()
    assert [err.pgno for err in recorded] == [victim]
    assert seen["page"] >= 1  # the refused page went to the class's method, which named it
    if key is not None:  # the shim read the good pages and handed the refused one to Python
        assert key.hits > 0 and key.fallbacks >= 1


def test_a_replica_that_becomes_partial_while_open_reads_through_the_class(
    tmp_path: Path, spied: tuple[Counter[str], list[vfs.EncryptedDBFile]]
) -> None:
    seen, _files = spied
    path = tmp_path / "db"
    _make(path)
    db = turso_sync.connect(path, encryption_key=KEY, record_frames=False)
    state = db._state
    asked: list[int] = []

    class Lazy:  # every page present: what a partial replica's pages look like once fetched
        def missing(self, pgno: int) -> bool:
            asked.append(pgno)
            return False

    db.apsw_connection.release_memory()  # drop the cached pages
    seen.clear()
    key = state._page_key  # the compiled VFS shim's, where it is built (``_fastvfs.c``)
    hits = key.hits if key is not None else 0
    state.lazy = Lazy()  # type: ignore[assignment]  # as a later connection finding the replica partial does
    try:
        _read_all(db)
    finally:
        state.lazy = None
    assert seen["page"] >= 10 and len(asked) >= 10  # every page asked for first
    if key is not None:  # the shim stopped reading pages itself once the replica was partial
        assert not key.enabled and key.hits == hits
    db.apsw_connection.release_memory()  # drop the cached pages
    seen.clear()
    _read_all(db)
    db.close()
    assert (seen["page"] == 0) == (_speedups is not None)


def test_the_page_reader_is_used_exactly_when_the_compiled_helper_is() -> None:
    assert (vfs._page_reader is None) == (_compiled.speedups() is None)


@pytest.mark.parametrize("cipher", ["envelope", "hardened"])
def test_other_formats_keep_the_class_method(tmp_path: Path, cipher: str, monkeypatch: pytest.MonkeyPatch) -> None:
    files: list[vfs.EncryptedDBFile] = []
    init = vfs.EncryptedDBFile.__init__

    def opened(self: Any, *args: Any) -> None:
        init(self, *args)
        files.append(self)

    monkeypatch.setattr(vfs.EncryptedDBFile, "__init__", opened)
    db = turso_sync.connect(tmp_path / "db", encryption_key=KEY, cipher=cipher, record_frames=False)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    assert files and all("xRead" not in f.__dict__ for f in files)
    db.close()


# --- WAL recovery's reads of frames an install handed over (``_speedups.wal_frame_reader``) ---------

FRAME = 24 + P


class _Handed:
    """What ``HandedFrame`` offers the reader."""

    def __init__(self, disk: bytes, prev_ct: tuple[int, int], prev_pt: tuple[int, int]) -> None:
        self.disk, self.prev_ct, self.prev_pt = disk, prev_ct, prev_pt
        self.salts = (int.from_bytes(disk[8:12], "big"), int.from_bytes(disk[12:16], "big"))
        self.ct, self.pt = (11, 12), (13, 14)
        self.given = b"given" + disk[:19]


class _WalFile:
    frame_size = FRAME

    def __init__(self) -> None:
        self._prev_tail: tuple[int, bytes] | None = None
        self._ahead: tuple[int, bytes] | None = None
        self._last_full_read = 0


def _wal_reader() -> tuple[Any, _WalFile, dict[Any, Any], list[tuple[object, int, int]], dict[Any, Any]]:
    """A reader over frames 4 and 5 in a read-ahead buffer from frame 4, frame 5 handed over."""
    assert _speedups is not None
    salts = bytes.fromhex("0102030405060708")
    frames = [
        n.to_bytes(4, "big")
        + bytes(4)
        + salts
        + (100 + n).to_bytes(4, "big")
        + (200 + n).to_bytes(4, "big")
        + bytes([n]) * P
        for n in (4, 5)
    ]
    f = _WalFile()
    f._prev_tail = (4, frames[0][8:24])
    f._ahead = (4, b"".join(frames))
    log: list[tuple[object, int, int]] = []

    def base(file: object, amount: int, offset: int) -> bytes:
        log.append((file, amount, offset))
        return b"base"

    handed = {(salts, 5): _Handed(frames[1], (104, 204), (7, 8))}
    chain: dict[Any, Any] = {(0x01020304, 0x05060708, 4): ((104, 204), (7, 8))}
    reader = _speedups.wal_frame_reader(f, base, handed.get, chain, FRAME, FRAME)
    return reader, f, chain, log, handed


@needs_compiled
def test_wal_reader_hands_over_the_frame_and_records_what_the_long_way_would() -> None:
    reader, f, chain, log, handed = _wal_reader()
    frame = handed[(bytes.fromhex("0102030405060708"), 5)]
    assert reader(FRAME, 32 + 4 * FRAME) is frame.given
    assert log == []
    assert chain[(0x01020304, 0x05060708, 5)] == ((11, 12), (13, 14))
    assert f._last_full_read == 5 and f._prev_tail == (5, frame.disk[8:24]) and f._ahead is not None


@needs_compiled
@pytest.mark.parametrize(
    "change",
    ["not in order", "not ahead", "not handed", "disk differs", "ciphertext chain", "plaintext chain", "no chain"],
)
def test_wal_reader_hands_anything_else_to_base_with_nothing_changed(change: str) -> None:
    reader, f, chain, log, handed = _wal_reader()
    key = (bytes.fromhex("0102030405060708"), 5)
    if change == "not in order":
        f._prev_tail = (3, f._prev_tail[1])  # type: ignore[index]
    elif change == "not ahead":
        f._ahead = (4, f._ahead[1][:FRAME])  # type: ignore[index]
    elif change == "not handed":
        del handed[key]
    elif change == "disk differs":
        handed[key].disk = handed[key].disk[:-1] + b"x"
    elif change == "ciphertext chain":
        handed[key].prev_ct = (105, 204)
    elif change == "plaintext chain":
        handed[key].prev_pt = (7, 9)
    else:
        chain.clear()
    before = (f._prev_tail, f._ahead, f._last_full_read, dict(chain))
    assert reader(FRAME, 32 + 4 * FRAME) == b"base"
    assert log == [(f, FRAME, 32 + 4 * FRAME)]
    assert (f._prev_tail, f._ahead, f._last_full_read, dict(chain)) == before


@needs_compiled
def test_wal_reader_sends_other_reads_to_base_and_refuses_bad_input() -> None:
    assert _speedups is not None
    reader, f, _chain, log, _handed = _wal_reader()
    assert reader(32, 0) == b"base"  # the WAL header
    assert reader(FRAME, 32) == b"base"  # frame 1: the class's method ends a checksum rewrite there
    assert reader(P, 32 + 4 * FRAME + 24) == b"base"  # a body alone
    assert reader(8, 32 + 4 * FRAME + 16) == b"base"  # a checksum
    assert [entry[1:] for entry in log] == [(32, 0), (FRAME, 32), (P, 32 + 4 * FRAME + 24), (8, 32 + 4 * FRAME + 16)]
    with pytest.raises(TypeError, match="exactly 2 positional arguments"):
        reader(FRAME)
    log.clear()
    del f
    gc.collect()
    with pytest.raises(ReferenceError, match="no longer exists"):
        reader(FRAME, 32)
    with pytest.raises(TypeError, match="must be a dict"):
        _speedups.wal_frame_reader(_File(), len, len, [], FRAME, FRAME)
    with pytest.raises(ValueError, match="frame sizes"):
        _speedups.wal_frame_reader(_File(), len, len, {}, 24, FRAME)


def test_recovery_after_an_install_reads_its_frames_without_the_class_method(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from turso_sync.local.engine import LocalDatabase
    from turso_sync.local.install import invalidate_wal_index

    db = LocalDatabase(tmp_path / "db", encryption_key=KEY)
    conn = db.connect()
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    conn.executemany("INSERT INTO t (v) VALUES (?)", [(bytes([i % 251]) * 300,) for i in range(1500)])
    conn.commit()
    conn.close()
    db.checkpoint()
    with db.write_lock() as locked:
        size = int(db.query("PRAGMA page_count")[0][0])
        read = db.page_reader()
        db.install_locked(locked, {p: read(p) for p in range(1, size + 1)}, size)
    whole: list[int] = []
    method = vfs.EncryptedWALFile.xRead

    def spy(self: Any, amount: int, offset: int) -> Any:
        if amount == FRAME:
            whole.append((offset - 32) // FRAME + 1)
        return method(self, amount, offset)

    monkeypatch.setattr(vfs.EncryptedWALFile, "xRead", spy)
    reader = db.connect()  # a WAL handle opened now: its compiled reader falls back to the spy
    invalidate_wal_index(str(db.path))
    assert reader.execute("SELECT count(*), sum(length(v)) FROM t").fetchall() == [(1500, 1500 * 300)]
    reader.close()
    db.close()
    assert size > 40
    if _speedups is not None:
        # frame 1, and each frame that starts a new read-ahead run: the rest were handed over in C
        assert whole[0] == 1 and len(whole) <= 1 + -(-(size - 1) // vfs.READ_AHEAD)
    else:
        assert sorted(set(whole)) == list(range(1, size + 1))


def _wal_frames(path: str) -> list[tuple[int, int]]:
    """(frame number, page) of each frame in a WAL file."""
    data = Path(path).read_bytes()
    return [
        ((off - 32) // FRAME + 1, int.from_bytes(data[off : off + 4], "big"))
        for off in range(32, len(data) - FRAME + 1, FRAME)
    ]


def test_pages_found_in_the_wal_are_read_without_the_class_method_and_a_changed_one_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page SQLite finds in the WAL is read as a frame's body alone: the compiled reader
    decrypts it (any page but page 1, outside a checkpoint); a body changed on disk goes to the
    class's method, which refuses it as before."""
    from turso_sync.local.engine import LocalDatabase

    bodies: list[int] = []
    method = vfs.EncryptedWALFile.xRead

    def spy(self: Any, amount: int, offset: int) -> Any:
        if amount == P and (offset - 32) % FRAME == 24:
            bodies.append((offset - 32) // FRAME + 1)
        return method(self, amount, offset)

    monkeypatch.setattr(vfs.EncryptedWALFile, "xRead", spy)
    db = LocalDatabase(tmp_path / "db", encryption_key=KEY)
    writer = db.connect()
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    writer.executemany("INSERT INTO t (v) VALUES (?)", [(bytes([i % 251]) * 300,) for i in range(400)])
    writer.commit()
    frames = _wal_frames(str(db.path) + "-wal")
    assert len(frames) > 20  # every page of the table is in the WAL only
    reader = db.connect()  # a cold page cache: each page it needs comes from the WAL
    assert reader.execute("SELECT count(*), sum(length(v)) FROM t").fetchall() == [(400, 400 * 300)]
    pages_read_alone = set(bodies)
    if _speedups is not None:
        assert all(page == 1 for frame, page in frames if frame in pages_read_alone), bodies
    else:
        assert len(pages_read_alone) > 20
    reader.close()

    # a body changed on disk: refused (by the class's method), never returned as a page
    newest = {page: frame for frame, page in frames}
    frame = max(f for p, f in newest.items() if p > 2)
    with open(str(db.path) + "-wal", "r+b") as f:
        at = 32 + (frame - 1) * FRAME + 24 + 100
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x01]))
    bodies.clear()
    reader = db.connect()
    # (SQLite's error, or the engine's once it has recorded the failure)
    with pytest.raises((apsw.CorruptError, turso_sync.EncryptionError), match=r"page [0-9]+ of the WAL failed auth"):
        reader.execute("SELECT sum(length(v)) FROM t").fetchall()
    assert frame in bodies  # the compiled reader handed it to the class's method
    reader.close()
    with open(str(db.path) + "-wal", "r+b") as f:  # put it back, so that closing can checkpoint
        f.seek(at)
        f.write(byte)
    writer.close()
    db.close()


@needs_compiled
def test_wal_reader_refuses_body_buffers_that_do_not_fit() -> None:
    assert _speedups is not None
    state = object()
    with pytest.raises(TypeError, match="6 or 11 arguments"):
        _speedups.wal_frame_reader(_File(), len, len, {}, FRAME, FRAME, len)
    with pytest.raises(TypeError, match="raw_read and decrypt must be callable"):
        _speedups.wal_frame_reader(_File(), len, len, {}, FRAME, FRAME, None, state, bytearray(P), bytearray(P), len)
    with pytest.raises(ValueError, match="bytearrays of a frame's body"):
        _speedups.wal_frame_reader(_File(), len, len, {}, FRAME, FRAME, len, state, bytearray(P - 1), bytearray(P), len)
    with pytest.raises(ValueError, match="stored at SQLite's size"):  # the envelope layout's bigger slots
        _speedups.wal_frame_reader(
            _File(), len, len, {}, FRAME, FRAME + 32, len, state, bytearray(P), bytearray(P), len
        )
