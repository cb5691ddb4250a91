"""Keys of the hardened format: per-file page keys, passphrases and the wrapped data key.

* A database's **data key** is either the raw 256-bit key the user gives (64 hex digits), or a
  random 128-bit key wrapped by a passphrase.  Pages are never encrypted with it directly:
* the **file key** of one file and one key epoch is ``HKDF-SHA256(data key, salt = file id,
  info = label + epoch)``, so two files under the same data key never share a page key;
* a **passphrase** goes through Argon2id (parameters stored in the file, never below
  ``ARGON2_FLOOR``) to a key-encryption key, which wraps the data key.  Changing the passphrase
  re-wraps the data key; no page is re-encrypted.

The wrap is the data key XORed with a pad derived from the key-encryption key.  It carries no
tag of its own: a wrong passphrase (or a changed wrap) yields a wrong data key, and page 1,
whose associated data holds the wrap, then fails authentication.  That is why the wrapped
key is only 16 bytes: it has to fit, with the file id, the epoch and the Argon2id parameters,
in the 29 bytes of page 1's header that SQLite leaves unused (see ``hardened.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .. import errors

RAW_KEY_SIZE = 32  # a raw data key: AES-256 strength
WRAPPED_KEY_SIZE = 16  # a passphrase-wrapped data key (room in page 1, see the module docstring)
FILE_ID_SIZE = 8
FILE_KEY_INFO = b"turso-sync hardened page key v1"
WRAP_INFO = b"turso-sync hardened key wrap v1"
ARGON2_SALT_LABEL = b"tsync-pw"  # the salt is the file id (random, per file) plus this label


class KeyParamsError(errors.EncryptionError):
    """A file's key parameters the library refuses: Argon2id below the floor or absurdly big, or a
    file that wants a passphrase opened with a raw key (or the other way round)."""


@dataclass(frozen=True)
class Argon2Params:
    """Argon2id cost: memory ``2**memory_log2`` KiB, ``iterations`` passes, ``lanes`` threads.

    Stored in page 1 as three bytes; all zero means "raw key, no passphrase".
    """

    memory_log2: int
    iterations: int
    lanes: int

    @property
    def memory_kib(self) -> int:
        return 1 << self.memory_log2

    def encode(self) -> bytes:
        return bytes([self.memory_log2, self.iterations, self.lanes])

    @classmethod
    def decode(cls, raw: bytes) -> Argon2Params | None:
        """The parameters stored in a file; None for a raw-key file (three zero bytes)."""
        if raw == bytes(3):
            return None
        return cls(raw[0], raw[1], raw[2])

    def check(self) -> None:
        """Refuse parameters below the floor (too cheap to guess) or above the ceiling (a trap)."""
        floor, ceiling = ARGON2_FLOOR, ARGON2_CEILING
        if self.memory_log2 < floor.memory_log2 or self.iterations < floor.iterations or self.lanes < floor.lanes:
            raise KeyParamsError(
                f"Argon2id parameters {self.describe()} are below the floor this library enforces "
                f"({floor.describe()}); a file carrying them was not written by turso_sync or was changed"
            )
        if self.memory_log2 > ceiling.memory_log2 or self.iterations > ceiling.iterations or self.lanes > ceiling.lanes:
            raise KeyParamsError(
                f"Argon2id parameters {self.describe()} exceed what this library accepts ({ceiling.describe()})"
            )

    def describe(self) -> str:
        return f"memory {self.memory_kib // 1024} MiB, {self.iterations} iterations, {self.lanes} lanes"

    def derive(self, passphrase: bytes, file_id: bytes) -> bytes:
        """The 32-byte key-encryption key for ``passphrase`` in the file ``file_id``."""
        self.check()
        kdf = Argon2id(
            salt=file_id + ARGON2_SALT_LABEL,
            length=32,
            iterations=self.iterations,
            lanes=self.lanes,
            memory_cost=self.memory_kib,
        )
        return kdf.derive(passphrase)


# RFC 9106's second recommended setting (64 MiB, 3 passes, 4 lanes) for new files; the floor is
# half its memory and two passes, above the OWASP minimum (19 MiB, 2 passes), so a file cannot
# be made cheap to attack by editing its parameters.
ARGON2_DEFAULT = Argon2Params(16, 3, 4)
ARGON2_FLOOR = Argon2Params(15, 2, 1)
ARGON2_CEILING = Argon2Params(22, 16, 16)  # 4 GiB: a file cannot make an open exhaust memory


def file_key(data_key: bytes, file_id: bytes, epoch: int) -> bytes:
    """The AES-256-GCM-SIV key of one file and one key epoch."""
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=file_id,
        info=FILE_KEY_INFO + epoch.to_bytes(2, "big"),
    )
    return hkdf.derive(data_key)


def map_key(data_key: bytes, file_id: bytes, info: bytes) -> bytes:
    """A 32-byte HMAC key of one file for ``info`` (the page map's), from its data key."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=file_id, info=info)
    return hkdf.derive(data_key)


def _pad(kek: bytes, file_id: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=WRAPPED_KEY_SIZE, salt=file_id, info=WRAP_INFO)
    return hkdf.derive(kek)


def wrap_data_key(data_key: bytes, kek: bytes, file_id: bytes) -> bytes:
    """The data key as stored in page 1: XORed with a pad only the key-encryption key gives."""
    if len(data_key) != WRAPPED_KEY_SIZE:
        raise ValueError(f"a wrapped data key has {WRAPPED_KEY_SIZE} bytes")
    return bytes(a ^ b for a, b in zip(data_key, _pad(kek, file_id), strict=True))


def unwrap_data_key(wrapped: bytes, kek: bytes, file_id: bytes) -> bytes:
    """The data key back from its wrap (a wrong key-encryption key gives a wrong data key)."""
    return wrap_data_key(wrapped, kek, file_id)  # XOR is its own inverse


def rewrap_data_key(wrapped: bytes, old_kek: bytes, new_kek: bytes, file_id: bytes) -> bytes:
    """The wrap under a new passphrase's key-encryption key; the pages stay as they are."""
    return wrap_data_key(unwrap_data_key(wrapped, old_kek, file_id), new_kek, file_id)
