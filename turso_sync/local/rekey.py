"""Key rotation of a hardened database while other processes read and write it; passphrase changes.

The same for the envelope layout (``crypto/envelope.py``): every reader below addresses page
images by the codec's slot size (``P``, or ``P + 32`` for an envelope) and reads an image's
epoch where the layout keeps its nonce.

A rotation moves the file from key epoch ``N`` to ``N + 1`` in four steps, each one safe to kill:

1. **Start.**  ``<db>-rekey`` (``crypto/keyring.py``) is written atomically: both data keys,
   each sealed under the other, and page 1's parameters for ``N + 1``.  Then, under SQLite's
   write lock, page 1 is written again as one WAL transaction (``install.append_transaction``)
   under epoch ``N + 1`` with the "previous live" bit set.  From that commit on, every process
   writes ``N + 1``: a writer reads page 1 before it writes, its codec meets an epoch it does
   not hold and reads the ring.
2. **Sweep.**  In small batches, each one a write transaction: the current committed image of
   each page (the newest WAL frame, else the database file) still under epoch ``N`` is
   decrypted and written back unchanged as a WAL transaction under ``N + 1``.  The next page
   to look at is saved in the ring file after each batch, so a killed sweep resumes there.
   Then a ``TRUNCATE`` checkpoint copies the WAL into the database file (the VFS encrypts every
   page it writes under the newest epoch) and empties the WAL; SQLite's own checkpoint rules
   keep readers of older snapshots safe.  The database file and the WAL are then scanned (the
   nonce of every image names its epoch); anything left sends the sweep round again.
3. **Copies.**  The frame log (``<db>-frames``), revert files (``<db>-revert-<seq>``) and the
   small revert a replica's sync state keeps (``<db>-sync``'s ``revert_inline``) hold page images
   as they were on disk: every image of epoch ``N`` is re-encrypted, each file rewritten to a
   temporary file and renamed over the old one under that file's own lock (the sync lock for
   revert files and the state).
4. **Retire.**  Under the write lock every place is scanned once more; if nothing holds epoch
   ``N``, the ring file is removed and page 1 is written with the "previous live" bit cleared.
   Every process drops key ``N`` when it next reads page 1; from then on the old key opens
   nothing and an image of epoch ``N`` is refused.

A passphrase change (``change_passphrase``) re-wraps the newest data key: page 1 alone is
written, then checkpointed; then the copies of page 1 in the frame log and revert files (and the
sync state's revert), which carry the old wrap in their header, are re-encrypted (else the old passphrase would still
unwrap the data key from them).  It needs the file to itself (no other process may have it open),
because every process writes page 1's parameters from its own copy of them.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import glob
import json
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import apsw

from .. import errors
from ..crypto import keyring
from ..crypto.envelope import OVERHEAD as ENVELOPE_OVERHEAD
from ..crypto.envelope import EnvelopeCodec, is_envelope
from ..crypto.hardened import NONCE_SIZE, TAG_SIZE, FileParams, HardenedCodec, is_hardened
from ..crypto.keyring import KeyRing
from ..crypto.keys import ARGON2_DEFAULT, Argon2Params
from ..page import PAGE_SIZE
from .connection import Connection
from .framelog import _HEADER_SIZE as FRAMELOG_HEADER_SIZE
from .framelog import _REC as FRAMELOG_RECORD
from .framelog import _REC_SIZE as FRAMELOG_RECORD_SIZE
from .framelog import REC_MAGIC, fsync_dir
from .framelog import write_atomically as _write_atomically
from .install import append_transaction
from .vfs import RING_SUFFIX, file_descriptor, realpath, registry, ring_reader
from .walformat import FRAME_HEADER_SIZE, WAL_HEADER_SIZE
from .walindex import committed_wal

BATCH_PAGES = 64
_ROUNDS = 5  # sweeps before giving up on retiring (each round only finds what came in between)
_REVERT_HEAD = 20  # magic (8) | seq (8) | count (4), then crc32 (4)
# a replica's sync state (``sync/state.py``, JSON; ``local`` does not import ``sync``) and its field
# that keeps a small revert: a revert file's bytes, base64
_STATE_SUFFIX = "-sync"
_INLINE_REVERT = "revert_inline"
_SHM_DMS_BYTE = 128  # every connection holds a read lock on this byte of -shm while open (unix VFS)
_SHM_CKPT_BYTE = 121  # a checkpoint holds this byte of -shm exclusively (unix VFS: WAL_CKPT_LOCK at 120 + 1)


@dataclass(frozen=True)
class RekeyProgress:
    """Where a rotation stands, for a progress line."""

    old_epoch: int
    new_epoch: int
    phase: str
    done: int
    total: int


@dataclass(frozen=True)
class RekeyResult:
    """What ``rekey`` did."""

    old_epoch: int
    new_epoch: int
    resumed: bool  # a rotation that an earlier run had started
    pages_rewritten: int
    copies_rewritten: int  # frame log and revert-file images re-encrypted


def rekey(
    path: str | os.PathLike[str],
    *,
    encryption_key: str | None = None,
    passphrase: str | None = None,
    new_key: str | None = None,
    batch_pages: int = BATCH_PAGES,
    progress: Callable[[RekeyProgress], None] | None = None,
    busy_timeout: float = 60.0,
) -> RekeyResult:
    """Rotate the hardened (or envelope) database at ``path`` to a new key epoch, or finish a rotation under way.

    Open it with ``encryption_key`` (either key of a rotation under way) or ``passphrase``.
    A raw-key file needs ``new_key`` (64 hex digits) to start a rotation; a passphrase file
    gets a new random data key, wrapped by the same passphrase.  Resuming needs no new key (a
    different one is refused: the ring already holds the one the rotation started with).
    Other processes may keep reading and writing throughout.  Raises ``EncryptionError`` for
    a file in Turso's format or a lost ring, ``OperationalError`` when readers keep the WAL
    from being emptied for ``busy_timeout`` seconds (run it again: it resumes).
    """
    db_path = realpath(path)
    new_raw = _parse_new_key(new_key) if new_key is not None else None
    try:
        key, cipher = _opening_secret(db_path, encryption_key, passphrase)
        opened_with_new = False
    except errors.EncryptionError:
        if new_key is None or passphrase is not None:
            raise
        # late in a rotation (or after it) only the new key opens the file: the run goes on with it
        key, cipher = _opening_secret(db_path, new_key, None)
        opened_with_new = True
    db = _Database(db_path, key, cipher)
    try:
        return _Rotation(db, progress, batch_pages, busy_timeout).run(new_raw, opened_with_new)
    finally:
        db.close()


def change_passphrase(
    path: str | os.PathLike[str], passphrase: str, new_passphrase: str, *, argon2: Argon2Params | None = None
) -> None:
    """Re-wrap the data key of the hardened (or envelope) database at ``path`` under ``new_passphrase``.

    Only page 1 changes, and the copies of it that the frame log and reverts keep; the old
    passphrase opens nothing afterwards.  Refused (``OperationalError``) while another process
    has the database open.  ``argon2`` sets the new cost (default: the library's default for new
    files).  Killed after page 1's commit, copies with the old wrap may be left: the next
    passphrase change re-encrypts them.
    """
    db_path = realpath(path)
    if not new_passphrase:
        raise errors.ProgrammingError("the new passphrase must not be empty")
    _, cipher = _opening_secret(db_path, None, passphrase)
    db = _Database(db_path, passphrase, cipher)
    try:
        codec = _hardened_codec(db)
        _refuse_other_processes(db_path)
        db.checkpoint()  # no page-1 image with the old wrap stays in the WAL
        with db.write_lock() as conn:
            _refuse_other_processes(db_path)
            if codec.params is None or codec.params.argon2 is None:
                raise errors.EncryptionError(f"{db_path} is encrypted with a raw key, not a passphrase")
            size = int(conn.execute("PRAGMA page_count").get)  # type: ignore[arg-type]
            page1 = _current_plain(db_path, codec, [1])[1]
            try:
                codec.change_passphrase(new_passphrase.encode("utf-8"), argon2 or ARGON2_DEFAULT)
            except ValueError as exc:
                raise errors.ProgrammingError(str(exc)) from None
            db.install_locked(conn, {1: page1}, size)
        db.checkpoint()  # page 1 into the database file; the WAL emptied (its old image archived first)
        old_wrap = _other_page1_params(codec)
        rewrite_frame_log(db_path, codec, old_wrap)
        rewrite_revert_files(db_path, codec, old_wrap)
    finally:
        db.close()


def _other_page1_params(codec: HardenedCodec) -> Callable[[bytes, int], bool]:
    """Selects the stored copies of page 1 whose header holds other parameters than the codec's (an old wrap)."""
    params = codec.params

    def selected(image: bytes, pgno: int) -> bool:
        return pgno == 1 and FileParams.of_page1(image) != params

    return selected


