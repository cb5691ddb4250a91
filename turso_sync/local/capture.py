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

import functools
import json
import re

import apsw

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

_DDL = re.compile(
    r"^\s*(?:--[^\n]*\n\s*|/\*.*?\*/\s*)*(CREATE|ALTER|DROP)\s+(?:(TEMP|TEMPORARY)\s+)?",
    re.IGNORECASE | re.DOTALL,
)
_TXN = re.compile(
    r"^\s*(?:--[^\n]*\n\s*|/\*.*?\*/\s*)*(BEGIN|COMMIT|END|ROLLBACK)\b(?!\s+TO\b)",
    re.IGNORECASE | re.DOTALL,
)
_NAME = re.compile(
    r"(?:TABLE|INDEX|VIEW|TRIGGER)\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?[\"`\[]?([A-Za-z0-9_$.]+)", re.IGNORECASE
)


def is_internal(table: str) -> bool:
    """Tables that sync keeps for itself and never pushes or replays."""
    lower = table.lower()
    return lower.startswith(INTERNAL_PREFIXES) or lower in INTERNAL_NAMES


@functools.lru_cache(maxsize=512)
def schema_statement(sql: str) -> bool:
    """True for a CREATE/ALTER/DROP that changes the replicated schema (not TEMP, not internal)."""
    match = _DDL.match(sql)
    if match is None or match.group(2):
        return False
    name = _NAME.search(sql)
    return not (name and is_internal(name.group(1).split(".")[-1]))


@functools.lru_cache(maxsize=512)
def transaction_statement(sql: str) -> str | None:
    """``BEGIN``/``COMMIT``/``ROLLBACK`` (END counts as COMMIT) when ``sql`` is one, else None."""
    match = _TXN.match(sql)
    if match is None:
        return None
    word = match.group(1).upper()
    return "COMMIT" if word == "END" else word


def is_replica(db: apsw.Connection) -> bool:
    """True when the database has been set up for sync."""
    return bool(db.execute("SELECT 1 FROM sqlite_schema WHERE type='table' AND name=?", (META_TABLE,)).fetchall())


class ChangeCapture:
    """Records one connection's transactions and writes them to the outbox at commit."""

    def __init__(self, db: apsw.Connection) -> None:
        self.db = db
        self.ddl: list[str] = []
        self._flushed = False
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
        self.ddl.append(sql.strip().rstrip(";"))

    def pending(self) -> bool:
        return bool(self.ddl) or not self._session.is_empty

    def flush(self) -> None:
        """Write the transaction's changes to the outbox (the caller commits right after)."""
        if self._flushed:
            return
        if self.pending():
            changeset = self._session.changeset()
            if changeset or self.ddl:
                self.db.execute(
                    f"INSERT INTO {OUTBOX_TABLE}(gen, ddl, changeset) "
                    f"VALUES ((SELECT value FROM {META_TABLE} WHERE key='pull_gen'), ?, ?)",
                    (json.dumps(self.ddl), changeset),
                )
        self._flushed = True

    def reset(self) -> None:
        """Start over after a commit or rollback."""
        self._session.close()
        self._session = self._new_session()
        self.ddl = []
        self._flushed = False
        self.rolled_back = False

    def _commit_hook(self) -> bool:
        # True turns the COMMIT into a rollback: refuse commits whose changes were not flushed
        return self.pending() and not self._flushed

    def _rollback_hook(self) -> None:
        self.rolled_back = True  # reset lazily: no SQLite calls from inside a hook

    def close(self) -> None:
        self.db.set_commit_hook(None)
        self.db.set_rollback_hook(None)
        self._session.close()
