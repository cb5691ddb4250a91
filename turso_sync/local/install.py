"""Installing page images as one new committed WAL transaction, while other connections stay open.

The caller holds SQLite's WAL write lock (``BEGIN IMMEDIATE``).  The pages are appended after
the last committed frame, with the commit marker on the last one and the checksum chain
continued over the bytes as stored; the WAL is synced; then both copies of the wal-index
header in ``-shm`` are marked uninitialised.  The next read by any connection, in this process
or another, runs SQLite's own WAL recovery and sees the new state, or (if it already holds a
read transaction) keeps its snapshot.  A crash before the commit frame is durable leaves the
previous state; the commit frame makes the whole batch visible at once.
"""

from __future__ import annotations

import os
import secrets

from ..crypto.page_codec import SQLITE_MAGIC, PageCodec
from ..page import PAGE_SIZE
from .vfs import HandedFrame, file_descriptor, registry
from .walformat import (
    FrameHeader,
    WalFrame,
    WalHeader,
    WalScan,
    WalTxn,
    frame_offset,
    remember_scan,
    wal_checksum,
)
from .walindex import committed_wal

_ISINIT_OFFSETS = (12, 48 + 12)  # WalIndexHdr.isInit in both header copies


class InstallError(Exception):
    """A batch of pages could not be installed; the database is unchanged."""


def append_transaction(
    db_path: str, codec: PageCodec | None, pages: dict[int, bytes], db_size: int, page_size: int = PAGE_SIZE
) -> None:
    """Append ``pages`` (plaintext images) as one committed transaction ending at ``db_size`` pages.

    Each frame's body takes the codec's slot on disk (the page size, or more in the envelope
    layout); the WAL header keeps SQLite's page size.
    """
    if not pages:
        raise InstallError("nothing to install")
    if db_size < 1:
        raise InstallError(f"database size must be at least one page, got {db_size}")
    for pgno, image in pages.items():
        if len(image) != page_size:
            raise InstallError(f"page {pgno} is {len(image)} bytes, expected {page_size}")
        if pgno < 1 or pgno > db_size:
            raise InstallError(f"page {pgno} is outside the database size of {db_size} pages")
        if codec is not None and any(image[page_size - codec.reserved :]):
            raise InstallError(f"page {pgno} uses the bytes reserved for encryption")
    slot = codec.slot_size if codec is not None else page_size
    wal_path = db_path + "-wal"
    fd = os.open(wal_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        scan = committed_wal(db_path)  # after the last frame SQLite counts, as its own writers do
        hdr, committed = scan.header, scan.txns
        chunks: list[bytes] = []
        if hdr is None:
            salts = (secrets.randbits(32), secrets.randbits(32))
            header = WalHeader.build(page_size, 0, *salts)
            chunks.append(header)
            start = 0
            big = False
            prev = WalHeader.parse(header)
            assert prev is not None
            cksum = (prev.cksum1, prev.cksum2)
            index = 1
        else:
            if hdr.page_size != page_size:
                raise InstallError(f"WAL page size {hdr.page_size} differs from {page_size}")
            salts = hdr.salts
            big = hdr.big_endian
            if committed:
                index = committed[-1].commit_frame + 1
                cksum = scan.cksum  # the chain right after the last commit frame
            else:
                index = 1
                cksum = (hdr.cksum1, hdr.cksum2)
            start = frame_offset(index, slot)
        ordered = sorted(pages)
        # the plaintext chain SQLite's recovery will compute, when it is known here (encrypted WAL)
        plain_chain = None
        if pages.get(1, SQLITE_MAGIC)[:16] == SQLITE_MAGIC:  # else page 1 would not decrypt to these bytes
            plain_chain = _plain_chain_before(db_path, codec, salts, index, cksum, len(ordered))
        chains: list[tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]] = []
        frames: list[WalFrame] = []
        # one draw of random nonces for the whole batch (Turso's format), not one system call per page
        bodies = codec.encrypt_pages([(pgno, pages[pgno]) for pgno in ordered], "WAL") if codec is not None else None
        for n, pgno in enumerate(ordered):
            body = bodies[n] if bodies is not None else bytes(pages[pgno])
            commit = db_size if n == len(ordered) - 1 else 0
            head8 = pgno.to_bytes(4, "big") + commit.to_bytes(4, "big")
            prev_ct = cksum
            cksum = wal_checksum(head8 + body, cksum[0], cksum[1], big)
            if plain_chain is not None:
                prev_pt = plain_chain
                # over head8 then the page: the chain continues, no 4 KiB copy of head8 + page is made
                plain_chain = wal_checksum(pages[pgno], *wal_checksum(head8, prev_pt[0], prev_pt[1], big), big)
                chains.append((prev_ct, prev_pt, cksum, plain_chain))
            chunks.append(FrameHeader.build(pgno, commit, salts, cksum) + body)
            frames.append(WalFrame(index + n, pgno, commit, body))
        blob = b"".join(chunks)
        os.pwrite(fd, blob, start)
        os.fsync(fd)
        if chains:
            written = chunks[1:] if hdr is None else chunks  # each frame as written (a new WAL's header first)
            _hand_over(db_path, salts, index, written, [bytes(pages[pgno]) for pgno in ordered], chains)
        invalidate_wal_index(db_path)
        # what a scan of the WAL finds now (the wal-index is stale, so the file alone decides):
        # the committed transactions before, and this one, whose checksums were just computed.
        # Handed to the scan cache, so the frame log's next look at the WAL does not read back and
        # checksum every frame written here (``walformat.remember_scan`` checks it is this file)
        header_now = scan.header if hdr is not None else WalHeader.parse(chunks[0])
        txn = WalTxn(salts, frames[-1].index, db_size, frames, cksum)
        prior = scan.txns if hdr is not None else []
        after = WalScan(header_now, [*prior, txn], start + len(blob), cksum)
        remember_scan(db_path + "-wal", fd, after, slot if slot != page_size else None)
    finally:
        os.close(fd)


