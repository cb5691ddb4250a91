"""LocalDatabase: one database file with its frame log, and the primitives sync is built on.

* ``history(since)``: every committed transaction after a sequence number, with page images;
* ``snapshot(since, pgnos)``: a consistent set of current page images (for serving pulls);
* ``install_pages(pages, db_size)``: a batch of page images as one atomic transaction;
* ``discard_after(seq)``: undo every transaction after a watermark, page for page.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import apsw

from .. import errors
from ..crypto.page_codec import PageCodec
from .connection import Connection
from .framelog import FrameLog, RevisionGone, TxnPage
from .install import InstallError, append_transaction
from .lazy import LazyPages
from .vfs import file_descriptor
from .walindex import committed_wal

READ_RUN = 256  # pages of the database file read with one pread at most (1 MiB)

__all__ = ["CommittedTxn", "LocalDatabase", "RevisionGone", "Snapshot"]


@dataclass
class CommittedTxn:
    """One committed transaction: its sequence number, size after it, plaintext page images."""

    seq: int
    db_size: int
    pages: dict[int, bytes]


@dataclass
class Snapshot:
    """Plaintext page images exactly as of ``seq``; ``db_size`` in pages."""

    seq: int
    db_size: int
    pages: dict[int, bytes]


class LocalDatabase:
    """A local database file plus its frame log."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        encryption_key: str | None = None,
        cipher: str = "aes256gcm",
        reserved_bytes: int = 0,
    ) -> None:
        self._options: dict[str, Any] = {
            "encryption_key": encryption_key,
            "cipher": cipher,
            "reserved_bytes": reserved_bytes,
        }
        # this connection stays open for the engine's own use (locks, page counts)
        self._conn = Connection(path, isolation_level=None, record_frames=True, **self._options)
        self.path = self._conn.path
        log = self._conn._state.frame_log
        assert log is not None
        self.log: FrameLog = log
        codec = self._conn._state.codec
        # SQLite's page size, and what one page takes on disk (larger in the envelope layout,
        # where the frame log keeps slots too: it is built with the slot size)
        self.slot_size = self.log.page_size
        self.page_size = codec.page_size if codec is not None else self.log.page_size

    @property
    def encrypted(self) -> bool:
        return self._conn.encrypted

    def connect(self, **kwargs: Any) -> Connection:
        """A new DB-API connection to this database."""
        options = dict(self._options)
        options.update(kwargs)
        return Connection(self.path, record_frames=True, **options)

    def close(self) -> None:
        """Close the engine's own connection."""
        self._conn.close()

    def __enter__(self) -> LocalDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading history ---------------------------------------------------------------------

    def current_seq(self) -> int:
        """Sequence number of the newest committed transaction (0 for a new database)."""
        return self.log.current_seq()

    def history(self, since: int) -> Iterator[CommittedTxn]:
        """Every committed transaction after ``since``, oldest first, with plaintext images."""
        for txn in self.log.history(since):
            pages = {page.pgno: self.log.decrypt(page.post, page.pgno) for page in txn.pages if page.post}
            yield CommittedTxn(txn.seq, txn.db_size, pages)

    @property
    def codec(self) -> PageCodec | None:
        """The page codec (None for a plaintext database)."""
        return self._conn._state.codec

    @property
    def lazy(self) -> LazyPages | None:
        """The missing-page fetcher of a partial replica (None for a database held whole)."""
        return self._conn._state.lazy

    def query(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Every row of one statement, run on the engine's own connection (no implicit transaction).

        For the sync agent's bookkeeping tables; a caller holding ``write_lock()`` reads and
        writes inside its transaction.
        """
        try:
            return list(self._conn.apsw_connection.execute(sql, parameters))
        except apsw.Error as exc:
            raise self._conn._translate(exc) from None

    def enable_capture(self) -> None:
        """Record the engine connection's own transactions into the outbox (see ``Connection``)."""
        self._conn.enable_capture()

    def write_lock(self) -> AbstractContextManager[apsw.Connection]:
        """Hold SQLite's write lock (other writers wait; readers go on) on the engine connection."""
        return self._write_locked()

    @contextmanager
    def _write_locked(self) -> Iterator[apsw.Connection]:
        db = self._conn.apsw_connection
        try:
            db.execute("BEGIN IMMEDIATE")
        except apsw.Error as exc:
            raise self._conn._translate(exc) from None
        try:
            yield db
        finally:
            if not db.get_autocommit():
                db.execute("ROLLBACK")

    def snapshot(self, since: int | None = None, pgnos: Iterable[int] | None = None) -> Snapshot:
        """Current images of the pages changed after ``since`` (all pages when None).

        Holds the write lock while reading, so the images are exactly the state at ``seq``.
        """
        wanted = set(pgnos) if pgnos is not None else None
        with self._write_locked() as db:
            db_size = db.execute("PRAGMA page_count").get
            if since is None:
                seq = self.log.current_seq()
                changed: set[int] = set(range(1, db_size + 1))
            else:
                seq = since
                changed = set()
                for txn in self.log.history(since, with_images=False):
                    changed.update(page.pgno for page in txn.pages)
                    seq = txn.seq  # the newest one is the current revision
                changed = {p for p in changed if p <= db_size}
            if wanted is not None:
                changed &= wanted
            # the WAL indexed once; pages next to each other in the file come in one pread
            pages = self._read_current(sorted(changed), db_size)
        return Snapshot(seq, db_size, pages)

    def page_reader(self) -> Callable[[int], bytes]:
        """A reader of current committed page images (plaintext), for a caller holding the lock.

        The WAL is indexed once; each read is one ``pread`` and one decrypt.
        """
        S = self.slot_size
        latest: dict[int, bytes] = {}
        try:
            committed = committed_wal(self.path).txns
            for wtxn in committed:
                for frame in wtxn.frames:
                    latest[frame.pgno] = frame.body
        except FileNotFoundError:
            pass
        path = self.path
        lazy = self._conn._state.lazy

        def read(pgno: int) -> bytes:
            raw = latest.get(pgno)
            if raw is None:
                if lazy is not None and lazy.missing(pgno):
                    lazy.ensure(pgno)  # a partial replica: fetch it, as a read through SQLite would
                with file_descriptor(path) as fd:
                    raw = os.pread(fd, S, (pgno - 1) * S)
                if len(raw) < S:
                    raise errors.DatabaseError(f"{path}: page {pgno} is missing")
            return self.log.decrypt(raw, pgno)

        return read

    def current_pages(self, pgnos: list[int]) -> dict[int, bytes]:
        """Current committed plaintext images of ``pgnos`` (ascending), for a caller holding the lock.

        What ``page_reader`` reads, page by page; here pages of the database file that lie next
        to each other come in one ``pread`` (an install compares a whole resend this way).
        """
        return self._read_current(pgnos, 0)

    def _read_current(self, pgnos: list[int], db_size: int) -> dict[int, bytes]:
        """Current committed images (caller holds the write lock): newest WAL frame, else the file.

        ``pgnos`` ascending; a run of pages next to each other in the file is read with one
        ``pread`` (at most ``READ_RUN`` pages).  ``db_size`` only names the size in an error.
        """
        if not pgnos:
            return {}
        S = self.slot_size
        latest: dict[int, bytes] = {}
        try:
            committed = committed_wal(self.path).txns
        except FileNotFoundError:
            committed = []
        wanted = set(pgnos)
        for wtxn in committed:
            for frame in wtxn.frames:
                if frame.pgno in wanted:
                    latest[frame.pgno] = frame.body
        raws: dict[int, bytes] = {}
        lazy = self._conn._state.lazy
        with file_descriptor(self.path) as fd:
            run: list[int] = []
            for pgno in [*(p for p in pgnos if p not in latest), 0]:  # 0 ends the last run
                if run and (pgno != run[-1] + 1 or len(run) == READ_RUN):
                    data = os.pread(fd, len(run) * S, (run[0] - 1) * S)
                    for n, p in enumerate(run):
                        raw = data[n * S : (n + 1) * S]
                        if len(raw) < S:
                            size = f" of {db_size}" if db_size else ""
                            raise errors.DatabaseError(f"{self.path}: page {p}{size} is missing")
                        raws[p] = raw
                    run = []
                if pgno:
                    if lazy is not None and lazy.missing(pgno):
                        lazy.ensure(pgno)
                    run.append(pgno)
        decrypt = self.log.decrypt
        return {pgno: decrypt(latest.get(pgno) or raws[pgno], pgno) for pgno in pgnos}

    # --- changing pages ----------------------------------------------------------------------

    def install_pages(self, pages: dict[int, bytes], db_size: int) -> int:
        """Install plaintext page images as one atomic transaction; return its sequence number.

        Other connections stay open: a reader inside a transaction keeps its snapshot, every
        later read sees all of the batch.  A crash part-way leaves the previous state.
        """
        with self._write_locked() as db:
            return self._install_locked(db, pages, db_size)

    def install_locked(self, db: apsw.Connection, pages: dict[int, bytes], db_size: int) -> int:
        """``install_pages`` for a caller that already holds ``write_lock()``.

        The returned number is the install's own.  The connection must end its transaction to
        see the install, so the write lock is released and taken again: a commit by another
        connection can land in between (it is numbered after the install).
        """
        seq = self._install_locked(db, pages, db_size)
        db.execute("BEGIN IMMEDIATE")  # the caller's lock continues
        return seq

    def images_at(self, seq: int) -> tuple[dict[int, bytes], int]:
        """For every page changed after ``seq``: its plaintext image at ``seq``; and the size then.

        Pages that did not exist at ``seq`` are left out (they lie past the size).  The caller
        holds ``write_lock()``.
        """
        firsts, size_at = self.log.first_touches(seq, None)
        if size_at is None:
            return {}, self.log.size_at(seq) if seq != self.log.base_seq else self.log.base_size
        return self._pre_images(firsts, size_at), size_at

    def _pre_images(self, firsts: dict[int, TxnPage], size_at: int) -> dict[int, bytes]:
        """Plaintext images before each page's first change; never-fetched pages from the remote."""
        pages = {
            pgno: self.log.decrypt(page.pre, pgno)
            for pgno, page in firsts.items()
            if page.pre is not None and pgno <= size_at
        }
        unfetched = [pgno for pgno, page in firsts.items() if page.pre_missing and pgno <= size_at]
        if unfetched:
            lazy = self._conn._state.lazy
            if lazy is None:
                raise errors.DatabaseError(
                    f"{self.path}: pages {unfetched[:5]} were never fetched and this is not a partial replica"
                )
            pages.update(lazy.bootstrap_images(unfetched))  # they held their bootstrap images
        return pages

    def snapshot_at(self, seq: int, pgnos: Iterable[int] | None = None, since: int | None = None) -> Snapshot:
        """Images of pages exactly as of revision ``seq`` (older than the current one, or equal).

        A page's image at ``seq`` is the pre-image kept by the first transaction after ``seq``
        that changed it, else its current image.  Only the frame log records holding a wanted
        page are read.  With ``since``, only pages changed in ``since < s <= seq`` are included.
        Raises RevisionGone when ``seq`` is older than the history kept or newer than the database.
        """
        wanted = set(pgnos) if pgnos is not None else None
        with self._write_locked() as db:
            current_size = int(db.execute("PRAGMA page_count").get)  # type: ignore[arg-type]
            firsts, size_at = self.log.first_touches(seq, wanted)
            db_size = current_size if size_at is None else size_at
            chosen = set(range(1, db_size + 1)) if wanted is None else {p for p in wanted if 1 <= p <= db_size}
            if since is not None:
                changed: set[int] = set()
                for txn in self.log.history(since, with_images=False):
                    if txn.seq > seq:
                        break
                    changed.update(page.pgno for page in txn.pages)
                chosen &= changed
            old = {p: firsts[p] for p in chosen if p in firsts}
            pages = self._pre_images(old, db_size)
            pages.update(self._read_current(sorted(chosen - set(old)), current_size))
        return Snapshot(seq, db_size, pages)

    def _install_locked(self, db: apsw.Connection, pages: dict[int, bytes], db_size: int) -> int:
        codec = self._conn._state.codec
        try:
            indexed = append_transaction(self.path, codec, pages, db_size, self.page_size, in_place=True)
        except InstallError as exc:
            raise errors.DatabaseError(f"{self.path}: cannot install pages: {exc}") from None
        # the install's number, read while the write lock still keeps every other commit out: once
        # it is released, another process's commit can land before the read and be taken for it
        seq = self.log.current_seq()
        db.execute("ROLLBACK")
        if indexed:
            # the wal-index counts the install already, and this connection's ROLLBACK copied its
            # new header (sqlite3WalUndo), so unlike every other connection it would not see a
            # change at its next read and would keep pages from before: drop them all (nothing
            # holds a page once the transaction is over)
            db.execute("PRAGMA shrink_memory")
        else:
            # run WAL recovery now, on our connection, rather than in the application's next read
            db.execute("SELECT count(*) FROM sqlite_schema").fetchall()
        return seq

    def discard_after(self, seq: int) -> int:
        """Undo every transaction after ``seq``: each changed page returns to its image at ``seq``.

        The pages, and the database size, end up byte-for-byte as they were right after ``seq``
        (for an encrypted database: the decrypted pages).  The undo is itself one new
        transaction, whose sequence number is returned; with nothing to undo, nothing happens.
        """
        with self._write_locked() as db:
            if self.log.current_seq() == seq:
                return seq
            pages, size_at = self.images_at(seq)
            if not pages:
                # only pages past the old end changed: rewrite page 1 as it is to carry the commit
                pages = self._read_current([1], size_at)
            return self._install_locked(db, pages, size_at)

    def checkpoint(self) -> None:
        """Copy the WAL into the database file and start it over (archiving it first)."""
        try:
            self._conn.apsw_connection.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        except apsw.Error as exc:
            raise self._conn._translate(exc) from None

    def oldest_revision(self) -> int:
        """The oldest revision ``snapshot_at`` can still give (older history was pruned)."""
        return self.log.oldest_seq()

    def prune_history(self, upto: int) -> None:
        """Forget history up to ``upto``: it can no longer be read back or undone."""
        self.log.prune(upto)