# --- opening -----------------------------------------------------------------------------------


def _parse_new_key(new_key: str) -> bytes:
    try:
        raw = bytes.fromhex(new_key.strip())
    except (ValueError, AttributeError):
        raise errors.ProgrammingError("the new key must be hex digits only") from None
    if len(raw) != 32:
        raise errors.ProgrammingError(f"the new key must be 64 hex digits, got {len(new_key.strip())}")
    return raw


def _opening_secret(db_path: str, encryption_key: str | None, passphrase: str | None) -> tuple[str, str]:
    """The key (or passphrase) and cipher that open ``db_path`` through a connection.

    Page 1 in the database file may carry either epoch of a rotation: a raw key of the other
    one is traded for this one's through the key ring.  The cipher names the file's layout:
    "hardened" or "envelope" (with "-passphrase" for a passphrase).
    """
    page1, envelope, page_size = _read_page1(db_path)
    if not envelope and not is_hardened(page1):
        raise errors.EncryptionError(
            f"{db_path} does not use the hardened format: Turso's format keeps one key for the life of the "
            "file (copy the data into a new database to change it; docs/encryption.md)"
        )
    if (encryption_key is None) == (passphrase is None):
        raise errors.ProgrammingError("give the database's key or its passphrase (one of them)")
    layout = "envelope" if envelope else "hardened"
    if passphrase is not None:
        return passphrase, layout + "-passphrase"
    assert encryption_key is not None
    try:
        raw = bytes.fromhex(encryption_key.strip())
    except ValueError:
        raise errors.ProgrammingError("encryption_key must be hex digits only") from None
    from ..crypto.page_codec import HARDENED_CIPHERS

    spec = HARDENED_CIPHERS[layout]
    same = 0  # reads in a row that gave these bytes
    for _read in range(_PAGE1_READS):
        probe = EnvelopeCodec(spec, raw, page_size) if envelope else HardenedCodec(spec, raw, page_size)
        probe.ring_source = ring_reader(db_path)
        try:
            params = probe.open_file(page1)
            return probe.data_key(params.epoch).hex(), layout
        except Exception as exc:
            # read without SQLite's locks: another process's checkpoint may be writing page 1, and a
            # read across the write fails like a wrong key; only bytes read alike several times are judged
            again = _read_page1(db_path)[0]
            same = same + 1 if again == page1 else 0
            page1 = again
            if same < _STABLE_READS:
                continue
            if isinstance(exc, errors.EncryptionError):
                raise
            break
    raise errors.EncryptionError(
        f"wrong encryption key for {db_path}: page 1 failed authentication, and no key ring of a rotation "
        "under way opens with it"
    ) from None


