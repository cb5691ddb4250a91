"""Encryption at rest: nothing readable on disk, wrong keys refused without harm, tampering named.

The page decoder here is written from Turso's published format (docs/encryption.md), not taken
from ``turso_sync.crypto``, so these tests check the engine against the format rather than
against itself.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import sqlite3
import struct
import traceback
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import turso_sync

KEY256 = "3b9f1c2d4e5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e"
KEY128 = "c0ffee00deadbeef0123456789abcdef"
OTHER256 = "e5d4c3b2a1908f7e6d5c4b3a29180706f5e4d3c2b1a09f8e7d6c5b4a39281706"
OTHER128 = "0123456789abcdef0123456789abcdef"
KEYS = {"aes128gcm": (KEY128, 1), "aes256gcm": (KEY256, 2)}

MARK_TEXT = "QuetzalPlaintextMarker"
MARK_BLOB = b"\x8b\x13BlobMarker\x00\xff\xee"
TABLE = "confidential_ledger"
INDEX = "confidential_ledger_by_label"
P = 4096
FRAME = P + 24


# --- helpers ---------------------------------------------------------------------------------------


def files_in(directory: Path) -> dict[str, bytes]:
    """Every regular file in ``directory``: name -> content."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def digests(directory: Path) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files_in(directory).items()}


def secrets_for(key: str) -> list[bytes]:
    """Byte strings that must never reach the disk: user data, schema text and the key."""
    return [
        MARK_TEXT.encode(),
        MARK_TEXT.encode("utf-16-le"),
        MARK_BLOB,
        TABLE.encode(),
        INDEX.encode(),
        b"CREATE TABLE",
        b"SQLite format 3",
        key.lower().encode(),
        key.upper().encode(),
        bytes.fromhex(key),
    ]


def assert_nothing_readable(directory: Path, key: str, when: str) -> list[str]:
    files = files_in(directory)
    assert files, f"no files at all {when}"
    for name, data in files.items():
        for secret in secrets_for(key):
            assert secret not in data, f"{secret[:24]!r} found in {name} {when}"
    return sorted(files)


def decrypt_db_image(raw: bytes, key: str, cipher_id: int) -> bytes:
    """Turso's format, decoded independently: page 1 keeps bytes 16..100 and authenticates 0..100."""
    assert raw[:5] == b"Turso" and raw[5] == 0 and raw[6] == cipher_id and raw[7:16] == bytes(9)
    page_size = int.from_bytes(raw[16:18], "big")
    assert page_size == P and raw[20] == 28  # 12-byte nonce + 16-byte tag in the reserved space
    assert len(raw) % P == 0
    aead = AESGCM(bytes.fromhex(key))
    out = bytearray()
    for i in range(len(raw) // P):
        out += decrypt_page(aead, raw[i * P : (i + 1) * P], i + 1)
    return bytes(out)


def decrypt_page(aead: AESGCM, page: bytes, pgno: int) -> bytes:
    nonce = page[P - 12 :]
    if pgno == 1:
        body = aead.decrypt(nonce, page[100 : P - 12], page[:100])
        return b"SQLite format 3\x00" + page[16:100] + body + bytes(28)
    return aead.decrypt(nonce, page[: P - 12], None) + bytes(28)


def wal_checksum(data: bytes, s1: int, s2: int) -> tuple[int, int]:
    """SQLite's WAL checksum (little-endian words, magic 0x377f0682)."""
    for x, y in struct.iter_unpack("<II", data):
        s1 = (s1 + x + s2) & 0xFFFFFFFF
        s2 = (s2 + y + s1) & 0xFFFFFFFF
    return s1, s2


def wal_frames(wal: bytes) -> list[tuple[int, int, int]]:
    """(frame index, pgno, commit size) of every frame whose salts and ciphertext checksum chain hold."""
    assert int.from_bytes(wal[:4], "big") == 0x377F0682
    s1, s2 = wal_checksum(wal[:24], 0, 0)
    assert (s1, s2) == struct.unpack(">II", wal[24:32])
    out = []
    index = 1
    while 32 + index * FRAME <= len(wal):
        off = 32 + (index - 1) * FRAME
        pgno, commit, *_ = struct.unpack(">IIII", wal[off : off + 16])
        if wal[off + 8 : off + 16] != wal[16:24]:
            break
        s1, s2 = wal_checksum(wal[off : off + 8] + wal[off + 24 : off + FRAME], s1, s2)
        if (s1, s2) != struct.unpack(">II", wal[off + 16 : off + 24]):
            break
        out.append((index, pgno, commit))
        index += 1
    return out


def reseal_wal(wal: bytearray) -> None:
    """Recompute every frame checksum over the bytes as they now are (a tamperer who knows SQLite)."""
    s1, s2 = struct.unpack(">II", wal[24:32])
    index = 1
    while 32 + index * FRAME <= len(wal):
        off = 32 + (index - 1) * FRAME
        if wal[off + 8 : off + 16] != wal[16:24]:
            break
        s1, s2 = wal_checksum(bytes(wal[off : off + 8] + wal[off + 24 : off + FRAME]), s1, s2)
        wal[off + 16 : off + 24] = struct.pack(">II", s1, s2)
        index += 1


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x20
    path.write_bytes(bytes(data))


def page_re(pgno: int) -> re.Pattern[str]:
    return re.compile(rf"\bpage {pgno}\b")


def make_db(path: Path, key: str = KEY256, cipher: str = "aes256gcm", rows: int = 600) -> turso_sync.Connection:
    """A database with one table of ``rows`` rows, left open (its WAL in place)."""
    conn = turso_sync.connect(path, encryption_key=key, cipher=cipher)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b BLOB)")
    conn.executemany(
        "INSERT INTO t(a, b) VALUES (?, ?)", [(f"row {i:05d} " * 8, bytes([i % 251]) * 40) for i in range(rows)]
    )
    conn.commit()
    return conn


