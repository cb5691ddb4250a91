"""Key rotation of the hardened format in one process: the ring file, the codec's ring, the sweep.

Kills are simulated here by an exception at each point where the sweep saves its progress; the
real thing (SIGKILL, other processes reading and writing) is tests/integration/test_rekey_kills.py.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

import turso_sync
from tests.unit.rekey_stops import Killed, stop_rotation_midway
from tests.unit.reverts import KEPT, keep_revert, read_kept_revert, stored_revert
from turso_sync.crypto import keys
from turso_sync.crypto.hardened import FileParams, HardenedAuthError, HardenedCodec
from turso_sync.crypto.keyring import KeyRing, KeyRingError
from turso_sync.crypto.page_codec import HARDENED_CIPHERS
from turso_sync.local import rekey as rekey_module
from turso_sync.local.rekey import change_passphrase, rekey, scan_frame_log

P = 4096
RAW = HARDENED_CIPHERS["hardened"]


def plain_page(marker: bytes) -> bytes:
    return (marker * (P // len(marker) + 1))[: P - 28] + bytes(28)


def plain_page1() -> bytes:
    page = bytearray(plain_page(b"schema"))
    page[:100] = b"SQLite format 3\x00" + bytes([16, 0, 1, 1, 28, 64, 32, 32]) + bytes(76)
    return bytes(page)


# --- the ring file ----------------------------------------------------------------------------------


def test_each_live_key_opens_the_ring_and_learns_the_other() -> None:
    file_id, old, new = os.urandom(8), os.urandom(32), os.urandom(32)
    ring = KeyRing.seal(file_id, 1, 2, bytes(29), {1: old, 2: new})
    again = KeyRing.decode(ring.encode())
    assert again.open({1: old}) == {1: old, 2: new}
    assert again.open({}, (new,)) == {1: old, 2: new}  # a raw key whose epoch is unknown
    assert again.open({}, (os.urandom(32),)) is None
    assert old not in ring.encode() and new not in ring.encode()


def test_a_ring_is_bound_to_its_file_and_rotation() -> None:
    file_id, old, new = os.urandom(8), os.urandom(32), os.urandom(32)
    ring = KeyRing.seal(file_id, 1, 2, bytes(29), {1: old, 2: new})
    moved = KeyRing(os.urandom(8), 1, 2, ring.new_block, ring.slots)
    assert moved.open({1: old}) is None
    replayed = KeyRing(file_id, 2, 3, ring.new_block, ring.slots)
    assert replayed.open({1: old}) is None


def test_a_damaged_ring_is_refused_by_name() -> None:
    raw = bytearray(KeyRing.seal(os.urandom(8), 1, 2, bytes(29), {1: os.urandom(32)}).encode())
    raw[40] ^= 1
    with pytest.raises(KeyRingError, match=r"app\.db-rekey is damaged"):
        KeyRing.decode(bytes(raw), "app.db-rekey")
    with pytest.raises(KeyRingError, match="not a turso_sync key ring"):
        KeyRing.decode(b"x" * 80, "app.db-rekey")


def test_progress_survives_encoding_outside_the_seal() -> None:
    key = os.urandom(32)
    ring = KeyRing.seal(os.urandom(8), 4, 5, bytes(29), {4: key}).with_progress(1, 77)
    again = KeyRing.decode(ring.encode())
    assert (again.phase, again.next_page) == (1, 77)
    assert again.open({4: key}) == {4: key}


# --- the codec's ring --------------------------------------------------------------------------------


def rotated_pair() -> tuple[HardenedCodec, HardenedCodec, KeyRing, bytes, bytes]:
    """A writer that starts a rotation, and a reader that only had the old key."""
    old_key, new_key = os.urandom(32), os.urandom(32)
    writer = HardenedCodec(RAW, old_key, P)
    enc1 = writer.encrypt(plain_page1(), 1)
    reader = HardenedCodec(RAW, old_key, P)
    assert reader.decrypt(enc1, 1) == plain_page1()
    ring = writer.rotation_ring(new_key)
    assert writer.adopt_ring(ring)
    return writer, reader, ring, old_key, new_key


def test_new_writes_use_the_new_epoch_and_readers_learn_it_from_the_ring() -> None:
    writer, reader, ring, _old, _new = rotated_pair()
    assert writer.write_epoch == 2 and writer.epochs == (1, 2)
    enc = writer.encrypt(plain_page(b"row"), 5)
    assert writer.epoch_of(enc) == 2
    with pytest.raises(HardenedAuthError, match="epoch 2, whose key this process does not hold"):
        reader.decrypt(enc, 5)  # no ring source: nothing to learn from
    reader.ring_source = ring.encode
    assert reader.decrypt(enc, 5) == plain_page(b"row")
    assert reader.write_epoch == 2  # the newer epoch is the one it writes with at once


def test_page1_with_the_bit_cleared_retires_the_old_epoch() -> None:
    writer, reader, ring, _old, _new = rotated_pair()
    reader.ring_source = ring.encode
    old_page = reader.encrypt(plain_page(b"old"), 7)  # written before the reader learned epoch 2
    live_page1 = writer.encrypt(plain_page1(), 1)
    assert reader.decrypt(live_page1, 1) == plain_page1()
    assert reader.decrypt(old_page, 7) == plain_page(b"old")  # epoch 1 is still live
    writer.retire_previous()
    retired_page1 = writer.encrypt(plain_page1(), 1)
    assert FileParams.of_page1(retired_page1).previous_live is False
    assert reader.decrypt(retired_page1, 1) == plain_page1()
    with pytest.raises(HardenedAuthError, match="epoch 1, which was retired"):
        reader.decrypt(old_page, 7)
    # an older page 1 (a reader of an older snapshot) does not bring the old epoch back
    assert reader.decrypt(live_page1, 1) == plain_page1()
    assert reader.epochs == (2,)


def test_a_rotation_under_way_refuses_another() -> None:
    writer, _reader, _ring, _old, _new = rotated_pair()
    with pytest.raises(ValueError, match="still under way"):
        writer.rotation_ring(os.urandom(32))


def test_the_old_raw_key_opens_page1_of_the_new_epoch_through_the_ring() -> None:
    writer, _reader, ring, old_key, new_key = rotated_pair()
    page1 = writer.encrypt(plain_page1(), 1)
    fresh = HardenedCodec(RAW, old_key, P)
    fresh.ring_source = ring.encode
    assert fresh.decrypt(page1, 1) == plain_page1()
    assert fresh.data_key(2) == new_key
    stranger = HardenedCodec(RAW, os.urandom(32), P)
    stranger.ring_source = ring.encode
    with pytest.raises(HardenedAuthError):
        stranger.decrypt(page1, 1)


# --- the sweep, in one process ------------------------------------------------------------------------


def make_db(path: Path, key: str, rows: int = 300) -> None:
    conn = turso_sync.connect(str(path), encryption_key=key, cipher="hardened")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"row-{i}-" + "v" * 200) for i in range(rows)])
    conn.commit()
    conn.close()


def rows_of(path: Path, key: str) -> list[tuple[int, str]]:
    conn = turso_sync.connect(str(path), encryption_key=key, cipher="hardened")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return conn.execute("SELECT id, v FROM t ORDER BY id").fetchall()
    finally:
        conn.close()


def test_rekey_rotates_and_the_old_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    old, new = secrets.token_hex(32), secrets.token_hex(32)
    make_db(path, old)
    before = rows_of(path, old)
    seen: list[str] = []
    result = rekey(path, encryption_key=old, new_key=new, batch_pages=8, progress=lambda p: seen.append(p.phase))
    assert (result.old_epoch, result.new_epoch, result.resumed) == (1, 2, False)
    assert "re-encrypting pages" in seen and seen[-1] == "old key retired"
    assert rows_of(path, new) == before
    with pytest.raises(turso_sync.EncryptionError, match="wrong encryption key"):
        turso_sync.connect(str(path), encryption_key=old, cipher="hardened")
    assert not (tmp_path / "app.db-rekey").exists()
    data = path.read_bytes()
    assert {int.from_bytes(data[i + P - 12 : i + P - 10], "big") for i in range(0, len(data), P)} == {2}
    assert not (tmp_path / "app.db-frames").exists()  # a plain database gets no frame log from a rotation
    # running it again with the same keys finds the rotation done
    again = rekey(path, encryption_key=old, new_key=new)
    assert (again.resumed, again.pages_rewritten) == (True, 0)


@pytest.mark.parametrize("kill_at", range(1, 8))  # ring written, start, three batches, swept, copies
def test_a_rotation_stopped_at_any_saved_point_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kill_at: int
) -> None:
    path = tmp_path / "app.db"
    old, new = secrets.token_hex(32), secrets.token_hex(32)
    make_db(path, old, rows=200)
    before = rows_of(path, old)
    stop_rotation_midway(path, old, new, monkeypatch, saves=kill_at)
    assert (tmp_path / "app.db-rekey").exists()
    result = rekey(path, encryption_key=old, new_key=new, batch_pages=4)
    assert result.resumed
    assert rows_of(path, new) == before
    with pytest.raises(turso_sync.EncryptionError):
        turso_sync.connect(str(path), encryption_key=old, cipher="hardened")


def test_resuming_with_another_new_key_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "app.db"
    old, new = secrets.token_hex(32), secrets.token_hex(32)
    make_db(path, old, rows=50)
    monkeypatch.setattr(rekey_module._Rotation, "_sweep", lambda self, ring: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        rekey(path, encryption_key=old, new_key=new)
    monkeypatch.undo()
    with pytest.raises(turso_sync.ProgrammingError, match="with another key is under way"):
        rekey(path, encryption_key=old, new_key=secrets.token_hex(32))
    rekey(path, encryption_key=new)  # resumes with the key it started with, opened by the new key


def test_a_lost_ring_with_old_pages_left_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "app.db"
    old, new = secrets.token_hex(32), secrets.token_hex(32)
    make_db(path, old, rows=100)
    monkeypatch.setattr(rekey_module._Rotation, "_sweep", lambda self, ring: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        rekey(path, encryption_key=old, new_key=new)
    monkeypatch.undo()
    (tmp_path / "app.db-rekey").unlink()
    with pytest.raises(turso_sync.EncryptionError, match=r"key ring .*app.db-rekey is missing"):
        rekey(path, encryption_key=new)


def test_turso_format_has_no_rotation(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    key = secrets.token_hex(32)
    conn = turso_sync.connect(str(path), encryption_key=key)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(turso_sync.EncryptionError, match="Turso's format keeps one key"):
        rekey(path, encryption_key=key, new_key=secrets.token_hex(32))


# --- passphrases ---------------------------------------------------------------------------------------


def test_a_passphrase_file_rotates_to_a_new_data_key_under_the_same_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "pw.db"
    conn = turso_sync.connect(str(path), encryption_key="correct horse", cipher="hardened-passphrase")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, "p" * 300) for i in range(100)])
    conn.commit()
    conn.close()
    wrapped_before = FileParams.of_page1(path.read_bytes()[:P]).wrapped
    result = rekey(path, passphrase="correct horse")
    assert result.new_epoch == 2
    params = FileParams.of_page1(path.read_bytes()[:P])
    assert params.epoch == 2 and params.wrapped != wrapped_before and not params.previous_live
    conn = turso_sync.connect(str(path), encryption_key="correct horse", cipher="hardened-passphrase")
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (100,)
    conn.close()


def test_passwd_rewrites_page1_only_and_refuses_the_old_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "pw.db"
    conn = turso_sync.connect(str(path), encryption_key="old words", cipher="hardened-passphrase")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, "q" * 300) for i in range(100)])
    conn.commit()
    conn.close()
    before = path.read_bytes()
    change_passphrase(path, "old words", "new words", argon2=keys.ARGON2_FLOOR)
    after = path.read_bytes()
    assert len(after) == len(before)
    changed = {i // P + 1 for i in range(0, len(after), P) if after[i : i + P] != before[i : i + P]}
    assert changed == {1}
    assert FileParams.of_page1(after).argon2 == keys.ARGON2_FLOOR
    conn = turso_sync.connect(str(path), encryption_key="new words", cipher="hardened-passphrase")
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (100,)
    conn.close()
    with pytest.raises(turso_sync.EncryptionError, match="wrong encryption key"):
        turso_sync.connect(str(path), encryption_key="old words", cipher="hardened-passphrase")


@pytest.mark.parametrize("kept", KEPT)
def test_revert_files_and_the_frame_log_are_re_encrypted(tmp_path: Path, kept: str) -> None:
    from turso_sync.local.engine import LocalDatabase

    path = tmp_path / "app.db"
    old, new = secrets.token_hex(32), secrets.token_hex(32)
    engine = LocalDatabase(path, encryption_key=old, cipher="hardened")  # keeps a frame log, as a replica does
    engine.close()
    make_db(path, old, rows=100)
    db_path = str(path.resolve())
    codec = HardenedCodec(RAW, bytes.fromhex(old), P)
    data = path.read_bytes()
    codec.open_file(data[:P])
    pages = {pgno: codec.decrypt(data[(pgno - 1) * P : pgno * P], pgno) for pgno in (2, 3)}
    keep_revert(db_path, 7, pages, codec, kept)  # a replica's synced base images, as a pull leaves them
    assert scan_frame_log(db_path, codec, 2) > 0  # history kept under epoch 1
    result = rekey(path, encryption_key=old, new_key=new)
    assert result.copies_rewritten >= 2
    reopened = HardenedCodec(RAW, bytes.fromhex(new), P)
    reopened.open_file(path.read_bytes()[:P])
    raw = stored_revert(db_path, 7, kept)
    assert {reopened.epoch_of(raw[24 + 4 + i * (4 + P) :][:P]) for i in range(2)} == {2}
    assert read_kept_revert(db_path, 7, reopened, kept) == pages
    assert scan_frame_log(db_path, reopened, 2) == 0
