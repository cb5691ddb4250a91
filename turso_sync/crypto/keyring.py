"""The key ring of a hardened file during a key rotation: the bytes of ``<db>-rekey``.

A rotation moves a file from key epoch ``old`` to ``old + 1``.  While it runs, pages of both
epochs are on disk, so every process needs both data keys, whichever key (or passphrase) it was
opened with.  Page 1 has no room for a second key (its 29 spare bytes hold one wrapped key and
the file's parameters, see ``hardened.py``), so the ring lives beside the database, for the
rotation only, and page 1 says when it is needed (the "previous epoch live" bit of its epoch).

The ring holds every live data key, sealed once under each of them: a process holding either
key (the old one from before the rotation, or the new one) opens its slot and learns the
other.  After retirement the file is removed; a leftover copy only gives the old key to whom
already has the new one.

Layout (big-endian)::

    magic "TSRKRNG1" | file id (8) | old epoch (2) | new epoch (2) | new page-1 parameters (29)
    slot count (1), then per slot: epoch (2) | nonce (12) | length (2) | sealed keys
    phase (1) | next page (4) | crc32 of everything before (4)

A slot is AES-256-GCM-SIV under ``HKDF-SHA256(data key of its epoch, salt = file id,
info = "turso-sync key ring v1" | epoch)`` with the header (magic .. parameters) as associated
data, so a slot cannot be moved to another file or rotation.  The sealed keys are
``epoch (2) | length (1) | key`` per live epoch.  The progress (phase, next page) is outside
the seal: it is only a hint, the sweep verifies before it retires anything.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, replace

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .. import errors

RING_MAGIC = b"TSRKRNG1"
RING_INFO = b"turso-sync key ring v1"
BLOCK_SIZE = 29
_HEAD = struct.Struct(">8s8sHH29s")
_NONCE = 12

# the sweep's phases, in order (``local/rekey.py``)
PHASE_STARTED = 0  # the ring is written; page 1 may still carry the old epoch
PHASE_SWEEPING = 1  # page 1 carries the new epoch; pages from ``next_page`` on may be old
PHASE_COPIES = 2  # the database file is swept; the frame log and revert files next
PHASE_RETIRING = 3  # nothing holds the old epoch; page 1's "previous live" bit goes next
PHASE_NAMES = {
    PHASE_STARTED: "started",
    PHASE_SWEEPING: "re-encrypting pages",
    PHASE_COPIES: "re-encrypting the frame log and revert files",
    PHASE_RETIRING: "retiring the old key",
}


class KeyRingError(errors.EncryptionError):
    """A key ring file that is not one, is damaged, or belongs to another file."""


def slot_key(data_key: bytes, file_id: bytes, epoch: int) -> bytes:
    """The key sealing one slot: derived from that epoch's data key, never used for pages."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=file_id, info=RING_INFO + epoch.to_bytes(2, "big"))
    return hkdf.derive(data_key)


