"""The files of one replica, and whether they still belong together.

A replica is more than its database file:

* ``DB``: the data, with the outbox of pending changes and the conflict journal inside (pending
  changes are lost with it);
* ``DB-wal`` and ``DB-shm``: SQLite's WAL and wal-index (``-shm`` is rebuilt by SQLite);
* ``DB-frames``: the frame log, history since the last pull, from which the synced base is rebuilt;
* ``DB-sync``: the sync state (remote URL, client id, synced revision and where it sits in the log),
  with the last pull's revert inside when it is small (``sync/state.py``);
* ``DB-sync.volatile``: counters and the push mark of saves a power loss may undo, laid over
  ``DB-sync`` while it belongs to that very file (``sync/state.py``);
* ``DB-revert-<seq>``: the synced base's images of the pages the last pull's rebase changed, when
  they are too many to keep in ``DB-sync``;
* ``DB-present``: a partial replica's bitmap of the pages held locally;
* ``DB-pagemap``: a hardened (or envelope) file's page map, which image each page must hold
  (``local/pagemap.py``);
* ``DB-sync.lock``, ``DB-present.lock``, ``DB-pagemap.lock``: lock files (no content).

``ReplicaFiles.check`` compares what the files say of each other, reading them directly (SQLite
is not asked to open a database whose file may be empty: its first connection would make it a
new, empty database): a missing, emptied or truncated database file (every page of the current
size must be in the file or in the WAL); a database whose size disagrees with the frame log's
newest transaction (an older copy, or another database, put in its place); a missing or damaged
frame log, ``-sync`` or revert (a file, or the images ``-sync`` keeps); a frame log that does not
reach the synced base.  Only then does it open the database, to compare the client id kept
inside it with the ``-sync`` one (a database of another replica) and, with ``deep=True``
(``turso-sync verify``), the page images the frame log recorded last with the file's pages.

``ReplicaFiles.encryption_report`` (``turso-sync verify``) says how the database is encrypted
(plaintext, Turso's format, the hardened format, the envelope layout), for a hardened (or
envelope) file which key epochs hold how many page images in the database file, the WAL, the
frame log, the revert files and the outbox,
whether a key rotation is under way, and every stored page image that fails authentication, by
file and page number.  It works on any database, a replica or not.

``ReplicaFiles.repair`` re-clones: when the database is readable, its pending changes, conflict
journal and client id are carried into the fresh copy and replayed on top of the remote state,
so nothing pending is lost; when it is not, it says what is lost.  Damaged files are kept beside
the replica with a ``.damaged`` suffix.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import os
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

import apsw

from .. import errors
from ..crypto import keyring
from ..crypto.envelope import OVERHEAD as ENVELOPE_OVERHEAD
from ..crypto.envelope import is_envelope
from ..crypto.hardened import NONCE_SIZE, TAG_SIZE, FileParams, HardenedCodec, is_hardened
from ..crypto.keyring import KeyRing
from ..crypto.page_codec import CIPHERS, PageAuthError, PageCodec, parse_key
from ..local.capture import CONFLICTS_TABLE, META_TABLE, OUTBOX_TABLE, is_replica
from ..local.connection import Connection, open_checks
from ..local.framelog import FrameLog, RevisionGone
from ..local.pagemap import MAP_SUFFIX, PageMap, PageMapError
from ..local.presence import PresenceMap, presence_path
from ..local.rekey import frame_log_images, revert_images  # the two readers of those layouts' images
from ..local.vfs import RING_SUFFIX, file_descriptor, realpath
from ..local.walindex import committed_wal
from ..page import PAGE_SIZE as P
from .state import (
    INLINE_REVERT_DAMAGED,
    PUSH_MARK_KEY,
    SyncState,
    lost_state_remedy,
    read_inline_revert,
    read_revert,
    remedy,
    revert_path,
)

SQLITE_MAGIC = b"SQLite format 3\x00"
TURSO_MAGIC_PREFIX = b"Turso"
_SUFFIXES = (
    "",
    "-wal",
    "-shm",
    "-frames",
    "-sync",
    "-sync.volatile",
    "-present",
    "-sync.lock",
    "-present.lock",
    "-rekey",
    "-pagemap",
    "-pagemap.lock",
)
# an interrupted write's temporary files
_LEFTOVERS = (".bootstrap", "-frames.tmp", "-sync.tmp", "-rekey.tmp", "-pagemap.tmp")
_ATTEMPTS = 5


@dataclass(frozen=True)
class Damage:
    """One thing wrong with a replica's files."""

    file: str  # the file at fault
    what: str  # what is wrong with it
    database: bool  # the database file itself (so pending changes cannot be carried over)

    def line(self) -> str:
        """One line for a person."""
        return f"{self.file}: {self.what}"


@dataclass(frozen=True)
class PageFailure:
    """One stored page image that failed authentication with a key that opens the database."""

    file: str  # the file holding the image
    pgno: int  # the page number it is an image of
    place: str  # "database", "WAL", "frame log" or "revert file"
    detail: str = ""  # where in the file, when the page number does not say it ("frame 12")
    reason: str = ""  # what the codec knows ("written under key epoch 1, which was retired")

    def line(self) -> str:
        """One line for a person: ``app.db-wal: page 3 (frame 12) failed authentication``."""
        if self.place == "page map":
            return f"{self.file}: {self.reason}"
        where = f" ({self.detail})" if self.detail else ""
        why = f": {self.reason}" if self.reason else ""
        return f"{self.file}: page {self.pgno}{where} failed authentication{why}"