_STABLE_READS = 8  # identical reads of page 1 that fail before the key is called wrong (each costs microseconds)
_PAGE1_READS = 200  # reads in all, while page 1 keeps changing under checkpoints


def _read_page1(db_path: str) -> tuple[bytes, bool, int]:
    """Page 1 of the database file as stored (a slot in the envelope layout), whether the file is
    an envelope, and its page size; other processes' checkpoints held off meanwhile."""
    try:
        with _checkpoints_held_off(db_path), open(db_path, "rb") as f:
            head = f.read(100)
            envelope = is_envelope(head)
            page_size = _header_page_size(head) if envelope else PAGE_SIZE
            page1 = head + f.read((page_size + ENVELOPE_OVERHEAD if envelope else page_size) - len(head))
    except FileNotFoundError:
        raise errors.OperationalError(f"{db_path} does not exist") from None
    return page1, envelope, page_size


@contextlib.contextmanager
def _checkpoints_held_off(db_path: str) -> Iterator[None]:
    """Other processes' checkpoints wait (or skip, as busy) meanwhile: a read lock on the byte of
    ``-shm`` that SQLite's checkpoint holds exclusively while it writes the database file.

    Only when this process has no connection to the database: POSIX locks belong to the
    process, so a lock taken and dropped here could change one its own connections hold (the
    callers then read page 1 until it reads alike; see ``_opening_secret``).
    """
    if registry.get(db_path) is not None:
        yield
        return
    try:
        fd = os.open(db_path + "-shm", os.O_RDWR)
    except OSError:  # no -shm: no connection in any process, so no checkpoint (or not ours to lock)
        yield
        return
    try:
        fcntl.fcntl(fd, fcntl.F_SETLKW, struct.pack("hhqqi", fcntl.F_RDLCK, os.SEEK_SET, _SHM_CKPT_BYTE, 1, 0))
        yield
    finally:
        os.close(fd)  # drops the lock (no other lock of this process is on the file)


def _header_page_size(head: bytes) -> int:
    """SQLite's page size from page 1's header (kept in plaintext by both layouts)."""
    size = int.from_bytes(head[16:18], "big")
    return 65536 if size == 1 else size or PAGE_SIZE


class _Database:
    """The few engine operations the sweep needs, on one connection of its own.

    Not ``LocalDatabase``: that one starts a frame log where there is none, and a plain
    database's connections would then archive into it for ever.  A replica's frame log is
    attached as by any connection, so checkpoints keep archiving into it.
    """

    def __init__(self, path: str, key: str, cipher: str) -> None:
        self.conn = Connection(path, encryption_key=key, cipher=cipher, isolation_level=None, record_frames=False)
        self.path = self.conn.path
        self.db = self.conn.apsw_connection
        state = registry.get(self.path)
        assert state is not None
        self.codec = state.codec
        self.lazy = self.conn.lazy_pages
        self.page_size = self.codec.page_size if self.codec is not None else PAGE_SIZE

    def query(self, sql: str) -> list[tuple[object, ...]]:
        try:
            return list(self.db.execute(sql))
        except apsw.Error as exc:
            raise errors.translate(exc) from None

    @contextlib.contextmanager
    def write_lock(self) -> Iterator[apsw.Connection]:
        """SQLite's write lock (``BEGIN IMMEDIATE``), rolled back at the end."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except apsw.Error as exc:
            raise errors.translate(exc) from None
        try:
            yield self.db
        finally:
            if not self.db.get_autocommit():
                self.db.execute("ROLLBACK")

    def install_locked(self, conn: apsw.Connection, pages: dict[int, bytes], size: int) -> None:
        """``pages`` (plaintext) as one WAL transaction; the caller's write lock goes on after it."""
        append_transaction(self.path, self.codec, pages, size, self.page_size)
        conn.execute("ROLLBACK")  # the transaction read nothing new: only the lock is given back
        conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()  # recover the WAL index now
        conn.execute("BEGIN IMMEDIATE")

    def checkpoint(self) -> None:
        """Copy the WAL into the database file and empty it (``TRUNCATE``)."""
        try:
            self.db.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        except apsw.Error as exc:
            raise errors.translate(exc) from None

    def close(self) -> None:
        self.conn.close()


