"""The outbox: the pending local transactions a replica keeps in ``_turso_sync_outbox``.

Capture (``local/capture.py``) writes a row per committed transaction; this module is the sync
agent's side: create the bookkeeping tables, read the pending rows with the metadata and the
conflict journal a rebase carries over, cut them into pushes of whole transactions, and forget
the rows the remote acknowledged.  Local work only, on the engine's connection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..local.capture import CONFLICTS_TABLE, META_TABLE, OUTBOX_TABLE, SCHEMA
from ..local.engine import LocalDatabase
from .rebase import OutboxRow, quote


@dataclass
class Pending:
    """What a pull's rebase or a push starts from: the outbox, the metadata, the journal's rows."""

    rows: list[OutboxRow]
    meta: dict[str, Any]
    conflicts: list[tuple[Any, ...]]

    @property
    def pull_gen(self) -> int:
        """The pull generation the outbox rows were captured (or rebased) under."""
        return int(self.meta.get("pull_gen", 0))


def ensure_tables(db: LocalDatabase, client_id: str) -> None:
    """Create the outbox, metadata and journal tables once, then capture the engine's own writes."""
    if db.query("SELECT 1 FROM sqlite_schema WHERE name=?", (META_TABLE,)):
        return
    db.query("BEGIN IMMEDIATE")
    try:
        for statement in SCHEMA:
            db.query(statement)
        db.query(f"INSERT OR IGNORE INTO {META_TABLE}(key, value) VALUES ('client_id', ?)", (client_id,))
        db.query(f"INSERT OR IGNORE INTO {META_TABLE}(key, value) VALUES ('pull_gen', 0)")
        db.query("COMMIT")
    except BaseException:
        db.query("ROLLBACK")
        raise
    db.enable_capture()


def read_pending(db: LocalDatabase) -> Pending:
    """The outbox in order, the metadata and the conflict journal's rows."""
    rows = [
        OutboxRow(r[0], r[1], json.loads(r[2]), r[3])
        for r in db.query(f"SELECT id, gen, ddl, changeset FROM {OUTBOX_TABLE} ORDER BY id")
    ]
    meta: dict[str, Any] = {str(k): v for k, v in db.query(f"SELECT key, value FROM {META_TABLE}")}
    conflicts = db.query(f"SELECT * FROM {CONFLICTS_TABLE} ORDER BY id")
    return Pending(rows, meta, conflicts)


def read_outbox(db: LocalDatabase) -> tuple[list[OutboxRow], int]:
    """The outbox in order and the pull generation: what a push needs (``read_pending`` without
    the metadata's other keys and the conflict journal, which only a rebase carries over)."""
    rows = [
        OutboxRow(r[0], r[1], json.loads(r[2]), r[3])
        for r in db.query(f"SELECT id, gen, ddl, changeset FROM {OUTBOX_TABLE} ORDER BY id")
    ]
    if not rows:
        return rows, 0
    gen = db.query(f"SELECT value FROM {META_TABLE} WHERE key = 'pull_gen'")
    return rows, int(gen[0][0]) if gen else 0


def pending_count(db: LocalDatabase) -> int:
    """How many local transactions wait to be pushed."""
    return int(db.query(f"SELECT count(*) FROM {OUTBOX_TABLE}")[0][0] or 0)


def forget(db: LocalDatabase, last_id: int) -> None:
    """Drop the outbox rows up to ``last_id``: the remote holds them."""
    db.query(f"DELETE FROM {OUTBOX_TABLE} WHERE id <= ?", (last_id,))


def table_columns(db: LocalDatabase, table: str) -> list[tuple[str, int]]:
    """``(name, primary-key ordinal)`` per column of a local table (push builds statements from them)."""
    return [(r[1], r[5]) for r in db.query(f"PRAGMA main.table_info({quote(table)})")]


def chunk(rows: list[OutboxRow], limit: int) -> list[OutboxRow]:
    """Whole transactions, at least one, up to about ``limit`` row changes."""
    out: list[OutboxRow] = []
    total = 0
    for row in rows:
        size = max(1, len(row.changeset) // 64)
        if out and total + size > limit:
            break
        out.append(row)
        total += size
    return out
