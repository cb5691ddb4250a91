"""The encrypting VFS: SQLite (APSW) underneath, Turso's encrypted format (or the hardened one) on disk.

Files are opened through the default unix VFS, so WAL mode keeps its normal shared-memory
locking across connections and processes.  What this layer adds:

* main database: every page is encrypted on write and verified and decrypted on read;
* WAL: frame bodies are encrypted like database pages, and the frame checksums on disk are
  computed over the ciphertext (Turso's rule).  SQLite computes them over the plaintext, so
  this file translates checksums in both directions: on write it recomputes them over the
  ciphertext, on read it verifies the ciphertext chain and hands SQLite the plaintext chain;
* rollback journal (only used while a new database is created): page records are encrypted;
* checkpoints: before SQLite copies WAL frames into the database file, the frame log
  (``framelog.py``) archives them, so no committed frame is lost to a WAL reset;
* partial replicas: a page missing from the database file is fetched before it is read
  (``lazy.py``), and pages a checkpoint writes are marked present under the same lock.

Temporary files are refused: connections keep ``temp_store=MEMORY``.

The codec is either format (``crypto/page_codec.py``, ``crypto/hardened.py``); this file tells it
where each image goes (``encrypt(page, pgno, "WAL")``) and where each was read from, which the
hardened format binds into every page, so an image read from another place is refused by page.
A hardened codec also gets a reader of the database's key ring file (``<db>-rekey``), which it
reads when it meets a key epoch it does not hold, during a key rotation (``local/rekey.py``).
A checkpoint re-encrypts every page it copies under the newest epoch the codec holds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import apsw

from .. import errors
from .._compiled import fastvfs, speedups
from ..crypto.envelope import disk_size, pages_on_disk
from ..crypto.hardened import HardenedCodec
from ..crypto.page_codec import PageAuthError, PageCodec, PageDecryptError
from ..page import PAGE_SIZE, RESERVED_BYTES
from .walformat import (
    FRAME_HEADER_SIZE,
    WAL_HEADER_SIZE,
    forget_wal,
    frame_index,
    frame_offset,
    wal_checksum,
)

if TYPE_CHECKING:
    from .framelog import FrameLog
    from .lazy import LazyPages
    from .pagemap import PageMap

VFS_NAME = "turso_sync"
log = logging.getLogger(__name__)

# the unix file's own methods, called without building a ``super()`` object on the hot paths
_base_read = apsw.VFSFile.xRead
_base_write = apsw.VFSFile.xWrite
_base_size = apsw.VFSFile.xFileSize
_CHECKSUM = struct.Struct(">II")  # a WAL frame header's checksum (bytes 16..24)
_SALTS_CHECKSUM = struct.Struct(">IIII")  # a frame header's salts and checksum (bytes 8..24)
_SALTS = struct.Struct(">II")  # a frame header's salts (bytes 8..16)
#: frames of installs kept for WAL recovery per database (a pull's WAL is checkpointed past 1 MiB, ~250 frames)
HANDED_FRAMES_KEPT = 512
#: frames WAL recovery's reads get from one pread (132 KiB at 4 KiB pages)
READ_AHEAD = 32
_base_file_control = apsw.VFSFile.xFileControl
_preadv = os.preadv
#: page 1 read whole from the database file that does not verify is read again after these pauses
#: (s), in case a write in another process was under way (``EncryptedDBFile.xRead``); then refused
_SETTLE_WAITS = (0.001, 0.01, 0.05)
#: how long a read waits at most for another process's page map write cycle (s)
_CYCLE_WAIT = 5.0
_CKPT_CONTROLS = frozenset({apsw.SQLITE_FCNTL_CKPT_START, apsw.SQLITE_FCNTL_CKPT_DONE})
_SIZE_CONTROLS = frozenset({apsw.SQLITE_FCNTL_SIZE_HINT, apsw.SQLITE_FCNTL_CHUNK_SIZE})
# the compiled router of file controls (``_speedups.c``), or None: then the class's method routes
_file_control_router = getattr(speedups(), "file_control_router", None)
# the compiled page reader (``_speedups.c``), or None: then the class's xRead reads every page
_page_reader = getattr(speedups(), "page_reader", None)
# the compiled reader of handed-over WAL frames (``_speedups.c``), or None: then the class's xRead reads them
_wal_frame_reader = getattr(speedups(), "wal_frame_reader", None)
# the compiled writer of new WAL frames (``_speedups.c``), or None: then the class's xWrite writes them
_wal_frame_writer = getattr(speedups(), "wal_frame_writer", None)
# the VFS in C in front of this one (``_fastvfs.c``), or None: then connections open this VFS itself
_fastvfs = fastvfs()
#: the file methods the shim may send straight to the unix file when a class leaves them to it
_DIRECT_METHODS = ("xLock", "xUnlock", "xCheckReservedLock", "xFileSize", "xSectorSize", "xDeviceCharacteristics")


def _claim(file: EncryptedDBFile | PlainDBFile, state: DatabaseState, fd: int) -> None:
    """Hand a main database file being opened to the compiled shim's open under way (``_fastvfs.claim``).

    Not for a partial replica (its reads fetch missing pages here).  The calls the file's class
    leaves to ``apsw.VFSFile`` may skip Python; ``_handled_controls`` are the file controls it acts on.
    """
    if _fastvfs is None or state.lazy is not None:
        return
    cls = type(file)
    assert cls._handled_controls == _CKPT_CONTROLS  # what ``DatabaseState.page_key`` hands the shim
    direct = all(getattr(cls, m) is getattr(apsw.VFSFile, m) for m in _DIRECT_METHODS)
    _fastvfs.claim(file, state.page_key(fd), direct)


def _route_file_controls(file: apsw.VFSFile, handled: frozenset[int]) -> None:
    """Send every file control but ``handled`` straight to the unix file's, without a Python frame.

    SQLite sends ``SQLITE_FCNTL_LOCK_TIMEOUT`` at every read transaction (and several per commit),
    and the file's class method would run a Python frame for each (about 2,700 instructions of a
    point read).  APSW looks ``xFileControl`` up on the file object, so an instance attribute wins
    over the class's: the compiled router set here calls the class's method (``hook``) only for the
    ``handled`` ops, which are the ones it acts on.  Without the compiled helper the method routes
    the same way itself.
    """
    if _file_control_router is not None:
        router = _file_control_router(file, handled, type(file).xFileControl, _base_file_control)
        file.__dict__["xFileControl"] = router


class HandedFrame:
    """One WAL frame an install wrote: the bytes on disk and what SQLite's recovery is to see.

    ``disk`` is the frame as written (header with the ciphertext checksum, encrypted body);
    ``head`` the header SQLite wrote would carry (the same, with the plaintext checksum ``pt``);
    ``plain`` the body in plaintext, exactly what decrypting ``disk``'s body gives.  ``prev_ct``
    and ``prev_pt`` are the two chains' values before the frame, which ``ct`` and ``pt`` continue.
    """

    __slots__ = ("ct", "disk", "given", "prev_ct", "prev_pt", "pt", "salts")

    def __init__(
        self,
        disk: bytes,
        plain: bytes,
        prev_ct: tuple[int, int],
        prev_pt: tuple[int, int],
        ct: tuple[int, int],
        pt: tuple[int, int],
    ) -> None:
        self.disk = disk
        self.prev_ct, self.prev_pt, self.ct, self.pt = prev_ct, prev_pt, ct, pt
        self.salts: tuple[int, int] = _SALTS.unpack_from(disk, 8)  # type: ignore[assignment]
        # the whole frame SQLite is handed, made once: recovery reads every frame of the WAL each
        # time it runs (after every install), so a frame is handed over many times before a checkpoint
        self.given = disk[:16] + _CHECKSUM.pack(*pt) + plain

    @property
    def head(self) -> bytes:
        """The frame header SQLite is handed (the plaintext checksum ``pt`` in place of ``ct``)."""
        return self.given[:FRAME_HEADER_SIZE]

    @property
    def plain(self) -> bytes:
        """The body in plaintext."""
        return self.given[FRAME_HEADER_SIZE:]


class HandedFrames:
    """The frames installs in this process wrote last, by (salts as stored, frame number): bounded.

    An encrypted WAL's recovery otherwise decrypts every frame and checksums it twice
    (``EncryptedWALFile._read_full_frame``).  A frame is taken from here only while the file holds
    exactly the bytes written (compared whole, so a changed frame is decrypted and refused as
    before) and both checksum chains before it are the ones it continued.
    """

    def __init__(self, kept: int = HANDED_FRAMES_KEPT) -> None:
        self.kept = kept
        self._frames: OrderedDict[tuple[bytes, int], HandedFrame] = OrderedDict()
        self._lock = threading.Lock()
        #: ``get`` for a caller that has the key at hand, ``(salts as stored, frame number)``: one
        #: dict look-up, no Python frame (WAL recovery asks once per frame it reads)
        self.lookup: Callable[[tuple[bytes, int]], HandedFrame | None] = self._frames.get

    def __bool__(self) -> bool:
        return bool(self._frames)

    def __len__(self) -> int:
        return len(self._frames)

    def get(self, salts: bytes, index: int) -> HandedFrame | None:
        return self._frames.get((salts, index))

    def add(self, salts: bytes, first: int, frames: list[HandedFrame]) -> None:
        """Frames ``first``, ``first + 1``, ... of the WAL whose salts (as stored) are ``salts``."""
        with self._lock:
            if self._frames and next(iter(self._frames))[0] != salts:
                self._frames.clear()  # a new WAL generation: the old one's frames are gone
            for n, frame in enumerate(frames):
                self._frames[(salts, first + n)] = frame
                self._frames.move_to_end((salts, first + n))
            while len(self._frames) > self.kept:
                self._frames.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()


@dataclass
class DatabaseState:
    """What every file of one database shares within a process: its codec and hooks."""

    path: str
    codec: PageCodec | None
    before_checkpoint: Callable[[], object] | None = None
    frame_log: FrameLog | None = None
    archive_error: str | None = None
    last_error: list[PageAuthError] = field(default_factory=list)
    users: int = 0
    _lazy: LazyPages | None = None  # a partial replica's missing pages (``lazy``)
    lazy_error: list[errors.Error] = field(default_factory=list)  # why a missing page could not be read
    lazy_ckpt_held: bool = False
    in_checkpoint: bool = False  # between SQLITE_FCNTL_CKPT_START and CKPT_DONE
    # during a checkpoint, in Turso's format: (page number, plaintext, ciphertext) of the WAL frame
    # SQLite read last, which it writes to the database file next (``EncryptedDBFile.xWrite``)
    checkpoint_page: tuple[int, bytes, bytes] | None = None
    page_map: PageMap | None = None  # a hardened file's page map (``pagemap.py``), made on first use
    # an encrypted WAL's checksum chain, shared by every WAL handle of the database in this process:
    # (salt1, salt2, frame) -> (ciphertext checksum, plaintext checksum) after that frame, trusted
    # only while the ciphertext checksum stored on disk still says the same (``EncryptedWALFile``)
    wal_chain: dict[tuple[int, int, int], tuple[tuple[int, int], tuple[int, int]]] = field(default_factory=dict)
    # frames an install in this process wrote (``install.py``), so WAL recovery need not decrypt and
    # checksum them again: see ``HandedFrames``
    handed: HandedFrames = field(default_factory=lambda: HandedFrames())
    _fds: dict[str, int] = field(default_factory=dict)
    _fd_lock: threading.Lock = field(default_factory=threading.Lock)
    # the key and descriptor the compiled shim reads pages with (``_fastvfs.PageKey``), made on first use
    _page_key: Any = None

    @property
    def lazy(self) -> LazyPages | None:
        """A partial replica's missing pages (None: every page is on disk)."""
        return self._lazy

    @lazy.setter
    def lazy(self, pages: LazyPages | None) -> None:
        self._lazy = pages
        if pages is not None:
            self.stop_fast_reads()  # its missing pages are fetched by the Python file

    def record(self, err: PageAuthError) -> None:
        self.last_error[:] = [err]

    def page_key(self, fd: int) -> Any:
        """The compiled shim's ``PageKey`` for this database (Turso's format or plaintext; its
        descriptor ``fd``, which a plaintext one does not use), made once."""
        with self._fd_lock:
            if self._page_key is None:
                assert _fastvfs is not None
                handled = tuple(sorted(_CKPT_CONTROLS))  # both claiming classes' _handled_controls
                if self.codec is None:
                    self._page_key = _fastvfs.PageKey(-1, None, PAGE_SIZE, handled)
                else:
                    self._page_key = _fastvfs.PageKey(fd, self.codec._key, self.codec.page_size, handled)
            return self._page_key

    def stop_fast_reads(self) -> None:
        """From now on every page read goes through the Python file (a partial replica, a closing state)."""
        key = self._page_key
        if key is not None:
            key.disable()

    def descriptor(self, suffix: str = "") -> int:
        """A descriptor of the database file (or ``-shm``), open until the last connection closes.

        SQLite locks these files with POSIX locks, which belong to the process: closing any
        descriptor of the file would drop every lock this process's connections hold on it.
        So the engine reads and writes them only through descriptors it never closes early.
        """
        with self._fd_lock:
            fd = self._fds.get(suffix)
            if fd is None:
                fd = os.open(self.path + suffix, os.O_RDWR)
                self._fds[suffix] = fd
            return fd

    def map_of(self, codec: PageCodec) -> PageMap | None:
        """The page map of a hardened file that keeps one (None otherwise), made on first use."""
        if self.page_map is not None:
            return self.page_map
        if not isinstance(codec, HardenedCodec) or not codec.keeps_page_map:
            return None
        from .pagemap import PageMap

        slot = codec.slot_size

        def read_slot(pgno: int) -> bytes:
            raw = os.pread(self.descriptor(), slot, (pgno - 1) * slot)
            return raw if len(raw) == slot else b""

        with self._fd_lock:
            if self.page_map is None:
                self.page_map = PageMap(self.path, codec, read_slot, lambda: os.fsync(self.descriptor()))
        return self.page_map

    def close_descriptors(self) -> None:
        self.stop_fast_reads()  # the shim's reads use the database's descriptor
        with self._fd_lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