def _hardened_codec(db: _Database) -> HardenedCodec:
    codec = db.codec
    if not isinstance(codec, HardenedCodec):  # the envelope codec is one too
        raise errors.EncryptionError(f"{db.path} does not use the hardened format")
    return codec


def _nonce_offset(codec: HardenedCodec) -> int:
    """Where an image's nonce (epoch, domain, random) starts in the bytes stored for one page.

    At the end of the page in the hardened format; after the ciphertext of the whole page and
    its tag in an envelope slot (``crypto/envelope.py``).
    """
    if isinstance(codec, EnvelopeCodec):
        return codec.page_size + TAG_SIZE
    return codec.page_size - NONCE_SIZE


def _refuse_other_processes(db_path: str) -> None:
    """Raise when another process has the database open (it holds a read lock on ``-shm``)."""
    try:
        with file_descriptor(db_path, "-shm") as fd:
            probe = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, _SHM_DMS_BYTE, 1, 0)
            answer = fcntl.fcntl(fd, fcntl.F_GETLK, probe)
    except FileNotFoundError:
        return
    kind, _whence, _start, _len, pid = struct.unpack("hhqqi", answer)
    if kind != fcntl.F_UNLCK:
        raise errors.OperationalError(
            f"{db_path} is open in another process (pid {pid}): close it first; a passphrase change "
            "rewrites page 1, whose parameters every open process keeps a copy of"
        )


# --- the rotation ------------------------------------------------------------------------------


