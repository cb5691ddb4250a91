"""Page encryption in Turso's on-disk format (AES-GCM).

Every page keeps its nonce and tag in SQLite's reserved area at the end of the page:
``[ciphertext | tag (16) | nonce (12)]``.  Pages other than page 1 use an empty associated
data; page 1 keeps bytes 16..100 of the SQLite header in plaintext, replaces the SQLite magic
with ``b"Turso" 00 <cipher id> 00*9`` and authenticates those 100 on-disk bytes.  The format
is Turso's (see docs/encryption.md), so files move between turso_sync and pyturso.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SQLITE_MAGIC = b"SQLite format 3\x00"
TURSO_MAGIC_PREFIX = b"Turso"
HEADER_SIZE = 100
TAG_SIZE = 16
NONCE_SIZE = 12
RESERVED_BYTES = TAG_SIZE + NONCE_SIZE  # 28 for both AES-GCM ciphers


@dataclass(frozen=True)
class CipherSpec:
    """A cipher Turso's format knows: its name, id in the page-1 header and key size."""

    name: str
    cipher_id: int
    key_size: int


CIPHERS = {
    "aes128gcm": CipherSpec("aes128gcm", 1, 16),
    "aes256gcm": CipherSpec("aes256gcm", 2, 32),
}


class PageAuthError(Exception):
    """A page failed authentication: wrong key, or the bytes were changed on disk."""

    def __init__(self, pgno: int, where: str = "database") -> None:
        super().__init__(f"page {pgno} of the {where} failed authentication")
        self.pgno = pgno
        self.where = where


def parse_key(hexkey: str, cipher: str) -> tuple[CipherSpec, bytes]:
    """Check a hex key against a cipher name and return the cipher and the raw key.

    The error messages never include the key itself.
    """
    spec = CIPHERS.get(cipher.lower().replace("-", "").replace("_", ""))
    if spec is None:
        raise ValueError(f"unknown cipher {cipher!r}; use one of {', '.join(CIPHERS)}")
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


class PageCodec:
    """Encrypts and decrypts whole pages of one database with one key."""

    def __init__(self, spec: CipherSpec, key: bytes, page_size: int = 4096) -> None:
        self.spec = spec
        self.page_size = page_size
        self.reserved = RESERVED_BYTES
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

    def encrypt(self, plain: bytes, pgno: int) -> bytes:
        """Encrypt one plaintext page (whose reserved tail SQLite left zero)."""
        nonce = os.urandom(NONCE_SIZE)
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

    def is_page1(self, enc: bytes) -> bool:
        """True when an encrypted page carries this cipher's page-1 magic."""
        return enc[:16] == self.magic
