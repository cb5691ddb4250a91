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
from collections.abc import Callable
from dataclasses import dataclass, replace

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

from ..page import PAGE_SIZE, RESERVED_BYTES
from . import keys
from .keyring import KeyRing
from .keys import Argon2Params, KeyParamsError
from .page_codec import CipherSpec, PageAuthError, PageCodec

SQLITE_MAGIC = b"SQLite format 3\x00"
TURSO_PREFIX = b"Turso\x00"
HARDENED_CIPHER_ID = 0x80  # unknown to Turso, which refuses the file instead of misreading it
ENVELOPE_CIPHER_ID = 0x81  # the envelope layout (``envelope.py``): the hardened cipher, pages in larger slots
HEADER_SIZE = 100
NONCE_SIZE = 12
TAG_SIZE = 16
assert NONCE_SIZE + TAG_SIZE == RESERVED_BYTES
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
PREVIOUS_LIVE_BIT = 0x8000  # in the stored epoch: a rotation is under way, the older epoch is live
PAGE_MAP_BIT = 0x80  # in the first parameter byte (Argon2id's memory log2, at most 22): a page map is kept
PAGE_MAP_INFO = b"turso-sync page map mac v1"
MAP_TAG_SIZE = 8  # bytes of each image's AEAD tag the page map records
MAX_EPOCH = 0x7FFF


class HardenedAuthError(PageAuthError):
    """A page of a hardened file failed; ``pgno`` and ``where`` name it, ``reason`` says what is known."""


@dataclass(frozen=True)
class FileParams:
    """What page 1 says about its file: id, epoch, and how the data key is obtained.

    ``previous_live`` (the top bit of the stored epoch) says that a key rotation is under way:
    pages of ``epoch - 1`` may still be on disk, and the key ring (``<db>-rekey``) is needed.
    """

    file_id: bytes
    epoch: int
    argon2: Argon2Params | None  # None: a raw key
    wrapped: bytes  # the passphrase-wrapped data key of ``epoch``, zeros for a raw key
    previous_live: bool = False
    page_map: bool = False  # the file keeps a page map (``local/pagemap.py``): rolled-back pages are refused

    def encode(self) -> bytes:
        kdf = bytearray(self.argon2.encode() if self.argon2 is not None else bytes(3))
        if self.page_map:
            kdf[0] |= PAGE_MAP_BIT
        stored = self.epoch | (PREVIOUS_LIVE_BIT if self.previous_live else 0)
        return bytes(kdf) + stored.to_bytes(2, "big") + self.file_id + self.wrapped

    @classmethod
    def decode(cls, block: bytes) -> FileParams:
        stored = int.from_bytes(block[3:5], "big")
        return cls(
            file_id=block[5:13],
            epoch=stored & MAX_EPOCH,
            argon2=Argon2Params.decode(bytes([block[0] & ~PAGE_MAP_BIT & 0xFF]) + block[1:3]),
            wrapped=block[13:29],
            previous_live=bool(stored & PREVIOUS_LIVE_BIT),
            page_map=bool(block[0] & PAGE_MAP_BIT),
        )

    @classmethod
    def of_page1(cls, enc: bytes) -> FileParams:
        """The parameters an on-disk page 1 carries (not yet authenticated)."""
        return cls.decode(enc[_BLOCK_A] + enc[_BLOCK_B])

    @property
    def generation(self) -> tuple[int, bool]:
        """Orders the states page 1 goes through: (epoch, old key retired)."""
        return self.epoch, not self.previous_live


def is_hardened(head: bytes) -> bool:
    """True when a file's first bytes say it uses the hardened format."""
    return head[:6] == TURSO_PREFIX and len(head) > 6 and head[6] == HARDENED_CIPHER_ID