def read_all(path: Path, key: str = KEY256) -> list[tuple[Any, ...]]:
    conn = turso_sync.connect(path, encryption_key=key)
    try:
        return conn.execute("SELECT * FROM t ORDER BY id").fetchall()
    finally:
        conn.close()


# --- no plaintext on disk ----------------------------------------------------------------------------


@pytest.mark.parametrize("cipher", ["aes128gcm", "aes256gcm"])
def test_no_plaintext_in_any_file_the_engine_writes(tmp_path, cipher):
    key, cipher_id = KEYS[cipher]
    directory = tmp_path / "db"
    directory.mkdir()
    path = directory / "enc.db"
    conn = turso_sync.connect(path, encryption_key=key, cipher=cipher)
    conn.execute(f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, label TEXT, body TEXT, data BLOB)")
    conn.execute(f"CREATE INDEX {INDEX} ON {TABLE}(label)")
    insert = f"INSERT INTO {TABLE}(label, body, data) VALUES (?, ?, ?)"
    conn.executemany(insert, [(f"{MARK_TEXT}-{i}", MARK_TEXT * (i % 40), MARK_BLOB * (i % 9)) for i in range(2000)])
    # values far larger than a page live on overflow pages
    conn.executemany(insert, [(f"{MARK_TEXT}-big-{i}", MARK_TEXT * 3000, MARK_BLOB * 4000) for i in range(15)])
    conn.commit()
    seen = set(assert_nothing_readable(directory, key, "after the first commit, connection open"))

    # a transaction bigger than the page cache spills uncommitted pages into the WAL
    wal_before = (directory / "enc.db-wal").stat().st_size
    conn.execute("PRAGMA cache_size=10")
    conn.executemany(insert, [(f"{MARK_TEXT}-spill-{i}", MARK_TEXT * 200, MARK_BLOB * 300) for i in range(400)])
    assert (directory / "enc.db-wal").stat().st_size > wal_before  # the spill really reached the disk
    seen |= set(assert_nothing_readable(directory, key, "with an uncommitted transaction spilled to the WAL"))
    conn.commit()

    # a second connection reading at the same time (shared memory index in use)
    reader = turso_sync.connect(path, encryption_key=key, cipher=cipher)
    assert reader.execute(f"SELECT count(*) FROM {TABLE}").fetchone() == (2415,)
    # sorting a large result needs scratch space; it must not go to a plaintext temp file
    ordered = reader.execute(f"SELECT label FROM {TABLE} ORDER BY body DESC, data, random()").fetchall()
    assert len(ordered) == 2415

    conn.execute(f"DELETE FROM {TABLE} WHERE id % 3 = 0")
    conn.commit()
    seen |= set(assert_nothing_readable(directory, key, "after deletes"))
    conn.execute("VACUUM")
    seen |= set(assert_nothing_readable(directory, key, "after VACUUM"))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    seen |= set(assert_nothing_readable(directory, key, "after a checkpoint"))
    reader.close()
    conn.close()
    seen |= set(assert_nothing_readable(directory, key, "after close"))
    assert {"enc.db", "enc.db-wal"} <= seen

    # the data is really there, hidden only by the cipher: decode it independently and let
    # stdlib sqlite3 read the result
    plain = decrypt_db_image((directory / "enc.db").read_bytes(), key, cipher_id)
    assert MARK_TEXT.encode() in plain and MARK_BLOB in plain
    plain_path = tmp_path / "decrypted.db"
    plain_path.write_bytes(plain)
    ref = sqlite3.connect(plain_path)
    assert ref.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert ref.execute(f"SELECT count(*), max(length(body)) FROM {TABLE}").fetchone() == (1610, len(MARK_TEXT) * 3000)
    ref.close()


