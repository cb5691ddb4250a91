"""The page: the unit every layer moves, and the two facts about it that every layer shares.

Every database here (a replica, the primary's, an overlay image) uses ``PAGE_SIZE``-byte pages:
the pull protocol carries only that size, and a replica's files are addressed in it.

``RESERVED_BYTES`` is what each page leaves free at its end (SQLite's "reserved bytes", header
byte 20): an encrypted page keeps its 12-byte nonce and 16-byte tag there (Turso's AES-GCM
format).  The primary creates every database with them, plaintext too, so a replica that
encrypts at rest can hold the primary's pages unchanged.

No imports: ``crypto``, ``local``, ``wire``, ``sync`` and ``primary`` all read these.
"""

from __future__ import annotations

#: Bytes per page of every database this library reads, writes or moves.
PAGE_SIZE = 4096

#: Bytes each page reserves at its end: an encrypted page's nonce (12) and tag (16).
RESERVED_BYTES = 28
