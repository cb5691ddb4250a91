"""The hardened page codec on its own: known answers, binding to place, keys and passphrases."""

from __future__ import annotations

import os
import secrets

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from turso_sync import errors
from turso_sync.crypto import hardened, keys
from turso_sync.crypto.hardened import FileParams, HardenedAuthError, HardenedCodec
from turso_sync.crypto.page_codec import (
    HARDENED_CIPHERS,
    PageAuthError,
    PageCodec,
    encryption_options,
    make_codec,
    parse_key,
)

P = 4096
FAST = keys.ARGON2_FLOOR  # the cheapest parameters the library accepts, to keep the tests quick
RAW_SPEC = HARDENED_CIPHERS["hardened"]
PW_SPEC = HARDENED_CIPHERS["hardenedpassphrase"]


def plain_page1(marker: bytes = b"") -> bytes:
    """A page-1 image as SQLite writes it: magic, a header with 28 reserved bytes, zero tail."""
    page = bytearray(P)
    page[:16] = b"SQLite format 3\x00"
    page[16:18] = P.to_bytes(2, "big")
    page[18:24] = bytes([2, 2, 28, 64, 32, 32])
    page[28:32] = (3).to_bytes(4, "big")
    page[92:100] = (7).to_bytes(4, "big") + (3047000).to_bytes(4, "big")
    page[100 : 100 + len(marker)] = marker
    return bytes(page)


def plain_page(marker: bytes) -> bytes:
    return marker + os.urandom(P - 28 - len(marker)) + bytes(28)


def new_codec(key: bytes | None = None) -> HardenedCodec:
    codec = PageCodec(RAW_SPEC, key or secrets.token_bytes(32))
    assert isinstance(codec, HardenedCodec)
    return codec


# --- known answers ------------------------------------------------------------------------------


def test_the_library_aes_gcm_siv_matches_rfc_8452() -> None:
    """RFC 8452 appendix C.1 (AEAD_AES_128_GCM_SIV), the first two vectors."""
    aead = AESGCMSIV(bytes.fromhex("01" + "00" * 15))
    nonce = bytes.fromhex("03" + "00" * 11)
    assert aead.encrypt(nonce, b"", None).hex() == "dc20e2d83f25705bb49e439eca56de25"
    assert (
        aead.encrypt(nonce, bytes.fromhex("0100000000000000"), None).hex()
        == "b5d839330ac7b786578782fff6013b815b287c22493a364c"
    )


def test_a_page_is_exactly_the_documented_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rebuild a page from docs/encryption.md's description alone and compare byte for byte."""
    key = bytes(range(32))
    codec = new_codec(key)
    page5 = plain_page(b"row data")
    fixed = bytes.fromhex("a1a2a3a4a5a6a7a8a9")
    monkeypatch.setattr(hardened.os, "urandom", lambda n: fixed if n == 9 else bytes(range(n)))
    page1 = codec.encrypt(plain_page1(b"hello"), 1)
    file_id = bytes(range(8))  # os.urandom(8) as patched
    assert codec.params == FileParams(file_id, 1, None, bytes(16), page_map=True)
    enc = codec.encrypt(page5, 5, "WAL")

    page_key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=file_id, info=b"turso-sync hardened page key v1" + b"\x00\x01"
    ).derive(key)
    nonce = b"\x00\x01" + b"\x01" + fixed  # epoch 1, domain WAL, 9 random bytes
    ad = b"TSH1" + b"\x01" + (5).to_bytes(4, "big") + file_id + b"\x00\x01"
    assert enc == AESGCMSIV(page_key).encrypt(nonce, page5[: P - 28], ad) + nonce

    # page 1: the parameter block sits in bytes 7..16 and 72..92, the header stays readable
    assert page1[:7] == b"Turso\x00\x80"
    assert page1[7:10] == b"\x80\x00\x00" and page1[10:12] == b"\x00\x01"  # a raw key; the page map bit
    assert page1[12:16] + page1[72:76] == file_id
    assert page1[76:92] == bytes(16)
    assert page1[16:72] == plain_page1()[16:72] and page1[92:100] == plain_page1()[92:100]
    nonce1 = b"\x00\x01\x00" + fixed
    ad1 = b"TSH1" + b"\x00" + (1).to_bytes(4, "big") + file_id + b"\x00\x01" + page1[:100]
    assert page1[100:] == AESGCMSIV(page_key).encrypt(nonce1, plain_page1(b"hello")[100 : P - 28], ad1) + nonce1


# --- round trips and binding ---------------------------------------------------------------------