@pytest.mark.parametrize("cipher", ["aes128gcm", "aes256gcm"])
def test_wal_frames_are_encrypted_pages_with_checksums_over_the_ciphertext(tmp_path, cipher):
    key, cipher_id = KEYS[cipher]
    conn = turso_sync.connect(tmp_path / "w.db", encryption_key=key, cipher=cipher)
    conn.execute("CREATE TABLE t (x TEXT)")
    for i in range(5):
        conn.executemany("INSERT INTO t VALUES (?)", [(f"{MARK_TEXT} {i} {j}" * 10,) for j in range(40)])
        conn.commit()
    wal = (tmp_path / "w.db-wal").read_bytes()
    frames = wal_frames(wal)  # every frame verifies against checksums computed over the ciphertext
    assert len(frames) >= 5 and sum(1 for _, _, commit in frames if commit) >= 5
    assert 32 + len(frames) * FRAME == len(wal)  # and every frame on disk is part of that chain
    aead = AESGCM(bytes.fromhex(key))
    for index, pgno, _ in frames:
        body = wal[32 + (index - 1) * FRAME + 24 : 32 + index * FRAME]
        if pgno == 1:
            assert body[:7] == b"Turso\x00" + bytes([cipher_id])
        decrypt_page(aead, body, pgno)  # raises InvalidTag unless it is Turso's page encryption
    conn.close()


# --- wrong, missing and malformed keys --------------------------------------------------------------


@pytest.mark.parametrize("situation", ["closed cleanly", "live WAL", "orphaned WAL"])
@pytest.mark.parametrize("cipher", ["aes128gcm", "aes256gcm"])
def test_wrong_key_is_refused_and_every_file_is_left_unchanged(tmp_path, situation, cipher):
    key = KEYS[cipher][0]
    wrong = OTHER128 if cipher == "aes128gcm" else OTHER256
    directory = tmp_path / "db"
    directory.mkdir()
    writer = make_db(directory / "w.db", key, cipher)
    expected = writer.execute("SELECT * FROM t ORDER BY id").fetchall()
    if situation == "closed cleanly":
        writer.close()
    elif situation == "orphaned WAL":
        # what a crashed writer leaves behind: db and WAL, nobody holding them open
        other = tmp_path / "orphan"
        other.mkdir()
        for name in ("w.db", "w.db-wal"):
            shutil.copyfile(directory / name, other / name)
        writer.close()
        directory = other
    if situation != "closed cleanly":
        assert (directory / "w.db-wal").stat().st_size > 32
    before = digests(directory)

    for attempt in range(2):  # a second attempt must not behave differently
        with pytest.raises(turso_sync.DatabaseError) as info:
            turso_sync.connect(directory / "w.db", encryption_key=wrong, cipher=cipher)
        assert isinstance(info.value, turso_sync.EncryptionError), attempt
        message = str(info.value)
        assert re.search(r"wrong (encryption )?key|key is wrong", message), message
        assert "w.db" in message
        assert wrong not in message and key not in message
        assert digests(directory) == before

    conn = turso_sync.connect(directory / "w.db", encryption_key=key, cipher=cipher)
    assert conn.execute("SELECT * FROM t ORDER BY id").fetchall() == expected
    conn.close()
    if situation == "live WAL":
        writer.close()