@dataclass(frozen=True)
class RotationStatus:
    """A hardened file's key rotation under way (``turso-sync rekey`` started it and finishes it)."""

    old_epoch: int
    new_epoch: int
    ring_file: str  # ``<db>-rekey``: holds both keys until the rotation ends; it travels with the database
    ring_present: bool
    phase: str  # what the sweep does next, from the ring ("re-encrypting pages", ...); "" without a ring
    next_page: int | None  # the page the sweep resumes at, when it is re-encrypting pages


#: the places a hardened file's page images live, in the order reports list them
EPOCH_PLACES = ("database", "WAL", "frame log", "revert files", "outbox")


@dataclass
class EncryptionReport:
    """How a database is encrypted, which key epochs its page images use, and which images fail.

    ``format`` is "plaintext", "turso" (Turso's format), "hardened", "envelope" (the hardened
    cipher with each whole page in a larger slot, for remotes whose pages reserve no bytes),
    "empty" (no page written yet) or "unknown" (not a database header).  ``epochs`` (hardened
    and envelope) maps a key epoch to how many images each place holds under it
    (``EPOCH_PLACES``; the outbox's pages are database pages counted again, by their current
    image); an epoch is read from each image's nonce, and only authentication (``authenticated``,
    ``failures``) proves it.  ``failures`` lists every
    image that failed, not only the first; without a key nothing is authenticated.
    """

    path: str
    format: str
    cipher: str | None = None  # "aes256gcm", "aes128gcm", "aes-256-gcm-siv"
    passphrase: bool = False  # hardened: the data key is unwrapped by a passphrase (Argon2id)
    epoch: int | None = None  # hardened: the newest key epoch (the one new writes use)
    epochs: dict[int, dict[str, int]] = field(default_factory=dict)
    rotation: RotationStatus | None = None
    pages: int = 0  # pages of the database as its file's header counts them
    authenticated: int = 0  # page images that passed authentication
    failures: list[PageFailure] = field(default_factory=list)
    outbox_known: bool = False  # the outbox's pages could be listed (SQLite could read the schema)
    page_map: bool = False  # hardened: the file keeps a page map (``local/pagemap.py``; rolled-back pages refused)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values (epochs keyed by their number as text)."""
        rotation = self.rotation
        return {
            "path": self.path,
            "format": self.format,
            "cipher": self.cipher,
            "passphrase": self.passphrase,
            "epoch": self.epoch,
            "epochs": {str(e): dict(places) for e, places in sorted(self.epochs.items())},
            "rotation": None
            if rotation is None
            else {
                "old_epoch": rotation.old_epoch,
                "new_epoch": rotation.new_epoch,
                "ring_file": rotation.ring_file,
                "ring_present": rotation.ring_present,
                "phase": rotation.phase,
                "next_page": rotation.next_page,
            },
            "pages": self.pages,
            "page_map": self.page_map,
            "outbox_known": self.outbox_known,
            "authenticated": self.authenticated,
            "failures": [
                {"file": f.file, "page": f.pgno, "place": f.place, "detail": f.detail, "reason": f.reason}
                for f in self.failures
            ],
        }


@dataclass
class RepairReport:
    """What ``repair`` did."""

    kept_pending: int | None  # pending changes carried over (None: the database was not readable)
    set_aside: list[str] = field(default_factory=list)  # damaged files, renamed with ``.damaged``
    lines: list[str] = field(default_factory=list)


