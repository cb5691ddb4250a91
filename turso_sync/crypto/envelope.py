"""The envelope layout: SQLite's pages kept whole, each stored encrypted in a slot 32 bytes larger.

Turso's format and the hardened one keep a page's nonce and tag in the 28 bytes SQLite reserves
at its end, so they need a database created with 28 reserved bytes.  A remote whose pages
reserve none (a default ``tursodb``, most Turso databases) sends pages that use every byte.  An
encrypted replica of it keeps those page images exactly as they are, and stores each one
encrypted in a *slot* of ``page size + 32`` bytes on disk::

      slot of page n   | AES-256-GCM-SIV ciphertext of the whole page (P) | tag (16) | nonce (12) | 0 (4) |

      slot of page 1   0..5 "Turso"  5: 0  6: 0x81  7..16 parameters  16..72 SQLite header (plaintext)
                       72..92 parameters  92..100 SQLite header  | ciphertext of bytes 100..P | tag | nonce | 0 |

The four zero bytes at the end keep a slot a multiple of 8 bytes: SQLite's WAL checksum, which
the VFS computes over each frame as stored, runs over pairs of 32-bit words.  A slot whose last
four bytes are not zero is refused like one that fails authentication.

The cipher, the keys and the binding are the hardened format's (``hardened.py``): per-file key,
associated data ``"TSH1" | domain | page number | file id | epoch``, parameters in page 1's
header, passphrases.  Only the cipher id (0x81, the marker that says "this file is envelope")
and the size of the slot differ.  The marker sits where every encrypted file of this library
keeps its cipher id, so a reopen needs only the key: ``PageCodec.for_file`` picks this codec.

The VFS (``local/vfs.py``) maps SQLite's offsets (``(n - 1) * P``) to slots (``(n - 1) * S``) in
the database file and the WAL, where a frame is a 24-byte header and a slot.  The database file
is padded with zeros to a whole number of ``P``-byte blocks (``disk_size``), so a file of ``n``
slots always has a size other tools read as whole pages; the padding is shorter than a slot,
so the number of slots is ``size // S``.
"""

from __future__ import annotations

from typing import Any

from ..page import PAGE_SIZE
from .hardened import ENVELOPE_CIPHER_ID, NONCE_SIZE, TAG_SIZE, TURSO_PREFIX, HardenedAuthError, HardenedCodec
from .page_codec import CipherSpec

PAD = bytes(4)  # a slot's tail: keeps 24 + slot a multiple of 8, as the WAL checksum needs
OVERHEAD = TAG_SIZE + NONCE_SIZE + len(PAD)  # bytes a slot adds to a page: 32


def disk_size(pages: int, page_size: int, slot_size: int) -> int:
    """Bytes on disk of a database file of ``pages`` slots: padded to whole ``page_size`` blocks."""
    used = pages * slot_size
    return -(-used // page_size) * page_size


def pages_on_disk(size: int, slot_size: int) -> int:
    """The number of whole slots in a database file of ``size`` bytes (the padding is not one)."""
    return size // slot_size


def is_envelope(head: bytes) -> bool:
    """True when a file's first bytes say it uses the envelope layout."""
    return head[:6] == TURSO_PREFIX and len(head) > 6 and head[6] == ENVELOPE_CIPHER_ID


def envelope_cipher(cipher: str) -> str:
    """The cipher name that makes a new file in the envelope layout with the secret given for ``cipher``.

    A 64-hex-digit key (``aes256gcm``, ``hardened``) becomes "envelope", a passphrase
    "envelope-passphrase".  Raises ValueError for a 128-bit key: the layout's cipher is
    AES-256-GCM-SIV.
    """
    name = cipher.lower().replace("-", "").replace("_", "")
    if name in ("hardenedpassphrase", "envelopepassphrase"):
        return "envelope-passphrase"
    if name in ("aes256gcm", "aes256gcmsiv", "hardened", "envelope"):
        return "envelope"
    raise ValueError(
        f"a remote whose pages reserve no bytes needs the envelope layout, whose cipher is AES-256-GCM-SIV with "
        f"a 64-hex-digit key; cipher {cipher!r} does not fit it (use aes256gcm, or a remote created with 28 "
        "reserved bytes per page)"
    )


class EnvelopeCodec(HardenedCodec):
    """The hardened codec for pages that reserve no bytes: ``encrypt`` turns ``P`` bytes into a
    ``P + 32``-byte slot, ``decrypt`` a slot back into the whole page.

    ``reserved`` is 0 (SQLite's reserved bytes of the pages it holds) and ``slot_size`` is what
    one page takes on disk; every reader of the files addresses pages by ``slot_size``.
    """

    def __init__(self, spec: CipherSpec, key: bytes, page_size: int = PAGE_SIZE, **options: Any) -> None:
        super().__init__(spec, key, page_size, **options)
        self.magic = TURSO_PREFIX + bytes([ENVELOPE_CIPHER_ID])
        self.reserved = 0
        self.slot_size = page_size + OVERHEAD
        self._tail = b""
        self._payload = page_size  # the whole page is encrypted
        self._ct_end = page_size + TAG_SIZE

    def encrypt(self, plain: bytes, pgno: int, where: str = "database") -> bytes:
        """One whole page (``P`` bytes) as its slot (``P + 32``) for ``where``."""
        return super().encrypt(plain, pgno, where) + PAD

    def decrypt(self, enc: bytes, pgno: int, where: str = "database") -> bytes:
        """One slot back to its page; HardenedAuthError naming the page if it does not verify."""
        if len(enc) != self.slot_size or enc[-len(PAD) :] != PAD:
            raise HardenedAuthError(pgno, where, "not an envelope slot")
        return super().decrypt(enc, pgno, where)


__all__ = ["OVERHEAD", "EnvelopeCodec", "disk_size", "envelope_cipher", "is_envelope", "pages_on_disk"]
