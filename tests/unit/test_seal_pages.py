"""Pages sealed in Turso's format by the compiled ``seal_pages`` or its pure-Python twin are the same bytes.

``PageCodec.encrypt_pages`` (an install's pages, a revert file's) seals a batch of pages under nonces
drawn in one call.  The compiled build encrypts each page straight into its new bytes through
``AESGCM.encrypt_into``; the twin concatenates what ``AESGCM.encrypt`` returns.  Given the same
nonces both must give the same bytes, which decrypt back to the plaintext, page 1 with its header
readable; bad input is refused by both with an error naming ``seal_pages``.
"""

from __future__ import annotations

import random
import sys
from typing import Any

import pytest

from turso_sync._compiled import speedups
from turso_sync.crypto import page_codec
from turso_sync.crypto.page_codec import NONCE_SIZE, SQLITE_MAGIC, PageCodec, parse_key

_compiled = speedups()
BUILDS = [pytest.param(page_codec._seal_pages_py, id="python")]
if _compiled is not None:
    BUILDS.append(pytest.param(_compiled.seal_pages, id="compiled"))


def _codec(page_size: int = 4096, cipher: str = "aes256gcm") -> PageCodec:
    spec, key = parse_key("5a17" * (8 if cipher == "aes128gcm" else 16), cipher)
    return PageCodec(spec, key, page_size)


def _pages(rng: random.Random, pgnos: list[int], page_size: int, reserved: int) -> list[tuple[int, bytes]]:
    pages = []
    for pgno in pgnos:
        body = rng.randbytes(page_size - reserved)
        if pgno == 1:  # a page 1 as SQLite makes it: its magic, the reserved bytes in its header
            body = SQLITE_MAGIC + body[16:20] + bytes([reserved]) + body[21:]
        pages.append((pgno, body + bytes(reserved)))
    return pages


@pytest.mark.skipif(_compiled is None, reason="the compiled helper is not built or refused")
@pytest.mark.parametrize("page_size", [512, 4096, 65536])
@pytest.mark.parametrize("cipher", ["aes128gcm", "aes256gcm"])
def test_compiled_and_python_builds_are_byte_identical(page_size: int, cipher: str) -> None:
    codec = _codec(page_size, cipher)
    rng = random.Random(f"{page_size}{cipher}")
    for pgnos in ([1], [2], [1, 2, 3], sorted(rng.sample(range(1, 1000), 40)), [5, 1, 9, 1]):
        pages = _pages(rng, pgnos, page_size, codec.reserved)
        nonces = rng.randbytes(NONCE_SIZE * len(pages))
        compiled = _compiled.seal_pages(pages, nonces, codec._aead, codec.magic, page_size)
        assert compiled == page_codec._seal_pages_py(pages, nonces, codec._aead, codec.magic, page_size)
        assert all(type(sealed) is bytes for sealed in compiled)


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("page_size", [512, 4096])
def test_sealed_pages_are_turso_pages(build, page_size: int) -> None:
    """Each page is [ciphertext | tag | its nonce], decrypts back to its plaintext, and page 1
    keeps the cipher's magic and SQLite's header bytes 16-100 readable."""
    codec = _codec(page_size)
    rng = random.Random(page_size)
    pages = _pages(rng, [1, 2, 3, 40], page_size, codec.reserved)
    nonces = rng.randbytes(NONCE_SIZE * len(pages))
    sealed = build(pages, nonces, codec._aead, codec.magic, page_size)
    assert [len(enc) for enc in sealed] == [page_size] * len(pages)
    for n, (enc, (pgno, plain)) in enumerate(zip(sealed, pages, strict=True)):
        assert enc[-NONCE_SIZE:] == nonces[n * NONCE_SIZE : (n + 1) * NONCE_SIZE]
        assert codec.decrypt(enc, pgno, "WAL") == plain
    assert sealed[0][:100] == codec.magic + pages[0][1][16:100]
    assert build(tuple(pages), nonces, codec._aead, codec.magic, page_size) == sealed  # any sequence
    assert build([], b"", codec._aead, codec.magic, page_size) == []


