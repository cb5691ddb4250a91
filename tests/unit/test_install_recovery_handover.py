"""An encrypted install hands its frames to WAL recovery, which then neither decrypts nor re-checksums them.

``append_transaction`` knows each frame's plaintext and, continuing the plaintext chain the WAL
handles recorded, the checksum SQLite's recovery will want; ``EncryptedWALFile._read_full_frame``
takes a frame from there only while the file holds exactly the bytes written and both chains
before it are the ones it continued.  What SQLite is handed must be what the long way gives, and a
frame changed on disk must be refused exactly as before.
"""

from __future__ import annotations

import gc
import os
import struct
from pathlib import Path
from typing import Any

import apsw
import pytest

from turso_sync import errors
from turso_sync.crypto.page_codec import PageCodec
from turso_sync.local import vfs
from turso_sync.local.engine import LocalDatabase
from turso_sync.local.install import invalidate_wal_index
from turso_sync.local.vfs import HandedFrame, HandedFrames
from turso_sync.local.walformat import FRAME_HEADER_SIZE, WAL_HEADER_SIZE, wal_checksum

KEY = "5a17" * 16
FRAME = FRAME_HEADER_SIZE + 4096


def _database(tmp_path: Path, rows: int = 12) -> LocalDatabase:
    db = LocalDatabase(tmp_path / "db", encryption_key=KEY)
    conn = db.connect()
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.commit()
    for i in range(rows):
        conn.execute("INSERT INTO t VALUES (?, ?)", (i, f"{i:04d}" * 500))
        conn.commit()
    conn.close()
    return db


def _install_every_page(db: LocalDatabase) -> int:
    """Install every page as it is, then run SQLite's recovery, as a connection that finds the
    wal-index stale does (the install writes the wal-index in place where it can: then nothing in
    this process recovers, but a recovery, in another process or after an install that could not,
    still reads these frames)."""
    with db.write_lock() as conn:
        size = int(db.query("PRAGMA page_count")[0][0])
        read = db.page_reader()
        pages = {p: read(p) for p in range(1, size + 1)}
        db.install_locked(conn, pages, size)
    invalidate_wal_index(str(db.path))
    db.query("SELECT count(*) FROM sqlite_schema")
    return size


def _rows(db: LocalDatabase) -> list[tuple[object, ...]]:
    return [tuple(r) for r in db.query("SELECT id, v FROM t ORDER BY id")]


def _counting_decrypts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = PageCodec.decrypt

    def counting(self: PageCodec, enc: bytes, pgno: int, where: str = "database") -> bytes:
        seen.append(where)
        return real(self, enc, pgno, where)

    monkeypatch.setattr(PageCodec, "decrypt", counting)
    return seen


