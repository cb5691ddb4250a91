"""The VFS's per-read and per-commit shortcuts do what the long way did, for every format.

``PageCodec.decrypt_into`` (the page read path of Turso's format) must give ``decrypt``'s bytes,
refuse what ``decrypt`` refuses, and leave the reserved tail zero in a reused buffer; the main
database file's class must match its layout, since only the envelope layout maps sizes.
"""

from __future__ import annotations

import os
from pathlib import Path

import apsw
import pytest

import turso_sync
from turso_sync import errors
from turso_sync.crypto.page_codec import CIPHERS, HARDENED_CIPHERS, PageAuthError, PageCodec, PageDecryptError
from turso_sync.local import vfs

KEY = "5e" * 32


def _page(pgno: int, codec: PageCodec) -> bytes:
    """A plaintext page whose reserved tail is zero (and page 1 a SQLite header with 28 reserved bytes)."""
    body = bytearray(os.urandom(codec.page_size - codec.reserved)) + bytes(codec.reserved)
    if pgno == 1:
        body[:16] = b"SQLite format 3\x00"
        body[16:18] = (codec.page_size).to_bytes(2, "big")
        body[20] = codec.reserved
        body[72:92] = bytes(20)
    return bytes(body)


@pytest.mark.parametrize("pgno", [1, 2, 77])
def test_decrypt_into_gives_decrypts_page_and_keeps_the_tail_zero(pgno: int) -> None:
    codec = PageCodec(CIPHERS["aes256gcm"], bytes.fromhex(KEY))
    out = bytearray(b"\xaa" * codec.page_size)
    out[-codec.reserved :] = bytes(codec.reserved)  # the caller's buffer starts with a zero tail
    for _ in range(3):  # the same buffer again, as the VFS reuses it
        plain = _page(pgno, codec)
        enc = codec.encrypt(plain, pgno)
        assert codec.decrypt_into(enc, pgno, out) is out
        assert bytes(out) == codec.decrypt(enc, pgno) == plain


@pytest.mark.parametrize("pgno", [1, 5])
def test_decrypt_into_refuses_a_changed_page_by_number(pgno: int) -> None:
    codec = PageCodec(CIPHERS["aes256gcm"], bytes.fromhex(KEY))
    enc = bytearray(codec.encrypt(_page(pgno, codec), pgno))
    enc[200] ^= 1
    with pytest.raises(PageAuthError, match=f"page {pgno}"):
        codec.decrypt_into(bytes(enc), pgno, bytearray(codec.page_size))


def test_decrypt_into_of_the_hardened_format_is_its_own_decrypt(tmp_path: Path) -> None:
    # HardenedCodec inherits decrypt_into: it must not run Turso's AES-GCM on a hardened page
    db = turso_sync.connect(tmp_path / "h.db", encryption_key=KEY, encryption_format="hardened", record_frames=False)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    codec = db._state.codec
    assert codec is not None and type(codec) is not PageCodec
    db.close()
    raw = (tmp_path / "h.db").read_bytes()[: codec.slot_size * 2]
    page2 = raw[codec.slot_size : 2 * codec.slot_size]
    out = bytearray(codec.page_size)
    assert bytes(codec.decrypt_into(page2, 2, out)) == codec.decrypt(page2, 2)


def test_page_decrypter_gives_decrypts_pages_in_the_same_two_buffers() -> None:
    # the VFS reads every page but page 1 this way: one raw and one plaintext buffer, reused
    codec = PageCodec(CIPHERS["aes256gcm"], bytes.fromhex(KEY))
    raw, out = bytearray(codec.page_size), bytearray(codec.page_size)
    decrypt = codec.page_decrypter(raw, out)
    for pgno in (2, 77, 3):
        plain = _page(pgno, codec)
        raw[:] = codec.encrypt(plain, pgno)
        decrypt()
        assert bytes(out) == codec.decrypt(bytes(raw), pgno) == plain


def test_page_decrypter_refuses_a_changed_page_and_is_for_turso_format_only() -> None:
    codec = PageCodec(CIPHERS["aes256gcm"], bytes.fromhex(KEY))
    raw, out = bytearray(codec.page_size), bytearray(codec.page_size)
    decrypt = codec.page_decrypter(raw, out)
    raw[:] = codec.encrypt(_page(5, codec), 5)
    raw[200] ^= 1
    with pytest.raises(PageDecryptError):
        decrypt()
    with pytest.raises(ValueError, match="4096-byte buffers"):
        codec.page_decrypter(bytearray(10), out)
    hardened = PageCodec(HARDENED_CIPHERS["hardened"], bytes.fromhex(KEY))
    with pytest.raises(TypeError):
        hardened.page_decrypter(raw, out)


