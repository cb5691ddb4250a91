"""An encrypted WAL's frame writes in Turso's format: a new frame never reaches Python.

With the compiled helper, an ``EncryptedWALFile`` in Turso's format carries
``_speedups.wal_frame_writer`` as its instance attribute ``xWrite``: a new frame's header is kept
and its body encrypted, checksummed over the ciphertext and written with the header in one write
there.  Everything else (the WAL header, placeholders, checksum rewrites, in-place overwrites,
page 1, odd writes, any error) goes to the class's ``xWrite``.  Without the helper the class's
method writes every frame.  ``make test`` runs this file with the helper refused as well.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import apsw
import pytest

import turso_sync
from turso_sync import _compiled
from turso_sync.crypto.page_codec import CIPHERS, PageCodec
from turso_sync.local import vfs
from turso_sync.local.walformat import read_committed, wal_checksum

KEY = "5e" * 32
P = 4096
FRAME = 24 + P

_speedups = _compiled.speedups()
needs_compiled = pytest.mark.skipif(
    _speedups is None, reason="turso_sync._speedups not built, or refused by TURSO_SYNC_PURE_PYTHON"
)


# --- the writer on its own, against a stand-in file --------------------------------------------


class _WalFile:
    """What the writer reads and sets on an EncryptedWALFile."""

    def __init__(self) -> None:
        self._prev_tail: object = (3, b"x" * 16)
        self._ahead: object = (3, b"")
        self._last_full_read = 7
        self._recksum_from: int | None = None
        self._big: bool | None = False


class _Disk:
    """A WAL image in memory, with the calls the writer makes and the class's xWrite as ``base``."""

    def __init__(self, fail_write: bool = False) -> None:
        self.raw = bytearray(b"\x37\x7f\x06\x82" + bytes(20) + bytes.fromhex("0102030405060708"))
        self.log: list[tuple[str, int, int]] = []
        self.fail_write = fail_write

    def base(self, file: object, data: bytes, offset: int) -> None:
        self.log.append(("base", len(data), offset))

    def read(self, file: object, amount: int, offset: int) -> bytes:
        self.log.append(("read", amount, offset))
        return bytes(self.raw[offset : offset + amount])

    def write(self, file: object, data: Any, offset: int) -> None:
        self.log.append(("write", len(data), offset))
        if self.fail_write:
            raise apsw.FullError("disk full")
        if len(self.raw) < offset + len(data):
            self.raw.extend(bytes(offset + len(data) - len(self.raw)))
        self.raw[offset : offset + len(data)] = data


def _writer(disk: _Disk) -> tuple[Any, _WalFile, dict[int, bytes], dict[Any, Any], PageCodec]:
    assert _speedups is not None
    codec = PageCodec(CIPHERS["aes256gcm"], bytes.fromhex(KEY))
    f = _WalFile()
    pending: dict[int, bytes] = {}
    chain: dict[Any, Any] = {}
    plain, frame = bytearray(P - 28), bytearray(FRAME)
    encrypt = codec.page_encrypter(plain, memoryview(frame)[24:])
    writer = _speedups.wal_frame_writer(f, disk.base, pending, chain, P, plain, frame, encrypt, disk.read, disk.write)
    return writer, f, pending, chain, codec


def _page(fill: int) -> bytes:
    return bytes([fill]) * (P - 28) + bytes(28)


def _header(pgno: int, commit: int = 0, salts: bytes = bytes.fromhex("a1b2c3d4e5f60718")) -> bytes:
    return pgno.to_bytes(4, "big") + commit.to_bytes(4, "big") + salts + bytes.fromhex("0badf00d12345678")


def _offset(index: int) -> int:
    return 32 + (index - 1) * FRAME


