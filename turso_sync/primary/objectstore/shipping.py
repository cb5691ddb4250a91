"""What the primary ships from its local database: revisions and whole images, as stored on disk.

The store receives page images exactly as the local engine keeps them, never decrypted: a
database with an at-rest key is encrypted in the store with the same key, and a restored file
opens with it.  These read the local engine only; they run on the database's worker thread.
"""

from __future__ import annotations

import os

from ...local.engine import LocalDatabase
from ...local.vfs import file_descriptor
from ...local.walformat import scan_wal
from .errors import ObjectStoreError
from .segment import Revision, SnapshotImage


def revisions_since(engine: LocalDatabase, since: int, offset: int = 0) -> list[Revision]:
    """Every committed transaction after local sequence number ``since``, as a revision numbered
    ``seq + offset``, with its raw page images.  Raises RevisionGone like the frame log."""
    out: list[Revision] = []
    for txn in engine.log.history(since):
        # a page the commit cut off has no image after it (and lies past the size)
        pages = {page.pgno: page.post for page in txn.pages if page.post}
        out.append(Revision(txn.seq + offset, txn.db_size, pages))
    return out


def raw_image(engine: LocalDatabase, offset: int = 0) -> SnapshotImage:
    """The whole database as stored on disk, at its current revision (``seq + offset``).

    Reads under the write lock, so the image is exactly one committed state: the newest WAL
    frame of a page if there is one, else the page in the database file.
    """
    P = engine.page_size
    with engine.write_lock() as db:
        seq = engine.current_seq()
        size = int(db.execute("PRAGMA page_count").get)  # type: ignore[arg-type]
        latest: dict[int, bytes] = {}
        try:
            for wtxn in scan_wal(engine.path + "-wal").txns:
                for frame in wtxn.frames:
                    latest[frame.pgno] = frame.body
        except FileNotFoundError:
            pass
        parts: list[bytes] = []
        with file_descriptor(engine.path) as fd:
            for pgno in range(1, size + 1):
                raw = latest.get(pgno)
                if raw is None:
                    raw = os.pread(fd, P, (pgno - 1) * P)
                if len(raw) != P:
                    raise ObjectStoreError(f"{engine.path}: page {pgno} of {size} is missing; cannot take a snapshot")
                parts.append(raw)
    return SnapshotImage(seq + offset, P, size, b"".join(parts))