@pytest.mark.parametrize(("created", "opened"), [("aes256gcm", "aes128gcm"), ("aes128gcm", "aes256gcm")])
def test_wrong_cipher_is_refused_and_names_both_ciphers(tmp_path, created, opened):
    directory = tmp_path / "db"
    directory.mkdir()
    make_db(directory / "c.db", KEYS[created][0], created).close()
    before = digests(directory)
    with pytest.raises(turso_sync.EncryptionError) as info:
        turso_sync.connect(directory / "c.db", encryption_key=KEYS[opened][0], cipher=opened)
    assert created in str(info.value) and opened in str(info.value)
    assert digests(directory) == before


def test_encrypted_database_opened_without_a_key_fails_clearly(tmp_path):
    directory = tmp_path / "db"
    directory.mkdir()
    writer = make_db(directory / "e.db")
    for live in (True, False):
        before = digests(directory)
        with pytest.raises(turso_sync.EncryptionError) as info:
            turso_sync.connect(directory / "e.db")
        message = str(info.value)
        assert "encrypted" in message and "encryption_key" in message and "e.db" in message
        assert digests(directory) == before, f"files changed (writer open: {live})"
        if live:
            writer.close()


@pytest.mark.parametrize("made_by", ["stdlib sqlite3", "turso_sync without a key"])
def test_plaintext_database_opened_with_a_key_fails_clearly(tmp_path, made_by):
    directory = tmp_path / "db"
    directory.mkdir()
    path = directory / "plain.db"
    if made_by == "stdlib sqlite3":
        conn: Any = sqlite3.connect(path)
    else:
        conn = turso_sync.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES ('readable')")
    conn.commit()
    conn.close()
    before = digests(directory)
    with pytest.raises(turso_sync.EncryptionError) as info:
        turso_sync.connect(path, encryption_key=KEY256)
    assert "plaintext" in str(info.value) and "plain.db" in str(info.value)
    assert digests(directory) == before
    conn = turso_sync.connect(path)
    assert conn.execute("SELECT x FROM t").fetchall() == [("readable",)]
    conn.close()


@pytest.mark.parametrize(
    ("key", "cipher"),
    [
        pytest.param("zz" * 32, "aes256gcm", id="not hex"),
        pytest.param(KEY256[:-1], "aes256gcm", id="odd length"),
        pytest.param(KEY256 + "00", "aes256gcm", id="too long"),
        pytest.param(KEY128, "aes256gcm", id="128-bit key for aes256gcm"),
        pytest.param(KEY256, "aes128gcm", id="256-bit key for aes128gcm"),
        pytest.param("", "aes256gcm", id="empty"),
        pytest.param(KEY256[:40] + "g" + KEY256[41:], "aes256gcm", id="one bad digit"),
        pytest.param(KEY256, "chacha20poly1305", id="unknown cipher"),
        pytest.param(bytes.fromhex(KEY256), "aes256gcm", id="raw bytes instead of hex"),
    ],
)
def test_malformed_key_is_a_programming_error_that_does_not_echo_the_key(tmp_path, key, cipher):
    path = tmp_path / "never.db"
    with pytest.raises(turso_sync.ProgrammingError) as info:
        turso_sync.connect(path, encryption_key=key, cipher=cipher)
    shown = "".join(traceback.format_exception(info.value))
    text = key.hex() if isinstance(key, bytes) else key
    for fragment in {text, text[:16], text[-16:], repr(key)} - {""}:
        assert fragment not in shown
    assert not path.exists()  # nothing is created for a key that cannot be right


def test_key_is_accepted_in_any_case_and_with_surrounding_whitespace(tmp_path):
    make_db(tmp_path / "k.db").close()
    expected = read_all(tmp_path / "k.db")
    for variant in (KEY256.upper(), f"  {KEY256}\n"):
        conn = turso_sync.connect(tmp_path / "k.db", encryption_key=variant)
        assert conn.execute("SELECT * FROM t ORDER BY id").fetchall() == expected
        conn.close()


# --- tampering -------------------------------------------------------------------------------------


def _expected_answers(path: Path) -> dict[str, Any]:
    conn = turso_sync.connect(path, encryption_key=KEY256)
    try:
        return {q: conn.execute(q).fetchall() for q in QUERIES}
    finally:
        conn.close()


QUERIES = (
    "SELECT count(*), sum(length(a)), sum(length(b)) FROM t",
    "SELECT * FROM t ORDER BY id",
    "SELECT * FROM t WHERE id BETWEEN 200 AND 260",
    "SELECT max(id) FROM t",
    "PRAGMA integrity_check",
)