class _Rotation:
    def __init__(
        self,
        db: _Database,
        progress: Callable[[RekeyProgress], None] | None,
        batch_pages: int,
        busy_timeout: float,
    ) -> None:
        self.db = db
        self.path = db.path
        self.ring_path = db.path + RING_SUFFIX
        self.codec = _hardened_codec(db)
        self.S = self.codec.slot_size  # bytes of one page image on disk (P, or P + 32 for an envelope)
        self.nonce_at = _nonce_offset(self.codec)
        self.progress = progress
        self.batch = max(1, batch_pages)
        self.busy_timeout = busy_timeout
        self.rewritten = 0
        self.copies = 0

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[apsw.Connection]:
        """SQLite's write lock, waited for up to ``busy_timeout`` (a busy writer can outlast one busy wait)."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                lock = self.db.write_lock()
                conn = lock.__enter__()
                break
            except errors.OperationalError:
                if time.monotonic() > deadline:
                    raise errors.OperationalError(
                        f"{self.path}: the write lock stayed taken for {self.busy_timeout:.0f} s; the rotation is "
                        "saved, run rekey again to resume it"
                    ) from None
        try:
            yield conn
        except BaseException as exc:
            if not lock.__exit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            lock.__exit__(None, None, None)

    def _say(self, ring: KeyRing, phase: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(RekeyProgress(ring.old_epoch, ring.new_epoch, phase, done, total))

    def run(self, new_raw: bytes | None, opened_with_new: bool = False) -> RekeyResult:
        self.db.query("SELECT count(*) FROM sqlite_schema")  # page 1 as of now: the codec's state follows it
        ring = self._read_ring()
        params = self.codec.params
        assert params is not None
        if opened_with_new and ring is None and not params.previous_live:
            return RekeyResult(params.epoch - 1, params.epoch, True, 0, 0)  # done already: the new key is the key
        if ring is not None and (ring.file_id != params.file_id or ring.new_epoch < params.epoch):
            raise errors.EncryptionError(
                f"{self.ring_path} is not the key ring of {self.path} as it is now (another file, or an older "
                "rotation); move it away if the database was replaced, then run rekey again"
            )
        if ring is not None and ring.new_epoch == params.epoch and not params.previous_live:
            _remove(self.ring_path)  # a retired rotation's leftover (killed before it was removed)
            ring = None
        resumed = ring is not None
        if ring is None and params.previous_live:
            ring = self._lost_ring()  # raises unless nothing holds the old epoch any more; retires it
            if new_raw is None or new_raw == self._held_key(params.epoch):
                # the run killed between removing the ring and retiring is finished now: the file uses
                # the key this run was asked to rotate to (a new key starts the next rotation instead)
                return RekeyResult(params.epoch - 1, params.epoch, True, 0, 0)
        if ring is None:
            ring = self._start(new_raw)
        else:
            if new_raw is not None and not self._ring_holds(ring, new_raw):
                raise errors.ProgrammingError(
                    f"a rotation of {self.path} to key epoch {ring.new_epoch} with another key is under way: "
                    "finish it first (run rekey without a new key), then rotate again"
                )
            if not self.codec.adopt_ring(ring):
                raise errors.EncryptionError(f"{self.ring_path} does not open with the key given for {self.path}")
            if ring.phase == keyring.PHASE_STARTED:
                ring = self._commit_start(ring)
        ring = self._sweep(ring)
        self._retire(ring)
        return RekeyResult(ring.old_epoch, ring.new_epoch, resumed, self.rewritten, self.copies)

    def _held_key(self, epoch: int) -> bytes | None:
        try:
            return self.codec.data_key(epoch)
        except KeyError:
            return None

    def _ring_holds(self, ring: KeyRing, raw: bytes) -> bool:
        return ring.open({}, (raw,)) is not None

    def _read_ring(self) -> KeyRing | None:
        try:
            with open(self.ring_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        return KeyRing.decode(raw, self.ring_path)

    def _save_ring(self, ring: KeyRing) -> None:
        _write_atomically(self.ring_path, ring.encode())

    def _lost_ring(self) -> KeyRing | None:
        """Page 1 says the older epoch is live but the ring is gone: fine only if nothing holds it."""
        params = self.codec.params
        assert params is not None
        left = self._old_images(params.epoch)
        if left:
            raise errors.EncryptionError(
                f"{self.path}: page 1 says a key rotation to epoch {params.epoch} is under way, but its key ring "
                f"{self.ring_path} is missing and {left} still needs the old key; put the ring file back (it "
                "travels with the database during a rotation), then run rekey again"
            )
        self._commit_retirement()
        return None

    # --- 1. start ------------------------------------------------------------------------------

    def _start(self, new_raw: bytes | None) -> KeyRing:
        params = self.codec.params
        assert params is not None
        if params.argon2 is None and new_raw is None:
            raise errors.ProgrammingError(f"{self.path} is encrypted with a raw key: give the new key to rotate to")
        try:
            ring = self.codec.rotation_ring(new_raw)
        except ValueError as exc:
            raise errors.ProgrammingError(f"{self.path}: {exc}") from None
        self._save_ring(ring)  # before any image of the new epoch exists
        if not self.codec.adopt_ring(ring):
            raise errors.EncryptionError(f"{self.ring_path} was just written and does not open")  # a bug
        return self._commit_start(ring)

    def _commit_start(self, ring: KeyRing) -> KeyRing:
        """Page 1 under the new epoch, "previous live" set: the rotation is on for every process."""
        with self._write_lock() as conn:
            size = int(conn.execute("PRAGMA page_count").get)  # type: ignore[arg-type]
            page1 = _current_plain(self.path, self.codec, [1])[1]
            self.db.install_locked(conn, {1: page1}, size)
        ring = ring.with_progress(keyring.PHASE_SWEEPING, 1)
        self._save_ring(ring)
        self._say(ring, "new writes use the new key", 1, 1)
        return ring

    # --- 2. sweep ------------------------------------------------------------------------------

    def _sweep(self, ring: KeyRing) -> KeyRing:
        new = ring.new_epoch
        rounds = 0
        while ring.phase == keyring.PHASE_SWEEPING:
            rounds += 1
            if rounds > _ROUNDS:
                raise errors.OperationalError(
                    f"{self.path}: pages under key epoch {ring.old_epoch} are still found after {_ROUNDS} sweeps "
                    f"(from page {ring.next_page}); the rotation is saved, run rekey again to resume it"
                )
            pgno = ring.next_page
            size = self._page_count()
            while pgno <= size:
                size = self._rewrite_batch(pgno, new)
                pgno += self.batch
                ring = ring.with_progress(keyring.PHASE_SWEEPING, pgno)
                self._save_ring(ring)
                self._say(ring, "re-encrypting pages", min(pgno - 1, size), size)
            self._checkpoint(ring)
            self._say(ring, "checkpointed", 1, 1)
            left = self._stale_pages(new)
            if left:
                ring = ring.with_progress(keyring.PHASE_SWEEPING, left[0])
            else:
                ring = ring.with_progress(keyring.PHASE_COPIES, 1)
            self._save_ring(ring)
        if ring.phase == keyring.PHASE_COPIES:
            self.copies += rewrite_frame_log(self.path, self.codec)
            self.copies += rewrite_revert_files(self.path, self.codec)
            self._say(ring, "re-encrypting the frame log and revert files", 1, 1)
            ring = ring.with_progress(keyring.PHASE_RETIRING, 1)
            self._save_ring(ring)
        return ring

    def _page_count(self) -> int:
        return int(self.db.query("PRAGMA page_count")[0][0])  # type: ignore[call-overload]

    def _rewrite_batch(self, first: int, new: int) -> int:
        """Pages ``first ..`` of the batch still under an older epoch, written back under ``new``."""
        lazy = self.db.lazy
        with self._write_lock() as conn:
            size = int(conn.execute("PRAGMA page_count").get)  # type: ignore[arg-type]
            wanted = [p for p in range(first, min(first + self.batch, size + 1)) if lazy is None or not lazy.missing(p)]
            raw = _current_raw(self.path, self.S, wanted)
            old = [p for p in wanted if self.codec.epoch_of(raw[p][0]) != new]
            if old:
                pages = {p: self.codec.decrypt(raw[p][0], p, raw[p][1]) for p in old}
                self.db.install_locked(conn, pages, size)
                self.rewritten += len(old)
        return size

    def _checkpoint(self, ring: KeyRing) -> None:
        """Copy the WAL into the database file and empty it; readers of older snapshots may delay it."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                self.db.checkpoint()
                if not _wal_frames_of_other_epochs(self.path, self.S, self.codec, ring.new_epoch):
                    return
            except errors.OperationalError:
                pass  # busy: a reader still uses the WAL, or a writer holds the lock
            if time.monotonic() > deadline:
                raise errors.OperationalError(
                    f"{self.path}: readers kept the WAL from being checkpointed for {self.busy_timeout:.0f} s; "
                    "the rotation is saved, run rekey again to resume it"
                )
            self._say(ring, "waiting for readers to checkpoint", 0, 1)
            time.sleep(0.05)  # lets a reader's transaction end (no condition to wait on across processes)

    def _stale_pages(self, new: int) -> list[int]:
        """Pages of the database file still under an older epoch (lazily missing pages aside).

        Only the database's pages count: bytes past its end (a file not yet cut down to a
        smaller size) are SQLite's to truncate at the next complete checkpoint.
        """
        lazy = self.db.lazy
        S = self.S
        out = []
        size = self._page_count()
        with file_descriptor(self.path) as fd:
            count = min(size, os.fstat(fd).st_size // S)  # an envelope file's zero padding is shorter than a slot
            for pgno in range(1, count + 1):
                if lazy is not None and lazy.missing(pgno):
                    continue
                nonce = os.pread(fd, 2, (pgno - 1) * S + self.nonce_at)
                if int.from_bytes(nonce, "big") != new:
                    out.append(pgno)
        return out

    # --- 4. retire -----------------------------------------------------------------------------

    def _old_images(self, new: int) -> str:
        """What still holds an image of another epoch than ``new`` ('' when nothing)."""
        stale = self._stale_pages(new)
        if stale:
            return f"page {stale[0]} of the database file ({len(stale)} pages)"
        if _wal_frames_of_other_epochs(self.path, self.S, self.codec, new):
            return "the WAL"
        if scan_frame_log(self.path, self.codec, new):
            return f"the frame log {self.path}-frames"
        if scan_revert_files(self.path, self.codec, new):
            return "a revert (a revert file, or the one the sync state keeps)"
        return ""

    def _retire(self, ring: KeyRing) -> None:
        for _round in range(_ROUNDS):
            with self._write_lock() as conn:
                left = self._old_images(ring.new_epoch)
                if not left:
                    # the ring first: a kill in between leaves "previous live" without a ring, which a
                    # rerun finds clean (nothing holds the old epoch) and retires
                    _remove(self.ring_path)
                    self._retire_locked(conn)
                    break
            # another process's checkpoint or archive came between the sweep and the lock: once more
            ring = self._sweep(ring.with_progress(keyring.PHASE_SWEEPING, 1))
        else:
            raise errors.OperationalError(
                f"{self.path}: {left} still holds key epoch {ring.old_epoch} after {_ROUNDS} sweeps; "
                "the rotation is saved, run rekey again to resume it"
            )
        with contextlib.suppress(errors.OperationalError):
            self.db.checkpoint()  # page 1 with the bit cleared into the database file, when no reader objects
        self._say(ring, "old key retired", 1, 1)

    def _commit_retirement(self) -> None:
        with self._write_lock() as conn:
            _remove(self.ring_path)
            self._retire_locked(conn)

    def _retire_locked(self, conn: apsw.Connection) -> None:
        """Page 1 with "previous live" cleared; the caller holds the write lock on ``conn``."""
        state = registry.get(self.path)
        page_map = state.map_of(self.codec) if state is not None else None
        if page_map is not None:
            page_map.reseal()  # authenticated under the new epoch before the old key goes
        self.codec.retire_previous()
        size = int(conn.execute("PRAGMA page_count").get)  # type: ignore[arg-type]
        page1 = _current_plain(self.path, self.codec, [1])[1]
        self.db.install_locked(conn, {1: page1}, size)


# --- reading images ----------------------------------------------------------------------------


def _current_raw(db_path: str, slot_size: int, pgnos: list[int]) -> dict[int, tuple[bytes, str]]:
    """Committed images as stored (caller holds the write lock): newest WAL frame, else the file.

    ``slot_size`` is what one image takes on disk (the page size, or ``P + 32`` for an envelope).
    """
    latest: dict[int, bytes] = {}
    wanted = set(pgnos)
    try:
        for txn in committed_wal(db_path).txns:
            for frame in txn.frames:
                if frame.pgno in wanted:
                    latest[frame.pgno] = frame.body
    except FileNotFoundError:
        pass
    out: dict[int, tuple[bytes, str]] = {}
    with file_descriptor(db_path) as fd:
        for pgno in pgnos:
            if pgno in latest:
                out[pgno] = (latest[pgno], "WAL")
                continue
            raw = os.pread(fd, slot_size, (pgno - 1) * slot_size)
            if len(raw) < slot_size:
                raise errors.DatabaseError(f"{db_path}: page {pgno} is missing from the database file")
            out[pgno] = (raw, "database")
    return out


def _current_plain(db_path: str, codec: HardenedCodec, pgnos: list[int]) -> dict[int, bytes]:
    raw = _current_raw(db_path, codec.slot_size, pgnos)
    return {p: codec.decrypt(image, p, where) for p, (image, where) in raw.items()}


def _wal_frames_of_other_epochs(db_path: str, slot_size: int, codec: HardenedCodec, new: int) -> int:
    """Frames anywhere in the WAL file (committed or not, any generation) not under ``new``.

    A frame is its 24-byte header and one image of ``slot_size`` bytes.
    """
    try:
        with open(db_path + "-wal", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return 0
    frame = FRAME_HEADER_SIZE + slot_size
    count = 0
    for off in range(WAL_HEADER_SIZE, len(data) - frame + 1, frame):
        body = data[off + FRAME_HEADER_SIZE : off + frame]
        if codec.epoch_of(body) != new:
            count += 1
    return count


# --- the frame log and revert files --------------------------------------------------------------


def frame_log_images(data: bytes, image_size: int) -> Iterator[tuple[int, int, int]]:
    """(record offset, image offset, pgno) of every page image in a frame log's valid records.

    ``image_size`` is the size of one stored image: the codec's slot size (``P + 32`` for an
    envelope), which the log's header records.
    """
    pos = FRAMELOG_HEADER_SIZE
    while pos + FRAMELOG_RECORD_SIZE <= len(data):
        head = data[pos : pos + FRAMELOG_RECORD_SIZE]
        fields = FRAMELOG_RECORD.unpack_from(head)
        magic, npages, body_len = fields[0], fields[7], fields[8]
        (crc,) = struct.unpack_from(">I", head, FRAMELOG_RECORD.size)
        end = pos + FRAMELOG_RECORD_SIZE + body_len
        if magic != REC_MAGIC or end > len(data):
            return
        body = data[pos + FRAMELOG_RECORD_SIZE : end]
        if zlib.crc32(body, zlib.crc32(head[: FRAMELOG_RECORD.size])) != crc:
            return
        p = pos + FRAMELOG_RECORD_SIZE
        for _ in range(npages):
            pgno, flag = struct.unpack_from(">IB", data, p)
            p += 5
            for _image in range((flag & 1) + (0 if flag & 2 else 1)):
                yield pos, p, pgno
                p += image_size
        pos = end


def scan_frame_log(db_path: str, codec: HardenedCodec, new: int) -> int:
    """How many images in the frame log are under another epoch than ``new``."""
    try:
        with open(db_path + "-frames", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return 0
    S = codec.slot_size
    return sum(1 for _rec, off, _pgno in frame_log_images(data, S) if codec.epoch_of(data[off : off + S]) != new)


def rewrite_frame_log(db_path: str, codec: HardenedCodec, selected: Callable[[bytes, int], bool] | None = None) -> int:
    """Re-encrypt the frame log's images of older epochs under the codec's write epoch; return how many.

    ``selected(image, pgno)`` picks other images instead (default: those of another epoch).

    Under the log's exclusive lock (the one ``FrameLog`` takes), written to a temporary file and
    renamed over the log, as ``FrameLog.prune`` does; a torn record at the end is dropped, as
    the log's own repair would.
    """
    path = db_path + "-frames"
    stale = selected or _other_epochs(codec)
    S = codec.slot_size
    with _flocked_current(path) as fd:
        if fd is None:
            return 0
        size = os.fstat(fd).st_size
        data = bytearray(os.pread(fd, size, 0))
        changed: set[int] = set()
        count = 0
        end = FRAMELOG_HEADER_SIZE
        for rec, off, pgno in list(frame_log_images(bytes(data), S)):
            image = bytes(data[off : off + S])
            if stale(image, pgno):
                data[off : off + S] = codec.reencrypt(image, pgno, "frame log")
                changed.add(rec)
                count += 1
        pos = FRAMELOG_HEADER_SIZE  # the crc of each changed record, over its new bytes
        while pos + FRAMELOG_RECORD_SIZE <= len(data):
            fields = FRAMELOG_RECORD.unpack_from(data, pos)
            body_len = fields[8]
            if fields[0] != REC_MAGIC or pos + FRAMELOG_RECORD_SIZE + body_len > len(data):
                break
            if pos in changed:
                body = bytes(data[pos + FRAMELOG_RECORD_SIZE : pos + FRAMELOG_RECORD_SIZE + body_len])
                crc = zlib.crc32(body, zlib.crc32(bytes(data[pos : pos + FRAMELOG_RECORD.size])))
                struct.pack_into(">I", data, pos + FRAMELOG_RECORD.size, crc)
            pos += FRAMELOG_RECORD_SIZE + body_len
            end = pos
        if not count:
            return 0
        _write_atomically(path, bytes(data[:end]), tmp=path + ".tmp")
        return count


def _other_epochs(codec: HardenedCodec) -> Callable[[bytes, int], bool]:
    """Selects the images not under the codec's write epoch (what a rotation re-encrypts)."""
    new = codec.write_epoch
    return lambda image, _pgno: codec.epoch_of(image) != new


def _revert_files(db_path: str) -> list[str]:
    return sorted(glob.glob(glob.escape(db_path) + "-revert-*[0-9]"))


def revert_images(data: bytes, image_size: int) -> Iterator[tuple[int, int]]:
    """(pgno, image offset) of every image in a revert's bytes (a revert file, or those a replica's
    sync state keeps); each image takes ``image_size`` bytes (the codec's slot size)."""
    count = int.from_bytes(data[16:20], "big")
    for i in range(count):
        off = _REVERT_HEAD + 4 + i * (4 + image_size)
        yield int.from_bytes(data[off : off + 4], "big"), off + 4


def _inline_revert(db_path: str, image_size: int) -> tuple[dict[str, object], bytearray] | None:
    """The replica's sync state (its JSON object) and the revert bytes it keeps, read now.

    None when it keeps none, or they cannot be read: a damaged state is ``turso-sync verify``'s
    to report, and its images no reader would accept anyway.
    """
    try:
        with open(db_path + _STATE_SUFFIX, "rb") as f:
            state = json.loads(f.read())
        value = state.get(_INLINE_REVERT) if isinstance(state, dict) else None
        data = bytearray(base64.b64decode(value, validate=True)) if isinstance(value, str) else None
    except (FileNotFoundError, ValueError):  # not JSON (nor text), not base64
        return None
    if data is None or len(data) != _REVERT_HEAD + 4 + int.from_bytes(data[16:20], "big") * (4 + image_size):
        return None
    return state, data


def _stale_in_revert(data: bytes, codec: HardenedCodec, new: int) -> int:
    S = codec.slot_size
    return sum(1 for _p, off in revert_images(data, S) if codec.epoch_of(data[off : off + S]) != new)


def scan_revert_files(db_path: str, codec: HardenedCodec, new: int) -> int:
    """How many images in revert files (and the revert the sync state keeps) are under another epoch than ``new``."""
    total = 0
    for name in _revert_files(db_path):
        with contextlib.suppress(FileNotFoundError), open(name, "rb") as f:
            total += _stale_in_revert(f.read(), codec, new)
    inline = _inline_revert(db_path, codec.slot_size)
    if inline is not None:
        total += _stale_in_revert(bytes(inline[1]), codec, new)
    return total


def rewrite_revert_files(
    db_path: str, codec: HardenedCodec, selected: Callable[[bytes, int], bool] | None = None
) -> int:
    """Re-encrypt the images of older epochs in revert files and in the revert the sync state keeps,
    under the replica's sync lock; return how many.

    ``selected(image, pgno)`` picks other images instead (default: those of another epoch).  The
    state is written again (atomically, the rest of it as it was) only when one of its images
    changed; every writer of the state holds the same lock and reads the state afresh under it.
    """
    S = codec.slot_size
    if not _revert_files(db_path) and _inline_revert(db_path, S) is None:
        return 0
    stale = selected or _other_epochs(codec)
    count = 0
    fd = os.open(db_path + "-sync.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what ``Replica.exclusive`` takes: no pull writes or drops one now
        for name in _revert_files(db_path):
            with open(name, "rb") as f:
                data = bytearray(f.read())
            n = _reencrypt_revert(data, codec, stale, "revert file")
            if n:
                _write_atomically(name, bytes(data), tmp=name + ".tmp")
                count += n
        inline = _inline_revert(db_path, S)  # read again under the lock
        if inline is not None:
            state, data = inline
            n = _reencrypt_revert(data, codec, stale, "sync state's revert")
            if n:
                state[_INLINE_REVERT] = base64.b64encode(data).decode("ascii")
                path = db_path + _STATE_SUFFIX
                # as ``SyncState.save`` writes it
                _write_atomically(path, json.dumps(state, indent=1, sort_keys=True).encode(), tmp=path + ".tmp")
                count += n
    finally:
        os.close(fd)
    return count


def _reencrypt_revert(data: bytearray, codec: HardenedCodec, stale: Callable[[bytes, int], bool], where: str) -> int:
    """Re-encrypt the selected images of a revert's bytes in place, and its checksum; return how many."""
    S = codec.slot_size
    n = 0
    for pgno, off in list(revert_images(bytes(data), S)):
        image = bytes(data[off : off + S])
        if stale(image, pgno):
            data[off : off + S] = codec.reencrypt(image, pgno, where)
            n += 1
    if n:
        body = bytes(data[_REVERT_HEAD + 4 :])
        struct.pack_into(">I", data, _REVERT_HEAD, zlib.crc32(body, zlib.crc32(bytes(data[:_REVERT_HEAD]))))
    return n


# --- files ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _flocked_current(path: str) -> Iterator[int | None]:
    """An exclusive flock on the file now at ``path`` (None when there is none); see ``FrameLog._open_locked``."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            yield None
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)
    try:
        yield fd
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
        fsync_dir(path)