class _Registry:
    """Database path -> DatabaseState, so WAL and journal files find their database's key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, DatabaseState] = {}

    def acquire(self, path: str, codec: PageCodec | None) -> DatabaseState:
        with self._lock:
            state = self._states.get(path)
            if state is None:
                state = DatabaseState(path, codec)
                if isinstance(codec, HardenedCodec):
                    codec.ring_source = ring_reader(path)  # a hardened file's key rotation
                self._states[path] = state
            state.users += 1
            return state

    def release(self, path: str) -> None:
        with self._lock:
            state = self._states.get(path)
            if state is not None:
                state.users -= 1
                if state.users <= 0:
                    del self._states[path]
                    if state.lazy is not None:
                        state.lazy.flush()  # lazily fetched pages stay marked present
                    state.close_descriptors()  # no connection of this process holds a lock now
                    forget_wal(path + "-wal")

    def get(self, path: str) -> DatabaseState | None:
        with self._lock:
            return self._states.get(path)

    def for_file(self, name: str) -> DatabaseState | None:
        for suffix in ("-wal", "-journal"):
            if name.endswith(suffix):
                return self.get(name[: -len(suffix)])
        return self.get(name)


registry = _Registry()

RING_SUFFIX = "-rekey"  # a hardened file's key ring while a rotation runs (crypto/keyring.py)


def ring_reader(path: str) -> Callable[[], bytes | None]:
    """Reads ``path``'s key ring file when a codec meets a key epoch it does not hold (None: no rotation)."""

    def read() -> bytes | None:
        try:
            with open(path + RING_SUFFIX, "rb") as f:  # another file than SQLite's: no lock of theirs is dropped
                return f.read()
        except FileNotFoundError:
            return None

    return read