class ReplicaFiles:
    """Every file of one replica, and the checks that they still belong together."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = realpath(path)
        self.wal = self.path + "-wal"
        self.frames = self.path + "-frames"
        self.state_file = SyncState.path_for(self.path)
        self.sync_lock = self.path + "-sync.lock"

    # --- the list -------------------------------------------------------------------------------

    def revert_files(self) -> list[str]:
        """The revert files present (normally at most one)."""
        return sorted(glob.glob(glob.escape(self.path) + "-revert-*[0-9]"))

    def existing(self) -> list[str]:
        """Every file of this replica that exists now, the database first."""
        names = [self.path + s for s in (*_SUFFIXES, *_LEFTOVERS)]
        unfinished_reverts = sorted(glob.glob(glob.escape(self.path) + "-revert-*.tmp"))  # an interrupted write
        return [n for n in names if os.path.exists(n)] + self.revert_files() + unfinished_reverts

    def remove(self, keep: Collection[str] = ()) -> list[str]:
        """Delete every file of this replica except those named in ``keep``; return the removed ones.

        The replica must not be open.  Keep ``sync_lock`` when another process may hold it.
        """
        removed = []
        for name in self.existing():
            if name in keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.remove(name)
                removed.append(name)
        return removed

    @contextlib.contextmanager
    def removed_on_failure(self) -> Iterator[None]:
        """Around creating a replica: if the block raises (Ctrl-C included), delete every file of
        the replica it created, and leave the files that were there before."""
        before = set(self.existing())
        try:
            yield
        except BaseException:
            self.remove(keep=before)
            raise

    def is_replica(self) -> bool:
        """True when a ``-sync`` file says this path is a replica (damaged or not)."""
        return os.path.exists(self.state_file)

    # --- checks ----------------------------------------------------------------------------------

    def load_state(self) -> SyncState:
        """The ``-sync`` state; ``ReplicaDamagedError`` when it cannot be read."""
        try:
            state = SyncState.load(self.path)
        except errors.ReplicaDamagedError as exc:
            damage = Damage(self.state_file, f"the sync state is damaged: {exc.what}", False)
            raise errors.ReplicaDamagedError(damage.file, damage.what, exc.remedy, [damage]) from None
        if state is None:
            raise self._error([Damage(self.state_file, "the sync state is missing", False)])
        return state

    def check(
        self, encryption_key: str | None = None, cipher: str = "aes256gcm", *, deep: bool = False
    ) -> list[Damage]:
        """Everything wrong with the replica's files (empty when they belong together).

        The files are read without the sync lock, so another process may pull, prune or
        checkpoint meanwhile; a finding is only reported when no file changed while it was made
        (otherwise the check runs again).
        """
        found: list[Damage] = []
        for _attempt in range(_ATTEMPTS):
            before = self._stamp()
            try:
                found = self._check_once(encryption_key, cipher, deep)
            except RevisionGone as exc:  # pruned by another process between two reads
                found = [Damage(self.frames, f"the frame log's history moved while it was read ({exc})", False)]
            if not found or self._stamp() == before:
                return found
        return found

    def _stamp(self) -> tuple[tuple[int, int, int] | None, ...]:
        """What changes when another process writes any of the files the check reads."""
        out: list[tuple[int, int, int] | None] = []
        for name in (self.state_file, SyncState.volatile_path_for(self.path), self.path, self.wal, self.frames):
            try:
                st = os.stat(name)
            except FileNotFoundError:
                out.append(None)
                continue
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(out)

    def _check_once(self, encryption_key: str | None, cipher: str, deep: bool) -> list[Damage]:
        try:
            state = self.load_state()
        except errors.ReplicaDamagedError as exc:
            return list(exc.damages)
        if state.bootstrapping:
            return []  # a bootstrap that never finished: the next open starts it over
        codec = _codec(encryption_key, cipher)
        found = self._check_database_file()
        if found:
            return found
        # a wrong or missing key is EncryptionError, not damage (its pages would not authenticate)
        try:
            codec = open_checks(self.path, codec)
        except errors.EncryptionError:
            if codec is None or not _key_opens(self.path, codec):
                raise
            # the key opens the frame log's images of this database: page 1 was changed on disk
            what = "page 1 failed authentication with the key that opens its frame log: the file was changed on disk"
            return [Damage(self.path, what, True)]
        slot = codec.slot_size if codec is not None else P  # what one page takes on disk (envelope: P + 32)
        log = FrameLog(self.path, codec, slot)
        found = self._check_frame_log(log, state)
        found += self._check_revert(state, codec)
        if found:
            return found
        found = self._check_size(log, slot)
        if found or not deep:
            return found
        return self._check_inside(state, encryption_key, cipher, log, codec, slot)

    def raise_if_damaged(self, encryption_key: str | None = None, cipher: str = "aes256gcm") -> None:
        """Raise ``ReplicaDamagedError`` naming the first damaged file and the remedy (file checks only)."""
        found = self.check(encryption_key, cipher)
        if found:
            raise self._error(found)

    def raise_if_state_lost(self, db: Any) -> None:
        """On a database opened without a ``-sync`` file: refuse it if it holds the sync tables.

        It is then a replica that lost its sync state; used as a plain database, its writes
        would pile up in the outbox and never reach the remote.
        """
        if not self.is_replica() and is_replica(db):
            what = "the sync state is missing, but the database is a replica (it holds the sync tables)"
            raise errors.ReplicaDamagedError(
                self.state_file,
                what,
                f"run `turso-sync verify --repair {self.path} --remote URL` to re-clone it keeping its pending changes",
            )

    def check_identity(self, db: Any, client_id: str) -> None:
        """On an open replica: the client id kept in the database must be its ``-sync`` one."""
        try:
            found = db.execute(f"SELECT value FROM {META_TABLE} WHERE key = 'client_id'").fetchall()
        except apsw.SQLError:
            return  # no sync tables yet: the replica creates them with its own id

        if found and str(found[0][0]) != client_id:
            raise self._error([self._other_replica(str(found[0][0]), client_id)])

    def _other_replica(self, client: str, expected: str) -> Damage:
        return Damage(
            self.path,
            f"the database belongs to replica {client}, not to {expected} of its "
            f"{os.path.basename(self.state_file)} file: another replica's database is in its place",
            True,
        )

    def _error(self, damages: list[Damage]) -> errors.ReplicaDamagedError:
        # the -sync file held the remote's URL (unless only the revert images it keeps are damaged)
        lost_url = damages[0].file == self.state_file and not damages[0].what.startswith(INLINE_REVERT_DAMAGED)
        fix = lost_state_remedy(self.path) if lost_url else remedy(self.path)
        return errors.ReplicaDamagedError(damages[0].file, damages[0].what, fix, damages)

    def _check_database_file(self) -> list[Damage]:
        try:
            size = os.path.getsize(self.path)
        except FileNotFoundError:
            return [Damage(self.path, "the database file is missing", True)]
        if size == 0:
            return [Damage(self.path, "the database file is empty (0 bytes): it was emptied or replaced", True)]
        if size % P:
            return [Damage(self.path, f"the database file is {size} bytes, not a whole number of pages", True)]
        with open(self.path, "rb") as f:
            head = f.read(100)
        if not (head.startswith(SQLITE_MAGIC) or head.startswith(TURSO_MAGIC_PREFIX)):
            return [Damage(self.path, "the database file does not start with a database header", True)]
        return []

    def _check_frame_log(self, log: FrameLog, state: SyncState) -> list[Damage]:
        if not os.path.exists(self.frames):
            return [Damage(self.frames, "the frame log is missing (the synced base cannot be rebuilt)", False)]
        try:
            newest = log.current_seq()
        except (OSError, ValueError) as exc:
            return [Damage(self.frames, f"the frame log is damaged ({exc})", False)]
        if not log.base_seq <= state.synced_seq <= newest:
            return [
                Damage(
                    self.frames,
                    f"the frame log covers transactions {log.base_seq}..{newest} but the synced base is "
                    f"transaction {state.synced_seq} (history lost or from another database)",
                    False,
                )
            ]
        return []

    def _check_revert(self, state: SyncState, codec: PageCodec | None) -> list[Damage]:
        if state.revert_inline is not None:
            try:
                read_inline_revert(self.path, state, codec)
            except errors.ReplicaDamagedError as exc:
                return [Damage(self.state_file, exc.what, False)]
            except PageAuthError as exc:
                return [Damage(self.state_file, f"{INLINE_REVERT_DAMAGED} ({exc})", False)]
            return []
        if state.revert_seq is None:
            return []
        path = revert_path(self.path, state.revert_seq)
        try:
            read_revert(self.path, state.revert_seq, codec)
        except FileNotFoundError:
            return [Damage(path, "the revert file of the last pull is missing", False)]
        except (OSError, ValueError, PageAuthError) as exc:
            return [Damage(path, f"the revert file of the last pull is damaged ({exc})", False)]
        return []

    def _check_size(self, log: FrameLog, slot: int) -> list[Damage]:
        """Every page of the current size must be in the WAL or in the file (``slot`` bytes a page)."""
        # the WAL first: a checkpoint meanwhile only moves its pages into the file
        scan = committed_wal(self.path)
        file_pages = os.path.getsize(self.path) // slot
        in_wal: set[int] = set()
        for txn in scan.txns:
            in_wal.update(frame.pgno for frame in txn.frames)
        history = list(log.history(None, with_images=False))
        newest_size = history[-1].db_size if history else log.base_size  # base read with the history
        size = scan.txns[-1].db_size if scan.txns else newest_size
        missing = [p for p in range(1, size + 1) if p > file_pages and p not in in_wal]
        if missing:
            return [
                Damage(
                    self.path,
                    f"the database file holds {file_pages} pages but the replica has {size} "
                    f"(pages {missing[0]}..{missing[-1]} are gone): it was truncated",
                    True,
                )
            ]
        if not scan.txns and file_pages and newest_size != _header_pages(self.path, slot):
            return [
                Damage(
                    self.path,
                    f"the database file has {_header_pages(self.path, slot)} pages, but its frame log's newest "
                    f"transaction left {newest_size}: another database (or an older copy) is in its place",
                    True,
                )
            ]
        return []

    def _check_inside(
        self,
        state: SyncState,
        encryption_key: str | None,
        cipher: str,
        log: FrameLog,
        codec: PageCodec | None,
        slot: int,
    ) -> list[Damage]:
        """Open the database: its client id must be the ``-sync`` one, its pages what the frame log says."""
        try:
            conn = Connection(self.path, encryption_key=encryption_key, cipher=cipher, isolation_level=None)
        except errors.EncryptionError:
            raise  # a wrong or missing key is not damage: say so as such
        except errors.DatabaseError as exc:
            return [Damage(self.path, f"the database cannot be opened ({exc})", True)]
        try:
            db = conn.apsw_connection
            try:
                # asked of the schema, not read from an error message: no meta table, not a replica's database
                has_meta = db.execute(
                    "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (META_TABLE,)
                ).fetchall()
                found = (
                    db.execute(f"SELECT value FROM {META_TABLE} WHERE key = 'client_id'").fetchall() if has_meta else []
                )
            except Exception as exc:
                return [Damage(self.path, f"the database cannot be read ({exc})", True)]
            client = str(found[0][0]) if found else None
            if client is None and log.current_seq() > 0:
                what = "the database holds no replica tables: another database is in its place"
                return [Damage(self.path, what, True)]
            if client is not None and client != state.client_id:
                return [self._other_replica(client, state.client_id)]
            if state.partial is None:
                return self._compare_images(log, codec, slot)
            return []
        finally:
            conn.close()

    def _compare_images(self, log: FrameLog, codec: PageCodec | None, slot: int) -> list[Damage]:
        """The newest image the frame log holds of each page must be the page in the file (or the WAL).

        Every page that differs is named, and one that fails authentication is called so.
        """
        newest: dict[int, bytes] = {}
        size = log.base_size
        for txn in log.history(None):
            size = txn.db_size
            for page in txn.pages:
                if page.post:
                    newest[page.pgno] = page.post
        for wtxn in committed_wal(self.path).txns:
            for frame in wtxn.frames:
                newest.pop(frame.pgno, None)  # the WAL holds it: the file's copy is older, rightly
        found: list[Damage] = []
        # the connection of ``_check_inside`` is open: a descriptor of our own, closed, would drop its locks
        with file_descriptor(self.path) as fd:
            for pgno in sorted(p for p in newest if p <= size):
                raw = os.pread(fd, slot, (pgno - 1) * slot)
                try:
                    mine = _plain(raw, pgno, codec)
                except PageAuthError as exc:
                    what = f"page {pgno} of the database file failed authentication{_why(exc)}: it was changed on disk"
                    found.append(Damage(self.path, what, True))
                    continue
                try:
                    recorded = _plain(newest[pgno], pgno, codec, "frame log")
                except PageAuthError as exc:
                    what = f"the frame log's last image of page {pgno} failed authentication{_why(exc)}: it was changed"
                    found.append(Damage(self.frames, what + " on disk", False))
                    continue
                if mine != recorded:
                    what = (
                        f"page {pgno} of the database file is not the image its frame log recorded last: "
                        "the file was changed or replaced behind the replica's back"
                    )
                    found.append(Damage(self.path, what, True))
        return found

    # --- encryption ------------------------------------------------------------------------------

    def encryption_report(
        self, encryption_key: str | None = None, cipher: str = "aes256gcm", *, authenticate: bool = True
    ) -> EncryptionReport:
        """How the database is encrypted, its key epochs, its rotation, and every image that fails.

        Reads the database file, the WAL's committed frames, the frame log, the revert files and
        the key ring directly; a connection of its own holds a read transaction meanwhile (so
        the WAL is not restarted under the scan) and lists the outbox's pages.  With
        ``authenticate`` and a key every image is decrypted, and each one that fails is listed
        (a database page that fails is read again first: a checkpoint may have been rewriting
        it).  Without a key, or with ``authenticate=False``, the format, epochs and rotation are
        read from the headers and nonces alone (and with ``authenticate=False`` no connection is
        opened, so the outbox's pages are not counted).  Raises ``EncryptionError`` for a wrong key (page
        1 does not open), as opening would; ``FileNotFoundError`` when there is no database file.
        """
        with file_descriptor(self.path) as fd:
            head = os.pread(fd, P, 0)
        if len(head) < 100:
            return EncryptionReport(self.path, "empty")
        if head.startswith(SQLITE_MAGIC):
            report = EncryptionReport(self.path, "plaintext")
        elif is_hardened(head) or is_envelope(head):
            params = FileParams.of_page1(head)
            layout = "hardened" if is_hardened(head) else "envelope"
            report = EncryptionReport(self.path, layout, "aes-256-gcm-siv", params.argon2 is not None)
            report.page_map = params.page_map
        elif head.startswith(TURSO_MAGIC_PREFIX) and len(head) > 6:
            names = {spec.cipher_id: name for name, spec in CIPHERS.items()}
            report = EncryptionReport(self.path, "turso", names.get(head[6], f"cipher id {head[6]}"))
        else:
            return EncryptionReport(self.path, "unknown")
        page_size = int.from_bytes(head[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        codec: PageCodec | None = None
        if authenticate and encryption_key is not None:
            codec = open_checks(self.path, _codec(encryption_key, cipher))  # a wrong key raises, as on open
        elif report.format == "plaintext" and encryption_key is not None:
            open_checks(self.path, _codec(encryption_key, cipher))  # the same refusal, named the same way
        scan = _PageScan(self, report, codec, page_size)
        # without authentication SQLite is not asked to open the file (it may be damaged: see ``check``),
        # nor with a page map that fails (every read would be refused; the scan names the map)
        opens = authenticate and not (report.page_map and _page_map_fails(self.path, codec))
        reading = _reading_connection(self.path, encryption_key, cipher, report.format) if opens else None
        with reading or contextlib.nullcontext() as db:
            if db is not None:
                scan.outbox = _outbox_pages(db)
                report.outbox_known = scan.outbox is not None
            scan.run(head)
        return report

    # --- repair ----------------------------------------------------------------------------------

    def repair(
        self,
        *,
        encryption_key: str | None = None,
        cipher: str = "aes256gcm",
        auth_token: str | None = None,
        remote_url: str | None = None,
    ) -> RepairReport:
        """Re-clone the replica from its remote, carrying its pending changes over when readable.

        The damaged files are renamed with a ``.damaged`` suffix (nothing is deleted).  Raises
        ``ProgrammingError`` when the remote URL is unknown (the ``-sync`` file is lost: pass it).
        """
        from .. import connect  # the public constructor bootstraps the fresh copy
        from .partial import PartialSync

        damages = self.check(encryption_key, cipher, deep=True)
        state: SyncState | None
        try:
            state = self.load_state()
        except errors.ReplicaDamagedError:
            state = None
        url = remote_url or (state.remote_url if state is not None else None)
        if url is None:
            raise errors.ProgrammingError(
                f"{self.state_file} is lost, so the remote URL is unknown: pass it to repair {self.path}"
            )
        report = RepairReport(kept_pending=None)
        database_ok = not any(d.database for d in damages)
        carried = self._read_pending(encryption_key, cipher) if database_ok and os.path.exists(self.path) else None
        for name in self.existing():
            os.replace(name, name + ".damaged")
            report.set_aside.append(name + ".damaged")
        partial = PartialSync.from_json(state.partial) if state is not None and state.partial else None
        try:
            conn = connect(
                self.path, url, auth_token=auth_token, encryption_key=encryption_key, cipher=cipher, partial=partial
            )
        except BaseException:
            # the remote could not be cloned: put the damaged replica back as it was, so a later
            # repair still finds its pending changes
            for name in self.existing():
                os.remove(name)
            for kept in report.set_aside:
                os.replace(kept, kept.removesuffix(".damaged"))
            raise
        try:
            if carried is None:
                report.lines.append(
                    "the database file was not readable: local changes not pushed before the damage are lost"
                )
            else:
                report.kept_pending = self._restore_pending(conn, carried)
                report.lines.append(
                    f"kept {report.kept_pending} pending change(s) and the conflict journal; they are replayed "
                    "on top of the remote state"
                )
        finally:
            conn.close()
        return report

    def _read_pending(self, encryption_key: str | None, cipher: str) -> dict[str, list[tuple[Any, ...]]] | None:
        """Outbox, meta and journal rows of a readable database (None when it cannot be read)."""
        try:
            conn = Connection(
                self.path, encryption_key=encryption_key, cipher=cipher, isolation_level=None, record_frames=False
            )
        except errors.EncryptionError:
            raise
        except errors.DatabaseError:
            return None
        try:
            db = conn.apsw_connection
            # a partial replica's missing pages cannot be read offline (nor, when its pin is gone,
            # at all): only the bookkeeping tables are read there, which are local pages
            partial = os.path.exists(presence_path(self.path))
            if not partial and db.execute("PRAGMA quick_check").fetchall() != [("ok",)]:
                return None
            return {
                table: list(db.execute(f"SELECT * FROM {table} ORDER BY rowid"))
                for table in (OUTBOX_TABLE, META_TABLE, CONFLICTS_TABLE)
            }
        except Exception:  # a table missing or a page unreadable: nothing can be carried over
            return None
        finally:
            conn.close()

    def _restore_pending(self, conn: Any, carried: dict[str, list[tuple[Any, ...]]]) -> int:
        """Put the carried rows into the fresh copy, keep the old client id, and rebase them by a full pull."""
        replica = conn.replica
        meta = {str(row[0]): row[1] for row in carried[META_TABLE]}
        run = replica.db.query  # the engine's own connection, no implicit transaction
        with replica.exclusive():
            run("BEGIN IMMEDIATE")
            try:
                run(f"DELETE FROM {META_TABLE}")
                for table, rows in carried.items():
                    for row in rows:
                        marks = ", ".join("?" * len(row))
                        run(f"INSERT OR REPLACE INTO {table} VALUES ({marks})", row)
                run("COMMIT")
            except BaseException:
                run("ROLLBACK")
                raise
            state = replica.state
            if "client_id" in meta:
                state.client_id = str(meta["client_id"])  # the remote knows which changes it has by this id
                state.extra.pop(PUSH_MARK_KEY, None)  # the fresh clone's belief was for its own new id
            state.synced_revision = ""  # the next pull fetches every page and replays the outbox on them
            state.save(replica.path)
        pending = len(carried[OUTBOX_TABLE])
        replica.pull(0)
        return pending


class _PageScan:
    """One pass over every stored image of a database's pages, filling an ``EncryptionReport``."""

    def __init__(self, files: ReplicaFiles, report: EncryptionReport, codec: PageCodec | None, page_size: int) -> None:
        self.files = files
        self.report = report
        self.codec = codec
        self.envelope = report.format == "envelope"
        self.P = page_size + ENVELOPE_OVERHEAD if self.envelope else page_size  # bytes of one stored image
        # where an image's nonce (epoch, domain, random) starts: after the ciphertext and tag in an envelope slot
        self.nonce_at = page_size + TAG_SIZE if self.envelope else page_size - NONCE_SIZE
        self.hardened = report.format in ("hardened", "envelope")
        self.outbox: list[int] | None = None
        presence = PresenceMap.load(files.path)
        self.missing = presence.missing if presence is not None else (lambda _pgno: False)

    def run(self, head: bytes) -> None:
        files, P = self.files, self.P
        report = self.report
        wal = committed_wal(files.path)
        newest_wal: dict[int, bytes] = {}
        for txn in wal.txns:
            for frame in txn.frames:
                newest_wal[frame.pgno] = frame.body
        if self.hardened:
            self._rotation(newest_wal.get(1, head))
        with file_descriptor(files.path) as fd:
            file_pages = os.fstat(fd).st_size // P
            report.pages = min(file_pages, _size_in_header(head, file_pages))
            page_map = self._page_map(fd)
            for pgno in range(1, report.pages + 1):
                if self.missing(pgno):
                    continue  # a partial replica's page never fetched: no image to check
                raw = os.pread(fd, P, (pgno - 1) * P)
                self._count(raw, "database")
                # a page with a newer frame in the WAL is read from there: a checkpoint killed before
                # its map was saved leaves the file's image unrecorded, and the next one writes it again
                mapped = page_map if pgno not in newest_wal else None
                if self._database_problem(mapped, raw, pgno) is not None:
                    # read again: a checkpoint may have been rewriting it (and the map with it)
                    raw = os.pread(fd, P, (pgno - 1) * P)
                    if mapped is not None:
                        mapped.reload()
                    again = self._database_problem(mapped, raw, pgno)
                    if again is not None:
                        self._fail(again, files.path, pgno, "database")
            for txn in wal.txns:
                for frame in txn.frames:
                    self._count(frame.body, "WAL")
                    problem = self._problem(frame.body, frame.pgno, "WAL")
                    if problem is not None:
                        self._fail(problem, files.wal, frame.pgno, "WAL", f"frame {frame.index}")
            for pgno in self.outbox or ():
                image = newest_wal.get(pgno)
                if image is None and pgno <= file_pages:
                    image = os.pread(fd, P, (pgno - 1) * P)
                if image is not None:
                    self._count(image, "outbox")
        self._copies(files.frames, "frame log", _frame_log_pages)
        for name in files.revert_files():
            self._copies(name, "revert file", _revert_pages)
        inline = _inline_revert_bytes(files.path)
        if inline is not None:
            self._copies(files.state_file, "revert file", _revert_pages, inline)

    def _copies(
        self,
        name: str,
        place: str,
        images: Callable[[bytes, int], Iterator[tuple[int, bytes]]],
        data: bytes | None = None,
    ) -> None:
        """The images a copy (frame log, revert file, or ``data`` kept in the file ``name``) holds, as on disk."""
        if data is None:
            try:
                with open(name, "rb") as f:  # no SQLite lock lives on these files
                    data = f.read()
            except FileNotFoundError:
                return
        counted = "revert files" if place == "revert file" else place
        for pgno, image in images(data, self.P):
            self._count(image, counted)
            problem = self._problem(image, pgno, place)
            if problem is not None:
                self._fail(problem, name, pgno, place)

    def _page_map(self, fd: int) -> PageMap | None:
        """A hardened file's page map, read now; a map that is missing or fails is listed as a failure."""
        codec = self.codec
        if not isinstance(codec, HardenedCodec) or not codec.keeps_page_map:
            return None
        P = self.P

        def read_slot(pgno: int) -> bytes:
            raw = os.pread(fd, P, (pgno - 1) * P)
            return raw if len(raw) == P else b""

        page_map = PageMap(self.files.path, codec, read_slot, lambda: None)
        try:
            page_map.reload()
        except PageMapError as exc:
            self._fail(str(exc), self.files.path + MAP_SUFFIX, 0, "page map")
            return None
        return page_map

    def _database_problem(self, page_map: PageMap | None, raw: bytes, pgno: int) -> str | None:
        """What is wrong with a database file's image (None: nothing): it fails, or it is not the last one written."""
        problem = self._problem(raw, pgno, "database")
        if problem is not None or page_map is None or page_map.accepts(pgno, raw):
            return problem
        return "it is not the image last written there (an older image of the page was put back)"

    def _count(self, image: bytes, place: str) -> None:
        if self.hardened:
            epoch = int.from_bytes(image[self.nonce_at : self.nonce_at + 2], "big")  # unverified
            places = self.report.epochs.setdefault(epoch, {})
            places[place] = places.get(place, 0) + 1

    def _problem(self, image: bytes, pgno: int, place: str) -> str | None:
        """None when the image authenticates (or there is no key to try), else what the codec says."""
        if self.codec is None:
            return None
        try:
            self.codec.decrypt(image, pgno, place)
        except PageAuthError as exc:
            return exc.reason
        self.report.authenticated += 1
        return None

    def _fail(self, reason: str, file: str, pgno: int, place: str, detail: str = "") -> None:
        self.report.failures.append(PageFailure(file, pgno, place, detail, reason))

    def _rotation(self, page1: bytes) -> None:
        """Page 1's newest image says the epoch and whether the older one is live; the ring says the rest."""
        report = self.report
        params = FileParams.of_page1(page1)
        report.epoch = params.epoch
        ring_file = self.files.path + RING_SUFFIX
        ring: KeyRing | None
        try:
            with open(ring_file, "rb") as f:
                ring = KeyRing.decode(f.read(), ring_file)
        except FileNotFoundError:
            ring = None
        except keyring.KeyRingError:
            ring = None  # named by the rotation itself (``turso-sync rekey``); here: no progress to show
        if ring is not None and (ring.file_id != params.file_id or ring.new_epoch < params.epoch):
            ring = None  # another file's or an older rotation's: rekey refuses it by name
        if ring is not None and ring.new_epoch == params.epoch and not params.previous_live:
            ring = None  # a finished rotation's leftover
        if ring is None and not params.previous_live:
            return
        if ring is not None:
            sweeping = ring.phase == keyring.PHASE_SWEEPING
            report.rotation = RotationStatus(
                ring.old_epoch,
                ring.new_epoch,
                ring_file,
                True,
                keyring.PHASE_NAMES.get(ring.phase, f"phase {ring.phase}"),
                ring.next_page if sweeping else None,
            )
        else:
            report.rotation = RotationStatus(params.epoch - 1, params.epoch, ring_file, False, "", None)


