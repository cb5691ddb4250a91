"""An in-memory overlay database: pages read on demand from a source, writes kept in memory.

The rebase replays local changes on the remote state.  Rather than building that state as a
whole image (O(database size) per pull), it opens an SQLite database whose pages come from a
function, the synced base with the pulled pages laid over it, and keeps every page SQLite writes
in a dict.  The pull then installs exactly those pages.  Only pages the replay touches are read.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

import apsw

from ..page import PAGE_SIZE as P

OVERLAY_VFS = "turso_sync_overlay"

PageSource = Callable[[int], bytes]


class OverlayImage:
    """A database image made of a page source plus written pages."""

    def __init__(self, source: PageSource, size: int) -> None:
        self.source = source
        self.size = size  # pages
        self.written: dict[int, bytes] = {}

    def page(self, pgno: int) -> bytes:
        """The current image of a page (written, else from the source)."""
        data = self.written.get(pgno)
        if data is None:
            data = self.source(pgno)
            if pgno == 1:
                data = data[:18] + b"\x01\x01" + data[20:]  # rollback mode for the in-memory copy
        return data


class _OverlayFile:
    """The main database file of an overlay connection (no journal file: journal_mode=MEMORY)."""

    def __init__(self, image: OverlayImage) -> None:
        self.image = image

    def xRead(self, amount: int, offset: int) -> bytes:
        out = bytearray()
        first, last = offset // P, (offset + amount - 1) // P
        for index in range(first, last + 1):
            if index >= self.image.size:
                break
            out += self.image.page(index + 1)
        start = offset - first * P
        return bytes(out[start : start + amount])

    def xWrite(self, data: bytes, offset: int) -> None:
        if offset % P or len(data) % P:
            # SQLite writes whole pages in rollback mode; anything else is a bug worth seeing
            raise apsw.IOError(f"overlay: unaligned write of {len(data)} bytes at {offset}")
        for i in range(0, len(data), P):
            pgno = (offset + i) // P + 1
            self.image.written[pgno] = bytes(data[i : i + P])
            self.image.size = max(self.image.size, pgno)

    def xTruncate(self, newsize: int) -> None:
        pages = newsize // P
        self.image.size = pages
        for pgno in [p for p in self.image.written if p > pages]:
            del self.image.written[pgno]

    def xFileSize(self) -> int:
        return self.image.size * P

    def xSync(self, flags: int) -> None:
        return None

    def xLock(self, level: int) -> None:
        return None

    def xUnlock(self, level: int) -> None:
        return None

    def xCheckReservedLock(self) -> bool:
        return False

    def xFileControl(self, op: int, ptr: int) -> bool:
        return False

    def xSectorSize(self) -> int:
        return P

    def xDeviceCharacteristics(self) -> int:
        return 0

    def xClose(self) -> None:
        return None


class _OverlayVFS(apsw.VFS):
    def __init__(self) -> None:
        super().__init__(OVERLAY_VFS, "")
        self.images: dict[str, OverlayImage] = {}
        self.lock = threading.Lock()

    def xOpen(self, name: apsw.URIFilename | str | None, flags: list[int]) -> _OverlayFile:  # type: ignore[override]
        key = name if isinstance(name, str) else (name.filename() if name is not None else None)
        with self.lock:
            image = self.images.get(key or "")
        if image is None or not flags[0] & apsw.SQLITE_OPEN_MAIN_DB:
            raise apsw.CantOpenError("the overlay opens only its own main database (journal_mode=MEMORY)")
        return _OverlayFile(image)

    def xAccess(self, pathname: str, flags: int) -> bool:
        return False  # no journal, no WAL: nothing else exists

    def xFullPathname(self, name: str) -> str:
        return name

    def xDelete(self, filename: str, syncdir: bool) -> None:
        return None


_vfs: _OverlayVFS | None = None
_names = itertools.count()
_vfs_lock = threading.Lock()


def open_overlay(image: OverlayImage, reserved: int = 0) -> apsw.Connection:
    """An SQLite connection on ``image``; every page it writes lands in ``image.written``."""
    global _vfs
    with _vfs_lock:
        if _vfs is None:
            _vfs = _OverlayVFS()
        vfs = _vfs
    name = f"/overlay-{next(_names)}.db"
    with vfs.lock:
        vfs.images[name] = image
    db = apsw.Connection(name, vfs=OVERLAY_VFS, flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
    with vfs.lock:
        del vfs.images[name]  # the open file keeps its image
    db.execute("PRAGMA journal_mode=MEMORY").fetchall()
    db.execute("PRAGMA temp_store=MEMORY")
    if image.size == 0:
        if reserved:
            db.reserve_bytes(reserve=reserved)
        db.execute(f"PRAGMA page_size={P}")
    return db