@contextlib.contextmanager
def file_descriptor(path: str, suffix: str = "") -> Iterator[int]:
    """A descriptor of ``path + suffix`` that is safe to use beside SQLite's own locks.

    While this process has the database open, the shared descriptor of its state (never closed
    early); otherwise a fresh one, closed afterwards (no lock of this process can be dropped).
    """
    state = registry.get(path)
    if state is not None:
        yield state.descriptor(suffix)
        return
    fd = os.open(path + suffix, os.O_RDWR)
    try:
        yield fd
    finally:
        os.close(fd)


def _filename(name: apsw.URIFilename | str | None) -> str | None:
    if name is None:
        return None
    if isinstance(name, str):
        return name
    return name.filename()


def cut_short(path: str, codec: PageCodec) -> str | None:
    """Why an encrypted database file is shorter than its own header says, naming the first page
    it lost; None when it is not (or page 1 cannot be read).

    A checkpoint writes every page up to the count it puts in page 1's header, so a file shorter
    than that was cut; SQLite refuses it as "malformed" without saying where.
    """
    S = codec.slot_size
    try:
        with open(path, "rb") as f:
            head = f.read(S)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return None
    if len(head) < S:
        return None
    try:
        header = codec.header_plaintext(head)
    except (PageAuthError, errors.EncryptionError):
        return None
    counted = int.from_bytes(header[28:32], "big")
    if header[24:28] != header[92:96] or counted == 0:
        return None  # SQLite does not trust the count either
    held = size // S
    if held >= counted:
        return None
    return (
        f"page {held + 1} of the database is missing: the file ends after page {held}, but its header "
        f"counts {counted} pages (the file was cut short)"
    )