def _page_map_fails(path: str, codec: PageCodec | None) -> bool:
    """True when a hardened file's page map is missing or fails authentication."""
    if not isinstance(codec, HardenedCodec):
        return False
    try:
        PageMap(path, codec, lambda _pgno: b"", lambda: None).reload()
    except PageMapError:
        return True
    return False


@contextlib.contextmanager
def _reading_connection(path: str, key: str | None, cipher: str, file_format: str) -> Iterator[apsw.Connection | None]:
    """A connection in a read transaction (the WAL is not restarted meanwhile); None when SQLite cannot read."""
    if file_format != "plaintext" and key is None:
        yield None
        return
    try:
        conn = Connection(path, encryption_key=key, cipher=cipher, isolation_level=None, record_frames=False)
    except errors.EncryptionError:
        raise
    except errors.DatabaseError:
        yield None
        return
    try:
        db = conn.apsw_connection
        try:
            db.execute("BEGIN")
            db.execute("SELECT count(*) FROM sqlite_schema").fetchall()
        except (apsw.Error, errors.Error):
            yield None  # a page of the schema fails: the scan names it
            return
        try:
            yield db
        finally:
            with contextlib.suppress(apsw.Error):
                db.execute("ROLLBACK")
    finally:
        conn.close()


def _outbox_pages(db: apsw.Connection) -> list[int] | None:
    """The pages of the outbox table and its indexes (None when they cannot be listed)."""
    try:
        rows = db.execute(
            "SELECT pageno FROM dbstat WHERE name IN (SELECT name FROM sqlite_schema WHERE tbl_name = ?)",
            (OUTBOX_TABLE,),
        ).fetchall()
    except (apsw.Error, errors.Error):  # a damaged page, or a partial replica's page not fetched (offline)
        return None
    return sorted({row[0] for row in rows if isinstance(row[0], int)})


