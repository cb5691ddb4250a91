"""The files of one replica, and whether they still belong together.

A replica is more than its database file:

* ``DB``: the data, with the outbox of pending changes and the conflict journal inside (pending
  changes are lost with it);
* ``DB-wal`` and ``DB-shm``: SQLite's WAL and wal-index (``-shm`` is rebuilt by SQLite);
* ``DB-frames``: the frame log, history since the last pull, from which the synced base is rebuilt;
* ``DB-sync``: the sync state (remote URL, client id, synced revision and where it sits in the log);
* ``DB-revert-<seq>``: the synced base's images of the pages the last pull's rebase changed;
* ``DB-present``: a partial replica's bitmap of the pages held locally;
* ``DB-sync.lock``, ``DB-present.lock``: lock files (no content).

``ReplicaFiles.check`` compares what the files say of each other, reading them directly (SQLite
is not asked to open a database whose file may be empty: its first connection would make it a
new, empty database): a missing, emptied or truncated database file (every page of the current
size must be in the file or in the WAL); a database whose size disagrees with the frame log's
newest transaction (an older copy, or another database, put in its place); a missing or damaged
frame log, ``-sync`` or revert file; a frame log that does not reach the synced base.  Only then
does it open the database, to compare the client id kept inside it with the ``-sync`` one (a
database of another replica) and, with ``deep=True`` (``turso-sync verify``), the page images the
frame log recorded last with the file's pages.

``ReplicaFiles.repair`` re-clones: when the database is readable, its pending changes, conflict
journal and client id are carried into the fresh copy and replayed on top of the remote state,
so nothing pending is lost; when it is not, it says what is lost.  Damaged files are kept beside
the replica with a ``.damaged`` suffix.
"""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

import apsw

from .. import errors
from ..crypto.page_codec import PageAuthError, PageCodec, parse_key
from ..local.capture import CONFLICTS_TABLE, META_TABLE, OUTBOX_TABLE, is_replica
from ..local.connection import Connection, open_checks
from ..local.framelog import FrameLog, RevisionGone
from ..local.vfs import realpath
from ..local.walindex import committed_wal
from ..page import PAGE_SIZE as P
from .state import SyncState, lost_state_remedy, read_revert, remedy, revert_path

SQLITE_MAGIC = b"SQLite format 3\x00"
TURSO_MAGIC_PREFIX = b"Turso"
_SUFFIXES = ("", "-wal", "-shm", "-frames", "-sync", "-present", "-sync.lock", "-present.lock", "-rekey")
_LEFTOVERS = (".bootstrap", "-frames.tmp", "-sync.tmp", "-rekey.tmp")  # an interrupted write's temporary files
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
        for name in (self.state_file, self.path, self.wal, self.frames):
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
            if codec is None or not _key_opens(FrameLog(self.path, codec, P)):
                raise
            # the key opens the frame log's images of this database: page 1 was changed on disk
            what = "page 1 failed authentication with the key that opens its frame log: the file was changed on disk"
            return [Damage(self.path, what, True)]
        log = FrameLog(self.path, codec, P)
        found = self._check_frame_log(log, state)
        found += self._check_revert(state, codec)
        if found:
            return found
        found = self._check_size(log)
        if found or not deep:
            return found
        return self._check_inside(state, encryption_key, cipher, log, codec)

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
        lost_url = damages[0].file == self.state_file  # the -sync file held the remote's URL
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

    def _check_size(self, log: FrameLog) -> list[Damage]:
        """Every page of the current size must be in the WAL or in the file."""
        # the WAL first: a checkpoint meanwhile only moves its pages into the file
        scan = committed_wal(self.path)
        file_pages = os.path.getsize(self.path) // P
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
        if not scan.txns and file_pages and newest_size != _header_pages(self.path):
            return [
                Damage(
                    self.path,
                    f"the database file has {_header_pages(self.path)} pages, but its frame log's newest "
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
                return self._compare_images(log, codec)
            return []
        finally:
            conn.close()

    def _compare_images(self, log: FrameLog, codec: PageCodec | None) -> list[Damage]:
        """The newest image the frame log holds of each page must be the page in the file (or the WAL)."""
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
        with open(self.path, "rb") as f:
            for pgno in sorted(p for p in newest if p <= size):
                f.seek((pgno - 1) * P)
                raw = f.read(P)
                try:
                    same = _plain(raw, pgno, codec) == _plain(newest[pgno], pgno, codec, "frame log")
                except PageAuthError:
                    same = False
                if not same:
                    return [
                        Damage(
                            self.path,
                            f"page {pgno} of the database file is not the image its frame log recorded last: "
                            "the file was changed or replaced behind the replica's back",
                            True,
                        )
                    ]
        return []

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
            if db.execute("PRAGMA quick_check").fetchall() != [("ok",)]:
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
            state.synced_revision = ""  # the next pull fetches every page and replays the outbox on them
            state.save(replica.path)
        pending = len(carried[OUTBOX_TABLE])
        replica.pull(0)
        return pending


def _codec(encryption_key: str | None, cipher: str) -> PageCodec | None:
    if encryption_key is None:
        return None
    try:
        spec, key = parse_key(encryption_key, cipher)
    except (ValueError, TypeError) as exc:
        raise errors.ProgrammingError(str(exc)) from None
    return PageCodec(spec, key)


def _key_opens(log: FrameLog) -> bool:
    """True when the log's codec decrypts the newest page image the frame log holds (False without one)."""
    try:
        for txn in reversed(list(log.history(None))):
            for page in txn.pages:
                if page.post:
                    log.decrypt(page.post, page.pgno)
                    return True
    except (PageAuthError, OSError, ValueError, RevisionGone):
        return False
    return False


def _plain(raw: bytes, pgno: int, codec: PageCodec | None, where: str = "database") -> bytes:
    """A page's plaintext; ``where`` it was read from ("frame log": a copy of a database page or a
    WAL frame, which the hardened format tells apart)."""
    if codec is None:
        return raw
    return codec.decrypt(raw, pgno, where)


def _header_pages(path: str) -> int:
    """The database size as SQLite reads it: the header's (bytes 28..32, plaintext in Turso's format)
    when its version-valid-for number matches the change counter, else the file's size."""
    with open(path, "rb") as f:
        head = f.read(100)
        if head[92:96] == head[24:28] and int.from_bytes(head[28:32], "big"):
            return int.from_bytes(head[28:32], "big")
        return os.fstat(f.fileno()).st_size // P


__all__ = ["Damage", "RepairReport", "ReplicaFiles", "lost_state_remedy", "remedy"]