def test_pages_round_trip_and_page1_gets_sqlite_bytes_back() -> None:
    codec = new_codec()
    p1 = plain_page1(b"schema")
    enc1 = codec.encrypt(p1, 1)
    assert codec.decrypt(enc1, 1) == p1
    page = plain_page(b"some row")
    for where in ("database", "WAL", "rollback journal"):
        assert codec.decrypt(codec.encrypt(page, 7, where), 7, where) == page
    # a second codec with the same key opens the file from page 1 alone
    again = new_codec(codec._secret)
    assert again.decrypt(enc1, 1) == p1
    assert again.params == codec.params
    assert again.decrypt(codec.encrypt(page, 7), 7) == page


def test_a_page_read_at_another_number_is_refused_naming_it() -> None:
    codec = new_codec()
    codec.encrypt(plain_page1(), 1)
    enc = codec.encrypt(plain_page(b"page three"), 3)
    with pytest.raises(HardenedAuthError) as info:
        codec.decrypt(enc, 4)
    assert info.value.pgno == 4 and "page 4 of the database" in str(info.value)
    assert isinstance(info.value, PageAuthError)  # what the engine already catches


def test_a_page_of_another_file_under_the_same_key_is_refused() -> None:
    key = secrets.token_bytes(32)
    a, b = new_codec(key), new_codec(key)
    a.encrypt(plain_page1(), 1)
    b.encrypt(plain_page1(), 1)
    assert a.params is not None and b.params is not None and a.params.file_id != b.params.file_id
    with pytest.raises(HardenedAuthError):
        b.decrypt(a.encrypt(plain_page(b"x"), 3), 3)
    with pytest.raises(HardenedAuthError):  # nor page 1 of another file
        b.decrypt(a.encrypt(plain_page1(), 1), 1)


@pytest.mark.parametrize(
    ("written", "read", "accepted"),
    [
        ("WAL", "database", False),
        ("database", "WAL", False),
        ("rollback journal", "database", False),
        ("WAL", "frame log", True),  # the engine's copies hold images from either file
        ("database", "revert file", True),
    ],
)
def test_images_are_bound_to_the_file_they_were_written_for(written: str, read: str, accepted: bool) -> None:
    codec = new_codec()
    codec.encrypt(plain_page1(), 1)
    page = plain_page(b"frame")
    enc = codec.encrypt(page, 9, written)
    if accepted:
        assert codec.decrypt(enc, 9, read) == page
    else:
        with pytest.raises(HardenedAuthError, match=f"page 9 of the {read}.*written for the {written}"):
            codec.decrypt(enc, 9, read)


def test_the_domain_and_epoch_in_the_nonce_cannot_be_edited() -> None:
    codec = new_codec()
    codec.encrypt(plain_page1(), 1)
    enc = bytearray(codec.encrypt(plain_page(b"x"), 2, "WAL"))
    enc[P - 12 + 2] = 0  # claim the image was written for the database
    with pytest.raises(HardenedAuthError, match=r"page 2 of the database failed authentication$"):
        codec.decrypt(bytes(enc), 2)
    enc = bytearray(codec.encrypt(plain_page(b"x"), 2))
    enc[P - 12 + 1] = 2  # another epoch
    with pytest.raises(HardenedAuthError, match="epoch 2"):
        codec.decrypt(bytes(enc), 2)


@pytest.mark.parametrize("offset", [0, 6, 8, 11, 13, 20, 40, 74, 80, 95, 200, P - 20, P - 1])
def test_any_changed_byte_of_page1_is_refused(offset: int) -> None:
    codec = new_codec()
    enc = bytearray(codec.encrypt(plain_page1(b"schema"), 1))
    enc[offset] ^= 0x01
    # refused either by authentication or (bytes 7..10, the passphrase cost) by the key check
    with pytest.raises((PageAuthError, keys.KeyParamsError), match="page 1"):
        new_codec(codec._secret).decrypt(bytes(enc), 1)
    with pytest.raises(PageAuthError, match="page 1"):
        codec.decrypt(bytes(enc), 1)  # the bound codec too


def test_wrong_key_is_refused_at_page1() -> None:
    codec = new_codec()
    enc = codec.encrypt(plain_page1(), 1)
    with pytest.raises(HardenedAuthError) as info:
        new_codec().decrypt(enc, 1)
    assert info.value.pgno == 1


def test_page1_bytes_sqlite_reserves_for_expansion_must_stay_zero() -> None:
    codec = new_codec()
    page = bytearray(plain_page1())
    page[80] = 1
    with pytest.raises(ValueError, match=r"72\.\.92"):
        codec.encrypt(bytes(page), 1)