class HardenedCodec(PageCodec):
    """Encrypts and decrypts the pages of one hardened file, with a ring of key epochs.

    Made with a hardened ``spec`` and the user's secret (a raw 32-byte key, or a passphrase's
    UTF-8 bytes when ``spec.passphrase``).  It binds to a file when it first meets page 1:
    either it reads page 1 (an existing file: the parameters come from there) or it encrypts
    page 1 (a new file: a fresh file id, epoch 1 and, for a passphrase, a fresh data key).
    ``open_file``/``new_file`` do the same explicitly.

    The ring: the codec decrypts pages of every epoch it holds a key for and encrypts with the
    newest.  It learns epochs from page 1 (the passphrase unwraps the newest data key there)
    and, during a rotation, from the key ring file that ``ring_source`` reads (the VFS sets it):
    a page of an epoch it does not hold makes it read the ring, open the slot of a key it holds
    and take every key there; a newer epoch becomes the one it writes with at once.  Page 1
    read with the "previous live" bit cleared retires the older epochs: their pages are refused
    from then on.  The state only moves forward (``FileParams.generation``), so a reader of an
    older snapshot never takes a process back.  Thread-safe: state changes under a lock.
    """

    def __init__(
        self, spec: CipherSpec, key: bytes, page_size: int = PAGE_SIZE, *, argon2: Argon2Params = keys.ARGON2_DEFAULT
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
        self._lock = threading.RLock()
        self._params: FileParams | None = None  # the newest page-1 state known: written into page 1
        self._file_id = b""
        self._data_keys: dict[int, bytes] = {}  # epoch -> data key (memory only)
        self._aeads: dict[int, AESGCMSIV] = {}  # epoch -> its file key's AEAD
        self._write: tuple[int, bytes, AESGCMSIV] | None = None  # (epoch, its 2 bytes, AEAD) for new writes
        self._retired_below = 0  # pages of older epochs are refused
        self._block = b""
        self.ring_source: Callable[[], bytes | None] | None = None
        self.slot_size = page_size  # bytes one page takes on disk (more in the envelope layout)
        self._tail = bytes(RESERVED_BYTES)
        self._payload = page_size - RESERVED_BYTES
        self._ct_end = page_size - NONCE_SIZE

    def __repr__(self) -> str:
        mode = "passphrase" if self._passphrase is not None else "raw key"
        return f"{type(self).__name__}({mode}, page_size={self.page_size})"  # never the secret

    # --- binding to a file -----------------------------------------------------------------------

    @property
    def params(self) -> FileParams | None:
        """The file's newest parameters once bound (None before)."""
        return self._params

    @property
    def epochs(self) -> tuple[int, ...]:
        """The key epochs this codec holds, oldest first."""
        return tuple(sorted(self._aeads))

    @property
    def write_epoch(self) -> int:
        """The epoch new writes use (0 before binding)."""
        return self._write[0] if self._write is not None else 0

    def with_page_size(self, page_size: int) -> HardenedCodec:
        """The same secret (and binding and ring, if any) for another page size."""
        other = type(self)(self.spec, self._secret, page_size, argon2=self._argon2)
        with self._lock:
            other.ring_source = self.ring_source
            other._retired_below = self._retired_below
            if self._params is not None:
                other._file_id = self._file_id
                other._data_keys = dict(self._data_keys)
                other._aeads = dict(self._aeads)
                other._set_params(self._params)
        return other

    def new_file(self) -> FileParams:
        """Bind to a new file: a random file id, epoch 1, a fresh data key for a passphrase."""
        with self._lock:
            if self._params is None:
                file_id = os.urandom(keys.FILE_ID_SIZE)
                if self._passphrase is not None:
                    data_key = os.urandom(keys.WRAPPED_KEY_SIZE)
                    kek = self._argon2.derive(self._passphrase, file_id)
                    wrapped = keys.wrap_data_key(data_key, kek, file_id)
                    params = FileParams(file_id, 1, self._argon2, wrapped, page_map=True)
                else:
                    data_key = self._raw_key  # type: ignore[assignment]
                    params = FileParams(file_id, 1, None, bytes(keys.WRAPPED_KEY_SIZE), page_map=True)
                self._file_id = file_id
                self._add_key(1, data_key)
                self._set_params(params)
            return self._params  # type: ignore[return-value]

    def open_file(self, page1: bytes) -> FileParams:
        """Bind to the file whose on-disk page 1 this is, and check it with the secret.

        Raises ``KeyParamsError`` (an ``EncryptionError``) when the file stores Argon2id
        parameters this library refuses, or wants a passphrase and a raw key was given (or the
        other way round); ``HardenedAuthError`` when page 1 does not verify.  A raw key of
        another live epoch of a rotation opens the file through the key ring, when
        ``ring_source`` is set.
        """
        with self._lock:
            if self._params is None:
                if page1[:7] != self.magic:
                    raise HardenedAuthError(1, "database", f"not a page 1 of the {self.spec.page_format} format")
                params = FileParams.of_page1(page1)
                self._file_id = params.file_id
                self._add_key(params.epoch, self._data_key(params))
                try:
                    self._decrypt_page1(page1, "database", DOMAIN_DATABASE)
                except HardenedAuthError:
                    if self._raw_key is None or not self._load_ring():
                        self._forget()
                        raise
                    try:
                        self._decrypt_page1(page1, "database", DOMAIN_DATABASE)
                    except HardenedAuthError:
                        self._forget()
                        raise
            return self._params  # type: ignore[return-value]

    def _forget(self) -> None:
        self._params = None
        self._write = None
        self._file_id = b""
        self._data_keys.clear()
        self._aeads.clear()

    def with_new_passphrase(self, passphrase: bytes, argon2: Argon2Params = keys.ARGON2_DEFAULT) -> HardenedCodec:
        """This file's codec under another passphrase: the data key re-wrapped, pages untouched.

        Only page 1 changes (its header holds the wrap and the Argon2id parameters): writing
        page 1 with the returned codec completes the change.  ``change_passphrase`` does the
        same in place.
        """
        other = self.with_page_size(self.page_size)
        other.change_passphrase(passphrase, argon2)
        return other

    def change_passphrase(self, passphrase: bytes, argon2: Argon2Params = keys.ARGON2_DEFAULT) -> None:
        """Re-wrap the newest data key under ``passphrase``; page 1's next write carries it.

        The caller holds the write lock, and no other process has the file open: another
        process's codec would write its own copy of page 1's parameters, the old wrap, back
        (``local/rekey.py``'s ``change_passphrase`` checks both).
        """
        with self._lock:
            params = self._params
            if params is None or params.argon2 is None or self._passphrase is None:
                raise ValueError("only a file opened with its passphrase can change passphrase")
            if not passphrase:
                raise ValueError("passphrase must not be empty")
            try:
                argon2.check()
            except KeyParamsError as exc:
                raise ValueError(str(exc)) from None
            wrapped = keys.wrap_data_key(
                self._data_keys[params.epoch], argon2.derive(passphrase, params.file_id), params.file_id
            )
            self._secret = self._passphrase = passphrase
            self._argon2 = argon2
            self._set_params(replace(params, argon2=argon2, wrapped=wrapped))

    def _data_key(self, params: FileParams) -> bytes:
        """The data key of page 1's epoch, from the secret (a raw key is taken as it is)."""
        if params.argon2 is None:
            if self._raw_key is None:
                raise KeyParamsError(
                    "page 1 says this database is encrypted with a key, not a passphrase: pass its key "
                    "(or page 1 was changed on disk)"
                )
            return self._raw_key
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
        return keys.unwrap_data_key(params.wrapped, kek, params.file_id)

    def _add_key(self, epoch: int, data_key: bytes) -> None:
        if epoch < self._retired_below:
            return
        self._data_keys[epoch] = data_key
        self._aeads[epoch] = AESGCMSIV(keys.file_key(data_key, self._file_id, epoch))

    def _set_params(self, params: FileParams) -> None:
        self._params = params
        self._block = params.encode()
        aead = self._aeads.get(params.epoch)
        if aead is not None:
            self._write = (params.epoch, params.epoch.to_bytes(2, "big"), aead)
        if not params.previous_live:
            self._retire_below(params.epoch)

    def _retire_below(self, epoch: int) -> None:
        self._retired_below = max(self._retired_below, epoch)
        for old in [e for e in self._aeads if e < epoch]:
            del self._aeads[old]
            self._data_keys.pop(old, None)

    def _observe(self, params: FileParams) -> None:
        """Page 1 ``params`` authenticated: move forward to it if it is newer."""
        with self._lock:
            if self._params is None or params.generation > self._params.generation:
                self._set_params(params)

    # --- the key ring ----------------------------------------------------------------------------

    def _load_ring(self) -> bool:
        """Read the ring file and take its keys; True when it held a key this codec could open."""
        source = self.ring_source
        raw = source() if source is not None else None
        if raw is None:
            return False
        ring = KeyRing.decode(raw)
        return self.adopt_ring(ring)

    def adopt_ring(self, ring: KeyRing) -> bool:
        """Take the keys of ``ring`` (opened with a key held); its new epoch becomes the write epoch.

        Returns False when the ring belongs to another file or no key held opens it.
        """
        with self._lock:
            if not self._file_id or ring.file_id != self._file_id:
                return False
            candidates = (self._raw_key,) if self._raw_key is not None else ()
            opened = ring.open(self._data_keys, candidates)
            if opened is None:
                return False
            for epoch, data_key in opened.items():
                self._add_key(epoch, data_key)  # the ring's keys are authoritative (a raw key's epoch is a guess)
            if ring.new_epoch in self._aeads:
                new = FileParams.decode(ring.new_block)
                if self._params is None or new.generation > self._params.generation:
                    self._set_params(new)
            return True

    def rotation_ring(self, new_raw_key: bytes | None = None) -> KeyRing:
        """The key ring that starts a rotation to the next epoch (nothing is written here).

        A raw-key file takes ``new_raw_key`` (32 bytes); a passphrase file draws a new random
        data key and wraps it with the same passphrase.  Refused while a rotation is live.
        """
        with self._lock:
            params = self._params
            if params is None or self._write is None:
                raise ValueError("the codec is not bound to a file yet")
            if params.previous_live:
                raise ValueError(f"a rotation to key epoch {params.epoch} is still under way; finish it first")
            if params.epoch >= MAX_EPOCH:
                raise ValueError(f"key epoch {params.epoch} is the last one the format can store")
            new_epoch = params.epoch + 1
            if params.argon2 is not None:
                if new_raw_key is not None:
                    raise ValueError("a passphrase file rotates to a new random data key, not a given key")
                assert self._passphrase is not None
                new_key = os.urandom(keys.WRAPPED_KEY_SIZE)
                kek = params.argon2.derive(self._passphrase, params.file_id)
                wrapped = keys.wrap_data_key(new_key, kek, params.file_id)
            else:
                if new_raw_key is None or len(new_raw_key) != keys.RAW_KEY_SIZE:
                    raise ValueError(f"the new key must be {keys.RAW_KEY_SIZE * 2} hex digits")
                if new_raw_key in self._data_keys.values():
                    raise ValueError("the new key is the key the file already uses")
                new_key, wrapped = new_raw_key, params.wrapped
            block = replace(params, epoch=new_epoch, wrapped=wrapped, previous_live=True).encode()
            held = {params.epoch: self._data_keys[params.epoch], new_epoch: new_key}
            return KeyRing.seal(params.file_id, params.epoch, new_epoch, block, held)

    def retire_previous(self) -> FileParams:
        """Clear page 1's "previous live" bit and drop the older keys; page 1's next write stores it.

        The caller has made sure no image of an older epoch is left (``local/rekey.py``).
        """
        with self._lock:
            params = self._params
            if params is None:
                raise ValueError("the codec is not bound to a file yet")
            self._set_params(replace(params, previous_live=False))
            return self._params  # type: ignore[return-value]

    def data_key(self, epoch: int) -> bytes:
        """The data key of a live ``epoch`` (memory only: for opening the file through a connection)."""
        with self._lock:
            key = self._data_keys.get(epoch)
        if key is None:
            raise KeyError(f"key epoch {epoch} is not held")
        return key

    def load_ring(self) -> bool:
        """Read the key ring file now (``ring_source``); True when a key held opened it."""
        return self._load_ring()

    @property
    def keeps_page_map(self) -> bool:
        """True when the bound file keeps a page map (every file this version creates does)."""
        params = self._params
        return params is not None and params.page_map

    def map_tag(self, enc: bytes) -> bytes:
        """The part of an encrypted image's AEAD tag the page map records for it."""
        start = self._ct_end - TAG_SIZE
        return bytes(enc[start : start + MAP_TAG_SIZE])

    def map_mac_key(self, epoch: int | None = None) -> tuple[int, bytes]:
        """(epoch, key) that authenticates the page map: of ``epoch``, or of the write epoch.

        Derived from that epoch's data key and the file id, never stored.  Raises KeyError when
        the epoch is not held (retired, or not known to this process).
        """
        with self._lock:
            if epoch is None:
                if self._write is None:
                    raise KeyError("the codec is not bound to a file yet")
                epoch = self._write[0]
            data_key = self._data_keys.get(epoch)
            file_id = self._file_id
        if data_key is None:
            raise KeyError(f"key epoch {epoch} is not held")
        return epoch, keys.map_key(data_key, file_id, PAGE_MAP_INFO)

    def epoch_of(self, enc: bytes) -> int:
        """The key epoch an encrypted image was written under (read from its nonce, unverified)."""
        return int.from_bytes(enc[self._ct_end : self._ct_end + 2], "big")

    def _aead_for(self, epoch: int, pgno: int, where: str) -> AESGCMSIV:
        aead = self._aeads.get(epoch)
        if aead is not None:
            return aead
        if epoch < self._retired_below:
            raise HardenedAuthError(pgno, where, f"written under key epoch {epoch}, which was retired")
        self._load_ring()
        aead = self._aeads.get(epoch)
        if aead is None:
            raise HardenedAuthError(
                pgno,
                where,
                f"written under key epoch {epoch}, whose key this process does not hold (a key rotation's "
                "ring file -rekey is missing or no longer opens with this key)",
            )
        return aead

    # --- pages -------------------------------------------------------------------------------

    def _ad(self, domain: int, pgno: int, epoch: bytes) -> bytes:
        return AD_LABEL + bytes([domain]) + pgno.to_bytes(4, "big") + self._file_id + epoch

    def encrypt(self, plain: bytes, pgno: int, where: str = "database") -> bytes:
        """Encrypt one plaintext page for ``where`` ("database", "WAL" or "rollback journal")."""
        domain = DOMAIN_WAL if where == "WAL" else DOMAIN_JOURNAL if where == "rollback journal" else DOMAIN_DATABASE
        if self._write is None:
            # a file's first page-1 write makes it (an existing file binds when page 1 is read);
            # a journal record of a new database may come first
            if pgno != 1 and domain != DOMAIN_JOURNAL:
                raise ValueError(f"page {pgno} encrypted before page 1: the file's parameters are not known yet")
            self.new_file()
        with self._lock:  # the epoch, its key and page 1's block change together
            assert self._write is not None
            _epoch, epoch, aead = self._write
            block = self._block
        nonce = epoch + bytes([domain]) + os.urandom(RANDOM_NONCE_BYTES)
        if pgno == 1 and domain != DOMAIN_JOURNAL:
            if any(plain[72:92]):
                raise ValueError("page 1 uses header bytes 72..92, which the hardened format stores its parameters in")
            header = self.magic + block[:9] + plain[16:72] + block[9:] + plain[92:HEADER_SIZE]
            body = aead.encrypt(nonce, plain[HEADER_SIZE : self._payload], self._ad(domain, 1, epoch) + header)
            return header + body + nonce
        return aead.encrypt(nonce, plain[: self._payload], self._ad(domain, pgno, epoch)) + nonce

    def reencrypt(self, enc: bytes, pgno: int, where: str) -> bytes:
        """An image of an older epoch under the write epoch, for the same place it was written for."""
        nonce = enc[self._ct_end : self._ct_end + NONCE_SIZE]
        plain = self.decrypt(enc, pgno, where)
        return self.encrypt(plain, pgno, _DOMAIN_NAMES.get(nonce[2], "database"))

    def decrypt(self, enc: bytes, pgno: int, where: str = "database") -> bytes:
        """Decrypt one page read from ``where``; raise HardenedAuthError naming it if it fails.

        "database", "WAL" and "rollback journal" accept only images written for that place;
        any other ``where`` (the frame log, a revert file) accepts database and WAL images.
        """
        if self._write is None:
            if pgno != 1:
                raise HardenedAuthError(pgno, where, "page 1 was not read yet, so the file's parameters are unknown")
            try:
                self.open_file(enc)
            except HardenedAuthError as err:
                raise HardenedAuthError(1, where, err.reason) from None
        nonce = enc[self._ct_end : self._ct_end + NONCE_SIZE]
        domain = nonce[2]
        if domain not in _ACCEPTED.get(where, _COPIES):
            found = _DOMAIN_NAMES.get(domain, f"unknown domain {domain}")
            raise HardenedAuthError(pgno, where, f"it holds an image written for the {found}")
        if pgno == 1 and domain != DOMAIN_JOURNAL:
            return self._decrypt_page1(enc, where, domain)
        epoch = nonce[:2]
        aead = self._aead_for(int.from_bytes(epoch, "big"), pgno, where)
        try:
            return aead.decrypt(nonce, enc[: self._ct_end], self._ad(domain, pgno, epoch)) + self._tail
        except InvalidTag:
            raise HardenedAuthError(pgno, where) from None

    def _decrypt_page1(self, enc: bytes, where: str, domain: int) -> bytes:
        """Page 1: its header's parameters must agree with its nonce and this file; it may move the ring on."""
        nonce = enc[self._ct_end : self._ct_end + NONCE_SIZE]
        if enc[:7] != self.magic:
            raise HardenedAuthError(1, where)
        params = FileParams.of_page1(enc)
        epoch = nonce[:2]
        if params.epoch.to_bytes(2, "big") != epoch:
            raise HardenedAuthError(1, where, "its epoch disagrees with its header")
        if params.file_id != self._file_id:
            raise HardenedAuthError(1, where)
        aead = self._aead_for(params.epoch, 1, where)
        try:
            body = aead.decrypt(nonce, enc[HEADER_SIZE : self._ct_end], self._ad(domain, 1, epoch) + enc[:HEADER_SIZE])
        except InvalidTag:
            raise HardenedAuthError(1, where) from None
        self._observe(params)
        return SQLITE_MAGIC + enc[16:72] + bytes(20) + enc[92:HEADER_SIZE] + body + self._tail

    def header_plaintext(self, enc: bytes) -> bytes:
        """SQLite's first 100 bytes from an on-disk page 1, authenticated (page 1 is decrypted)."""
        return self.decrypt(enc, 1)[:HEADER_SIZE]

    def is_page1(self, enc: bytes) -> bool:
        """True when an encrypted page carries this format's page-1 magic."""
        return enc[:7] == self.magic

    def for_file(self, head: bytes) -> PageCodec:
        """A codec for the file whose first bytes are ``head`` (see ``PageCodec.for_file``)."""
        if head[:7] == self.magic:
            return self
        if head[:6] == TURSO_PREFIX and len(head) > 6 and head[6] in (HARDENED_CIPHER_ID, ENVELOPE_CIPHER_ID):
            # the same secret in the other of the two layouts (pages with reserved bytes, or envelopes)
            from .page_codec import HARDENED_CIPHERS

            name = "hardened" if head[6] == HARDENED_CIPHER_ID else "envelope"
            spec = HARDENED_CIPHERS[name + ("passphrase" if self.spec.passphrase else "")]
            return PageCodec(spec, self._secret, self.page_size)
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