def _frame_log_pages(data: bytes, page_size: int) -> Iterator[tuple[int, bytes]]:
    for _record, offset, pgno in frame_log_images(data, page_size):
        yield pgno, data[offset : offset + page_size]


def _revert_pages(data: bytes, page_size: int) -> Iterator[tuple[int, bytes]]:
    for pgno, offset in revert_images(data, page_size):
        yield pgno, data[offset : offset + page_size]


def _inline_revert_bytes(db_path: str) -> bytes | None:
    """The revert bytes the state file keeps (``revert_inline``), None when there are none or they
    cannot be read (``check`` reports a damaged state)."""
    try:
        state = SyncState.load(db_path)
    except errors.ReplicaDamagedError:
        return None
    if state is None or state.revert_inline is None:
        return None
    try:
        return base64.b64decode(state.revert_inline, validate=True)
    except ValueError:
        return None


def _size_in_header(head: bytes, file_pages: int) -> int:
    """The database size page 1's header gives, when SQLite would trust it, else the file's."""
    if head[92:96] == head[24:28] and int.from_bytes(head[28:32], "big"):
        return int.from_bytes(head[28:32], "big")
    return file_pages


def _why(exc: PageAuthError) -> str:
    return f" ({exc.reason})" if exc.reason else ""


def _codec(encryption_key: str | None, cipher: str) -> PageCodec | None:
    if encryption_key is None:
        return None
    try:
        spec, key = parse_key(encryption_key, cipher)
    except (ValueError, TypeError) as exc:
        raise errors.ProgrammingError(str(exc)) from None
    return PageCodec(spec, key)


