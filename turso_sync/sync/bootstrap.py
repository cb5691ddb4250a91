"""Bootstrap: a new replica's database file, from the remote's pages (all, or a partial prefix).

``bootstrap`` is a sans-IO step (``exchange.py``): it asks for the pages, checks page 1 (page
size, reserved bytes for an encrypted replica), writes the file under a temporary name, and
gives it its name only when every page is there; then the frame log starts at sequence 0 (the
remote state) and ``<db>-sync`` records the revision.  A partial bootstrap writes the pages it
got into a file of full size and saves the presence bitmap that says which pages are real.
Until then ``state.bootstrapping`` marks the replica as unfinished, and opening it starts over.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

from pyroaring import BitMap

from .. import errors
from ..crypto.envelope import disk_size, envelope_cipher
from ..crypto.hardened import HardenedCodec
from ..crypto.page_codec import PageCodec, parse_key
from ..local.engine import LocalDatabase
from ..local.pagemap import write_new
from ..local.presence import PresenceMap
from ..page import PAGE_SIZE, RESERVED_BYTES
from .exchange import Steps
from .partial import PartialSync
from .remote import PulledPages, fetch_pages
from .state import PUSH_MARK_KEY, SyncState, drop_reverts, swept_reverts


@dataclass(frozen=True)
class KeyOptions:
    """The replica's encryption options, as given to ``connect`` (never stored)."""

    encryption_key: str | None = None
    cipher: str = "aes256gcm"

    def codec(self, remote_reserved: int | None = None) -> PageCodec | None:
        """A page codec for new pages (None for a plaintext replica).

        ``remote_reserved`` is what the remote's pages reserve (page 1's byte 20): 0 selects the
        envelope layout (``crypto/envelope.py``), which keeps such pages whole.
        """
        if self.encryption_key is None:
            return None
        cipher = self.cipher or "aes256gcm"
        if remote_reserved == 0:
            cipher = self.envelope_cipher()
        spec, key = parse_key(self.encryption_key, cipher)
        return PageCodec(spec, key)

    def envelope_cipher(self) -> str:
        """The cipher name of the envelope layout for this secret; EncryptionError when it cannot be."""
        try:
            return envelope_cipher(self.cipher or "aes256gcm")
        except ValueError as exc:
            raise errors.EncryptionError(str(exc)) from None

    def open(self, path: str, *, cipher: str | None = None, **kwargs: Any) -> LocalDatabase:
        """The replica's database with these options (``cipher`` overrides the one given, for a new file)."""
        return LocalDatabase(path, encryption_key=self.encryption_key, cipher=cipher or self.cipher, **kwargs)


def wal_mode_page(page: bytes, pgno: int) -> bytes:
    """Page 1 with the header's read/write versions set to WAL (2), as every replica runs in WAL."""
    if pgno != 1 or page[18:20] == b"\x02\x02":
        return page
    return page[:18] + b"\x02\x02" + page[20:]


def check_page1(page1: bytes, codec: PageCodec | None) -> None:
    """Refuse a remote database this replica cannot hold: other page size, wrong reserved bytes.

    An encrypted replica holds pages that reserve 28 bytes in Turso's (or the hardened) format,
    and pages that reserve none in the envelope layout (``KeyOptions.codec`` picks it).
    """
    if int.from_bytes(page1[16:18], "big") != PAGE_SIZE:
        raise errors.SyncError(f"the remote database does not use {PAGE_SIZE}-byte pages")
    if codec is not None and page1[20] != codec.reserved:
        raise errors.EncryptionError(
            f"the remote database reserves {page1[20]} bytes per page; an encrypted replica needs "
            f"{codec.reserved} (create the primary database with {RESERVED_BYTES} reserved bytes, as turso-sync "
            "serve does)"
        )


def bootstrap(
    path: str, state: SyncState, key: KeyOptions, timeout: float, partial: PartialSync | None = None
) -> Steps[int]:
    """Create the replica at ``path`` from the remote; returns the number of pages received.

    The caller counts the bytes and saves ``state`` once more afterwards.
    """
    state.bootstrapping = True
    state.save(path)
    if partial is None:
        result = yield from fetch_pages(state, "", timeout)
    else:
        result = yield from fetch_pages(state, "", timeout, page_ids=partial.page_selector(), query=partial.query or "")
    # a new client id: the remote holds no push mark for it, so its first push needs no read of it
    state.extra.setdefault(PUSH_MARK_KEY, [0, 0])
    if result.db_size == 0 and not result.pages:
        create_deferred(path, state, key, envelope=True)  # the remote database is still empty: nothing to copy
        state.synced_revision = result.revision
        state.bootstrapping = False
        state.touch_pull()
        return 0
    if 1 not in result.pages:
        raise errors.SyncError(f"the remote at {state.remote_url} sent no page 1 (size {result.db_size})")
    codec = key.codec(result.pages[1][20])  # a remote whose pages reserve no bytes: the envelope layout
    check_page1(result.pages[1], codec)
    if partial is None:
        _write_whole(path, result, codec)
    else:
        _write_partial(path, result, codec)
        state.partial = partial.to_json()
    key.open(path).close()  # starts the frame log: seq 0 is the remote state
    state.synced_revision = result.revision
    state.synced_seq = 0
    state.synced_db_size = result.db_size
    state.revert_seq = None
    state.revert_inline = None
    drop_reverts(path, None)  # a revert file of a replica that was here before is nobody's
    swept_reverts.add(path)
    state.bootstrapping = False
    state.touch_pull()
    return len(result.pages)


