"""The hardened page format: AES-256-GCM-SIV, every page bound to its place.

Same frame as Turso's format (``page_codec.py``): a page keeps its 12-byte nonce and 16-byte
tag in the 28 bytes SQLite reserves at its end, and page 1 keeps the SQLite header readable.
What changes:

* the AEAD is AES-256-GCM-SIV, which does not fall apart when a nonce repeats;
* the key is per file and per key epoch: ``keys.file_key(data key, file id, epoch)``;
* the associated data of every page names its place::

      "TSH1" | domain (1) | page number (4) | file id (8) | epoch (2) [| page 1's 100 header bytes]

  where the domain says which file the image was written for (database, WAL, rollback
  journal).  A page swapped with another, moved from another file, or copied from the WAL into
  the database no longer verifies;
* the nonce is ``epoch (2) | domain (1) | 9 random bytes``: a reader learns from it which epoch
  and domain the writer used, and the associated data makes both binding.

The file's own parameters live in page 1, in 29 header bytes SQLite leaves unused: bytes 7..16
(after ``"Turso" 00 <cipher id>``, where Turso keeps zeros) and bytes 72..92 (SQLite's "reserved
for expansion", always zero)::

      7..10   Argon2id parameters (memory log2, iterations, lanes); zeros for a raw key
      10..12  key epoch
      12..16  file id, first 4 bytes
      72..76  file id, last 4 bytes
      76..92  the passphrase-wrapped data key; zeros for a raw key

They are written into every page-1 image the codec encrypts (database, WAL, checkpoint,
VACUUM all go through it) and are part of page 1's associated data, so changing any of them
makes page 1 fail.  On decryption the codec puts SQLite's zeros back.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

from . import keys
from .keys import Argon2Params, KeyParamsError
from .page_codec import CipherSpec, PageAuthError, PageCodec

SQLITE_MAGIC = b"SQLite format 3\x00"
TURSO_PREFIX = b"Turso\x00"
HARDENED_CIPHER_ID = 0x80  # unknown to Turso, which refuses the file instead of misreading it
HEADER_SIZE = 100
NONCE_SIZE = 12
TAG_SIZE = 16
RESERVED_BYTES = NONCE_SIZE + TAG_SIZE
AD_LABEL = b"TSH1"
RANDOM_NONCE_BYTES = NONCE_SIZE - 3

DOMAIN_DATABASE = 0
DOMAIN_WAL = 1
DOMAIN_JOURNAL = 2
_DOMAIN_NAMES = {DOMAIN_DATABASE: "database", DOMAIN_WAL: "WAL", DOMAIN_JOURNAL: "rollback journal"}
# which images a reader of each place accepts; copies kept by the engine (frame log, revert
# file) hold images taken from the database file or from the WAL, as they were on disk
_ACCEPTED = {
    "database": frozenset({DOMAIN_DATABASE}),
    "WAL": frozenset({DOMAIN_WAL}),
    "rollback journal": frozenset({DOMAIN_JOURNAL}),
}
_COPIES = frozenset({DOMAIN_DATABASE, DOMAIN_WAL})

# physical home of the 29-byte parameter block in page 1 (two runs of unused header bytes)
_BLOCK_A = slice(7, 16)
_BLOCK_B = slice(72, 92)
BLOCK_SIZE = 29


class HardenedAuthError(PageAuthError):
    """A page of a hardened file failed; ``pgno`` and ``where`` name it, ``reason`` says what is known."""


@dataclass(frozen=True)
class FileParams:
    """What page 1 says about its file: id, epoch, and how the data key is obtained."""

    file_id: bytes
    epoch: int
    argon2: Argon2Params | None  # None: a raw key
    wrapped: bytes  # the passphrase-wrapped data key, zeros for a raw key

    def encode(self) -> bytes:
        kdf = self.argon2.encode() if self.argon2 is not None else bytes(3)
        return kdf + self.epoch.to_bytes(2, "big") + self.file_id + self.wrapped

    @classmethod
    def decode(cls, block: bytes) -> FileParams:
        return cls(
            file_id=block[5:13],
            epoch=int.from_bytes(block[3:5], "big"),
            argon2=Argon2Params.decode(block[0:3]),
            wrapped=block[13:29],
        )

    @classmethod
    def of_page1(cls, enc: bytes) -> FileParams:
        """The parameters an on-disk page 1 carries (not yet authenticated)."""
        return cls.decode(enc[_BLOCK_A] + enc[_BLOCK_B])


def is_hardened(head: bytes) -> bool:
    """True when a file's first bytes say it uses the hardened format."""
    return head[:6] == TURSO_PREFIX and len(head) > 6 and head[6] == HARDENED_CIPHER_ID