def _plain_chain_before(
    db_path: str, codec: PageCodec | None, salts: tuple[int, int], index: int, cksum: tuple[int, int], count: int
) -> tuple[int, int] | None:
    """The plaintext-domain checksum before frame ``index`` of an encrypted WAL, when this process knows it.

    SQLite's recovery checksums the plaintext frames the VFS hands it; for the frames written
    here to be handed over (``_hand_over``) their plaintext checksums are needed, which continue
    the chain before them: the WAL header's checksum for frame 1 (``cksum`` then), else what a
    WAL handle of this process recorded for frame ``index - 1``, trusted only if its ciphertext
    checksum is ``cksum`` (read from disk by the scan).  Only Turso's format (a page 1 with
    SQLite's magic), whose decrypt gives back exactly the plaintext encrypted (the reserved
    bytes were checked empty); and only for an install the hand-over keeps whole.
    """
    state = registry.get(db_path)
    if state is None or type(codec) is not PageCodec or count > state.handed.kept:
        return None
    if index == 1:
        return cksum
    hit = state.wal_chain.get((salts[0], salts[1], index - 1))
    if hit is None or hit[0] != cksum:
        return None
    return hit[1]


def _hand_over(
    db_path: str,
    salts: tuple[int, int],
    index: int,
    written: list[bytes],
    plains: list[bytes],
    chains: list[tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]],
) -> None:
    """Give the frames just written (``written``: frame ``index`` on, each as on disk) to the
    database's WAL handles, so its recovery does not decrypt and checksum them again."""
    state = registry.get(db_path)
    if state is None:
        return
    handed = [
        HandedFrame(disk, plain, prev_ct, prev_pt, ct, pt)
        for disk, plain, (prev_ct, prev_pt, ct, pt) in zip(written, plains, chains, strict=True)
    ]
    state.handed.add(salts[0].to_bytes(4, "big") + salts[1].to_bytes(4, "big"), index, handed)


def invalidate_wal_index(db_path: str) -> None:
    """Make every connection rebuild its view of the WAL on its next read (SQLite recovery).

    Written through the process's shared ``-shm`` descriptor: closing a descriptor of our own
    would drop the POSIX locks SQLite's connections in this process hold on the file.
    """
    try:
        with file_descriptor(db_path, "-shm") as fd:
            for off in _ISINIT_OFFSETS:
                os.pwrite(fd, b"\0", off)
    except FileNotFoundError:
        return