@needs_compiled
@pytest.mark.parametrize("big", [False, True])
def test_writer_writes_a_new_frame_as_the_class_would(big: bool) -> None:
    disk = _Disk()
    writer, f, pending, chain, codec = _writer(disk)
    f._big = big
    for index, pgno in ((1, 5), (2, 9)):
        header = _header(pgno, commit=index - 1)
        writer(header, _offset(index))
        assert pending == {index: header} and disk.log == []
        assert (f._prev_tail, f._ahead, f._last_full_read) == (None, None, 0)
        f._prev_tail, f._last_full_read = (1, b""), 3
        writer(_page(index), _offset(index) + 24)
        assert pending == {} and (f._prev_tail, f._ahead, f._last_full_read) == (None, None, 0)
        prev_at = 24 if index == 1 else _offset(index - 1) + 16
        assert disk.log == [("read", 8, prev_at), ("write", FRAME, _offset(index))]
        disk.log.clear()
        on_disk = bytes(disk.raw[_offset(index) : _offset(index) + FRAME])
        body = on_disk[24:]
        # the bytes Python writes, but for the random nonce: the same seal under that nonce
        assert body == codec._seal(_page(index), pgno, body[-12:])
        assert codec.decrypt(body, pgno, "WAL") == _page(index)
        prev = (
            int.from_bytes(disk.raw[prev_at : prev_at + 4], "big"),
            int.from_bytes(disk.raw[prev_at + 4 : prev_at + 8], "big"),
        )
        ct = wal_checksum(header[:8] + body, prev[0], prev[1], big)
        assert on_disk[:16] == header[:16]
        assert on_disk[16:24] == ct[0].to_bytes(4, "big") + ct[1].to_bytes(4, "big")
        assert chain[(0xA1B2C3D4, 0xE5F60718, index)] == (ct, (0x0BADF00D, 0x12345678))
    # a second page with the same contents gets another nonce
    assert (
        disk.raw[_offset(1) + FRAME - 12 : _offset(1) + FRAME] != disk.raw[_offset(2) + FRAME - 12 : _offset(2) + FRAME]
    )


@needs_compiled
@pytest.mark.parametrize(
    "case", ["wal header", "placeholder", "rewrite", "overwrite", "page 1", "reserved", "unknown order", "odd", "error"]
)
def test_writer_hands_anything_else_to_base_with_nothing_changed(case: str) -> None:
    disk = _Disk(fail_write=case == "error")
    writer, f, pending, chain, _codec = _writer(disk)
    header, body, at = _header(5), _page(1), _offset(2)
    if case == "wal header":
        writer(bytes(32), 0)
        assert disk.log == [("base", 32, 0)]
        return
    if case == "placeholder":
        writer(_header(5, salts=bytes(8))[:16] + bytes(8), at)
        assert disk.log == [("base", 24, at)] and pending == {}
        return
    if case == "rewrite":  # SQLite read frame 2 whole, then writes its header back, after an overwrite
        f._recksum_from, f._last_full_read = 1, 2
        writer(header, at)
        assert disk.log == [("base", 24, at)] and pending == {} and f._last_full_read == 2
        f._last_full_read = 0  # a new frame's header after an overwrite: kept as ever
        writer(header, at)
        assert disk.log == [("base", 24, at)] and pending == {2: header}
        return
    if case == "odd":
        writer(header[:8], at)
        writer(body[:100], at + 24)
        writer(body, at + 25)
        assert [entry[0] for entry in disk.log] == ["base"] * 3 and pending == {}
        return
    if case != "overwrite":
        if case == "page 1":
            header = _header(1)
        writer(header, at)
    if case == "reserved":
        body = body[:-1] + b"\x01"
    if case == "unknown order":
        f._big = None
    writer(body, at + 24)
    assert disk.log[-1] == ("base", P, at + 24)
    assert chain == {}
    assert pending == ({} if case == "overwrite" else {2: header})
    assert disk.raw[at:] == b""


@needs_compiled
def test_writer_lets_interrupts_through_and_refuses_bad_input() -> None:
    assert _speedups is not None
    disk = _Disk()
    writer, f, pending, _chain, codec = _writer(disk)

    def interrupted(file: object, amount: int, offset: int) -> bytes:
        raise KeyboardInterrupt

    plain, frame = bytearray(P - 28), bytearray(FRAME)
    encrypt = codec.page_encrypter(plain, memoryview(frame)[24:])
    stopping = _speedups.wal_frame_writer(f, disk.base, pending, {}, P, plain, frame, encrypt, interrupted, disk.write)
    stopping(_header(5), _offset(1))
    with pytest.raises(KeyboardInterrupt):
        stopping(_page(1), _offset(1) + 24)
    with pytest.raises(TypeError):
        writer(b"x")
    with pytest.raises(ValueError, match="bytearrays"):
        _speedups.wal_frame_writer(f, disk.base, {}, {}, P, bytearray(P), frame, encrypt, disk.read, disk.write)
    with pytest.raises(TypeError, match="dicts"):
        _speedups.wal_frame_writer(f, disk.base, [], {}, P, plain, frame, encrypt, disk.read, disk.write)
    with pytest.raises(TypeError, match="bound page encrypter"):
        from turso_sync.crypto.page_codec import make_codec

        hardened = make_codec(KEY, encryption_format="hardened")
        assert hardened is not None
        hardened.page_encrypter(plain, frame)
    del f
    with pytest.raises(ReferenceError):
        stopping(_header(5), _offset(1))