class EncryptedDBFile(apsw.VFSFile):
    """The main database file: whole pages, encrypted in Turso's format (or the hardened one).

    In the envelope layout (``crypto/envelope.py``) page ``n`` sits in a slot of ``S = P + 32``
    bytes at ``(n - 1) * S``: reads, writes, the size and truncation are mapped from SQLite's
    ``P``-byte pages to slots, and the file is kept padded to whole ``P``-byte blocks.
    """

    def __init__(self, name: apsw.URIFilename | str, flags: list[int], state: DatabaseState) -> None:
        super().__init__("", name, flags)
        self.state = state
        self.codec: PageCodec = state.codec  # type: ignore[assignment]
        self.P = self.codec.page_size
        self.S = self.codec.slot_size  # bytes per page on disk (P, except in the envelope layout)
        # decided once per open: only a hardened file keeps a page map (``pagemap.py``); whether
        # this one does is known once its parameters are, so ``state.map_of`` still decides that
        self._may_map = isinstance(self.codec, HardenedCodec)
        # Turso's format decrypts every whole page read into this buffer (``PageCodec.decrypt_into``);
        # APSW copies what xRead returns into SQLite's buffer at once, so it is free again then
        self._turso = type(self.codec) is PageCodec
        self._page = bytearray(self.P)
        # and reads every page but page 1 with one ``preadv`` into ``_slot`` (the database's own
        # descriptor, ``DatabaseState.descriptor``), then decrypts it with one call bound to both
        # buffers: no bytes object, no view and no Python frame per page
        self._fd = -1
        if self._turso:
            self._slot = bytearray(self.P)
            self._slots = [self._slot]
            self._decrypt_slot = self.codec.page_decrypter(self._slot, self._page)
            with contextlib.suppress(OSError):  # a file this process cannot open for writing
                self._fd = state.descriptor()
            if self._fd >= 0 and _page_reader is not None:
                # the compiled twin of xRead's first branch below (a whole page but page 1, no
                # partial replica), set on the instance so APSW calls it instead of the class's
                # method, which it calls for every other read (``_speedups.c``, "xread")
                self.__dict__["xRead"] = _page_reader(
                    self, type(self).xRead, state, self._fd, self._slot, self._page, self._decrypt_slot
                )
            if self._fd >= 0:
                # the compiled shim in front of this VFS (when the connection opened through it)
                # reads this file's whole pages but page 1 itself, and sends the calls this class
                # leaves to the unix file straight there (``_fastvfs.c``); the rest still comes here
                _claim(self, state, self._fd)
        _route_file_controls(self, self._handled_controls)

    # APSW takes any buffer from xRead (its stub says bytes): Turso's format returns ``_page``
    def xRead(self, amount: int, offset: int) -> bytes | bytearray:  # type: ignore[override]
        # the path of every page that misses SQLite's cache: each attribute read once, no call
        # that this file's format does not need (see docs/local-engine-speed.md)
        P = self.P
        state = self.state
        if state.lazy is not None:
            _ensure_present(state, offset // P + 1, (offset + amount - 1) // P + 1)
        if amount == P and not offset % P:
            pgno = offset // P + 1
            attempt = 0
            while True:
                try:
                    return self._whole_page(pgno, offset)
                except PageAuthError as err:
                    # SQLite reads page 1 from the file before it has opened the WAL (a connection's
                    # first read, when it found no WAL yet), outside the WAL's protection: another
                    # process's checkpoint may be writing it, or may have written it and not yet
                    # saved the page map (SQLite itself only looks at the header bytes that say
                    # "WAL", then reads page 1 again through the WAL).  Let a write under way
                    # finish and read again; an image that still does not verify is refused
                    if pgno != 1 or attempt >= len(_SETTLE_WAITS):
                        state.record(err)
                        raise apsw.CorruptError(str(err)) from None
                    self._settle(attempt)
                    attempt += 1
                except errors.EncryptionError as exc:  # a hardened file's stored key parameters refused
                    state.record(PageAuthError(pgno, "database", str(exc)))
                    raise apsw.CorruptError(str(exc)) from None
        P, S = self.P, self.S
        first = offset // P
        last = (offset + amount - 1) // P
        out = bytearray()
        for index in range(first, last + 1):
            raw = super().xRead(S, index * S)
            if len(raw) < S:
                break
            if index == 0 and offset + amount <= 100:
                # the header, read before a page is: plaintext in Turso's format (authenticated
                # when page 1 is read), decrypted and checked at once in the hardened format.
                # SQLite reads it from the file even when the WAL holds a newer page 1 (whose image
                # in the file a killed checkpoint may have left unrecorded in the page map), and
                # reads the whole page 1 next, through the WAL or from here (then checked)
                out += self._guarded(lambda enc, _pgno: self.codec.header_plaintext(enc), raw, 1)
                continue
            out += self._decrypt(raw, index + 1)
            self._check_map(raw, index + 1)
        start = offset - first * P
        return bytes(out[start : start + amount])

    def _whole_page(self, pgno: int, offset: int) -> bytes | bytearray:
        """Page ``pgno`` read from the file, decrypted and (a hardened file) checked against the
        page map; ``b""`` past the end.  Raises PageAuthError (nothing recorded)."""
        if self._fd >= 0 and pgno != 1:
            if _preadv(self._fd, self._slots, offset) < self.P:
                return b""  # beyond the end of the file: SQLite zero-fills
            try:
                self._decrypt_slot()
            except PageDecryptError:
                raise PageAuthError(pgno, "database") from None
            return self._page
        S = self.S
        raw = _base_read(self, S, (pgno - 1) * S)
        if len(raw) < S:
            return b""  # beyond the end of the file: SQLite zero-fills
        if self._turso:
            plain: bytes | bytearray = self.codec.decrypt_into(raw, pgno, self._page)
        else:
            plain = self.codec.decrypt(raw, pgno)
        if self._may_map:
            page_map = self.state.map_of(self.codec)
            if page_map is not None:
                page_map.check(pgno, raw)
        return plain

    def _settle(self, attempt: int) -> None:
        """Wait for a write to the database file that may be under way in another process: a page
        map's write cycle (its lock), else a short pause (``_SETTLE_WAITS``)."""
        page_map = self.state.map_of(self.codec) if self._may_map else None
        if page_map is None or not page_map.wait_for_cycles(_CYCLE_WAIT):
            time.sleep(_SETTLE_WAITS[attempt])

    def _decrypt(self, raw: bytes, pgno: int) -> bytes:
        return self._guarded(self.codec.decrypt, raw, pgno)

    def _check_map(self, raw: bytes, pgno: int) -> None:
        """A hardened file's page map: the image read must be the one last written there."""
        page_map = self.state.map_of(self.codec)
        if page_map is None:
            return

        def check(enc: bytes, n: int) -> bytes:
            page_map.check(n, enc)
            return b""

        self._guarded(check, raw, pgno)

    def _guarded(self, decode: Callable[[bytes, int], bytes], raw: bytes, pgno: int) -> bytes:
        try:
            return decode(raw, pgno)
        except PageAuthError as err:
            self.state.record(err)
            raise apsw.CorruptError(str(err)) from None
        except errors.EncryptionError as exc:  # a hardened file's stored key parameters refused
            self.state.record(PageAuthError(pgno, "database", str(exc)))
            raise apsw.CorruptError(str(exc)) from None

    def xWrite(self, data: bytes, offset: int) -> None:
        _refuse_unarchived_backfill(self.state)
        P = self.P
        if offset % P or len(data) % P:
            raise apsw.IOError(f"unaligned write of {len(data)} bytes at {offset} to an encrypted database")
        copied = self.state.checkpoint_page if self._turso else None
        out = bytearray()
        for i in range(0, len(data), P):
            page = data[i : i + P]
            pgno = (offset + i) // P + 1
            _check_plain_page(page, pgno, self.codec)
            if copied is not None and copied[0] == pgno and copied[1] == page:
                out += copied[2]  # a checkpoint copying the frame it just read: its ciphertext as it is
            else:
                out += self.codec.encrypt(page, pgno)
        slots = bytes(out)
        first = offset // P
        page_map = self.state.map_of(self.codec)  # after encrypting: a new file is bound by its page 1
        if page_map is not None:
            page_map.begin()  # the images are recorded when the checkpoint (or the write) ends
        lazy = self.state.lazy
        try:
            if lazy is None:
                self._write_slots(slots, first)
            else:
                with lazy.locked():
                    self._write_slots(slots, first)
                    lazy.mark_written(first + 1, len(data) // P)
        except BaseException:
            if page_map is not None:
                page_map.unsure(range(first + 1, first + len(data) // P + 1))  # old image or new: stays pending
            raise
        if page_map is not None:
            S = self.S
            for n in range(len(slots) // S):
                page_map.wrote(first + n + 1, slots[n * S : (n + 1) * S])

    def _write_slots(self, slots: bytes, first: int) -> None:
        """Write encrypted slots from slot ``first`` (0-based); in the envelope layout, grow the
        file to its padded size first, so no crash leaves a size that is not whole blocks."""
        start = first * self.S
        if self.S != self.P:
            end = disk_size(first + len(slots) // self.S, self.P, self.S)
            if end > super().xFileSize():
                super().xTruncate(end)
        super().xWrite(slots, start)

    def xSync(self, flags: int) -> None:
        super().xSync(flags)
        page_map = self.state.page_map
        if page_map is not None and page_map.in_cycle and not self.state.in_checkpoint:
            page_map.finish()  # a write outside a checkpoint (SQLite creating the file) is now durable

    def xClose(self) -> None:
        page_map = self.state.page_map
        if page_map is not None and page_map.in_cycle:
            page_map.finish()
        super().xClose()

    # xFileSize is not overridden here: in Turso's format (and the hardened one) a page is its
    # own slot, so the unix file's size is SQLite's, and APSW calls the base method directly
    # (SQLite asks once per read transaction).  The envelope layout maps it (EnvelopeDBFile).

    def xTruncate(self, newsize: int) -> None:
        if self.S == self.P:
            super().xTruncate(newsize)
        else:
            super().xTruncate(disk_size(newsize // self.P, self.P, self.S))
        if self.state.lazy is not None:
            self.state.lazy.mark_truncated(newsize // self.P)

    #: the file controls ``xFileControl`` acts on; the compiled router sends it only these
    _handled_controls = _CKPT_CONTROLS

    def xFileControl(self, op: int, ptr: int) -> bool:
        # SQLite sends SQLITE_FCNTL_LOCK_TIMEOUT at every read transaction and several per
        # commit: only the checkpoint's two controls need more than the unix file's answer
        # (with the compiled helper only those reach this method: _route_file_controls)
        if op in _CKPT_CONTROLS:
            _checkpoint_control(self.state, op)
        return _base_file_control(self, op, ptr)


class EnvelopeDBFile(EncryptedDBFile):
    """The main database file in the envelope layout: page ``n`` in a slot of ``S = P + 32`` bytes."""

    def xFileSize(self) -> int:
        return pages_on_disk(super().xFileSize(), self.S) * self.P

    _handled_controls = _CKPT_CONTROLS | _SIZE_CONTROLS

    def xFileControl(self, op: int, ptr: int) -> bool:
        if op in _SIZE_CONTROLS:
            return True  # sizes in SQLite's pages: the unix file would grow to a size that is no number of slots
        return super().xFileControl(op, ptr)


class PlainDBFile(apsw.VFSFile):
    """A plaintext database: pass-through, but checkpoints still archive the frame log."""

    _handled_controls = _CKPT_CONTROLS

    def __init__(self, name: apsw.URIFilename | str, flags: list[int], state: DatabaseState) -> None:
        super().__init__("", name, flags)
        self.state = state
        # the compiled shim (when the connection opened through it) sends reads, locks and the
        # controls this class does not handle straight to the unix file (``_fastvfs.c``)
        _claim(self, state, -1)
        _route_file_controls(self, self._handled_controls)

    def xRead(self, amount: int, offset: int) -> bytes:
        if self.state.lazy is not None:
            _ensure_present(self.state, offset // PAGE_SIZE + 1, (offset + amount - 1) // PAGE_SIZE + 1)
        return super().xRead(amount, offset)

    def xWrite(self, data: bytes, offset: int) -> None:
        _refuse_unarchived_backfill(self.state)
        lazy = self.state.lazy
        if lazy is None:
            super().xWrite(data, offset)
            return
        if offset % PAGE_SIZE or len(data) % PAGE_SIZE:
            raise apsw.IOError(f"unaligned write of {len(data)} bytes at {offset} to a partial replica")
        with lazy.locked():
            super().xWrite(data, offset)
            lazy.mark_written(offset // PAGE_SIZE + 1, len(data) // PAGE_SIZE)

    def xTruncate(self, newsize: int) -> None:
        super().xTruncate(newsize)
        if self.state.lazy is not None:
            self.state.lazy.mark_truncated(newsize // PAGE_SIZE)

    def xFileControl(self, op: int, ptr: int) -> bool:
        if op in _CKPT_CONTROLS:
            _checkpoint_control(self.state, op)
        return _base_file_control(self, op, ptr)


def _checkpoint_control(state: DatabaseState, op: int) -> None:
    """Archive before a checkpoint; on a partial replica hold the presence lock while it backfills.

    The lock is taken after the archive (the frame log's lock comes first everywhere), so no lazy
    write can land between a backfill write and its page being marked present.
    """
    if op == apsw.SQLITE_FCNTL_CKPT_START:
        _archive_before_checkpoint(state)
        state.in_checkpoint = True
        if state.lazy is not None:
            state.lazy.acquire()
            state.lazy_ckpt_held = True
    elif op == apsw.SQLITE_FCNTL_CKPT_DONE:
        state.in_checkpoint = False
        state.checkpoint_page = None
        try:
            if state.page_map is not None:
                state.page_map.finish()  # the images the checkpoint wrote become the map's
        finally:
            if state.lazy is not None and state.lazy_ckpt_held:
                state.lazy_ckpt_held = False
                state.lazy.release()


def _ensure_present(state: DatabaseState, first: int, last: int) -> None:
    """Fetch any missing page in ``first..last`` before SQLite reads it; record why if that fails."""
    lazy = state.lazy
    assert lazy is not None
    for pgno in range(first, last + 1):
        if not lazy.missing(pgno):
            continue
        try:
            lazy.ensure(pgno)
        except errors.Error as exc:
            state.lazy_error[:] = [exc]
            raise apsw.IOError(str(exc)) from None
        except Exception as exc:
            err = errors.OperationalError(f"{state.path}: page {pgno} is not yet local and could not be stored: {exc}")
            state.lazy_error[:] = [err]
            raise apsw.IOError(str(err)) from None


def _archive_before_checkpoint(state: DatabaseState) -> None:
    """Archive the WAL into the frame log; remember a failure so the backfill is refused.

    SQLite ignores what ``SQLITE_FCNTL_CKPT_START`` returns, so failing here cannot stop the
    checkpoint; refusing its first write to the database file does, before anything is copied.
    The WAL then keeps every frame and the next checkpoint tries again.
    """
    if state.before_checkpoint is None:
        return
    try:
        state.before_checkpoint()
        state.archive_error = None
    except Exception as exc:  # any failure must block the backfill
        state.archive_error = f"{type(exc).__name__}: {exc}"


def _refuse_unarchived_backfill(state: DatabaseState) -> None:
    if state.archive_error is not None:
        raise apsw.IOError(
            f"{state.path}: the frame log could not archive the WAL ({state.archive_error}); "
            "the checkpoint is refused so no committed frame is lost"
        )


def _check_plain_page(page: bytes, pgno: int, codec: PageCodec) -> None:
    """Refuse a page that would not survive encryption (the reserved tail must be empty)."""
    if page.count(0, codec.page_size - codec.reserved) != codec.reserved:  # a zero byte count, in C
        raise apsw.CorruptError(
            f"page {pgno} uses the bytes reserved for encryption; the database was not created "
            f"with {RESERVED_BYTES} reserved bytes per page"
        )
    if pgno == 1 and page[20] != codec.reserved:
        raise apsw.CorruptError(
            f"page 1 declares {page[20]} reserved bytes; an encrypted database needs {codec.reserved}"
        )
    if pgno == 1 and codec.spec.page_format in ("hardened", "envelope") and any(page[72:92]):
        raise apsw.CorruptError(
            "page 1 uses header bytes 72..92 (reserved for expansion by SQLite), where the hardened "
            "encryption format keeps its parameters"
        )


class EncryptedWALFile(apsw.VFSFile):
    """The WAL of an encrypted database, with checksums over the ciphertext on disk.

    SQLite addresses frames of ``24 + P`` bytes; on disk a frame is ``24 + S`` bytes (``S`` the
    codec's slot size: ``P``, or ``P + 32`` in the envelope layout), so offsets, the size and
    truncation are mapped.  Everything called ``frame_size`` is SQLite's; ``disk_frame`` is ours.
    """

    def __init__(self, name: apsw.URIFilename | str, flags: list[int], state: DatabaseState) -> None:
        super().__init__("", name, flags)
        self.state = state
        self.codec: PageCodec = state.codec  # type: ignore[assignment]
        self.P = self.codec.page_size
        self.S = self.codec.slot_size
        self._turso = type(self.codec) is PageCodec  # a page's ciphertext is the same in the WAL and the database
        self.frame_size = self.P + FRAME_HEADER_SIZE  # as SQLite sees it
        self.disk_frame = self.S + FRAME_HEADER_SIZE  # as it is on disk
        # (salt1, salt2, frame) -> (ciphertext checksum, plaintext checksum) of that frame
        self._chain = state.wal_chain  # shared: an install continues the plaintext chain from it
        self._pending: dict[int, bytes] = {}  # frame -> header SQLite wrote, waiting for its body
        self._big: bool | None = None  # checksum byte order, from the WAL header
        self._last_full_read = 0
        self._handed_lookup = state.handed.lookup
        # (frame number, its salts and stored checksum) of the whole frame this handle read last,
        # when nothing was read or written in between: recovery reads the frames in order, and
        # the next frame's hand-over needs the checksum stored before it (``_handed_frame``)
        self._prev_tail: tuple[int, bytes] | None = None
        # (first frame number, the bytes of ``READ_AHEAD`` frames from there) read in one go while
        # frames are read whole in order (recovery), valid as long as ``_prev_tail`` is
        self._ahead: tuple[int, bytes] | None = None
        # the first frame whose body this handle overwrote in place (no header): SQLite rewrites
        # the headers from there on at commit, each right after reading the frame whole
        self._recksum_from: int | None = None
        if self._turso and _wal_frame_reader is not None:
            # WAL recovery after an install reads every frame whole, in order: the compiled twin of
            # ``_read_full_frame``'s hand-over path (``_handed_frame``) answers those reads without a
            # Python frame; and a page SQLite finds in the WAL is read as a body alone, which the
            # twin of ``_read_body`` reads and decrypts into ``body_page`` (outside a checkpoint,
            # any page but page 1). Every other read, and any body that does not verify, is the
            # class's xRead (``_speedups.c``, "xread")
            body_slot, body_page = bytearray(self.P), bytearray(self.P)
            self.__dict__["xRead"] = _wal_frame_reader(
                self,
                type(self).xRead,
                self._handed_lookup,
                self._chain,
                self.frame_size,
                self.disk_frame,
                _base_read,
                state,
                body_slot,
                body_page,
                self.codec.page_decrypter(body_slot, body_page),
            )
        if self._turso and _wal_frame_writer is not None:
            # every commit writes its frames as a header, then the page: the compiled twin of
            # xWrite's pending-header branch and of ``_write_body`` for a new frame (not page 1)
            # encrypts the page into ``frame`` with a nonce of its own, chains the checksum over the
            # ciphertext as ``_seal_header`` does and writes the frame whole; it calls the class's
            # xWrite for every other write and on any error (``_speedups.c``, "walwrite")
            plain = bytearray(self.P - RESERVED_BYTES)
            frame = bytearray(self.disk_frame)
            encrypt = self.codec.page_encrypter(plain, memoryview(frame)[FRAME_HEADER_SIZE:])
            self.__dict__["xWrite"] = _wal_frame_writer(
                self,
                type(self).xWrite,
                self._pending,
                self._chain,
                self.P,
                plain,
                frame,
                encrypt,
                _base_read,
                _base_write,
            )

    # --- helpers -------------------------------------------------------------------------

    def _raw(self, amount: int, offset: int) -> bytes:
        data = super().xRead(amount, offset)
        return data

    def _wal_header(self) -> bytes:
        return self._raw(WAL_HEADER_SIZE, 0)

    def _disk_ct(self, index: int) -> tuple[int, int]:
        """Checksum stored on disk after frame ``index`` (0 = the WAL header's)."""
        raw = _base_read(self, 8, 24 if index == 0 else frame_offset(index, self.S) + 16)
        if len(raw) < 8:
            raw = raw.ljust(8, b"\0")
        return _CHECKSUM.unpack(raw)  # type: ignore[return-value]

    def _big_endian(self, wal_header: bytes) -> bool:
        return wal_header[3:4] == b"\x83"

    def _plain_chain(self, index: int, wal_header: bytes) -> tuple[int, int] | None:
        """Plaintext-domain checksum after frame ``index``, or None if the chain breaks before it."""
        if index == 0:
            return int.from_bytes(wal_header[24:28], "big"), int.from_bytes(wal_header[28:32], "big")
        salts = (int.from_bytes(wal_header[16:20], "big"), int.from_bytes(wal_header[20:24], "big"))
        cached = self._chain.get((salts[0], salts[1], index))
        if cached is not None and cached[0] == self._disk_ct(index):
            return cached[1]
        # walk back to the nearest frame we can trust, then forward again
        start = index - 1
        while start > 0:
            hit = self._chain.get((salts[0], salts[1], start))
            if hit is not None and hit[0] == self._disk_ct(start):
                break
            start -= 1
        for k in range(start + 1, index + 1):
            result = self._verify_frame(k, self._raw(self.disk_frame, frame_offset(k, self.S)), wal_header)
            if result is None:
                return None
        hit = self._chain.get((salts[0], salts[1], index))
        return hit[1] if hit else None

    def _verify_frame(
        self,
        index: int,
        frame: bytes,
        wal_header: bytes,
        plain: bytes | None = None,
        prev_tail: tuple[int, bytes] | None = None,
    ) -> tuple[int, int] | None:
        """Check frame ``index`` against the ciphertext chain and return its plaintext checksum.

        ``plain``: the body already decrypted from these very bytes (``frame``), else it is done here.
        ``prev_tail``: what ``_read_full_frame`` keeps of the frame this handle read whole last; when
        that is frame ``index - 1`` of this WAL generation (recovery reading the frames in order
        under its lock, as for ``_handed_frame``), its stored checksum is the one read then, not
        read from disk again (twice: here and in ``_plain_chain``).
        """
        if len(frame) < self.disk_frame:
            return None
        big = self._big_endian(wal_header)
        salts = wal_header[16:24]
        if frame[8:16] != salts:
            return None
        if prev_tail is not None and prev_tail[0] == index - 1 and prev_tail[1][:8] == salts:
            prev_ct: tuple[int, int] = _CHECKSUM.unpack_from(prev_tail[1], 8)  # type: ignore[assignment]
            hit = self._chain.get((*_SALTS.unpack(salts), index - 1))
            # (what ``_plain_chain`` gives when frame ``index - 1``'s checksum on disk is ``prev_ct``)
            prev_pt = hit[1] if hit is not None and hit[0] == prev_ct else self._plain_chain(index - 1, wal_header)
        else:
            prev_ct = self._disk_ct(index - 1)
            prev_pt = self._plain_chain(index - 1, wal_header) if index > 1 else prev_ct
        if prev_pt is None:
            return None
        head8 = frame[:8]
        body = frame[FRAME_HEADER_SIZE:]
        # over head8 then the body: the chain continues, no 4 KiB copy of head8 + body is made
        ct = wal_checksum(body, *wal_checksum(head8, prev_ct[0], prev_ct[1], big), big)
        stored = (int.from_bytes(frame[16:20], "big"), int.from_bytes(frame[20:24], "big"))
        if ct != stored:
            return None
        if plain is None:
            pgno = int.from_bytes(frame[:4], "big")
            try:
                plain = self.codec.decrypt(body, pgno, "WAL")
            except PageAuthError as err:
                # the checksum chain holds, so this is no torn write: the frame was changed
                self.state.record(err)
                raise apsw.CorruptError(f"WAL frame {index}: {err}") from None
        pt = wal_checksum(plain, *wal_checksum(head8, prev_pt[0], prev_pt[1], big), big)
        key = (int.from_bytes(salts[:4], "big"), int.from_bytes(salts[4:], "big"), index)
        self._chain[key] = (ct, pt)
        return pt

    # --- reads -----------------------------------------------------------------------------

    def xRead(self, amount: int, offset: int) -> bytes:
        P = self.P
        if offset < WAL_HEADER_SIZE:
            self._prev_tail = self._ahead = None
            if offset + amount <= WAL_HEADER_SIZE:
                return self._raw(amount, offset)
            raise apsw.IOError(f"WAL read of {amount} bytes at {offset} crosses the WAL header")
        index, within = frame_index(offset, P)
        if within == FRAME_HEADER_SIZE and amount == P:
            self._prev_tail = self._ahead = None
            return self._read_body(index)
        if within == 0 and amount == self.frame_size:
            if index == 1 and self._recksum_from != 1:
                # SQLite reading frame 1 whole, outside a checksum rewrite, is WAL recovery, which
                # no write transaction of this handle outlives (the rewrite's own 8-byte read of
                # the checksum before its first frame comes through the assembling path below)
                self._recksum_from = None
            return self._read_full_frame(index)
        # anything else (the 8-byte checksum read before a checksum rewrite): assemble it
        out = bytearray()
        pos = offset
        end = offset + amount
        while pos < end:
            k, inside = frame_index(pos, P)
            frame = self._read_full_frame(k, quiet=True)
            if not frame:
                break
            take = min(end - pos, self.frame_size - inside)
            out += frame[inside : inside + take]
            pos += take
        return bytes(out)

    def _read_body(self, index: int) -> bytes:
        raw = self._raw(self.disk_frame, frame_offset(index, self.S))
        if len(raw) < self.disk_frame:
            return b""
        pgno = int.from_bytes(raw[:4], "big")
        body = raw[FRAME_HEADER_SIZE:]
        try:
            plain = self.codec.decrypt(body, pgno, "WAL")
        except PageAuthError as err:
            self.state.record(err)
            raise apsw.CorruptError(f"WAL frame {index}: {err}") from None
        if self._turso and self.state.in_checkpoint:
            # SQLite's checkpoint writes this page to the database file next: in Turso's format a
            # page's ciphertext does not depend on where it is, so that write can reuse this one
            self.state.checkpoint_page = (pgno, plain, body)
        return plain

    def _read_full_frame(self, index: int, quiet: bool = False) -> bytes:
        """A whole frame as SQLite wrote it: plaintext body, plaintext-domain checksum.

        A frame whose ciphertext chain or authentication fails comes back with a checksum
        that cannot match, so SQLite treats it as the torn end of the log.
        """
        self._last_full_read = index
        prev_tail, self._prev_tail = self._prev_tail, None
        ahead, self._ahead = self._ahead, None
        disk_frame = self.disk_frame
        offset = WAL_HEADER_SIZE + (index - 1) * disk_frame
        raw = b""
        if prev_tail is not None and prev_tail[0] == index - 1:
            # frames read whole one after the other, nothing else in between: recovery, which
            # holds its lock, so no one writes the WAL meanwhile; the next frames come in one read
            if ahead is None or not 0 <= index - ahead[0] < READ_AHEAD:
                # whole frames the file holds, no more: a read past the end is zero-filled by
                # SQLite and the zeros scanned off again by APSW, which would cut a frame that ends
                # in zeros (an envelope-layout slot does) short as well
                frames = min(READ_AHEAD, (_base_size(self) - offset) // disk_frame)
                ahead = (index, _base_read(self, frames * disk_frame, offset)) if frames > 1 else None
            if ahead is not None:
                at = (index - ahead[0]) * disk_frame
                raw = ahead[1][at : at + disk_frame]
        if len(raw) < disk_frame:
            raw = _base_read(self, disk_frame, offset)
            ahead = None
        if len(raw) < disk_frame:
            return b""
        handed = self._handed_lookup((raw[8:16], index))
        if handed is not None:
            frame = self._handed_frame(index, raw, handed, prev_tail)
            if frame is not None:
                self._prev_tail, self._ahead = (index, raw[8:24]), ahead
                return frame
        self._prev_tail, self._ahead = (index, raw[8:24]), ahead
        header = bytearray(raw[:FRAME_HEADER_SIZE])
        pgno = int.from_bytes(raw[:4], "big")
        authentic: bytes | None
        try:
            plain = authentic = self.codec.decrypt(raw[FRAME_HEADER_SIZE:], pgno, "WAL")
        except PageAuthError:
            plain, authentic = bytes(self.P), None  # verified again below: a torn end, or an error
        if header[8:24] == bytes(16):
            return bytes(header) + plain  # placeholder header inside an open transaction
        # the body was decrypted (and authenticated) from these bytes just now: not a second time
        pt = self._verify_frame(index, raw, self._wal_header(), authentic, prev_tail)
        if pt is None:
            header[16:24] = bytes(b ^ 0xFF for b in header[16:24])  # never a valid checksum
        else:
            header[16:20] = pt[0].to_bytes(4, "big")
            header[20:24] = pt[1].to_bytes(4, "big")
        return bytes(header) + plain

    def _handed_frame(
        self, index: int, raw: bytes, handed: HandedFrame, prev_tail: tuple[int, bytes] | None = None
    ) -> bytes | None:
        """Frame ``index`` as SQLite wrote it, from what an install in this process wrote there, or None.

        Only while ``raw`` (the frame on disk now) is byte for byte ``handed.disk``, what the
        install wrote: its body is then the ciphertext of the plaintext kept (no decrypt needed
        to authenticate it), and its stored checksum is the one computed from ``prev_ct``, so
        when the checksum stored before it is still ``prev_ct`` the ciphertext chain holds as a
        recomputation would find.  That checksum is read from disk, unless the last thing this
        handle did was to read frame ``index - 1`` of the same WAL generation whole (``prev_tail``:
        its salts and checksum as read then), as recovery does frame after frame under its lock.
        The plaintext chain before it must be ``prev_pt`` (the header's checksum for frame 1),
        or the checksum handed to SQLite would not continue its own.  Otherwise the long way.
        """
        if raw != handed.disk:
            return None
        if prev_tail is not None and prev_tail[0] == index - 1 and prev_tail[1][:8] == raw[8:16]:
            prev_ct = _CHECKSUM.unpack_from(prev_tail[1], 8)
        else:
            prev_ct = self._disk_ct(index - 1)
        if prev_ct != handed.prev_ct:
            return None
        salt1, salt2 = handed.salts
        if index > 1:
            hit = self._chain.get((salt1, salt2, index - 1))
            if hit is None or hit[0] != prev_ct or hit[1] != handed.prev_pt:
                return None
        elif handed.prev_pt != prev_ct:
            return None
        # (the frame's salts are not compared with the WAL header's here: SQLite compares them
        # itself before the checksum, and a frame of another generation is never counted)
        self._chain[(salt1, salt2, index)] = (handed.ct, handed.pt)
        return handed.given

    # --- size ------------------------------------------------------------------------------

    def xFileSize(self) -> int:
        return self._logical(super().xFileSize())

    def xTruncate(self, newsize: int) -> None:
        self._prev_tail = self._ahead = None
        super().xTruncate(self._physical(newsize))

    def _logical(self, size: int) -> int:
        """SQLite's size of a WAL of ``size`` bytes on disk: whole frames mapped, a torn tail kept."""
        if self.S == self.P or size <= WAL_HEADER_SIZE:
            return size
        frames, rest = divmod(size - WAL_HEADER_SIZE, self.disk_frame)
        return WAL_HEADER_SIZE + frames * self.frame_size + min(rest, self.frame_size - 1)

    def _physical(self, size: int) -> int:
        """The bytes on disk of SQLite's WAL size ``size`` (the inverse of ``_logical``)."""
        if self.S == self.P or size <= WAL_HEADER_SIZE:
            return size
        frames, rest = divmod(size - WAL_HEADER_SIZE, self.frame_size)
        return WAL_HEADER_SIZE + frames * self.disk_frame + rest

    # --- writes ----------------------------------------------------------------------------

    def xWrite(self, data: bytes, offset: int) -> None:
        P = self.P
        self._prev_tail = self._ahead = None
        if offset == 0:
            if len(data) != WAL_HEADER_SIZE:
                raise apsw.IOError(f"unexpected WAL header write of {len(data)} bytes")
            self._chain.clear()
            self.state.handed.clear()  # the WAL starts over: no frame of the old one is read again
            self._pending.clear()
            self._recksum_from = None
            self._big = data[3:4] == b"\x83"
            super().xWrite(data, 0)
            return
        index, within = frame_index(offset, P)
        last_read, self._last_full_read = self._last_full_read, 0
        if within == 0 and len(data) == FRAME_HEADER_SIZE:
            if data[8:24] == bytes(16):
                super().xWrite(data, frame_offset(index, self.S))  # placeholder, rewritten before commit
            elif last_read == index and self._recksum_from is not None and index >= self._recksum_from:
                # SQLite's checksum rewrite: it read the frame whole, then writes its header back.
                # (Recovery also reads whole frames, and its last read is where the next frame
                # goes: a new frame's header written there must wait for its body, or its
                # checksum would cover the stale body on disk and a later scan lose the frame.)
                self._rewrite_header(index, data)
            else:
                self._pending[index] = bytes(data)
            return
        if within == FRAME_HEADER_SIZE and len(data) == P:
            self._write_body(index, data)
            return
        raise apsw.IOError(f"unexpected WAL write of {len(data)} bytes at offset {offset}")

    def _write_body(self, index: int, plain: bytes) -> None:
        header = self._pending.pop(index, None)
        off = frame_offset(index, self.S)
        if header is None:
            # in-place overwrite inside a transaction; its header is rewritten at commit
            disk = self._raw(8, off).ljust(8, b"\0")
            pgno = int.from_bytes(disk[:4], "big")
            _check_plain_page(plain, pgno, self.codec)
            super().xWrite(self.codec.encrypt(plain, pgno, "WAL"), off + FRAME_HEADER_SIZE)
            if self._recksum_from is None or index < self._recksum_from:
                self._recksum_from = index
            return
        pgno = int.from_bytes(header[:4], "big")
        _check_plain_page(plain, pgno, self.codec)
        body = self.codec.encrypt(plain, pgno, "WAL")
        _base_write(self, self._seal_header(index, header, body) + body, off)

    def _rewrite_header(self, index: int, header: bytes) -> None:
        off = frame_offset(index, self.S)
        body = self._raw(self.S, off + FRAME_HEADER_SIZE)
        super().xWrite(self._seal_header(index, header, body), off)

    def _seal_header(self, index: int, header: bytes, body: bytes) -> bytes:
        """The header SQLite wrote, with its checksum recomputed over the encrypted body."""
        if self._big is None:
            self._big = self._big_endian(self._wal_header())  # fixed for a WAL file's life
        # the previous checksum is read from disk every time: a cached one can be stale when
        # another process overwrote frames this connection wrote in a rolled-back transaction
        prev = self._disk_ct(index - 1)
        ct = wal_checksum(header[:8] + body, prev[0], prev[1], self._big)
        salt1, salt2, pt1, pt2 = _SALTS_CHECKSUM.unpack_from(header, 8)
        self._chain[(salt1, salt2, index)] = (ct, (pt1, pt2))
        return header[:16] + _CHECKSUM.pack(*ct)  # page number, size after commit and salts as SQLite wrote them


class EncryptedJournalFile(apsw.VFSFile):
    """A rollback journal of an encrypted database: page records are encrypted."""

    def __init__(self, name: apsw.URIFilename | str, flags: list[int], state: DatabaseState) -> None:
        super().__init__("", name, flags)
        self.codec: PageCodec = state.codec  # type: ignore[assignment]

    def xWrite(self, data: bytes, offset: int) -> None:
        if len(data) == self.codec.page_size:
            if self.codec.slot_size != self.codec.page_size:
                # a record keeps its page at a fixed place between its page number and checksum
                raise apsw.IOError(
                    "an envelope-layout database keeps no page in a rollback journal (it runs in WAL mode)"
                )
            _check_plain_page(data, 0, self.codec)
            data = self.codec.encrypt(data, 0, "rollback journal")
        super().xWrite(data, offset)

    def xRead(self, amount: int, offset: int) -> bytes:
        raw = super().xRead(amount, offset)
        if amount == self.codec.page_size and len(raw) == amount:
            try:
                return self.codec.decrypt(raw, 0, "rollback journal")
            except PageAuthError as err:
                raise apsw.CorruptError(str(err)) from None
        return raw


class TursoVFS(apsw.VFS):
    """Registered once per process; each file finds its database's key in the registry."""

    def __init__(self) -> None:
        super().__init__(VFS_NAME, "")

    def xOpen(self, name: apsw.URIFilename | str | None, flags: list[int]) -> apsw.VFSFile:
        path = _filename(name)
        kind = flags[0]
        if path is None or kind & (
            apsw.SQLITE_OPEN_TEMP_DB
            | apsw.SQLITE_OPEN_TEMP_JOURNAL
            | apsw.SQLITE_OPEN_TRANSIENT_DB
            | apsw.SQLITE_OPEN_SUBJOURNAL
        ):
            raise apsw.CantOpenError(
                "turso_sync keeps temporary data in memory (PRAGMA temp_store=MEMORY); temporary files are not allowed"
            )
        state = registry.for_file(path)
        if state is None:
            raise apsw.CantOpenError(f"{path}: not opened through turso_sync.connect")
        if kind & apsw.SQLITE_OPEN_MAIN_DB:
            if state.codec is None:
                return PlainDBFile(name, flags, state)  # type: ignore[arg-type]
            if state.codec.slot_size != state.codec.page_size:
                return EnvelopeDBFile(name, flags, state)  # type: ignore[arg-type]
            return EncryptedDBFile(name, flags, state)  # type: ignore[arg-type]
        if state.codec is None:
            return apsw.VFSFile("", name, flags)  # type: ignore[arg-type]
        if kind & apsw.SQLITE_OPEN_WAL:
            return EncryptedWALFile(name, flags, state)  # type: ignore[arg-type]
        if kind & apsw.SQLITE_OPEN_MAIN_JOURNAL:
            return EncryptedJournalFile(name, flags, state)  # type: ignore[arg-type]
        raise apsw.CantOpenError(f"{path}: turso_sync does not open this kind of file for an encrypted database")


_vfs: TursoVFS | None = None
_vfs_lock = threading.Lock()


def ensure_vfs() -> str:
    """Register the VFS in this process (once) and return the name connections open it by.

    That is the compiled shim's (``_fastvfs.c``, registered in front of this one) where the module
    was built and SQLite loads it, else this VFS's own.
    """
    global _vfs
    with _vfs_lock:
        if _vfs is None:
            _vfs = TursoVFS()
            _load_shim()
    return str(_fastvfs.SHIM_NAME) if _fastvfs is not None else VFS_NAME


def _load_shim() -> None:
    """Register the compiled shim over this VFS: it is a SQLite extension, loaded through a connection
    of its own (the only one that ever allows loading extensions), which is closed at once.  If it
    does not load, ``_fastvfs`` becomes None: no file is claimed for it (``_claim``) and connections
    open this VFS itself (``ensure_vfs``)."""
    global _fastvfs
    if _fastvfs is None or _fastvfs.__file__ is None:
        _fastvfs = None
        return
    if not _fastvfs.registered():
        try:
            db = apsw.Connection(":memory:")
            try:
                db.enable_load_extension(True)
                db.load_extension(_fastvfs.__file__, _fastvfs.ENTRY_POINT)
            finally:
                db.close()
        except apsw.Error as exc:
            log.warning("turso_sync: the compiled VFS shim did not load (%s); pages are read through Python", exc)
            _fastvfs = None


def realpath(path: str | os.PathLike[str]) -> str:
    """The path form SQLite hands to the VFS for a database file."""
    return os.path.realpath(os.fspath(path))