def test_no_nonce_repeats_over_a_long_random_workload() -> None:
    """Every (file key, nonce) pair is fresh: 20 000 writes over 50 pages and three places."""
    codec = new_codec()
    codec.encrypt(plain_page1(), 1)
    rng = secrets.SystemRandom()
    seen: set[bytes] = set()
    page = plain_page(b"same content every time")  # SIV would hide nothing if nonces repeated
    for _ in range(20_000):
        where = rng.choice(["database", "WAL", "rollback journal"])
        enc = codec.encrypt(page, rng.randrange(2, 52), where)
        nonce = enc[P - 12 :]
        assert nonce not in seen
        seen.add(nonce)


def test_encrypting_before_page1_is_refused() -> None:
    with pytest.raises(ValueError, match="page 3 encrypted before page 1"):
        new_codec().encrypt(plain_page(b"x"), 3)
    with pytest.raises(HardenedAuthError, match="page 1 was not read yet"):
        new_codec().decrypt(bytes(P), 3)


# --- passphrases -----------------------------------------------------------------------------------


def passphrase_codec(passphrase: str, argon2: keys.Argon2Params = FAST) -> HardenedCodec:
    codec = HardenedCodec(PW_SPEC, passphrase.encode(), P, argon2=argon2)
    return codec


def test_a_passphrase_wraps_a_random_data_key_stored_in_page1() -> None:
    codec = passphrase_codec("correct horse battery staple")
    enc1 = codec.encrypt(plain_page1(), 1)
    params = codec.params
    assert params is not None and params.argon2 == FAST and params.wrapped != bytes(16)
    assert enc1[7:10] == bytes([0x80 | FAST.memory_log2, FAST.iterations, FAST.lanes])  # top bit: a page map
    page = plain_page(b"secret row")
    enc = codec.encrypt(page, 2)
    reopened = passphrase_codec("correct horse battery staple", keys.ARGON2_DEFAULT)  # cost comes from the file
    assert reopened.decrypt(enc1, 1) == plain_page1()
    assert reopened.decrypt(enc, 2) == page
    with pytest.raises(HardenedAuthError) as info:
        passphrase_codec("correct horse battery stapler").decrypt(enc1, 1)
    assert info.value.pgno == 1
    # the same passphrase in another file gives another data key and another wrap
    other = passphrase_codec("correct horse battery staple")
    other.encrypt(plain_page1(), 1)
    assert other.params is not None and other.params.wrapped != params.wrapped


def test_changing_the_passphrase_rewrites_page1_only() -> None:
    old = passphrase_codec("old passphrase")
    old.encrypt(plain_page1(), 1)
    pages = {pgno: plain_page(b"row %d" % pgno) for pgno in range(2, 12)}
    stored = {pgno: old.encrypt(page, pgno) for pgno, page in pages.items()}
    new = old.with_new_passphrase(b"new passphrase", FAST)
    page1 = new.encrypt(plain_page1(), 1)  # the one page the change writes

    reopened = passphrase_codec("new passphrase")
    assert reopened.decrypt(page1, 1) == plain_page1()
    assert all(reopened.decrypt(stored[pgno], pgno) == page for pgno, page in pages.items())
    with pytest.raises(HardenedAuthError):
        passphrase_codec("old passphrase").decrypt(page1, 1)


def test_wrap_and_unwrap_are_inverse_and_depend_on_the_kek() -> None:
    data_key, file_id = os.urandom(16), os.urandom(8)
    kek1, kek2 = os.urandom(32), os.urandom(32)
    wrapped = keys.wrap_data_key(data_key, kek1, file_id)
    assert wrapped != data_key and keys.unwrap_data_key(wrapped, kek1, file_id) == data_key
    assert keys.unwrap_data_key(wrapped, kek2, file_id) != data_key
    rewrapped = keys.rewrap_data_key(wrapped, kek1, kek2, file_id)
    assert keys.unwrap_data_key(rewrapped, kek2, file_id) == data_key


@pytest.mark.parametrize(
    "weak",
    [keys.Argon2Params(10, 3, 4), keys.Argon2Params(16, 1, 4), keys.Argon2Params(16, 3, 0)],
    ids=["1 MiB", "one pass", "no lanes"],
)
def test_stored_argon2_parameters_below_the_floor_are_refused_before_deriving(weak: keys.Argon2Params) -> None:
    codec = passphrase_codec("pw")
    enc = bytearray(codec.encrypt(plain_page1(), 1))
    enc[7:10] = weak.encode()
    with pytest.raises(keys.KeyParamsError, match="below the floor") as info:
        passphrase_codec("pw").decrypt(bytes(enc), 1)
    assert isinstance(info.value, errors.EncryptionError)


