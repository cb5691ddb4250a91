"""Change capture for replicas: every committed transaction lands in the outbox, atomically.

A database becomes a replica when it holds the table ``_turso_sync_meta``.  From then on every
turso_sync connection to it (any process) records each transaction's row changes with SQLite's
session extension, plus the text of its schema statements, and writes them as one row of
``_turso_sync_outbox`` inside the same transaction, just before COMMIT.  So the outbox is
exactly as durable and as encrypted as the data, and a crash cannot separate the two.

A commit that would escape capture (a COMMIT statement run outside the connection's API, for
example through the raw APSW handle) is refused by a commit hook rather than lost.
"""

from __future__ import annotations

import json

import apsw

from .statement import Statement

META_TABLE = "_turso_sync_meta"
OUTBOX_TABLE = "_turso_sync_outbox"
CONFLICTS_TABLE = "_turso_sync_conflicts"
INTERNAL_PREFIXES = ("sqlite_", "_turso_sync_", "__turso_internal_")
INTERNAL_NAMES = ("turso_sync_last_change_id", "turso_cdc", "turso_cdc_version")

SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {META_TABLE} (key TEXT PRIMARY KEY, value)",
    f"CREATE TABLE IF NOT EXISTS {OUTBOX_TABLE} ("
    "id INTEGER PRIMARY KEY AUTOINCREMENT, gen INTEGER NOT NULL, ddl TEXT NOT NULL, "
    "changeset BLOB NOT NULL, created REAL NOT NULL DEFAULT (unixepoch('subsec')))",
    f"CREATE TABLE IF NOT EXISTS {CONFLICTS_TABLE} ("
    "id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, revision TEXT, tbl TEXT NOT NULL, "
    "pk TEXT NOT NULL, kind TEXT NOT NULL, resolution TEXT NOT NULL, base TEXT, local TEXT, remote TEXT, "
    "result TEXT)",
)


def is_internal(table: str) -> bool:
    """Tables that sync keeps for itself and never pushes or replays."""
    lower = table.lower()
    return lower.startswith(INTERNAL_PREFIXES) or lower in INTERNAL_NAMES


def replicated_schema_change(statement: Statement) -> bool:
    """True for a CREATE/ALTER/DROP of the replicated schema (main database, not internal, not TEMP)."""
    objects = statement.schema_objects
    return bool(objects) and not any(is_internal(name) for name in objects)


def is_replica(db: apsw.Connection) -> bool:
    """True when the database has been set up for sync."""
    return bool(db.execute("SELECT 1 FROM sqlite_schema WHERE type='table' AND name=?", (META_TABLE,)).fetchall())


class ChangeCapture:
    """Records one connection's transactions and writes them to the outbox at commit.

    It also follows the transaction's savepoints (names as SQLite parsed them), because a
    ``RELEASE`` of the outermost savepoint of a transaction that ``SAVEPOINT`` opened is a
    COMMIT, and a ``ROLLBACK TO`` undoes the schema statements run since that savepoint.
    """

    def __init__(self, db: apsw.Connection) -> None:
        self.db = db
        #: schema statements of the transaction, each with the savepoint depth it ran at
        self.ddl: list[tuple[int, str]] = []
        self.savepoints: list[str] = []
        self._savepoint_opened = False  # the transaction was opened by SAVEPOINT, not BEGIN
        self._flushed = False
        self._outbox_id: int | None = None
        self.rolled_back = False
        self._session = self._new_session()
        db.set_commit_hook(self._commit_hook)
        db.set_rollback_hook(self._rollback_hook)

    def _new_session(self) -> apsw.Session:
        session = apsw.Session(self.db, "main")
        session.config(apsw.SQLITE_SESSION_OBJCONFIG_ROWID, 1)
        session.table_filter(lambda name: not is_internal(name))
        session.attach()
        return session

    def note_schema(self, sql: str) -> None:
        """Remember a schema statement that ran inside the current transaction."""
        self.ddl.append((len(self.savepoints), sql.strip().rstrip(";")))

    # --- savepoints -----------------------------------------------------------------------------

    def savepoint_began(self, name: str, opened_transaction: bool) -> None:
        """``SAVEPOINT name`` ran; ``opened_transaction`` when no transaction was open before it."""
        if opened_transaction:
            self.savepoints = [name]
            self._savepoint_opened = True
        else:
            self.savepoints.append(name)

    def _find(self, name: str) -> int | None:
        """Index of the newest savepoint called ``name`` (SQLite compares names without case)."""
        folded = name.casefold()
        for index in range(len(self.savepoints) - 1, -1, -1):
            if self.savepoints[index].casefold() == folded:
                return index
        return None

    def release_commits(self, name: str) -> bool:
        """True when ``RELEASE name`` ends the transaction (so it must be committed with its capture)."""
        return self._savepoint_opened and self._find(name) == 0

    def released(self, name: str) -> None:
        """``RELEASE name`` ran without ending the transaction: its statements join the enclosing level."""
        index = self._find(name)
        if index is None:
            return
        del self.savepoints[index:]
        self.ddl = [(min(depth, index), sql) for depth, sql in self.ddl]

    def rolled_back_to(self, name: str) -> None:
        """``ROLLBACK TO name`` ran: forget the schema statements run since that savepoint began."""
        index = self._find(name)
        if index is None:
            return
        del self.savepoints[index + 1 :]
        self.ddl = [(depth, sql) for depth, sql in self.ddl if depth <= index]

    # --- commit -----------------------------------------------------------------------------------

    def pending(self) -> bool:
        """True when the open transaction changed something sync must push."""
        return bool(self.ddl) or not self._session.is_empty

    def flush(self) -> None:
        """Write the transaction's changes to the outbox (the caller commits right after)."""
        if self._flushed:
            return
        if self.pending():
            changeset = self._session.changeset()
            ddl = [sql for _depth, sql in self.ddl]
            if changeset or ddl:
                self.db.execute(
                    f"INSERT INTO {OUTBOX_TABLE}(gen, ddl, changeset) "
                    f"VALUES ((SELECT value FROM {META_TABLE} WHERE key='pull_gen'), ?, ?)",
                    (json.dumps(ddl), changeset),
                )
                self._outbox_id = self.db.last_insert_rowid()
        self._flushed = True

    def unflush(self) -> None:
        """The commit after ``flush`` failed and the transaction is still open: take the outbox row back.

        Otherwise a transaction that goes on (a deferred foreign key fixed, say) would commit
        with an outbox row that misses its later changes.
        """
        if self._outbox_id is not None and not self.db.get_autocommit():
            self.db.execute(f"DELETE FROM {OUTBOX_TABLE} WHERE id = ?", (self._outbox_id,))
        self._outbox_id = None
        self._flushed = False

    def reset(self) -> None:
        """Start over after a commit or rollback."""
        self._session.close()
        self._session = self._new_session()
        self.ddl = []
        self.savepoints = []
        self._savepoint_opened = False
        self._flushed = False
        self._outbox_id = None
        self.rolled_back = False

    def _commit_hook(self) -> bool:
        # True turns the COMMIT into a rollback: refuse commits whose changes were not flushed
        return self.pending() and not self._flushed

    def _rollback_hook(self) -> None:
        self.rolled_back = True  # reset lazily: no SQLite calls from inside a hook

    def close(self) -> None:
        """Stop capturing (the connection is closing)."""
        self.db.set_commit_hook(None)
        self.db.set_rollback_hook(None)
        self._session.close()