@pytest.mark.parametrize("build", BUILDS)
def test_a_changed_page_or_header_fails_authentication(build) -> None:
    codec = _codec()
    pages = _pages(random.Random(3), [1, 2], 4096, codec.reserved)
    page1, page2 = build(pages, bytes(range(24)), codec._aead, codec.magic, 4096)
    for enc, pgno, at in ((page1, 1, 40), (page1, 1, 2000), (page2, 2, 10)):
        changed = bytearray(enc)
        changed[at] ^= 1
        with pytest.raises(page_codec.PageAuthError, match=f"page {pgno}"):
            codec.decrypt(bytes(changed), pgno)


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize(
    "pages, nonces, magic, page_size",
    [
        ([(2, bytes(4096))], bytes(11), None, 4096),  # a nonce too short
        ([(2, bytes(4096)), (3, bytes(4096))], bytes(12), None, 4096),  # a nonce missing
        ([(2, bytes(4096)), (3, bytes(4088))], bytes(24), None, 4096),  # a page of another size
        ([(2, bytes(256))], bytes(12), None, 256),  # a page too small for Turso's format
        ([(2, bytes(4096))], bytes(12), b"Turso", 4096),  # not a 16-byte magic
    ],
)
def test_bad_input_is_refused(build, pages, nonces, magic, page_size) -> None:
    codec = _codec()
    with pytest.raises(ValueError, match="seal_pages"):
        build(pages, nonces, codec._aead, codec.magic if magic is None else magic, page_size)


@pytest.mark.skipif(_compiled is None, reason="the compiled helper is not built or refused")
def test_the_compiled_build_leaves_no_reference_behind_and_no_view_outliving_the_call() -> None:
    codec = _codec()
    pages = _pages(random.Random(5), [1, 2, 3], 4096, codec.reserved)
    nonces = bytes(36)
    watched: list[Any] = [codec._aead, codec.magic, nonces, pages, *(plain for _, plain in pages)]
    before = [sys.getrefcount(obj) for obj in watched]
    for _ in range(50):
        _compiled.seal_pages(pages, nonces, codec._aead, codec.magic, 4096)
    assert [sys.getrefcount(obj) for obj in watched] == before

    class Keeping:  # an encrypt_into that keeps the view it was given to write into
        kept: list[Any] = []

        def encrypt_into(self, nonce: Any, data: Any, aad: Any, out: Any) -> int:
            self.kept.append(out)
            return len(out)

    with pytest.raises(RuntimeError, match=r"seal_pages.*kept a view"):
        _compiled.seal_pages(pages, nonces, Keeping(), codec.magic, 4096)

    class Failing:
        def encrypt_into(self, nonce: Any, data: Any, aad: Any, out: Any) -> int:
            raise OSError("no cipher today")

    with pytest.raises(OSError, match="no cipher today"):
        _compiled.seal_pages(pages, nonces, Failing(), codec.magic, 4096)


def test_encrypt_pages_uses_the_compiled_build_unless_refused() -> None:
    expected = _compiled.seal_pages if _compiled is not None else page_codec._seal_pages_py
    assert page_codec.seal_pages is expected


def test_encrypt_pages_seals_with_nonces_drawn_once(monkeypatch) -> None:
    """What ``encrypt_pages`` returns is ``seal_pages`` of the pages under the nonces of one draw."""
    codec = _codec()
    pages = _pages(random.Random(9), [1, 4, 6], 4096, codec.reserved)
    drawn: list[bytes] = []

    def fixed(n: int) -> bytes:
        drawn.append(bytes(range(n)))
        return drawn[-1]

    monkeypatch.setattr(page_codec.os, "urandom", fixed)
    sealed = codec.encrypt_pages(pages, "WAL")
    assert len(drawn) == 1
    assert sealed == page_codec._seal_pages_py(pages, drawn[0], codec._aead, codec.magic, 4096)