def _write_whole(path: str, result: PulledPages, codec: PageCodec | None) -> None:
    missing = [p for p in range(1, result.db_size + 1) if p not in result.pages]
    if missing:
        raise errors.SyncError(f"bootstrap is missing {len(missing)} pages (first: {missing[0]}); nothing written")
    tmp = path + ".bootstrap"
    tags = _PageMapTags(codec)
    with open(tmp, "wb") as f:
        for pgno in range(1, result.db_size + 1):
            page = wal_mode_page(result.pages[pgno], pgno)
            f.write(tags.add(pgno, codec.encrypt(page, pgno)) if codec is not None else page)
        if codec is not None and codec.slot_size != PAGE_SIZE:
            f.truncate(disk_size(result.db_size, PAGE_SIZE, codec.slot_size))  # the envelope file's padding
        f.flush()
        os.fsync(f.fileno())
    for suffix in ("-wal", "-shm", "-frames"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)
    tags.save(path)  # before the file takes its name: a hardened file's page map
    os.replace(tmp, path)


class _PageMapTags:
    """The images a bootstrap writes, for the page map of a hardened file (``local/pagemap.py``)."""

    def __init__(self, codec: PageCodec | None) -> None:
        self.codec = codec if isinstance(codec, HardenedCodec) else None
        self.images: dict[int, bytes] = {}

    def add(self, pgno: int, enc: bytes) -> bytes:
        if self.codec is not None:
            self.images[pgno] = enc
        return enc

    def save(self, path: str) -> None:
        if self.codec is not None:
            write_new(path, self.codec, self.images)


def _write_partial(path: str, result: PulledPages, codec: PageCodec | None) -> None:
    """The pages received, in a file of full size; the presence bitmap is saved before the file
    takes its name (holes are never trusted, only the bitmap)."""
    tmp = path + ".bootstrap"
    slot = codec.slot_size if codec is not None else PAGE_SIZE  # a page's place on disk (envelope: larger)
    tags = _PageMapTags(codec)
    with open(tmp, "wb") as f:
        f.truncate(disk_size(result.db_size, PAGE_SIZE, slot))
        for pgno in sorted(result.pages):
            if pgno > result.db_size:
                continue
            page = wal_mode_page(result.pages[pgno], pgno)
            image = tags.add(pgno, codec.encrypt(page, pgno)) if codec is not None else page
            os.pwrite(f.fileno(), image, (pgno - 1) * slot)
        f.flush()
        os.fsync(f.fileno())
    for suffix in ("-wal", "-shm", "-frames", "-present.lock"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)
    present = BitMap(p for p in result.pages if p <= result.db_size)
    PresenceMap(result.db_size, result.revision, present).save(path)
    tags.save(path)  # the pages still missing have no image in the map until they are fetched
    os.replace(tmp, path)


def create_deferred(path: str, state: SyncState, key: KeyOptions, envelope: bool = False) -> None:
    """A replica that has not copied anything from the remote yet (an empty remote, or
    ``bootstrap_if_empty=False``): an empty database whose pages reserve room for encryption.

    With ``envelope`` (the remote has no database yet), an encrypted replica uses the envelope
    layout instead: its pages reserve nothing, like the pages a default ``tursodb`` (and most
    Turso databases) will create when the first push reaches it.  (A remote that has pages,
    such as ``turso-sync serve``'s, which creates page 1 with the database, is never empty.)
    """
    if envelope and key.encryption_key is not None:
        key.open(path, cipher=key.envelope_cipher()).close()
    else:
        key.open(path, reserved_bytes=RESERVED_BYTES).close()
    state.extra.setdefault(PUSH_MARK_KEY, [0, 0])  # a new client id: no push mark on the remote yet
    state.synced_revision = ""
    state.synced_seq = 0
    state.synced_db_size = 0  # the remote has no pages yet
    state.save(path)


def fetch_pinned(state: SyncState, pgnos: list[int], revision: str, timeout: float) -> Steps[dict[int, bytes]]:
    """Images of ``pgnos`` (1-based) at ``revision``: a partial replica's fetch of missing pages."""
    try:
        ids = BitMap(p - 1 for p in pgnos)
        result = yield from fetch_pages(state, "", timeout, server_revision=revision, page_ids=ids)
    except errors.RemoteError as exc:
        if exc.status in (409, 410):
            raise errors.SyncError(
                f"the remote no longer serves revision {revision}, which this partial replica's missing "
                f"pages are pinned to ({exc}); pages already local keep working. Re-clone it, keeping its "
                "pending changes: `turso-sync verify --repair PATH` (ReplicaFiles(PATH).repair()). A partial "
                "replica that pulls more often than the remote's history window keeps its pin within it"
            ) from None
        raise
    wanted = set(pgnos)
    return {p: wal_mode_page(page, p) for p, page in result.pages.items() if p in wanted}