@dataclass(frozen=True)
class KeyRing:
    """One rotation's ring: which epochs, page 1's parameters for the new one, the sealed slots."""

    file_id: bytes
    old_epoch: int
    new_epoch: int
    new_block: bytes  # page 1's 29-byte parameter block under the new epoch
    slots: tuple[tuple[int, bytes, bytes], ...]  # (epoch, nonce, sealed keys)
    phase: int = PHASE_STARTED
    next_page: int = 1

    def __repr__(self) -> str:
        return f"KeyRing(epochs {self.old_epoch}->{self.new_epoch}, {PHASE_NAMES.get(self.phase, self.phase)})"

    def header(self) -> bytes:
        """The bytes every slot is bound to."""
        return _HEAD.pack(RING_MAGIC, self.file_id, self.old_epoch, self.new_epoch, self.new_block)

    @classmethod
    def seal(
        cls, file_id: bytes, old_epoch: int, new_epoch: int, new_block: bytes, data_keys: Mapping[int, bytes]
    ) -> KeyRing:
        """A ring holding ``data_keys`` (epoch -> data key), one slot per key."""
        if len(new_block) != BLOCK_SIZE:
            raise ValueError(f"page 1's parameter block has {BLOCK_SIZE} bytes")
        ring = cls(file_id, old_epoch, new_epoch, new_block, ())
        payload = b"".join(e.to_bytes(2, "big") + bytes([len(k)]) + k for e, k in sorted(data_keys.items()))
        slots = []
        for epoch, key in sorted(data_keys.items()):
            nonce = os.urandom(_NONCE)
            sealed = AESGCMSIV(slot_key(key, file_id, epoch)).encrypt(nonce, payload, ring.header())
            slots.append((epoch, nonce, sealed))
        return replace(ring, slots=tuple(slots))

    def open(self, data_keys: Mapping[int, bytes], candidates: tuple[bytes, ...] = ()) -> dict[int, bytes] | None:
        """Every data key of the ring, opened with a key already held; None when none fits.

        ``data_keys`` are keys known by epoch; ``candidates`` are keys whose epoch is unknown
        (a raw key as the user gave it), tried on every slot.
        """
        for epoch, nonce, sealed in self.slots:
            tries = [data_keys[epoch]] if epoch in data_keys else []
            tries += [c for c in candidates if c not in tries]
            for key in tries:
                try:
                    payload = AESGCMSIV(slot_key(key, self.file_id, epoch)).decrypt(nonce, sealed, self.header())
                except InvalidTag:
                    continue
                return _keys(payload)
        return None

    def with_progress(self, phase: int, next_page: int) -> KeyRing:
        """The same ring with the sweep's progress."""
        return replace(self, phase=phase, next_page=next_page)

    def encode(self) -> bytes:
        """The file's bytes."""
        out = bytearray(self.header())
        out.append(len(self.slots))
        for epoch, nonce, sealed in self.slots:
            out += epoch.to_bytes(2, "big") + nonce + len(sealed).to_bytes(2, "big") + sealed
        out += bytes([self.phase]) + self.next_page.to_bytes(4, "big")
        return bytes(out) + zlib.crc32(out).to_bytes(4, "big")

    @classmethod
    def decode(cls, raw: bytes, name: str = "the key ring") -> KeyRing:
        """Parse a ring file; ``KeyRingError`` naming ``name`` when it is not one or is damaged."""
        if len(raw) < _HEAD.size + 1 + 9 or raw[:8] != RING_MAGIC:
            raise KeyRingError(f"{name} is not a turso_sync key ring")
        if zlib.crc32(raw[:-4]) != int.from_bytes(raw[-4:], "big"):
            raise KeyRingError(f"{name} is damaged (checksum mismatch)")
        _magic, file_id, old_epoch, new_epoch, block = _HEAD.unpack_from(raw)
        pos = _HEAD.size
        count = raw[pos]
        pos += 1
        slots = []
        for _ in range(count):
            epoch = int.from_bytes(raw[pos : pos + 2], "big")
            nonce = raw[pos + 2 : pos + 2 + _NONCE]
            length = int.from_bytes(raw[pos + 2 + _NONCE : pos + 4 + _NONCE], "big")
            pos += 4 + _NONCE
            slots.append((epoch, nonce, raw[pos : pos + length]))
            pos += length
        if pos + 5 != len(raw) - 4:
            raise KeyRingError(f"{name} is damaged (its slots do not add up)")
        phase = raw[pos]
        next_page = int.from_bytes(raw[pos + 1 : pos + 5], "big")
        return cls(file_id, old_epoch, new_epoch, block, tuple(slots), phase, next_page)


def _keys(payload: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    pos = 0
    while pos < len(payload):
        epoch = int.from_bytes(payload[pos : pos + 2], "big")
        length = payload[pos + 2]
        out[epoch] = payload[pos + 3 : pos + 3 + length]
        pos += 3 + length
    return out
