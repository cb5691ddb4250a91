"""The tamper matrix of the hardened format, on real files: every change is refused by page.

Each case builds an encrypted database through ``turso_sync.connect``, changes its files on
disk the way an attacker with write access (but no key) could, and checks that reading refuses
with an ``EncryptionError`` naming the page, never returning rows.  A page rolled back to an
older image of itself is refused by the page map (``-pagemap``); the whole state put back at
once (pages and map) is the documented limit (docs/encryption.md): it is asserted as such.
Turso's format is run through two of the cases to show what it does not catch.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import turso_sync
from turso_sync import errors

P = 4096
WAL_HEADER = 32
FRAME_HEADER = 24
ROWS = 300


@pytest.fixture
def key() -> str:
    return secrets.token_hex(32)


def build(path: Path, secret: str, cipher: str = "hardened", tag: str = "a") -> None:
    """A table over several leaf pages; closed, so every page is in the database file."""
    conn = turso_sync.connect(path, encryption_key=secret, cipher=cipher)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"{tag}-row-{i:04d}-" + "x" * 80) for i in range(ROWS)])
    conn.commit()
    conn.close()


def read_all(path: Path, secret: str, cipher: str = "hardened") -> list[tuple[int, str]]:
    conn = turso_sync.connect(path, encryption_key=secret, cipher=cipher)
    try:
        return conn.execute("SELECT id, body FROM t ORDER BY id").fetchall()
    finally:
        conn.close()


def page(path: Path, pgno: int) -> bytes:
    with open(path, "rb") as f:
        f.seek((pgno - 1) * P)
        return f.read(P)


def put_page(path: Path, pgno: int, data: bytes) -> None:
    assert len(data) == P
    with open(path, "r+b") as f:
        f.seek((pgno - 1) * P)
        f.write(data)


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def wal_frames(wal: Path) -> Iterator[tuple[int, bytes]]:
    """(page number, body) of every frame in a WAL file."""
    data = wal.read_bytes()
    for off in range(WAL_HEADER, len(data) - FRAME_HEADER - P + 1, FRAME_HEADER + P):
        yield int.from_bytes(data[off : off + 4], "big"), data[off + FRAME_HEADER : off + FRAME_HEADER + P]


def refused(path: Path, secret: str, cipher: str = "hardened") -> str:
    """The message of the EncryptionError opening or reading the table raises (no rows come back)."""
    with pytest.raises(errors.EncryptionError) as info:
        rows = read_all(path, secret, cipher)
        pytest.fail(f"{len(rows)} rows came back from a tampered file")
    return str(info.value)


# --- the matrix -----------------------------------------------------------------------------------


def test_untouched_file_reads_back(tmp_path: Path, key: str) -> None:
    db = tmp_path / "a.db"
    build(db, key)
    rows = read_all(db, key)
    assert len(rows) == ROWS and rows[7] == (7, "a-row-0007-" + "x" * 80)
    assert os.path.getsize(db) >= 6 * P  # the cases below have pages 3..6 to play with


def test_swapping_two_pages_is_refused_naming_one(tmp_path: Path, key: str) -> None:
    db = tmp_path / "a.db"
    build(db, key)
    p3, p4 = page(db, 3), page(db, 4)
    put_page(db, 3, p4)
    put_page(db, 4, p3)
    message = refused(db, key)
    assert "page 3 of the database failed authentication" in message or "page 4 of the database" in message


def test_copying_a_page_over_another_is_refused(tmp_path: Path, key: str) -> None:
    db = tmp_path / "a.db"
    build(db, key)
    put_page(db, 5, page(db, 4))
    assert "page 5 of the database failed authentication" in refused(db, key)


def test_a_page_moved_from_another_file_under_the_same_key_is_refused(tmp_path: Path, key: str) -> None:
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    build(a, key, tag="a")
    build(b, key, tag="b")  # same key, same schema, same page numbers: only the file id differs
    put_page(b, 4, page(a, 4))
    assert "page 4 of the database failed authentication" in refused(b, key)
    assert len(read_all(a, key)) == ROWS


def test_page1_moved_from_another_file_is_refused(tmp_path: Path, key: str) -> None:
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    build(a, key, tag="a")
    build(b, key, tag="b")
    put_page(b, 1, page(a, 1))  # b now claims a's file id: b's page map and b's other pages are refused
    message = refused(b, key)
    assert "page 1 of the database failed authentication" in message
    assert "the page map of another file" in message


def test_a_wal_frame_moved_into_the_database_is_refused(tmp_path: Path, key: str) -> None:
    db = tmp_path / "a.db"
    build(db, key)
    conn = turso_sync.connect(db, encryption_key=key, cipher="hardened")
    conn.execute("UPDATE t SET body = 'updated' WHERE id < 20")
    conn.commit()
    frames = list(wal_frames(Path(f"{db}-wal")))
    conn.close()  # checkpoints: the database file now holds the same pages, encrypted for it
    pgno, body = next((pgno, body) for pgno, body in frames if pgno > 1)
    put_page(db, pgno, body)
    message = refused(db, key)
    assert f"page {pgno} of the database failed authentication (it holds an image written for the WAL)" in message


def test_rolling_a_page_back_to_its_own_older_image_is_refused(tmp_path: Path, key: str) -> None:
    """Each page's older images verify under the cipher; the page map (``-pagemap``) refuses them."""
    db = tmp_path / "a.db"
    build(db, key)
    old_pages = {pgno: page(db, pgno) for pgno in range(1, os.path.getsize(db) // P + 1)}
    conn = turso_sync.connect(db, encryption_key=key, cipher="hardened")
    conn.execute("UPDATE t SET body = 'new-' || id")
    conn.commit()
    conn.close()
    after = read_all(db, key)
    changed = [pgno for pgno, old in old_pages.items() if page(db, pgno) != old]
    assert len(changed) >= 3
    for pgno in changed:  # page 1 among them: each alone is refused, naming it
        current = page(db, pgno)
        put_page(db, pgno, old_pages[pgno])  # same file, same epoch, same place: the cipher accepts it
        message = refused(db, key)
        assert f"page {pgno} of the database failed authentication (it is not the image last written there" in message
        put_page(db, pgno, current)
    assert read_all(db, key) == after  # the current images read as before


def test_rolling_page_1_back_is_refused(tmp_path: Path, key: str) -> None:
    db = tmp_path / "a.db"
    build(db, key)
    old1 = page(db, 1)
    conn = turso_sync.connect(db, encryption_key=key, cipher="hardened")
    conn.execute("CREATE TABLE later (x)")
    conn.commit()
    conn.close()
    assert page(db, 1) != old1  # the schema changed
    put_page(db, 1, old1)
    assert "page 1 of the database failed authentication (it is not the image last written there" in refused(db, key)


def test_a_deleted_page_map_is_refused_not_rebuilt(tmp_path: Path, key: str) -> None:
    db = tmp_path / "a.db"
    build(db, key)
    Path(f"{db}-pagemap").unlink()
    assert "-pagemap: the page map of this database is missing" in refused(db, key)


def test_a_changed_page_map_is_refused(tmp_path: Path, key: str) -> None:
    db = tmp_path / "a.db"
    build(db, key)
    flip(Path(f"{db}-pagemap"), os.path.getsize(f"{db}-pagemap") - 40)  # a byte of the last page's tag
    assert "the page map failed authentication" in refused(db, key)


def test_rolling_back_the_pages_and_the_map_together_is_the_documented_limit(tmp_path: Path, key: str) -> None:
    """The whole state put back at once (every page a change wrote, and the map of before) is not detected."""
    db = tmp_path / "a.db"
    build(db, key)
    before = read_all(db, key)
    old_pages = {pgno: page(db, pgno) for pgno in range(1, os.path.getsize(db) // P + 1)}
    old_map = Path(f"{db}-pagemap").read_bytes()
    conn = turso_sync.connect(db, encryption_key=key, cipher="hardened")
    conn.execute("UPDATE t SET body = 'new-' || id")
    conn.commit()
    conn.close()
    for pgno, old in old_pages.items():
        put_page(db, pgno, old)
    Path(f"{db}-pagemap").write_bytes(old_map)
    assert read_all(db, key) == before


def test_a_page_of_an_older_incarnation_of_the_file_is_refused(tmp_path: Path, key: str) -> None:
    """The same path recreated under the same key is another file (another file id)."""
    db = tmp_path / "a.db"
    build(db, key)
    old3 = page(db, 3)
    for suffix in ("", "-wal", "-shm", "-frames"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    build(db, key)
    put_page(db, 3, old3)
    assert "page 3 of the database failed authentication" in refused(db, key)


@pytest.mark.parametrize(
    "offset",
    [18, 24, 28, 40, 60, 96],
    ids=["file format", "change counter", "page count", "schema cookie", "user version", "sqlite version"],
)
def test_a_changed_byte_of_the_page1_header_is_refused_at_open(tmp_path: Path, key: str, offset: int) -> None:
    db = tmp_path / "a.db"
    build(db, key)
    flip(db, offset)
    assert "page 1 failed authentication" in refused(db, key)


@pytest.mark.parametrize("offset", [10, 11, 12, 15, 72, 75, 76, 91], ids=lambda o: f"byte {o}")
def test_a_changed_byte_of_the_stored_parameters_is_refused(tmp_path: Path, key: str, offset: int) -> None:
    """Epoch (10..12), file id (12..16, 72..76), wrapped key (76..92) of a raw-key file."""
    db = tmp_path / "a.db"
    build(db, key)
    flip(db, offset)
    assert "page 1" in refused(db, key)


def test_wrong_key_is_refused_and_changes_nothing(tmp_path: Path, key: str) -> None:
    db = tmp_path / "a.db"
    build(db, key)
    before = db.read_bytes()
    assert "page 1 failed authentication" in refused(db, secrets.token_hex(32))
    assert db.read_bytes() == before


# --- passphrases ------------------------------------------------------------------------------------

PASSPHRASE = "a long passphrase, not a key"


@pytest.fixture
def pw_db(tmp_path: Path) -> Path:
    db = tmp_path / "pw.db"
    build(db, PASSPHRASE, cipher="hardened-passphrase")
    return db


def test_a_passphrase_database_reopens_with_the_passphrase_alone(pw_db: Path) -> None:
    rows = read_all(pw_db, PASSPHRASE, "hardened-passphrase")
    assert len(rows) == ROWS
    head = pw_db.read_bytes()[:100]
    # Argon2id: 64 MiB (2**16 KiB), 3 passes, 4 lanes, stored in page 1; the top bit: a page map is kept
    assert head[7:10] == bytes([0x80 | 16, 3, 4])
    assert PASSPHRASE.encode() not in pw_db.read_bytes()


def test_wrong_passphrase_is_refused_and_changes_nothing(pw_db: Path) -> None:
    before = pw_db.read_bytes()
    assert "page 1 failed authentication" in refused(pw_db, PASSPHRASE + "!", "hardened-passphrase")
    assert pw_db.read_bytes() == before


def test_stored_argon2_parameters_below_the_floor_are_refused(pw_db: Path) -> None:
    with open(pw_db, "r+b") as f:
        f.seek(7)
        f.write(bytes([10]))  # 1 MiB: cheap to guess; the floor is 32 MiB
    message = refused(pw_db, PASSPHRASE, "hardened-passphrase")
    assert "page 1" in message and "below the floor" in message


@pytest.mark.parametrize("offset", [8, 9, 76, 91], ids=["iterations", "lanes", "wrap start", "wrap end"])
def test_a_changed_passphrase_parameter_is_refused(pw_db: Path, offset: int) -> None:
    flip(pw_db, offset)
    assert "page 1" in refused(pw_db, PASSPHRASE, "hardened-passphrase")


def test_a_passphrase_file_opened_with_a_key_is_refused(pw_db: Path) -> None:
    message = refused(pw_db, secrets.token_hex(32))
    assert "page 1" in message and "passphrase" in message


# --- what Turso's format does not catch (for comparison; docs/encryption.md) ----------------------


def test_turso_format_does_not_notice_a_page_moved_between_files(tmp_path: Path, key: str) -> None:
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    build(a, key, cipher="aes256gcm", tag="a")
    build(b, key, cipher="aes256gcm", tag="b")
    put_page(b, 4, page(a, 4))
    rows = read_all(b, key, "aes256gcm")
    assert any(body.startswith("a-") for _, body in rows)  # a's rows read back as b's, silently


def test_turso_format_does_not_notice_a_wal_frame_moved_into_the_database(tmp_path: Path, key: str) -> None:
    db = tmp_path / "a.db"
    build(db, key, cipher="aes256gcm")
    old = {pgno: page(db, pgno) for pgno in range(2, os.path.getsize(db) // P + 1)}
    conn = turso_sync.connect(db, encryption_key=key, cipher="aes256gcm")
    conn.execute("UPDATE t SET body = 'updated' WHERE id < 20")
    conn.commit()
    frames = list(wal_frames(Path(f"{db}-wal")))
    conn.close()
    pgno, body = next((pgno, body) for pgno, body in frames if pgno > 1)
    put_page(db, pgno, old[pgno])  # first an older image ...
    put_page(db, pgno, body)  # ... then the WAL's: either one verifies
    assert len(read_all(db, key, "aes256gcm")) == ROWS


def test_pyturso_refuses_a_hardened_file_instead_of_misreading_it(tmp_path: Path, key: str) -> None:
    """Turso does not know the hardened cipher id (0x80): it refuses page 1 and changes nothing."""
    db = tmp_path / "a.db"
    build(db, key)
    before = db.read_bytes()
    code = (
        "import sys, turso\n"
        "try:\n"
        "    conn = turso.connect(sys.argv[1], experimental_features='encryption',\n"
        "                         encryption=turso.EncryptionOpts(cipher='aes256gcm', hexkey=sys.argv[2]))\n"
        "    print('ROWS', conn.execute('SELECT count(*) FROM t').fetchall())\n"
        "except Exception as exc:\n"
        "    print('REFUSED', exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(db), key], capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("REFUSED Decryption failed for page=1"), proc.stdout + proc.stderr
    assert db.read_bytes() == before


@pytest.mark.parametrize("cipher", ["hardened", "aes256gcm"])
def test_a_truncated_file_is_refused_by_page(tmp_path: Path, key: str, cipher: str) -> None:
    """Truncation leaves no page to authenticate, but the file's header still counts the pages it
    lost: the open is refused naming the first of them (in either format)."""
    db = tmp_path / "a.db"
    build(db, key, cipher)
    pages = os.path.getsize(db) // P
    os.truncate(db, os.path.getsize(db) - 2 * P)
    with pytest.raises(errors.EncryptionError, match=r"page (\d+) of the database is missing.*cut short") as caught:
        rows = read_all(db, key, cipher)
        pytest.fail(f"{len(rows)} rows came back from a truncated file")
    pgno = int(re.search(r"page (\d+) of the database is missing", str(caught.value)).group(1))  # type: ignore[union-attr]
    assert pages - 1 <= pgno <= pages