def test_the_frame_writer_is_used_exactly_when_the_compiled_helper_is() -> None:
    assert (vfs._wal_frame_writer is None) == (_compiled.speedups() is None)


# --- through SQLite ------------------------------------------------------------------------------


@pytest.fixture
def spied(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts the class's frame bodies (``_write_body``) by page: page 1 or another."""
    seen: Counter[str] = Counter()
    write_body = vfs.EncryptedWALFile._write_body

    def spy(self: Any, index: int, plain: bytes) -> None:
        header = self._pending.get(index)
        seen["page 1" if header is not None and header[:4] == b"\0\0\0\1" else "page"] += 1
        write_body(self, index, plain)

    monkeypatch.setattr(vfs.EncryptedWALFile, "_write_body", spy)
    return seen


def _insert(db: turso_sync.Connection, first: int, count: int) -> None:
    for i in range(first, first + count):
        db.execute("INSERT INTO t VALUES (?, ?)", (i, bytes([i % 251]) * 200))
        db.commit()


def _check(path: Path, rows: int) -> None:
    """Reopen (WAL recovery), read every row back, checkpoint, and check the database's integrity."""
    db = turso_sync.connect(path, encryption_key=KEY, record_frames=False)
    assert db.execute("SELECT count(*), sum(length(v)) FROM t").fetchone() == (rows, 200 * rows)
    assert db.execute("SELECT v FROM t WHERE id = ?", (rows,)).fetchone() == (bytes([rows % 251]) * 200,)
    db.apsw_connection.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    db.close()


def _crash_copy(path: Path, to: Path) -> Path:
    """The database and its WAL as a crash right now would leave them (no checkpoint, no close)."""
    to.mkdir()
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{path}{suffix}", f"{to / path.name}{suffix}")
    return to / path.name


def test_commits_write_their_frames_without_the_class_method_and_read_back(tmp_path: Path, spied: Counter[str]) -> None:
    path = tmp_path / "db"
    db = turso_sync.connect(path, encryption_key=KEY, record_frames=False)
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    db.commit()
    spied.clear()
    _insert(db, 1, 200)
    if _speedups is not None:
        assert spied["page"] == 0  # only page 1 (its readable header) goes the long way
    else:
        assert spied["page"] >= 200
    # SQLite's recovery and our own scanner both find every committed frame in the WAL as written
    _check(_crash_copy(path, tmp_path / "crash"), 200)
    raw = Path(f"{path}-wal").read_bytes()
    header, txns = read_committed(raw)
    assert header is not None and len(txns) == 201
    codec = db._state.codec
    assert codec is not None
    for frame in txns[-1].frames:
        codec.decrypt(frame.body, frame.pgno, "WAL")
    db.close()
    _check(path, 200)


def test_a_transaction_that_spills_rewrites_its_checksums_and_survives_a_crash(
    tmp_path: Path, spied: Counter[str]
) -> None:
    """A small page cache spills pages into the WAL mid-transaction: their frames are overwritten in
    place and their checksums rewritten at commit, through the class's method."""
    path = tmp_path / "db"
    db = turso_sync.connect(path, encryption_key=KEY, record_frames=False)
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("PRAGMA cache_size=5")
    db.execute("PRAGMA cache_spill=1")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    db.commit()
    _insert(db, 1, 5)
    spied.clear()
    db.execute("BEGIN")
    for i in range(6, 601):
        db.execute("INSERT INTO t VALUES (?, ?)", (i, bytes([i % 251]) * 200))
    db.execute("UPDATE t SET v = zeroblob(200) WHERE id % 3 = 0")
    db.commit()
    assert spied["page"] >= 1  # the overwrites went the long way
    spied.clear()
    _insert(db, 601, 20)
    assert (spied["page"] == 0) == (_speedups is not None)  # and later frames do not
    _check(_crash_copy(path, tmp_path / "crash"), 620)
    db.close()
    _check(path, 620)


def test_the_frame_log_reads_frames_written_through_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "db"
    db = turso_sync.connect(path, encryption_key=KEY, record_frames=True)
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    db.commit()
    _insert(db, 1, 50)
    log = db._state.frame_log
    assert log is not None
    txns = list(log.history(None))  # the newest still in the WAL, scanned from there
    assert len(txns) >= 50
    newest = b"".join(log.decrypt(page.post, page.pgno) for page in txns[-1].pages)
    assert bytes([50 % 251]) * 200 in newest
    db.close()
    _check(path, 50)
