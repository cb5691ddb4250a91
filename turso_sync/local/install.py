"""Installing page images as one new committed WAL transaction, while other connections stay open.

The caller holds SQLite's WAL write lock (``BEGIN IMMEDIATE``).  The pages are appended after
the last committed frame, with the commit marker on the last one and the checksum chain
continued over the bytes as stored; the WAL is synced; then SQLite's connections are told
(``publish``).  Where it can (the engine's installs), the commit is written into the wal-index
in ``-shm`` as SQLite's own writer writes it (``walindex.index_commit``); otherwise both copies of
the wal-index header are marked uninitialised, and the next read by any connection, in this
process or another, runs SQLite's own WAL recovery.  Either way every connection sees the new
state at its next read transaction, or (if it already holds one) keeps its snapshot.  A crash
before the commit frame is durable leaves the previous state; the commit frame makes the whole
batch visible at once.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._compiled import speedups
from ..crypto.page_codec import NONCE_SIZE, SQLITE_MAGIC, PageCodec, seal_pages
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
from .walindex import IndexedCommit, committed_wal, index_commit

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_ISINIT_OFFSETS = (12, 48 + 12)  # WalIndexHdr.isInit in both header copies


class InstallError(Exception):
    """A batch of pages could not be installed; the database is unchanged."""


def append_transaction(
    db_path: str,
    codec: PageCodec | None,
    pages: dict[int, bytes],
    db_size: int,
    page_size: int = PAGE_SIZE,
    in_place: bool = False,
) -> bool:
    """Append ``pages`` (plaintext images) as one committed transaction ending at ``db_size`` pages.

    Each frame's body takes the codec's slot on disk (the page size, or more in the envelope
    layout); the WAL header keeps SQLite's page size.

    With ``in_place``, the wal-index is brought up to date where it can be (``publish``), and
    the result says whether it was: then no connection runs a recovery, and the caller must drop
    its own connection's page cache after giving the lock back (``engine._install_locked``).
    Otherwise (and always without ``in_place``) it is marked stale and the result is False.
    """
    if not pages:
        raise InstallError("nothing to install")
    if db_size < 1:
        raise InstallError(f"database size must be at least one page, got {db_size}")
    reserved = codec.reserved if codec is not None else 0
    unused = bytes(reserved)  # what the tail reserved for encryption must hold (compared, not iterated)
    for pgno, image in pages.items():
        if len(image) != page_size:
            raise InstallError(f"page {pgno} is {len(image)} bytes, expected {page_size}")
        if pgno < 1 or pgno > db_size:
            raise InstallError(f"page {pgno} is outside the database size of {db_size} pages")
        if reserved and image[page_size - reserved :] != unused:
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
        bodies: list[bytes]
        chain_after: tuple[int, int] | None  # the chain after the commit, as SQLite computes it
        if type(codec) is PageCodec:
            # Turso's format: each page sealed straight into its frame, which is then checksummed
            # while its bytes are at hand; one draw of random nonces for the whole batch, not one
            # system call per page
            aead, magic = codec.sealer()
            plains = [bytes(pages[pgno]) for pgno in ordered]
            nonces = os.urandom(NONCE_SIZE * len(ordered))
            written, bodies, cksum, chain_after, handed = install_sealed_frames(
                ordered, plains, nonces, aead, magic, db_size, salts, cksum, big, plain_chain, HandedFrame
            )
        else:
            if codec is not None:  # the hardened format or the envelope layout: page by page
                bodies = codec.encrypt_pages([(pgno, pages[pgno]) for pgno in ordered], "WAL")
            else:
                bodies = [bytes(pages[pgno]) for pgno in ordered]
            plains = [bytes(pages[pgno]) for pgno in ordered] if plain_chain is not None else []
            written, cksum, chain_after, handed = install_frames(
                ordered, bodies, plains, db_size, salts, cksum, big, plain_chain, HandedFrame
            )
            if codec is None:
                chain_after = cksum  # SQLite checksums what is on disk
        if hdr is None:
            chunks.extend(written)
        else:
            chunks = written
        blob = b"".join(chunks)
        os.pwrite(fd, blob, start)
        os.fsync(fd)
        if handed is not None:
            _hand_over(db_path, salts, index, handed)
        commit = None
        if in_place and hdr is not None and chain_after is not None:
            stored = salts[0].to_bytes(4, "big") + salts[1].to_bytes(4, "big")
            commit = IndexedCommit(index, ordered, db_size, stored, chain_after)
        indexed = publish(db_path, commit, handed)
        # what a scan of the WAL finds now (the wal-index, stale or brought up to date, counts the
        # whole file): the committed transactions before, and this one, whose checksums were just computed.
        # Handed to the scan cache, so the frame log's next look at the WAL does not read back and
        # checksum every frame written here (``walformat.remember_scan`` checks it is this file)
        header_now = scan.header if hdr is not None else WalHeader.parse(chunks[0])
        last = len(ordered) - 1
        frames = [WalFrame(index + n, pgno, db_size if n == last else 0, bodies[n]) for n, pgno in enumerate(ordered)]
        txn = WalTxn(salts, frames[-1].index, db_size, frames, cksum)
        prior = scan.txns if hdr is not None else []
        after = WalScan(header_now, [*prior, txn], start + len(blob), cksum)
        remember_scan(db_path + "-wal", fd, after, slot if slot != page_size else None)
    finally:
        os.close(fd)
    return indexed


def publish(db_path: str, commit: IndexedCommit | None, handed: list[HandedFrame] | None = None) -> bool:
    """Let SQLite's connections see a transaction just appended and synced; True if done in place.

    In place (``walindex.index_commit``) when ``commit`` is given and the wal-index allows it:
    the frames' plaintext chain entries are then recorded as recovery would have recorded them
    (``handed``: an encrypted WAL's next install continues the chain from them).  Otherwise, or
    if writing the wal-index fails part-way, the wal-index is marked stale: every connection's
    next read runs SQLite's recovery from the file.
    """
    if commit is not None:
        try:
            if index_commit(db_path, commit):
                state = registry.get(db_path)
                if handed is not None and state is not None:
                    for n, frame in enumerate(handed):
                        state.wal_chain[(*frame.salts, commit.first + n)] = (frame.ct, frame.pt)
                return True
        except OSError:
            pass  # (entries past mxFrame at most, as an interrupted SQLite writer leaves)
    invalidate_wal_index(db_path)
    return False


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


def _hand_over(db_path: str, salts: tuple[int, int], index: int, handed: list[HandedFrame]) -> None:
    """Give the frames just written (frame ``index`` on) to the database's WAL handles, so its
    recovery does not decrypt and checksum them again."""
    state = registry.get(db_path)
    if state is None:
        return
    state.handed.add(salts[0].to_bytes(4, "big") + salts[1].to_bytes(4, "big"), index, handed)


Chain = tuple[int, int]


def _install_frames_py(
    pgnos: list[int],
    bodies: list[bytes],
    plains: list[bytes],
    db_size: int,
    salts: tuple[int, int],
    cksum: Chain,
    big: bool,
    plain_chain: Chain | None,
    handed_type: type[HandedFrame],
) -> tuple[list[bytes], Chain, Chain | None, list[HandedFrame] | None]:
    """The frames of one installed transaction: ``_speedups.install_frames``'s pure-Python twin.

    Frame ``n`` is page ``pgnos[n]`` with body ``bodies[n]`` (as stored), the last one the commit
    frame.  Returns each frame as written (header and body), the checksum chain after the last
    one (continued from ``cksum``); and, when ``plain_chain`` is given, the same chain over the
    plaintext images ``plains`` and each frame as handed over to WAL recovery (else None twice).
    """
    if not pgnos or len(bodies) != len(pgnos) or (plain_chain is not None and len(plains) != len(pgnos)):
        raise ValueError("install_frames(): one body (and plaintext) per page, at least one page")
    if len({len(body) for body in bodies}) != 1 or len(bodies[0]) % 8:
        raise ValueError(f"install_frames(): bodies of {len(bodies[0])} bytes (one length, a multiple of 8)")
    frames: list[bytes] = []
    handed: list[HandedFrame] = []
    last = len(pgnos) - 1
    for n, pgno in enumerate(pgnos):
        body = bodies[n]
        commit = db_size if n == last else 0
        head8 = pgno.to_bytes(4, "big") + commit.to_bytes(4, "big")
        prev_ct = cksum
        # over head8 then the body: the chain continues, no 4 KiB copy of head8 + body is made
        cksum = wal_checksum(body, *wal_checksum(head8, cksum[0], cksum[1], big), big)
        disk = FrameHeader.build(pgno, commit, salts, cksum) + body
        frames.append(disk)
        if plain_chain is not None:
            prev_pt = plain_chain
            plain_chain = wal_checksum(plains[n], *wal_checksum(head8, prev_pt[0], prev_pt[1], big), big)
            handed.append(handed_type(disk, plains[n], prev_ct, prev_pt, cksum, plain_chain))
    return frames, cksum, plain_chain, handed if plain_chain is not None else None


def _install_sealed_frames_py(
    pgnos: list[int],
    plains: list[bytes],
    nonces: bytes,
    aead: AESGCM,
    magic: bytes,
    db_size: int,
    salts: tuple[int, int],
    cksum: Chain,
    big: bool,
    plain_chain: Chain | None,
    handed_type: type[HandedFrame],
) -> tuple[list[bytes], list[bytes], Chain, Chain | None, list[HandedFrame] | None]:
    """The frames of one transaction installed into a WAL in Turso's format, from the plaintext pages:
    ``_speedups.install_sealed_frames``'s pure-Python twin.

    Page ``pgnos[n]``'s plaintext ``plains[n]`` is sealed under ``nonces[12n:12n + 12]``
    (``page_codec.seal_pages``, with ``PageCodec.sealer()``'s ``aead`` and ``magic``); the sealed
    pages are the bodies of ``_install_frames_py``, whose result follows them: frames, the sealed
    pages, the checksum chain after the last frame, and the plaintext chain and handed-over frames
    when ``plain_chain`` is given (else None twice).
    """
    if not pgnos or len(plains) != len(pgnos):
        raise ValueError("install_sealed_frames(): one plaintext per page, at least one page")
    size = len(plains[0])
    if size % 8 or size < 512 or any(len(plain) != size for plain in plains):
        raise ValueError(
            f"install_sealed_frames(): plaintexts of {sorted({len(plain) for plain in plains})} bytes "
            "(one length, a multiple of 8, at least 512)"
        )
    if len(nonces) != NONCE_SIZE * len(pgnos):
        raise ValueError(f"install_sealed_frames(): {len(nonces)} nonce bytes for {len(pgnos)} pages (12 each)")
    bodies = seal_pages(list(zip(pgnos, plains, strict=True)), nonces, aead, magic, size)
    frames, cksum, plain_chain, handed = _install_frames_py(
        pgnos, bodies, plains if plain_chain is not None else [], db_size, salts, cksum, big, plain_chain, handed_type
    )
    return frames, bodies, cksum, plain_chain, handed


_compiled = speedups()
#: the frames of one installed transaction (see ``_install_frames_py``), compiled where built
install_frames: Callable[
    [list[int], list[bytes], list[bytes], int, tuple[int, int], Chain, bool, Chain | None, type[HandedFrame]],
    tuple[list[bytes], Chain, Chain | None, list[HandedFrame] | None],
] = _compiled.install_frames if _compiled is not None else _install_frames_py
#: the same from plaintext pages sealed in Turso's format (see ``_install_sealed_frames_py``), compiled where built
install_sealed_frames: Callable[
    [list[int], list[bytes], bytes, AESGCM, bytes, int, tuple[int, int], Chain, bool, Chain | None, type[HandedFrame]],
    tuple[list[bytes], list[bytes], Chain, Chain | None, list[HandedFrame] | None],
] = getattr(_compiled, "install_sealed_frames", _install_sealed_frames_py)


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