def test_a_changed_page_read_through_the_database_descriptor_is_named(tmp_path: Path) -> None:
    # pages after page 1 are read with preadv on the database's descriptor and the bound decrypter
    path = tmp_path / "t.db"
    db = turso_sync.connect(path, encryption_key=KEY, record_frames=False)
    db.execute("CREATE TABLE t (x)")
    db.executemany("INSERT INTO t VALUES (?)", [(os.urandom(300),) for _ in range(200)])
    db.commit()
    expected = db.execute("SELECT x FROM t ORDER BY rowid").fetchall()
    db.close()
    db = turso_sync.connect(path, encryption_key=KEY, record_frames=False)
    assert db.execute("SELECT x FROM t ORDER BY rowid").fetchall() == expected
    db.close()
    with open(path, "r+b") as f:
        f.seek(4096 * 5 + 100)  # page 6
        byte = f.read(1)
        f.seek(4096 * 5 + 100)
        f.write(bytes([byte[0] ^ 1]))
    db = turso_sync.connect(path, encryption_key=KEY, record_frames=False)
    with pytest.raises(errors.EncryptionError, match="page 6 of the database failed authentication"):
        db.execute("SELECT x FROM t ORDER BY rowid").fetchall()
    db.close()


@pytest.mark.parametrize(
    ("options", "cls"),
    [
        ({"cipher": "aes256gcm"}, vfs.EncryptedDBFile),
        ({"encryption_format": "hardened"}, vfs.EncryptedDBFile),
        ({"cipher": "envelope"}, vfs.EnvelopeDBFile),
    ],
)
def test_the_database_file_class_matches_the_layout(tmp_path: Path, options: dict[str, str], cls: type) -> None:
    opened: list[apsw.VFSFile] = []
    real_open = vfs.TursoVFS.xOpen

    def spy(self: vfs.TursoVFS, name: object, flags: list[int]) -> apsw.VFSFile:
        f = real_open(self, name, flags)  # type: ignore[arg-type]
        opened.append(f)
        return f

    vfs.TursoVFS.xOpen = spy  # type: ignore[method-assign]
    try:
        db = turso_sync.connect(tmp_path / "c.db", encryption_key=KEY, record_frames=False, **options)
        db.execute("CREATE TABLE t (x)")
        db.executemany("INSERT INTO t VALUES (?)", [(os.urandom(300),) for _ in range(200)])
        db.commit()
        assert db.execute("SELECT count(*) FROM t").fetchone() == (200,)
        db.close()
    finally:
        vfs.TursoVFS.xOpen = real_open  # type: ignore[method-assign]
    (main,) = [f for f in opened if isinstance(f, vfs.EncryptedDBFile)]
    assert type(main) is cls
    # a page is its own slot outside the envelope layout: the unix file's size is SQLite's, asked
    # of the base file without Python (SQLite asks at every read transaction)
    assert ("xFileSize" in type(main).__dict__) == (cls is vfs.EnvelopeDBFile)


def test_every_format_reads_back_after_a_reopen_with_a_small_cache(tmp_path: Path) -> None:
    # pages miss the cache and go through the reused read buffer many times in a row
    for name, options in (
        ("turso", {"cipher": "aes256gcm"}),
        ("hardened", {"encryption_format": "hardened"}),
        ("envelope", {"cipher": "envelope"}),
    ):
        path = tmp_path / f"{name}.db"
        rows = [(i, os.urandom(200)) for i in range(3000)]
        db = turso_sync.connect(path, encryption_key=KEY, record_frames=False, **options)
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
        db.executemany("INSERT INTO t VALUES (?, ?)", rows)
        db.commit()
        db.close()
        db = turso_sync.connect(path, encryption_key=KEY, record_frames=False, **options)
        db.execute("PRAGMA cache_size=10")
        assert db.execute("SELECT id, v FROM t ORDER BY id").fetchall() == rows, name
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",), name
        db.close()


def _last_frame_bodies(wal: bytes, slot: int) -> dict[int, bytes]:
    """pgno -> body of its last frame in a WAL image (frames of 24 + ``slot`` bytes after a 32-byte header)."""
    out = {}
    for off in range(32, len(wal) - (24 + slot) + 1, 24 + slot):
        out[int.from_bytes(wal[off : off + 4], "big")] = wal[off + 24 : off + 24 + slot]
    return out


@pytest.mark.parametrize(
    ("options", "copied"), [({"cipher": "aes256gcm"}, True), ({"encryption_format": "hardened"}, False)]
)
def test_a_checkpoint_copies_turso_ciphertext_and_reencrypts_hardened_pages(
    tmp_path: Path, options: dict[str, str], copied: bool
) -> None:
    path = tmp_path / "k.db"
    db = turso_sync.connect(path, encryption_key=KEY, record_frames=False, **options)
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    db.executemany("INSERT INTO t VALUES (?, ?)", [(i, os.urandom(100)) for i in range(400)])
    db.commit()
    slot = db._state.codec.slot_size  # type: ignore[union-attr]
    frames = _last_frame_bodies(Path(f"{path}-wal").read_bytes(), slot)
    assert len(frames) > 5
    assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    image = path.read_bytes()
    same = {pgno for pgno, body in frames.items() if image[(pgno - 1) * slot : pgno * slot] == body}
    # Turso's format: the database file holds the WAL's ciphertext of each page as it was;
    # the hardened format binds the place into each image, so every page is encrypted afresh
    assert same == (set(frames) if copied else set())
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    db = turso_sync.connect(path, encryption_key=KEY, record_frames=False, **options)
    assert db.execute("SELECT count(*) FROM t").fetchone() == (400,)
    db.close()
