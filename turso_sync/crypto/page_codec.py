"""Page encryption in Turso's on-disk format (AES-GCM), and the entry point to both formats.

Every page keeps its nonce and tag in SQLite's reserved area at the end of the page:
``[ciphertext | tag (16) | nonce (12)]``.  Pages other than page 1 use an empty associated
data; page 1 keeps bytes 16..100 of the SQLite header in plaintext, replaces the SQLite magic
with ``b"Turso" 00 <cipher id> 00*9`` and authenticates those 100 on-disk bytes.  The format
is Turso's (see docs/encryption.md), so files move between turso_sync and pyturso.

The opt-in hardened format (``hardened.py``) has the same frame and the same codec interface
(``encrypt(plain, pgno, where)``, ``decrypt(enc, pgno, where)``, ``page_size``, ``reserved``,
``spec``).  ``make_codec`` builds either one from the user's options; ``PageCodec(spec, key)``
with a hardened ``spec`` builds a ``HardenedCodec`` too, so callers that construct codecs
from ``parse_key`` get the right class.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .._compiled import speedups
from ..page import PAGE_SIZE, RESERVED_BYTES

SQLITE_MAGIC = b"SQLite format 3\x00"
TURSO_MAGIC_PREFIX = b"Turso"
HEADER_SIZE = 100
TAG_SIZE = 16
NONCE_SIZE = 12
assert TAG_SIZE + NONCE_SIZE == RESERVED_BYTES  # 28 for both AES-GCM ciphers


@dataclass(frozen=True)
class CipherSpec:
    """A cipher: its name, id in the page-1 header, key size and page format.

    ``page_format`` is "turso" (Turso's format) or "hardened"; a hardened spec with
    ``passphrase`` takes a passphrase where the others take a hex key (key_size 0).
    """

    name: str
    cipher_id: int
    key_size: int
    page_format: str = "turso"
    passphrase: bool = False


CIPHERS = {
    "aes128gcm": CipherSpec("aes128gcm", 1, 16),
    "aes256gcm": CipherSpec("aes256gcm", 2, 32),
}
HARDENED_ID = 0x80  # the hardened format's cipher id in page 1 (AES-256-GCM-SIV)
# the hardened format through the ``cipher=`` option, until ``encryption_format=`` is wired:
# "hardened" takes a 64-hex-digit key, "hardened-passphrase" takes the passphrase as the key
ENVELOPE_ID = 0x81  # the envelope layout's cipher id in page 1 (AES-256-GCM-SIV, pages in larger slots)
HARDENED_CIPHERS = {
    "hardened": CipherSpec("hardened", HARDENED_ID, 32, "hardened"),
    "hardenedpassphrase": CipherSpec("hardened-passphrase", HARDENED_ID, 0, "hardened", passphrase=True),
    # the envelope layout (``envelope.py``), for pages that reserve no bytes; chosen by bootstrap
    "envelope": CipherSpec("envelope", ENVELOPE_ID, 32, "envelope"),
    "envelopepassphrase": CipherSpec("envelope-passphrase", ENVELOPE_ID, 0, "envelope", passphrase=True),
}
ENCRYPTION_FORMATS = ("turso", "hardened")


# what a bound page decrypter (``PageCodec.page_decrypter``) raises for a page that does not verify
PageDecryptError = InvalidTag


class PageAuthError(Exception):
    """A page failed authentication: wrong key, or the bytes were changed on disk."""

    def __init__(self, pgno: int, where: str = "database", reason: str = "") -> None:
        detail = f"page {pgno} of the {where} failed authentication"
        super().__init__(f"{detail} ({reason})" if reason else detail)
        self.pgno = pgno
        self.where = where
        self.reason = reason


def parse_key(hexkey: str, cipher: str) -> tuple[CipherSpec, bytes]:
    """Check a hex key against a cipher name and return the cipher and the raw key.

    For the "hardened-passphrase" cipher the "key" is a passphrase, returned as UTF-8 bytes.
    The error messages never include the key itself.
    """
    name = cipher.lower().replace("-", "").replace("_", "")
    spec = CIPHERS.get(name) or HARDENED_CIPHERS.get(name)
    if spec is None:
        raise ValueError(f"unknown cipher {cipher!r}; use one of {', '.join(CIPHERS)}")
    if spec.passphrase:
        return spec, _passphrase_bytes(hexkey)
    if not isinstance(hexkey, str):
        raise TypeError("encryption_key must be a hex string")
    text = hexkey.strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ValueError("encryption_key must be hex digits only") from None
    if len(key) != spec.key_size:
        raise ValueError(f"{spec.name} needs a {spec.key_size * 2}-hex-digit key, got {len(text)} hex digits")
    return spec, key


def turso_header(spec: CipherSpec) -> bytes:
    """The 16 bytes that replace SQLite's magic on an encrypted page 1."""
    return TURSO_MAGIC_PREFIX + bytes([0, spec.cipher_id]) + bytes(9)


def _passphrase_bytes(passphrase: object) -> bytes:
    if not isinstance(passphrase, str):
        raise TypeError("passphrase must be a string")
    if not passphrase:
        raise ValueError("passphrase must not be empty")
    return passphrase.encode("utf-8")


def encryption_options(
    encryption_key: str | None,
    cipher: str = "aes256gcm",
    encryption_format: str = "turso",
    passphrase: str | None = None,
) -> tuple[str | None, str]:
    """``connect()``'s encryption options as the ``(encryption_key, cipher)`` pair the engine takes.

    The hardened format travels through the cipher name ("hardened", or "hardened-passphrase"
    with the passphrase in the key's place), so every layer that passes a key and a cipher
    along (connection, engine, replica, verify) selects it unchanged.  A passphrase implies the
    hardened format (Turso's has none).  Raises ValueError for options that do not fit together,
    never quoting the secret.
    """
    if encryption_format not in ENCRYPTION_FORMATS:
        raise ValueError(f"unknown encryption_format {encryption_format!r}; use one of {', '.join(ENCRYPTION_FORMATS)}")
    if passphrase is not None:
        if encryption_key is not None:
            raise ValueError("give encryption_key or passphrase, not both")
        _passphrase_bytes(passphrase)
        return passphrase, "hardened-passphrase"
    if encryption_format == "hardened":
        if encryption_key is None:
            raise ValueError("encryption_format='hardened' needs encryption_key or passphrase")
        if cipher.lower().replace("-", "").replace("_", "") not in ("aes256gcm", "aes256gcmsiv", "hardened"):
            raise ValueError(f"the hardened format uses AES-256-GCM-SIV; cipher {cipher!r} does not apply to it")
        return encryption_key, "hardened"
    return encryption_key, cipher


def make_codec(
    key: str | None = None,
    *,
    passphrase: str | None = None,
    cipher: str = "aes256gcm",
    encryption_format: str = "turso",
    argon2: Any = None,
) -> PageCodec | None:
    """The codec for a connection's options; None when neither a key nor a passphrase is given.

    ``encryption_format`` is "turso" (Turso's format: a hex key and ``cipher``) or "hardened"
    (AES-256-GCM-SIV, pages bound to their place: a 64-hex-digit key, or a passphrase).
    ``argon2`` (a ``keys.Argon2Params``) sets the passphrase cost of a new file.  Raises
    ValueError or TypeError (never quoting the secret) for options that do not fit together.
    """
    if encryption_format not in ENCRYPTION_FORMATS:
        raise ValueError(f"unknown encryption_format {encryption_format!r}; use one of {', '.join(ENCRYPTION_FORMATS)}")
    if key is not None and passphrase is not None:
        raise ValueError("give encryption_key or passphrase, not both")
    if encryption_format == "turso":
        if passphrase is not None:
            raise ValueError("Turso's format takes a hex key, not a passphrase; use encryption_format='hardened'")
        if key is None:
            return None
        return PageCodec(*parse_key(key, cipher))
    if cipher.lower().replace("-", "").replace("_", "") not in ("aes256gcm", "aes256gcmsiv", "hardened"):
        raise ValueError(f"the hardened format uses AES-256-GCM-SIV; cipher {cipher!r} does not apply to it")
    if passphrase is not None:
        spec = HARDENED_CIPHERS["hardenedpassphrase"]
        return _hardened(spec, _passphrase_bytes(passphrase), PAGE_SIZE, argon2)
    if key is None:
        return None
    spec, raw = parse_key(key, "hardened")
    return _hardened(spec, raw, PAGE_SIZE, argon2)


def _hardened(spec: CipherSpec, secret: bytes, page_size: int, argon2: Any = None) -> PageCodec:
    from .envelope import EnvelopeCodec
    from .hardened import HardenedCodec  # the hardened module builds on this one

    cls = EnvelopeCodec if spec.page_format == "envelope" else HardenedCodec
    if argon2 is None:
        return cls(spec, secret, page_size)
    return cls(spec, secret, page_size, argon2=argon2)


class PageCodec:
    """Encrypts and decrypts whole pages of one database with one key (Turso's format).

    ``PageCodec(spec, key)`` with a hardened ``spec`` returns a ``hardened.HardenedCodec``.
    """

    def __new__(cls, spec: CipherSpec, key: bytes, page_size: int = PAGE_SIZE, **options: Any) -> PageCodec:
        if cls is PageCodec and spec.page_format == "hardened":
            from .hardened import HardenedCodec  # Python then runs HardenedCodec.__init__

            return super().__new__(HardenedCodec)
        if cls is PageCodec and spec.page_format == "envelope":
            from .envelope import EnvelopeCodec

            return super().__new__(EnvelopeCodec)
        return super().__new__(cls)

    def __init__(self, spec: CipherSpec, key: bytes, page_size: int = PAGE_SIZE) -> None:
        self.spec = spec
        self.page_size = page_size
        self.reserved = RESERVED_BYTES
        self.slot_size = page_size  # bytes one page takes on disk: the page itself in this format
        self.magic = turso_header(spec)
        self._key = key  # memory only; needed to derive a codec for another page size
        self._aead = AESGCM(key)
        self._tail = bytes(RESERVED_BYTES)
        self._payload = page_size - RESERVED_BYTES
        self._ct_end = page_size - NONCE_SIZE

    def with_page_size(self, page_size: int) -> PageCodec:
        """The same key and cipher for a database with another page size."""
        return PageCodec(self.spec, self._key, page_size)

    def __repr__(self) -> str:
        return f"PageCodec({self.spec.name}, page_size={self.page_size})"  # never the key

    def for_file(self, head: bytes) -> PageCodec:
        """A codec for the file whose first bytes are ``head``, with this codec's secret.

        A reopen needs only the key: a hardened file opened with a Turso-format codec (or the
        other way round) gets a codec of the file's format.  Turso's ciphers are not switched:
        a mismatch there raises ValueError, as the cipher is given on every open.  Messages
        continue the file's name: ``f"{path} {exc}"`` reads "app.db is encrypted with ...".
        """
        if len(head) > 6 and head[6] in (HARDENED_ID, ENVELOPE_ID):
            name = "hardened" if head[6] == HARDENED_ID else "envelope"
            what = "the hardened format" if name == "hardened" else "the envelope layout (hardened encryption)"
            if len(self._key) != 32:
                raise ValueError(f"uses {what}, which needs a 64-hex-digit key")
            return _hardened(HARDENED_CIPHERS[name], self._key, self.page_size)
        if len(head) > 6 and head[6] != self.spec.cipher_id:
            names = {spec.cipher_id: name for name, spec in CIPHERS.items()}
            raise ValueError(f"is encrypted with {names.get(head[6], f'cipher id {head[6]}')}, not {self.spec.name}")
        return self

    def header_plaintext(self, enc: bytes) -> bytes:
        """SQLite's first 100 bytes of an on-disk page 1 (plaintext in this format, authenticated later)."""
        return SQLITE_MAGIC + enc[16:HEADER_SIZE]

    def encrypt(self, plain: bytes, pgno: int, where: str = "database") -> bytes:
        """Encrypt one plaintext page (whose reserved tail SQLite left zero); ``where`` is unused."""
        return self._seal(plain, pgno, os.urandom(NONCE_SIZE))

    def encrypt_pages(self, pages: Sequence[tuple[int, bytes]], where: str = "database") -> list[bytes]:
        """``encrypt`` of each (page number, plaintext) of ``pages``, in order.

        In Turso's format the random nonces come from the system in one call, not one per page
        (an install encrypts every page a pull brings); they are as random and as independent.
        A subclass's format (hardened, envelope) encrypts page by page with its own ``encrypt``.
        """
        if type(self) is not PageCodec:
            return [self.encrypt(plain, pgno, where) for pgno, plain in pages]
        return seal_pages(pages, os.urandom(NONCE_SIZE * len(pages)), self._aead, self.magic, self.page_size)

    def sealer(self) -> tuple[AESGCM, bytes]:
        """What ``seal_pages`` takes to seal pages in this format: the key's AES-GCM and page 1's magic.

        For a caller that seals a batch itself (an install builds its WAL frames around the sealed
        pages, ``local/install.py``).  Turso's format only.
        """
        if type(self) is not PageCodec:
            raise TypeError(f"{type(self).__name__} encrypts through encrypt(), not seal_pages")
        return self._aead, self.magic

    def _seal(self, plain: bytes, pgno: int, nonce: bytes) -> bytes:
        if pgno == 1:
            header = self.magic + plain[16:HEADER_SIZE]
            return header + self._aead.encrypt(nonce, plain[HEADER_SIZE : self._payload], header) + nonce
        return self._aead.encrypt(nonce, plain[: self._payload], None) + nonce

    def decrypt(self, enc: bytes, pgno: int, where: str = "database") -> bytes:
        """Decrypt one on-disk page; raise PageAuthError naming the page if it does not verify."""
        nonce = enc[self._ct_end :]
        try:
            if pgno == 1:
                if enc[:16] != self.magic:
                    raise InvalidTag()
                body = self._aead.decrypt(nonce, enc[HEADER_SIZE : self._ct_end], enc[:HEADER_SIZE])
                return SQLITE_MAGIC + enc[16:HEADER_SIZE] + body + self._tail
            return self._aead.decrypt(nonce, enc[: self._ct_end], None) + self._tail
        except InvalidTag:
            raise PageAuthError(pgno, where) from None

    def decrypt_into(self, enc: bytes, pgno: int, out: bytearray, where: str = "database") -> bytearray:
        """``decrypt`` into ``out`` (a ``page_size`` bytearray this codec's caller reuses), which it returns.

        The VFS reads every page that misses SQLite's cache through here: in Turso's format the
        plaintext goes straight from OpenSSL into ``out``, without the two 4 KiB copies and the
        allocation of ``decrypt`` (the ciphertext slice, the reserved tail appended).  The tail of
        ``out`` is never written, so it stays as zero as the caller made it.  ``out`` holds the
        page until the next call: the caller copies it (APSW does, before xRead returns).  A
        subclass's format (hardened, envelope) copies its own ``decrypt``'s result.
        """
        if type(self) is not PageCodec:
            out[:] = self.decrypt(enc, pgno, where)
            return out
        view = memoryview(enc)
        ct_end = self._ct_end
        nonce = view[ct_end:]
        try:
            if pgno == 1:
                if enc[:16] != self.magic:
                    raise InvalidTag()
                out[:16] = SQLITE_MAGIC
                out[16:HEADER_SIZE] = view[16:HEADER_SIZE]
                self._aead.decrypt_into(
                    nonce, view[HEADER_SIZE:ct_end], view[:HEADER_SIZE], memoryview(out)[HEADER_SIZE : self._payload]
                )
            else:
                self._aead.decrypt_into(nonce, view[:ct_end], None, memoryview(out)[: self._payload])
        except InvalidTag:
            raise PageAuthError(pgno, where) from None
        return out

    def page_decrypter(self, raw: bytearray, out: bytearray) -> Callable[[], object]:
        """A call that decrypts the page held in ``raw`` into ``out`` (for any page but page 1).

        For the VFS's page reads: the caller reads each page into ``raw`` and gets its plaintext
        in ``out``, two ``page_size`` buffers it keeps.  The call is OpenSSL's own, bound to
        views of both made once here, so a page costs no Python frame and no new object.  It
        raises ``PageDecryptError`` when the page does not verify (the caller names the page).
        Turso's format only: a subclass's format (hardened, envelope) reads through ``decrypt``.
        """
        if type(self) is not PageCodec:
            raise TypeError(f"{type(self).__name__} decrypts through decrypt(), not a bound page decrypter")
        if len(raw) != self.page_size or len(out) != self.page_size:
            raise ValueError(f"page_decrypter needs two {self.page_size}-byte buffers")
        view = memoryview(raw)
        ct_end = self._ct_end
        return functools.partial(
            self._aead.decrypt_into, view[ct_end:], view[:ct_end], None, memoryview(out)[: self._payload]
        )

    def page_encrypter(self, plain: bytearray, out: bytearray | memoryview) -> Callable[[], object]:
        """A call that encrypts the payload held in ``plain`` into ``out`` (for any page but page 1).

        For the VFS's WAL frame writes: the caller copies a page's first ``page_size - reserved``
        bytes into ``plain`` and writes a fresh random nonce into the last 12 bytes of ``out`` (a
        ``page_size`` buffer) first; the call seals ``plain`` under that nonce into the rest of
        ``out`` (ciphertext, then tag), which is then the page as ``encrypt`` makes it.  It is
        OpenSSL's own call bound to views of both, made once here.  Turso's format only.
        """
        if type(self) is not PageCodec:
            raise TypeError(f"{type(self).__name__} encrypts through encrypt(), not a bound page encrypter")
        if len(plain) != self._payload or len(out) != self.page_size:
            raise ValueError(f"page_encrypter needs a {self._payload}-byte and a {self.page_size}-byte buffer")
        view = memoryview(out)
        ct_end = self._ct_end
        return functools.partial(self._aead.encrypt_into, view[ct_end:], memoryview(plain), None, view[:ct_end])

    def is_page1(self, enc: bytes) -> bool:
        """True when an encrypted page carries this cipher's page-1 magic."""
        return enc[:16] == self.magic


def _seal_pages_py(
    pages: Sequence[tuple[int, bytes]], nonces: bytes, aead: AESGCM, magic: bytes, page_size: int
) -> list[bytes]:
    """Each (page number, plaintext) of ``pages`` encrypted in Turso's format: ``_speedups.seal_pages``'s twin.

    Page ``n`` is sealed under ``nonces[12n:12n + 12]`` (``encrypt_pages`` draws them all in one
    call) and comes back as ``[ciphertext | tag | nonce]``; page 1 keeps ``magic`` and its header's
    bytes 16-100 readable, as the associated data of the rest.  Each plaintext is ``page_size``
    bytes; its reserved tail is not looked at (the caller checked it).
    """
    if len(magic) != 16 or page_size < 512:
        raise ValueError("seal_pages(): magic must be 16 bytes and page_size at least 512")
    if len(nonces) != NONCE_SIZE * len(pages):
        raise ValueError(f"seal_pages(): {len(nonces)} nonce bytes for {len(pages)} pages (12 each)")
    payload = page_size - RESERVED_BYTES
    sealed: list[bytes] = []
    for n, (pgno, plain) in enumerate(pages):
        if len(plain) != page_size:
            raise ValueError(f"seal_pages(): page {pgno} is {len(plain)} bytes, expected {page_size}")
        nonce = nonces[n * NONCE_SIZE : (n + 1) * NONCE_SIZE]
        if pgno == 1:
            header = magic + plain[16:HEADER_SIZE]
            sealed.append(header + aead.encrypt(nonce, plain[HEADER_SIZE:payload], header) + nonce)
        else:
            sealed.append(aead.encrypt(nonce, plain[:payload], None) + nonce)
    return sealed


_compiled = speedups()
#: Turso's format's sealing of a batch of pages (see ``_seal_pages_py``), compiled where built
seal_pages: Callable[[Sequence[tuple[int, bytes]], bytes, AESGCM, bytes, int], list[bytes]] = getattr(
    _compiled, "seal_pages", _seal_pages_py
)