def assert_error_names_page_and_rows_never_wrong(path: Path, expected: dict[str, Any], pgno: int) -> None:
    """Every query either fails naming ``pgno`` or answers exactly as before the tampering."""
    failures = []
    try:
        conn = turso_sync.connect(path, encryption_key=KEY256)
    except turso_sync.DatabaseError as exc:
        failures.append(exc)
    else:
        try:
            for query, answer in expected.items():
                try:
                    got = conn.execute(query).fetchall()
                except turso_sync.DatabaseError as exc:
                    failures.append(exc)
                else:
                    assert got == answer, f"{query!r} returned wrong rows instead of failing"
        finally:
            conn.close()
    assert failures, "the tampered page was never reported"
    for exc in failures:
        assert isinstance(exc, turso_sync.EncryptionError), repr(exc)
        assert page_re(pgno).search(str(exc)), f"error does not name page {pgno}: {exc}"


@pytest.mark.parametrize("region", ["ciphertext", "tag", "nonce"])
@pytest.mark.parametrize("which", ["second", "middle", "last"])
def test_tampered_page_is_reported_by_number(tmp_path, region, which):
    path = tmp_path / "t.db"
    make_db(path).close()
    expected = _expected_answers(path)
    pages = path.stat().st_size // P
    assert pages >= 10
    pgno = {"second": 2, "middle": pages // 2, "last": pages}[which]
    within = {"ciphertext": 1234, "tag": P - 20, "nonce": P - 3}[region]
    flip(path, (pgno - 1) * P + within)
    assert_error_names_page_and_rows_never_wrong(path, expected, pgno)


@pytest.mark.parametrize(
    "offset",
    [
        pytest.param(12, id="unused magic byte"),
        pytest.param(44, id="plaintext header byte (authenticated)"),
        pytest.param(96, id="plaintext SQLite version number"),
        pytest.param(700, id="encrypted body"),
        pytest.param(P - 20, id="tag"),
        pytest.param(P - 1, id="nonce"),
    ],
)
def test_tampered_page_one_is_reported_by_number(tmp_path, offset):
    directory = tmp_path / "db"
    directory.mkdir()
    path = directory / "t.db"
    make_db(path).close()
    flip(path, offset)
    before = digests(directory)
    with pytest.raises(turso_sync.EncryptionError) as info:
        turso_sync.connect(path, encryption_key=KEY256)
    assert page_re(1).search(str(info.value)), str(info.value)
    assert digests(directory) == before


def _db_with_wal(directory: Path) -> tuple[bytes, bytes, dict[str, Any]]:
    """(db file, WAL, expected answers) of a database whose last transactions are still in the WAL."""
    conn = make_db(directory / "src.db", rows=300)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    for batch in range(4):
        conn.executemany(
            "INSERT INTO t(a, b) VALUES (?, ?)", [(f"wal {batch} {i} " * 8, bytes([batch]) * 40) for i in range(75)]
        )
        conn.commit()
    answers = {q: conn.execute(q).fetchall() for q in QUERIES}
    db = (directory / "src.db").read_bytes()
    wal = (directory / "src.db-wal").read_bytes()
    conn.close()
    return db, wal, answers


@pytest.mark.parametrize("which", ["first committed transaction", "last committed transaction"])
def test_tampered_wal_frame_with_valid_checksum_is_reported_by_page(tmp_path, which):
    db, wal, expected = _db_with_wal(tmp_path)
    frames = wal_frames(wal)
    commits = [i for i, (_, _, commit) in enumerate(frames) if commit]
    assert len(commits) == 4 and 32 + len(frames) * FRAME == len(wal)
    # a page-image frame (not the commit frame) inside the chosen transaction
    target = frames[commits[0] - 1] if which.startswith("first") else frames[commits[-1] - 1]
    index, pgno, _ = target
    tampered = bytearray(wal)
    tampered[32 + (index - 1) * FRAME + 24 + 1500] ^= 0x01
    reseal_wal(tampered)
    assert len(wal_frames(bytes(tampered))) == len(frames)  # to SQLite the WAL looks intact
    path = tmp_path / "t.db"
    path.write_bytes(db)
    (tmp_path / "t.db-wal").write_bytes(bytes(tampered))
    assert_error_names_page_and_rows_never_wrong(path, expected, pgno)


def test_untouched_copy_of_db_and_wal_reads_back_exactly(tmp_path):
    """The control for the WAL tampering test: the same copy, not tampered, reads correctly."""
    db, wal, expected = _db_with_wal(tmp_path)
    path = tmp_path / "t.db"
    path.write_bytes(db)
    (tmp_path / "t.db-wal").write_bytes(wal)
    conn = turso_sync.connect(path, encryption_key=KEY256)
    assert {q: conn.execute(q).fetchall() for q in QUERIES} == expected
    conn.close()


def test_swapped_pages_are_not_caught_by_the_cipher_but_by_integrity_check(tmp_path):
    """Turso's format does not authenticate page numbers (docs/encryption.md); this pins what that means."""
    path = tmp_path / "s.db"
    make_db(path).close()
    expected = _expected_answers(path)
    raw = bytearray(path.read_bytes())
    raw[P : 2 * P], raw[2 * P : 3 * P] = raw[2 * P : 3 * P], raw[P : 2 * P]  # pages 2 and 3
    path.write_bytes(bytes(raw))
    conn = turso_sync.connect(path, encryption_key=KEY256)
    assert conn.execute(QUERIES[0]).fetchall() != expected[QUERIES[0]]  # every page still authenticates
    assert conn.execute("PRAGMA integrity_check").fetchone() != ("ok",)
    conn.close()


# --- the key stays in memory ---------------------------------------------------------------------------


def test_key_never_appears_in_files_repr_or_logs(tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    directory = tmp_path / "db"
    directory.mkdir()
    path = directory / "k.db"
    conn = make_db(path)
    cur = conn.execute("SELECT count(*) FROM t")
    assert cur.fetchall() == [(600,)]
    shown = [repr(conn), str(conn), repr(cur), str(cur), repr(vars(cur).get("description"))]
    try:
        turso_sync.connect(path, encryption_key=OTHER256)
    except turso_sync.Error as exc:
        shown.append("".join(traceback.format_exception(exc)))
    try:
        turso_sync.connect(path, encryption_key=KEY256[:-2])
    except turso_sync.Error as exc:
        shown.append("".join(traceback.format_exception(exc)))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    conn.close()
    shown.append(repr(conn))
    out, err = capfd.readouterr()
    logged = caplog.text + "".join(repr(r.args) for r in caplog.records) + out + err
    for key in (KEY256, OTHER256):
        for form in (key, key.upper(), repr(bytes.fromhex(key)), key[:16]):
            assert form not in logged
            for text in shown:
                assert form not in text
    assert_nothing_readable(directory, KEY256, "after close")
    for name, data in files_in(directory).items():
        assert bytes.fromhex(OTHER256) not in data and OTHER256.encode() not in data, name


def test_encrypt_pages_draws_every_nonce_at_once_and_seals_as_encrypt_does(monkeypatch) -> None:
    """``encrypt_pages`` (an install's, a revert file's batch) gives what ``encrypt`` gives page by
    page, each with its own random nonce, taken from one call for the system's randomness."""
    from turso_sync.crypto import page_codec
    from turso_sync.crypto.page_codec import NONCE_SIZE, PageCodec, parse_key

    spec, key = parse_key("5a17" * 16, "aes256gcm")
    codec = PageCodec(spec, key)
    page1 = bytearray(b"SQLite format 3\x00" + bytes(4096 - 16))
    page1[20] = codec.reserved
    pages = [
        (1, bytes(page1)),
        *((pgno, bytes([pgno]) * (4096 - codec.reserved) + bytes(codec.reserved)) for pgno in (2, 7, 9)),
    ]
    draws: list[int] = []
    real = page_codec.os.urandom

    def counting(n: int) -> bytes:
        draws.append(n)
        return real(n)

    monkeypatch.setattr(page_codec.os, "urandom", counting)
    sealed = codec.encrypt_pages(pages, "WAL")
    assert draws == [NONCE_SIZE * len(pages)]
    assert [codec.decrypt(enc, pgno, "WAL") for enc, (pgno, _) in zip(sealed, pages, strict=True)] == [
        p for _, p in pages
    ]
    assert len({enc[-NONCE_SIZE:] for enc in sealed}) == len(pages)  # a nonce of its own each
    assert [len(enc) for enc in sealed] == [len(codec.encrypt(p, pgno)) for pgno, p in pages]
    assert codec.encrypt_pages([]) == []
