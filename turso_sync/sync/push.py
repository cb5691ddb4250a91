"""Push: outbox rows become one Hrana batch per chunk, exactly once (pure code, no I/O).

Statements follow Turso's client (reference §3.4), so Turso's clients and ours can share one
server: inserts are upserts on the primary key, updates set only the changed columns, deletes
go by primary key (rowid for tables without one), schema statements run as
``CREATE … IF NOT EXISTS``.  The batch also upserts ``turso_sync_last_change_id`` for this
client inside the same transaction; that row is how a retry, or a pull, knows what the remote
already has.

Unlike Turso's client, our batch commits only when every step before COMMIT succeeded (a
duplicate ``ALTER TABLE … ADD COLUMN`` aside), and rolls back otherwise: a change the server
rejects stays pending and is reported, never half-applied.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import apsw

from ..local.capture import is_internal
from .rebase import OutboxRow, quote
from .wire.hrana import encode_json

LAST_CHANGE_TABLE = (
    "CREATE TABLE IF NOT EXISTS turso_sync_last_change_id "
    "(client_id TEXT PRIMARY KEY, pull_gen INTEGER, change_id INTEGER)"
)
LAST_CHANGE_UPSERT = (
    "INSERT INTO turso_sync_last_change_id(client_id, pull_gen, change_id) VALUES (?, ?, ?) "
    "ON CONFLICT(client_id) DO UPDATE SET pull_gen=excluded.pull_gen, change_id=excluded.change_id"
)
LAST_CHANGE_SELECT = "SELECT pull_gen, change_id FROM turso_sync_last_change_id WHERE client_id = ?"

Columns = Callable[[str], list[tuple[str, int]]]  # table -> [(column name, pk ordinal)]


@dataclass
class Step:
    """One batch step: SQL, arguments, and which outbox row it came from."""

    sql: str
    args: list[Any] = field(default_factory=list)
    outbox_id: int | None = None
    harmless_errors: bool = False  # a duplicate ADD COLUMN is expected on a replay


def _ddl_for_push(sql: str) -> str:
    return re.sub(
        r"^(\s*CREATE\s+(?:UNIQUE\s+)?(?:TABLE|INDEX|VIEW|TRIGGER))\s+(?!IF\s)",
        r"\1 IF NOT EXISTS ",
        sql,
        count=1,
        flags=re.IGNORECASE,
    )


def change_steps(row: OutboxRow, columns: Columns) -> list[Step]:
    """The SQL steps for one outbox row: its schema statements, then its row changes."""
    steps = [
        Step(_ddl_for_push(sql), [], row.id, harmless_errors=bool(re.match(r"\s*ALTER\s", sql, re.IGNORECASE)))
        for sql in row.ddl
    ]
    if not row.changeset:
        return steps
    for change in apsw.Changeset.iter(row.changeset):
        if change.indirect or is_internal(change.name):
            continue  # made by a trigger: the remote's own trigger makes it there
        steps.append(_row_step(change, columns(change.name), row.id))
    return steps


def _row_step(change: apsw.TableChange, table_cols: list[tuple[str, int]], outbox_id: int) -> Step:
    names = [name for name, _ in table_cols]
    rowid_table = change.column_count == len(names) + 1
    if rowid_table:
        names = ["rowid", *names]
    names = names[: change.column_count]
    pk_names = [names[i] for i in sorted(change.pk_columns)]
    table = quote(change.name)
    if change.op == "INSERT":
        values = list(change.new or ())
        cols = list(zip(names, values, strict=False))
        col_sql = ", ".join(quote(n) for n, _ in cols)
        marks = ",".join("?" * len(cols))
        if rowid_table:
            # the rowid goes along, so later updates by rowid hit this row on the server too; if
            # the server already uses that rowid the batch is refused, and the rebase of the
            # next pull moves the local row to a free one
            return Step(f"INSERT INTO {table}({col_sql}) VALUES ({marks})", [v for _, v in cols], outbox_id)
        updates = ",".join(f"{quote(n)} = excluded.{quote(n)}" for n, _ in cols)
        conflict = ",".join(quote(n) for n in pk_names)
        return Step(
            f"INSERT INTO {table}({col_sql}) VALUES ({marks}) ON CONFLICT({conflict}) DO UPDATE SET {updates}",
            [v for _, v in cols],
            outbox_id,
        )
    old = list(change.old or ())
    where = " AND ".join(f"{quote(n)} IS ?" if n != "rowid" else '"rowid" = ?' for n in pk_names)
    keys = [old[names.index(n)] for n in pk_names]
    if change.op == "DELETE":
        return Step(f"DELETE FROM {table} WHERE {where}", keys, outbox_id)
    new = list(change.new or ())
    sets = [(n, v) for n, v in zip(names, new, strict=False) if v is not apsw.no_change]
    assignments = ", ".join(f"{quote(n)} = ?" for n, _ in sets)
    return Step(f"UPDATE {table} SET {assignments} WHERE {where}", [v for _, v in sets] + keys, outbox_id)


@dataclass
class PushBatch:
    """One remote transaction: its Hrana steps and where the COMMIT sits."""

    steps: list[dict[str, Any]]
    sources: list[Step | None]  # per step: the change it carries (None for bookkeeping steps)
    commit_index: int
    last_outbox_id: int


def build_batch(
    rows: Sequence[OutboxRow],
    columns: Columns,
    client_id: str,
    pull_gen: int,
    encode_value: Callable[[Any], dict[str, Any]],
) -> PushBatch:
    """The batch that applies ``rows`` and records ``(client_id, pull_gen, last row id)`` atomically."""
    changes: list[Step] = []
    for row in rows:
        changes.extend(change_steps(row, columns))
    plan: list[Step | None] = [None, None, *changes, None]  # BEGIN, table, …, mark
    sql = ["BEGIN IMMEDIATE", LAST_CHANGE_TABLE, *(s.sql for s in changes), LAST_CHANGE_UPSERT]
    args: list[list[Any]] = [[], [], *(s.args for s in changes), [client_id, pull_gen, rows[-1].id]]
    steps: list[dict[str, Any]] = []
    previous_ok: dict[str, Any] | None = None
    for i, text in enumerate(sql):
        condition = previous_ok
        steps.append(_step(text, args[i], condition, encode_value))
        source = plan[i]
        ok = {"type": "ok", "step": i}
        if source is not None and source.harmless_errors:
            ok = {"type": "or", "conds": [ok, {"type": "error", "step": i}]}
        previous_ok = ok
    commit_index = len(steps)
    steps.append(_step("COMMIT", [], previous_ok, encode_value))
    steps.append(_step("ROLLBACK", [], {"type": "not", "cond": {"type": "ok", "step": commit_index}}, encode_value))
    return PushBatch(steps, [*plan, None, None], commit_index, rows[-1].id)


def _step(
    sql: str, args: list[Any], condition: dict[str, Any] | None, encode_value: Callable[[Any], Any]
) -> dict[str, Any]:
    """One batch step with only the fields that differ from Hrana's defaults (fewer bytes per push)."""
    stmt: dict[str, Any] = {"sql": sql}
    if args:
        stmt["args"] = [encode_value(v) for v in args]
    step: dict[str, Any] = {"stmt": stmt}
    if condition is not None:
        step["condition"] = condition
    return step


def pipeline_body(requests: list[dict[str, Any]]) -> bytes:
    """A ``/v2/pipeline`` request body: compact JSON (infinite floats as ``1e999``)."""
    return encode_json({"baton": None, "requests": requests})


def batch_request(steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "batch", "batch": {"steps": steps}}