def _key_opens(path: str, codec: PageCodec) -> bool:
    """True when ``codec`` (for the file's layout) decrypts a page image the frame log holds.

    Turso's format decrypts any image alone.  The hardened layouts learn the file's parameters
    from a page 1 written for the database file (an image of the WAL does not bind them), so
    page-1 images are tried, newest first, a few at most (a passphrase costs an Argon2id run each).
    """
    try:
        with file_descriptor(path) as fd:
            codec = codec.for_file(os.pread(fd, 100, 0))
    except ValueError:
        return False
    log = FrameLog(path, codec, codec.slot_size)
    bound_by_page1 = codec.spec.page_format != "turso"
    tries = 0
    try:
        for txn in reversed(list(log.history(None))):
            for page in txn.pages:
                if bound_by_page1 and page.pgno != 1:
                    continue
                for image in (page.post, page.pre):
                    if not image or tries >= _PAGE1_TRIES:
                        continue
                    tries += 1
                    try:
                        log.decrypt(image, page.pgno)
                    except PageAuthError:
                        continue
                    return True
    except (OSError, ValueError, RevisionGone):
        return False
    return False


_PAGE1_TRIES = 8


def _plain(raw: bytes, pgno: int, codec: PageCodec | None, where: str = "database") -> bytes:
    """A page's plaintext; ``where`` it was read from ("frame log": a copy of a database page or a
    WAL frame, which the hardened format tells apart)."""
    if codec is None:
        return raw
    return codec.decrypt(raw, pgno, where)


def _header_pages(path: str, slot: int) -> int:
    """The database size as SQLite reads it: the header's (bytes 28..32, plaintext in every encrypted
    layout) when its version-valid-for number matches the change counter, else the file's size."""
    with file_descriptor(path) as fd:
        return _size_in_header(os.pread(fd, 100, 0), os.fstat(fd).st_size // slot)


__all__ = [
    "EPOCH_PLACES",
    "Damage",
    "EncryptionReport",
    "PageFailure",
    "RepairReport",
    "ReplicaFiles",
    "RotationStatus",
    "lost_state_remedy",
    "remedy",
]