def _counting_long_way(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The frames checked the long way (decrypted, both checksums recomputed), in call order."""
    checked: list[int] = []
    real = vfs.EncryptedWALFile._verify_frame

    def counting(self: vfs.EncryptedWALFile, index: int, *args: object, **kwargs: object) -> object:
        checked.append(index)
        return real(self, index, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(vfs.EncryptedWALFile, "_verify_frame", counting)
    return checked


def _counting_disk_ct(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The frames whose stored checksum before them was read from disk (``_disk_ct``), in call order."""
    reads: list[int] = []
    real = vfs.EncryptedWALFile._disk_ct

    def counting(self: vfs.EncryptedWALFile, index: int) -> tuple[int, int]:
        reads.append(index)
        return real(self, index)

    monkeypatch.setattr(vfs.EncryptedWALFile, "_disk_ct", counting)
    return reads


def _recorded_frames(monkeypatch: pytest.MonkeyPatch) -> dict[int, bytes]:
    """Every whole frame the WAL handles give SQLite, by frame number (the last one given)."""
    given: dict[int, bytes] = {}
    real = vfs.EncryptedWALFile._read_full_frame

    def recording(self: vfs.EncryptedWALFile, index: int, quiet: bool = False) -> bytes:
        frame = real(self, index, quiet)
        given[index] = frame
        return frame

    monkeypatch.setattr(vfs.EncryptedWALFile, "_read_full_frame", recording)

    # with the compiled helper a WAL file's own xRead (``_speedups.wal_frame_reader``) hands SQLite
    # the install's frames without that method: record what it returns as well, on the files open
    # now and on those opened later
    def wrap(file: vfs.EncryptedWALFile) -> None:
        reader = file.__dict__.get("xRead")
        if reader is None:
            return

        def reading(amount: int, offset: int) -> bytes:
            data = reader(amount, offset)
            inside = offset - WAL_HEADER_SIZE
            if amount == file.frame_size and inside >= 0 and not inside % file.frame_size and data:
                given[inside // file.frame_size + 1] = bytes(data)
            return data  # type: ignore[no-any-return]

        monkeypatch.setitem(file.__dict__, "xRead", reading)

    for obj in gc.get_objects():
        if isinstance(obj, vfs.EncryptedWALFile):
            wrap(obj)
    init = vfs.EncryptedWALFile.__init__

    def opened(self: vfs.EncryptedWALFile, *args: Any) -> None:
        init(self, *args)
        wrap(self)

    monkeypatch.setattr(vfs.EncryptedWALFile, "__init__", opened)
    return given


def test_recovery_after_an_install_decrypts_none_of_its_frames(tmp_path: Path, monkeypatch) -> None:
    db = _database(tmp_path)
    expected = _rows(db)
    db.checkpoint()  # an empty WAL: every frame recovery reads is one the install wrote
    decrypts = _counting_decrypts(monkeypatch)
    long_way = _counting_long_way(monkeypatch)
    size = _install_every_page(db)  # its recovery runs inside, on the install's connection
    assert size > 5
    assert long_way == []
    assert len([w for w in decrypts if w == "WAL"]) <= 2  # SQLite's own page reads after it, not the recovery
    # a second install continues the chain: recovery reads both installs' frames, none the long way
    _install_every_page(db)
    assert long_way == []
    assert _rows(db) == expected
    db.close()


def test_an_install_after_local_commits_continues_their_plaintext_chain(tmp_path: Path, monkeypatch) -> None:
    db = _database(tmp_path)
    db.checkpoint()
    conn = db.connect()
    conn.execute("UPDATE t SET v = 'local' WHERE id = 3")  # frames SQLite wrote itself, before the install
    conn.commit()
    conn.close()
    expected = _rows(db)
    wal_frames = os.path.getsize(str(db.path) + "-wal") // FRAME
    long_way = _counting_long_way(monkeypatch)
    size = _install_every_page(db)
    # only the local commit's frames (read whole by recovery) go the long way, none of the install's
    assert size > 5 and 0 < len(long_way) and set(long_way) <= set(range(1, wal_frames + 1))
    assert _rows(db) == expected
    db.close()


def test_what_sqlite_is_handed_is_what_the_long_way_gives(tmp_path: Path, monkeypatch) -> None:
    db = _database(tmp_path)
    conn = db.connect()
    conn.execute("UPDATE t SET v = 'local' WHERE id = 3")
    conn.commit()
    conn.close()
    _install_every_page(db)
    _install_every_page(db)
    given = _recorded_frames(monkeypatch)
    invalidate_wal_index(str(db.path))
    short = _rows(db)
    fast = dict(given)
    state = vfs.registry.get(str(db.path))
    assert state is not None and len(state.handed) > 0
    state.handed.clear()
    state.wal_chain.clear()
    given.clear()
    invalidate_wal_index(str(db.path))
    assert _rows(db) == short
    assert len(fast) > 10 and fast == given  # byte for byte: headers (plaintext checksums) and bodies
    db.close()


def _reseal(wal: bytearray) -> None:
    """Recompute every ciphertext checksum over the bytes as they are (a tamperer who knows SQLite)."""
    s1, s2 = struct.unpack(">II", wal[24:32])
    index = 1
    while WAL_HEADER_SIZE + index * FRAME <= len(wal):
        off = WAL_HEADER_SIZE + (index - 1) * FRAME
        if wal[off + 8 : off + 16] != wal[16:24]:
            break
        s1, s2 = wal_checksum(bytes(wal[off : off + 8] + wal[off + 24 : off + FRAME]), s1, s2)
        wal[off + 16 : off + 24] = struct.pack(">II", s1, s2)
        index += 1


@pytest.mark.parametrize("resealed", [True, False])
def test_an_installed_frame_changed_on_disk_is_not_taken_from_the_handover(tmp_path: Path, resealed: bool) -> None:
    db = _database(tmp_path)
    db.checkpoint()
    _install_every_page(db)
    state = vfs.registry.get(str(db.path))
    assert state is not None and len(state.handed) > 3
    wal_path = str(db.path) + "-wal"
    with open(wal_path, "rb") as f:
        wal = bytearray(f.read())
    index = 3
    off = WAL_HEADER_SIZE + (index - 1) * FRAME
    pgno = int.from_bytes(wal[off : off + 4], "big")
    wal[off + FRAME_HEADER_SIZE + 1500] ^= 0x01
    if resealed:
        _reseal(wal)
    fd = os.open(wal_path, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes(wal), 0)
    finally:
        os.close(fd)
    invalidate_wal_index(str(db.path))
    if resealed:
        # to SQLite the WAL looks intact: the frame's authentication refuses it, naming the page
        with pytest.raises((apsw.CorruptError, errors.Error), match=rf"\bpage {pgno}\b"):
            db.query("SELECT count(*), sum(length(v)) FROM t")
        with pytest.raises((apsw.CorruptError, errors.Error), match=rf"\bpage {pgno}\b"):
            db.close()  # its checkpoint reads the frame too, and refuses it the same way
        return
    else:
        # the chain breaks at the changed frame: the install is not committed, the old state reads
        assert [tuple(r) for r in db.query("SELECT count(*) FROM t")] == [(12,)]
        assert state.handed.get(bytes(wal[off + 8 : off + 16]), index) is not None  # still kept, not taken
    db.close()


@pytest.mark.parametrize("chain", ["ciphertext", "plaintext"])
def test_a_handed_frame_whose_chain_before_it_changed_is_not_taken(tmp_path: Path, monkeypatch, chain: str) -> None:
    db = _database(tmp_path)
    db.checkpoint()
    _install_every_page(db)
    state = vfs.registry.get(str(db.path))
    assert state is not None
    # a handed frame 2 that continued another chain than the one before it in the file
    with open(str(db.path) + "-wal", "rb") as f:
        stored = f.read(WAL_HEADER_SIZE)[16:24]  # the salts, as every frame of this WAL stores them
    handed = state.handed.get(stored, 2)
    assert handed is not None
    prev_ct, prev_pt = handed.prev_ct, handed.prev_pt
    if chain == "ciphertext":
        prev_ct = (prev_ct[0] ^ 1, prev_ct[1])
    else:
        prev_pt = (prev_pt[0] ^ 1, prev_pt[1])
    state.handed.add(stored, 2, [HandedFrame(handed.disk, handed.plain, prev_ct, prev_pt, handed.ct, handed.pt)])
    long_way = _counting_long_way(monkeypatch)
    invalidate_wal_index(str(db.path))
    db.query("SELECT count(*) FROM t")
    assert 2 in long_way and 1 not in long_way  # frame 2 went the long way (and found the chain anew)
    assert [tuple(r) for r in db.query("SELECT count(*) FROM t")] == [(12,)]
    db.close()


def _frame(salts: bytes, index: int) -> HandedFrame:
    disk = index.to_bytes(4, "big") + bytes(4) + salts + bytes(8) + bytes(64)
    return HandedFrame(disk, bytes(64), (0, 0), (0, 0), (1, 2), (3, 4))


def test_handed_frames_are_bounded_and_forgotten_with_their_wal_generation() -> None:
    kept = HandedFrames(kept=4)
    old, new = b"\x00\x00\x00\x01salt", b"\x00\x00\x00\x02salt"
    kept.add(old, 1, [_frame(old, i) for i in range(1, 4)])
    kept.add(old, 4, [_frame(old, i) for i in range(4, 7)])
    assert len(kept) == 4 and kept.get(old, 2) is None and kept.get(old, 6) is not None  # oldest dropped
    frame = kept.get(old, 6)
    assert frame is not None and frame.head[16:24] == struct.pack(">II", 3, 4) and frame.salts == (1, 0x73616C74)
    kept.add(new, 1, [_frame(new, 1)])
    assert len(kept) == 1 and kept.get(old, 6) is None  # a new generation replaces the old one's frames


def test_recovery_reads_the_checksum_before_a_handed_frame_once_per_wal(tmp_path: Path, monkeypatch) -> None:
    """Recovery reads the frames in order: the checksum stored before frame k is the one it just
    read in frame k - 1, not read from disk again (only frame 1's, the WAL header's, is)."""
    db = _database(tmp_path)
    db.checkpoint()
    size = _install_every_page(db)
    _install_every_page(db)
    reads = _counting_disk_ct(monkeypatch)
    long_way = _counting_long_way(monkeypatch)
    given = _recorded_frames(monkeypatch)
    invalidate_wal_index(str(db.path))
    assert [tuple(r) for r in db.query("SELECT count(*) FROM t")] == [(12,)]
    assert len(given) == 2 * size and long_way == []  # both installs' frames, every one handed over
    assert reads == [0]
    db.close()


def test_recovery_reads_the_checksum_before_a_frame_sqlite_wrote_once_per_wal(tmp_path: Path, monkeypatch) -> None:
    """Frames SQLite wrote itself (not handed over) are checked the long way; the checksum stored
    before frame k is the one recovery just read in frame k - 1, not read from disk again (twice);
    what SQLite is handed and what it finds are as before, and a changed frame still ends the log."""
    db = _database(tmp_path)
    db.checkpoint()
    app = db.connect()
    for i in range(6):
        app.execute("UPDATE t SET v = ? WHERE id = ?", (f"new {i}", i))
        app.commit()
    want = _rows(db)
    reads = _counting_disk_ct(monkeypatch)
    long_way = _counting_long_way(monkeypatch)
    invalidate_wal_index(str(db.path))
    assert _rows(db) == want
    assert len(long_way) >= 6 and long_way == list(range(1, len(long_way) + 1))  # every frame, in order
    assert reads == [0]  # only frame 1's, the WAL header's
    # the last frame's ciphertext changed on disk and its checksum made to continue the chain again
    # (from the checksum stored in the frame before it): the chain holds, the page does not decrypt
    wal = Path(str(db.path) + "-wal")
    size = db.slot_size + FRAME_HEADER_SIZE
    original = wal.read_bytes()
    data = bytearray(original)
    at = WAL_HEADER_SIZE + (len(long_way) - 1) * size
    data[at + FRAME_HEADER_SIZE + 10] ^= 1
    big = data[3] == 0x83
    before = struct.unpack_from(">II", data, at - size + 16)
    head = wal_checksum(bytes(data[at : at + 8]), *before, big)
    struct.pack_into(">II", data, at + 16, *wal_checksum(bytes(data[at + FRAME_HEADER_SIZE : at + size]), *head, big))
    wal.write_bytes(bytes(data))
    invalidate_wal_index(str(db.path))
    pgno = struct.unpack_from(">I", data, at)[0]
    with pytest.raises((apsw.Error, errors.Error), match=f"page {pgno} of the WAL failed authentication"):
        _rows(db)
    wal.write_bytes(original)  # (closing checkpoints the WAL, which would refuse the frame again)
    invalidate_wal_index(str(db.path))
    assert _rows(db) == want
    app.close()
    db.close()


def test_recovery_reads_installed_frames_a_run_at_a_time(tmp_path: Path, monkeypatch) -> None:
    """Frames read whole one after the other (recovery) come ``READ_AHEAD`` at a time from one read,
    and SQLite is handed the same frames as when each is read alone."""
    db = _database(tmp_path, rows=40)
    db.checkpoint()
    size = _install_every_page(db)
    given = _recorded_frames(monkeypatch)
    monkeypatch.setattr(vfs, "READ_AHEAD", 1)  # each frame read alone
    invalidate_wal_index(str(db.path))
    alone = [tuple(r) for r in db.query("SELECT count(*), sum(length(v)) FROM t")]
    one_by_one = dict(given)
    given.clear()
    reads: list[int] = []
    real = vfs._base_read

    def counting(file: apsw.VFSFile, amount: int, offset: int) -> bytes:
        if amount >= FRAME:
            reads.append(amount // FRAME)
        return real(file, amount, offset)

    monkeypatch.setattr(vfs, "_base_read", counting)
    monkeypatch.setattr(vfs, "READ_AHEAD", 4)
    invalidate_wal_index(str(db.path))
    assert [tuple(r) for r in db.query("SELECT count(*), sum(length(v)) FROM t")] == alone == [(40, 40 * 2000)]
    assert size > 12 and len(given) == size and given == one_by_one
    rest = size - 1  # frame 1 alone, then four frames a read, never past the end of the file
    assert reads == [1] + [4] * (rest // 4) + ([rest % 4] if rest % 4 else [])
    db.close()


def test_an_install_draws_its_nonces_once(tmp_path: Path, monkeypatch) -> None:
    db = _database(tmp_path)
    db.checkpoint()
    draws: list[int] = []
    real = os.urandom

    def counting(n: int) -> bytes:
        draws.append(n)
        return real(n)

    monkeypatch.setattr(os, "urandom", counting)
    size = _install_every_page(db)
    monkeypatch.setattr(os, "urandom", real)
    assert size > 5 and draws == [12 * size]
    assert _rows(db) == [(i, f"{i:04d}" * 500) for i in range(12)]
    db.close()