def test_stored_argon2_parameters_above_the_ceiling_are_refused() -> None:
    codec = passphrase_codec("pw")
    enc = bytearray(codec.encrypt(plain_page1(), 1))
    enc[7] = 40  # 2**40 KiB of memory
    with pytest.raises(keys.KeyParamsError, match="exceed"):
        passphrase_codec("pw").decrypt(bytes(enc), 1)


def test_asking_for_weak_parameters_is_refused() -> None:
    with pytest.raises(ValueError, match="below the floor"):
        HardenedCodec(PW_SPEC, b"pw", P, argon2=keys.Argon2Params(12, 1, 1))


def test_a_passphrase_file_opened_with_a_key_says_so_and_the_other_way_round() -> None:
    pw = passphrase_codec("pw")
    enc_pw = pw.encrypt(plain_page1(), 1)
    with pytest.raises(keys.KeyParamsError, match="passphrase, not a raw key"):
        new_codec().decrypt(enc_pw, 1)
    raw = new_codec()
    enc_raw = raw.encrypt(plain_page1(), 1)
    with pytest.raises(keys.KeyParamsError, match="with a key, not a passphrase"):
        passphrase_codec("pw").decrypt(enc_raw, 1)


def test_repr_never_shows_the_secret() -> None:
    codec = passphrase_codec("hunter2-but-longer")
    assert "hunter2" not in repr(codec)
    key = secrets.token_bytes(32)
    assert key.hex() not in repr(new_codec(key))


# --- the entry point for connect() ----------------------------------------------------------------


def test_make_codec_builds_either_format() -> None:
    key = secrets.token_hex(32)
    assert make_codec() is None
    assert type(make_codec(key)) is PageCodec
    assert isinstance(make_codec(key, encryption_format="hardened"), HardenedCodec)
    codec = make_codec(passphrase="pw", encryption_format="hardened", argon2=FAST)
    assert isinstance(codec, HardenedCodec) and codec.spec.passphrase


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"passphrase": "pw"}, "Turso's format takes a hex key"),
        ({"key": "00" * 32, "passphrase": "pw", "encryption_format": "hardened"}, "not both"),
        ({"key": "00" * 16, "encryption_format": "hardened"}, "64-hex-digit"),
        ({"key": "00" * 32, "encryption_format": "hardened", "cipher": "aes128gcm"}, "AES-256-GCM-SIV"),
        ({"key": "00" * 32, "encryption_format": "sqlcipher"}, "unknown encryption_format"),
        ({"passphrase": "", "encryption_format": "hardened"}, "must not be empty"),
    ],
)
def test_make_codec_refuses_options_that_do_not_fit(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_codec(**kwargs)  # type: ignore[arg-type]


def test_for_file_switches_to_the_format_the_file_uses() -> None:
    key = secrets.token_bytes(32)
    hard = new_codec(key)
    enc1 = hard.encrypt(plain_page1(), 1)
    turso = PageCodec(*parse_key(key.hex(), "aes256gcm"))
    switched = turso.for_file(enc1[:100])
    assert isinstance(switched, HardenedCodec)
    assert switched.decrypt(enc1, 1) == plain_page1()

    turso_page1 = turso.encrypt(plain_page1(), 1)
    back = new_codec(key).for_file(turso_page1[:100])
    assert type(back) is PageCodec and back.decrypt(turso_page1, 1) == plain_page1()
    with pytest.raises(ValueError, match="takes a hex key, not a passphrase"):
        passphrase_codec("pw").for_file(turso_page1[:100])
    with pytest.raises(ValueError, match="encrypted with aes256gcm, not aes128gcm"):
        PageCodec(*parse_key(key[:16].hex(), "aes128gcm")).for_file(turso_page1[:100])


def test_encryption_options_map_onto_the_key_and_cipher_the_engine_takes() -> None:
    key = "ab" * 32
    assert encryption_options(key) == (key, "aes256gcm")
    assert encryption_options(key, "aes128gcm") == (key, "aes128gcm")
    assert encryption_options(key, encryption_format="hardened") == (key, "hardened")
    assert encryption_options(None, passphrase="pw") == ("pw", "hardened-passphrase")  # implies hardened
    assert encryption_options(None) == (None, "aes256gcm")  # a plaintext database
    with pytest.raises(ValueError, match="needs encryption_key or passphrase"):
        encryption_options(None, encryption_format="hardened")
    with pytest.raises(ValueError, match="not both"):
        encryption_options(key, passphrase="pw")
    with pytest.raises(ValueError, match="must not be empty"):
        encryption_options(None, passphrase="")
    with pytest.raises(ValueError, match="AES-256-GCM-SIV"):
        encryption_options(key, "aes128gcm", "hardened")
    with pytest.raises(ValueError, match="unknown encryption_format"):
        encryption_options(key, encryption_format="aegis")