class HardenedCodec(PageCodec):
    """Encrypts and decrypts the pages of one hardened file.

    Made with a hardened ``spec`` and the user's secret (a raw 32-byte key, or a passphrase's
    UTF-8 bytes when ``spec.passphrase``).  It binds to a file when it first meets page 1:
    either it reads page 1 (an existing file: the parameters come from there) or it encrypts
    page 1 (a new file: a fresh file id, epoch 1 and, for a passphrase, a fresh data key).
    ``open_file``/``new_file`` do the same explicitly.  Thread-safe: binding happens once,
    under a lock; the AEAD object is stateless.
    """

    def __init__(
        self, spec: CipherSpec, key: bytes, page_size: int = 4096, *, argon2: Argon2Params = keys.ARGON2_DEFAULT
    ) -> None:
        raw_key, passphrase = (None, key) if spec.passphrase else (key, None)
        if raw_key is not None and len(raw_key) != keys.RAW_KEY_SIZE:
            raise ValueError(f"the hardened format needs a {keys.RAW_KEY_SIZE * 2}-hex-digit key")
        if passphrase is not None and not passphrase:
            raise ValueError("passphrase must not be empty")
        try:
            argon2.check()
        except KeyParamsError as exc:
            raise ValueError(str(exc)) from None
        self.spec = spec
        self.page_size = page_size
        self.reserved = RESERVED_BYTES
        self.magic = TURSO_PREFIX + bytes([HARDENED_CIPHER_ID])
        self._secret = key  # memory only
        self._raw_key = raw_key
        self._passphrase = passphrase
        self._argon2 = argon2  # for a new file
        self._lock = threading.Lock()
        self._params: FileParams | None = None
        self._siv: AESGCMSIV | None = None
        self._block = b""
        self._ad_tail = b""
        self._epoch = b""
        self._tail = bytes(RESERVED_BYTES)
        self._payload = page_size - RESERVED_BYTES
        self._ct_end = page_size - NONCE_SIZE

    def __repr__(self) -> str:
        mode = "passphrase" if self._passphrase is not None else "raw key"
        return f"HardenedCodec({mode}, page_size={self.page_size})"  # never the secret

    # --- binding to a file -----------------------------------------------------------------------

    @property
    def params(self) -> FileParams | None:
        """The file's parameters once bound (None before)."""
        return self._params

    def with_page_size(self, page_size: int) -> HardenedCodec:
        """The same secret (and binding, if any) for another page size."""
        other = HardenedCodec(self.spec, self._secret, page_size, argon2=self._argon2)
        if self._params is not None and self._siv is not None:
            other._bind(self._params, self._siv)
        return other

    def new_file(self) -> FileParams:
        """Bind to a new file: a random file id, epoch 1, a fresh data key for a passphrase."""
        with self._lock:
            if self._params is None:
                file_id = os.urandom(keys.FILE_ID_SIZE)
                if self._passphrase is not None:
                    data_key = os.urandom(keys.WRAPPED_KEY_SIZE)
                    kek = self._argon2.derive(self._passphrase, file_id)
                    params = FileParams(file_id, 1, self._argon2, keys.wrap_data_key(data_key, kek, file_id))
                else:
                    data_key = self._raw_key  # type: ignore[assignment]
                    params = FileParams(file_id, 1, None, bytes(keys.WRAPPED_KEY_SIZE))
                self._bind(params, AESGCMSIV(keys.file_key(data_key, file_id, 1)))
            return self._params  # type: ignore[return-value]

    def open_file(self, page1: bytes) -> FileParams:
        """Bind to the file whose on-disk page 1 this is, and check it with the secret.

        Raises ``KeyParamsError`` (an ``EncryptionError``) when the file stores Argon2id
        parameters this library refuses, or wants a passphrase and a raw key was given (or the
        other way round); ``HardenedAuthError`` when page 1 does not verify.
        """
        with self._lock:
            if self._params is None:
                params = FileParams.of_page1(page1)
                aead = AESGCMSIV(self._file_key(params))
                self._check_page1(page1, params, aead)
                self._bind(params, aead)
            return self._params  # type: ignore[return-value]

    def with_new_passphrase(self, passphrase: bytes, argon2: Argon2Params = keys.ARGON2_DEFAULT) -> HardenedCodec:
        """This file's codec under another passphrase: the data key re-wrapped, pages untouched.

        Only page 1 changes (its header holds the wrap and the Argon2id parameters): writing
        page 1 with the returned codec completes the change.  The caller must hold the write
        lock and have checkpointed, so no older page-1 image stays in the WAL.
        """
        params = self._params
        if params is None or params.argon2 is None or self._passphrase is None:
            raise ValueError("only a file opened with its passphrase can change passphrase")
        if not passphrase:
            raise ValueError("passphrase must not be empty")
        try:
            argon2.check()
        except KeyParamsError as exc:
            raise ValueError(str(exc)) from None
        old_kek = params.argon2.derive(self._passphrase, params.file_id)
        new_kek = argon2.derive(passphrase, params.file_id)
        wrapped = keys.rewrap_data_key(params.wrapped, old_kek, new_kek, params.file_id)
        other = HardenedCodec(self.spec, passphrase, self.page_size, argon2=argon2)
        assert self._siv is not None
        other._bind(FileParams(params.file_id, params.epoch, argon2, wrapped), self._siv)
        return other

    def _file_key(self, params: FileParams) -> bytes:
        if params.argon2 is None:
            if self._raw_key is None:
                raise KeyParamsError(
                    "page 1 says this database is encrypted with a key, not a passphrase: pass its key "
                    "(or page 1 was changed on disk)"
                )
            return keys.file_key(self._raw_key, params.file_id, params.epoch)
        if self._passphrase is None:
            raise KeyParamsError(
                "page 1 says this database is protected by a passphrase, not a raw key: pass its passphrase "
                "(or page 1 was changed on disk)"
            )
        try:
            params.argon2.check()  # before any work: a file must not make guessing cheap, nor an open huge
        except KeyParamsError as exc:
            raise KeyParamsError(f"page 1: {exc}") from None
        kek = params.argon2.derive(self._passphrase, params.file_id)
        data_key = keys.unwrap_data_key(params.wrapped, kek, params.file_id)
        return keys.file_key(data_key, params.file_id, params.epoch)

    def _bind(self, params: FileParams, aead: AESGCMSIV) -> None:
        self._params = params
        self._siv = aead
        self._block = params.encode()
        self._ad_tail = params.file_id + params.epoch.to_bytes(2, "big")
        self._epoch = params.epoch.to_bytes(2, "big")

    def _check_page1(self, page1: bytes, params: FileParams, aead: AESGCMSIV) -> None:
        if not is_hardened(page1):
            raise HardenedAuthError(1, "database", "not a hardened page 1")
        nonce = page1[self._ct_end : self.page_size]
        ad = AD_LABEL + bytes([nonce[2]]) + (1).to_bytes(4, "big") + params.file_id + nonce[:2] + page1[:HEADER_SIZE]
        if nonce[:2] != params.epoch.to_bytes(2, "big"):
            raise HardenedAuthError(1, "database", "its epoch disagrees with its header")
        try:
            aead.decrypt(nonce, page1[HEADER_SIZE : self._ct_end], ad)
        except InvalidTag:
            raise HardenedAuthError(1, "database") from None

    # --- pages -------------------------------------------------------------------------------

    def _ad(self, domain: int, pgno: int) -> bytes:
        return AD_LABEL + bytes([domain]) + pgno.to_bytes(4, "big") + self._ad_tail

    def encrypt(self, plain: bytes, pgno: int, where: str = "database") -> bytes:
        """Encrypt one plaintext page for ``where`` ("database", "WAL" or "rollback journal")."""
        domain = DOMAIN_WAL if where == "WAL" else DOMAIN_JOURNAL if where == "rollback journal" else DOMAIN_DATABASE
        if self._siv is None:
            # a file's first page-1 write makes it (an existing file binds when page 1 is read);
            # a journal record of a new database may come first
            if pgno != 1 and domain != DOMAIN_JOURNAL:
                raise ValueError(f"page {pgno} encrypted before page 1: the file's parameters are not known yet")
            self.new_file()
        assert self._siv is not None
        nonce = self._epoch + bytes([domain]) + os.urandom(RANDOM_NONCE_BYTES)
        if pgno == 1 and domain != DOMAIN_JOURNAL:
            if any(plain[72:92]):
                raise ValueError("page 1 uses header bytes 72..92, which the hardened format stores its parameters in")
            block = self._block
            header = self.magic + block[:9] + plain[16:72] + block[9:] + plain[92:HEADER_SIZE]
            body = self._siv.encrypt(nonce, plain[HEADER_SIZE : self._payload], self._ad(domain, 1) + header)
            return header + body + nonce
        return self._siv.encrypt(nonce, plain[: self._payload], self._ad(domain, pgno)) + nonce

    def decrypt(self, enc: bytes, pgno: int, where: str = "database") -> bytes:
        """Decrypt one page read from ``where``; raise HardenedAuthError naming it if it fails.

        "database", "WAL" and "rollback journal" accept only images written for that place;
        any other ``where`` (the frame log, a revert file) accepts database and WAL images.
        """
        if self._siv is None:
            if pgno != 1:
                raise HardenedAuthError(pgno, where, "page 1 was not read yet, so the file's parameters are unknown")
            try:
                self.open_file(enc)
            except HardenedAuthError as err:
                raise HardenedAuthError(1, where, err.reason) from None
        assert self._siv is not None
        nonce = enc[self._ct_end : self.page_size]
        domain = nonce[2]
        if domain not in _ACCEPTED.get(where, _COPIES):
            found = _DOMAIN_NAMES.get(domain, f"unknown domain {domain}")
            raise HardenedAuthError(pgno, where, f"it holds an image written for the {found}")
        if nonce[:2] != self._epoch:
            raise HardenedAuthError(
                pgno, where, f"written under key epoch {int.from_bytes(nonce[:2], 'big')}, not this file's"
            )
        try:
            if pgno == 1 and domain != DOMAIN_JOURNAL:
                if enc[:7] != self.magic or enc[_BLOCK_A] + enc[_BLOCK_B] != self._block:
                    raise InvalidTag()
                ad = self._ad(domain, 1) + enc[:HEADER_SIZE]
                body = self._siv.decrypt(nonce, enc[HEADER_SIZE : self._ct_end], ad)
                return SQLITE_MAGIC + enc[16:72] + bytes(20) + enc[92:HEADER_SIZE] + body + self._tail
            return self._siv.decrypt(nonce, enc[: self._ct_end], self._ad(domain, pgno)) + self._tail
        except InvalidTag:
            raise HardenedAuthError(pgno, where) from None

    def header_plaintext(self, enc: bytes) -> bytes:
        """SQLite's first 100 bytes from an on-disk page 1, authenticated (page 1 is decrypted)."""
        return self.decrypt(enc, 1)[:HEADER_SIZE]

    def is_page1(self, enc: bytes) -> bool:
        """True when an encrypted page carries this format's page-1 magic."""
        return is_hardened(enc)

    def for_file(self, head: bytes) -> PageCodec:
        """A codec for the file whose first bytes are ``head`` (see ``PageCodec.for_file``)."""
        if is_hardened(head):
            return self
        if head[:5] == b"Turso" and len(head) > 6:
            if self._raw_key is None:
                raise ValueError("uses Turso's format, which takes a hex key, not a passphrase")
            from .page_codec import CIPHERS

            for spec in CIPHERS.values():
                if spec.cipher_id == head[6] and spec.key_size == len(self._raw_key):
                    return PageCodec(spec, self._raw_key, self.page_size)
            raise ValueError(f"uses Turso's format with cipher id {head[6]}, which this key does not fit")
        return self


__all__ = [
    "FileParams",
    "HardenedAuthError",
    "HardenedCodec",
    "KeyParamsError",
    "is_hardened",
]
