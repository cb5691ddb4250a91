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

Also unlike Turso's client, a push never overwrites a remote change it has not seen: each row
change is preceded by a *guard* step, a compare-and-set on the row's base image.  The session
changeset's ``old`` values are exactly what the change read: the key and the columns it
touches (every column for a DELETE).  The guard fails, and with it the whole batch, unless
the remote row still holds those values (an INSERT: unless no row has the key, or the row
there equals the one inserted).  It fails by evaluating ``abs(-9223372036854775808)``, an
"integer overflow" error in plain SQL that SQLite and ``tursodb`` both raise, through no
function or table a server's SQL sandbox would forbid.  The client knows a guard by its step
index (``Step.guard``), never by the error text.

A batch is built on the push mark the replica believes the remote holds for it (``mark``: the
last ``(pull_gen, change_id)`` the remote acknowledged, kept in the replica's state), so a push
is one request: the batch's first step after ``BEGIN`` (after the bookkeeping table on a first
push) writes the new mark as a compare-and-set on the expected one and on the push epoch
(``MARK_MOVE``).  A batch built on a wrong belief fails as a whole at that step (``Step.mark``:
the client then reads the mark, forgets what the remote holds, and retries), before any guard
has run, so it is never taken for a conflict.

Inserts into a table with a primary key (non-NULL keys) are *folded*, with the inserts into the
same table that follow them in the batch: sent as one (multi-row) upsert whose ``DO UPDATE``
runs only where the remote row equals the one inserted, followed by one guard that
``changes()`` counts every row (each one inserted, or met equal).  It is the per-row insert
guard, for one row or many in two steps, with each value sent once (an offline backlog of
single-row inserts is most of its bytes in guards otherwise).  A folded
guard that fails names the outbox rows it covers; the pull that follows settles each row under
the policy, as for any guard.

Updates are folded too, one row at a time (``update_steps``): the UPDATE itself matches the row
only where it still holds the change's old values, and one guard then checks that ``changes()``
counts that row.  The same compare-and-set as a guard before the UPDATE, with one lookup and
the key sent once.  Neither kind is folded in a batch sent as a stream of requests.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import apsw

from .. import errors
from ..local.capture import is_internal
from ..wire.hrana import (
    BatchRequest,
    BatchResult,
    BatchStep,
    Cond,
    ErrorCond,
    NotCond,
    OkCond,
    OrCond,
    PipelineRequest,
    Stmt,
    StreamRequest,
)
from .rebase import OutboxRow, quote

LAST_CHANGE_TABLE = (
    "CREATE TABLE IF NOT EXISTS turso_sync_last_change_id "
    "(client_id TEXT PRIMARY KEY, pull_gen INTEGER, change_id INTEGER)"
)
# the change id is written only under the expected push epoch (the fence, below): one step
LAST_CHANGE_UPSERT = (
    "INSERT INTO turso_sync_last_change_id(client_id, pull_gen, change_id) VALUES (?, ?, "
    "CASE WHEN (SELECT pull_gen FROM turso_sync_last_change_id WHERE client_id = ?) IS ? THEN ? "
    "ELSE abs(-9223372036854775808) END) "
    "ON CONFLICT(client_id) DO UPDATE SET pull_gen=excluded.pull_gen, change_id=excluded.change_id "
    # never backwards: a batch delayed in the network that lands after a later one changes nothing
    "WHERE excluded.pull_gen > pull_gen OR (excluded.pull_gen = pull_gen AND excluded.change_id > change_id)"
)

# The push fence: a second row of ``turso_sync_last_change_id`` per client (``<client id>#fence``),
# whose ``pull_gen`` holds the client's push epoch.  Every push batch checks the epoch it was
# built under (in its last step, ``LAST_CHANGE_UPSERT``); after a push whose answer never came,
# the next pull first moves the epoch on, so that batch, if it is still on its way, can never
# commit after the rebase (which would then have replayed changes the remote also received:
# applied twice).
FENCE_SUFFIX = "#fence"
FENCE_UPSERT = (
    "INSERT INTO turso_sync_last_change_id(client_id, pull_gen, change_id) VALUES (?, ?, 0) "
    "ON CONFLICT(client_id) DO UPDATE SET pull_gen = excluded.pull_gen"
)
LAST_CHANGE_SELECT = "SELECT pull_gen, change_id FROM turso_sync_last_change_id WHERE client_id = ?"

#: A client's push mark on the remote, ``(pull_gen, change_id)``; ``NO_MARK``: it has none yet
#: (a mark written by a push has a change id of 1 or more).
Mark = tuple[int, int]
NO_MARK: Mark = (0, 0)

# A batch built on a mark writes the new one first, as a compare-and-set: it fails unless the
# push epoch is the expected one and, when the remote holds a mark for the client, unless that
# mark is exactly the expected one (NULL, NULL when the batch expects none: then it always
# fails).  The batch holds the write lock from BEGIN IMMEDIATE to COMMIT, so the mark cannot move
# in between; written first, a mark that is not the expected one fails the batch before any
# guard runs.  (A remote that holds no mark for a client that believes it has one, one reset
# under it, takes the batch and the mark: what the client forgot it also forgot before.)
MARK_MOVE = (
    "INSERT INTO turso_sync_last_change_id(client_id, pull_gen, change_id) VALUES (?, ?, "
    "CASE WHEN (SELECT pull_gen FROM turso_sync_last_change_id WHERE client_id = ?) IS ? THEN ? "
    "ELSE abs(-9223372036854775808) END) ON CONFLICT(client_id) DO UPDATE SET "
    "change_id = CASE WHEN pull_gen = ? AND change_id = ? THEN excluded.change_id "
    "ELSE abs(-9223372036854775808) END, pull_gen = excluded.pull_gen"
)

#: The largest push request body: what our primary accepts (``client_max_size``) and what we
#: assume of any sync server.  One local transaction is one remote transaction, and a remote
#: transaction cannot span requests without Hrana batons, so a transaction bigger than this is
#: refused before anything is sent (``Replica.push``) instead of being split.
MAX_PUSH_BODY = 64 << 20

Columns = Callable[[str], list[tuple[str, int]]]  # table -> [(column name, pk ordinal)]

#: (table, {column: value}) -> the rows this row references that exist locally, as
#: (parent table, [(parent column, value), ...]): each becomes a guard that the parent exists on
#: the remote too when the batch commits (``local_parents`` builds one from a local database).
Parents = Callable[[str, dict[str, Any]], list[tuple[str, list[tuple[str, Any]]]]]


@dataclass
class Step:
    """One batch step: SQL, arguments, and which outbox row it came from."""

    sql: str
    args: list[Any] = field(default_factory=list)
    outbox_id: int | None = None
    outbox_last: int | None = None  # a folded step: the last outbox row it carries (``outbox_id``: the first)
    harmless_errors: bool = False  # a duplicate ADD COLUMN is expected on a replay
    guard: bool = False  # a compare-and-set guard: its error means "the remote row moved"
    mark: bool = False  # a push-mark step: its error means "the mark or the epoch is not the expected one"
    want_rows: bool | None = None  # None: all but guards and mark steps want their rows back


#: An INSERT's guard compares the row's values only when none is longer than this (bytes or
#: characters); a longer one would travel twice in the request.
GUARD_VALUE_BYTES = 1024

#: Evaluated only when a guard's condition is false: SQLite and tursodb both fail the statement
#: with "integer overflow" (no user function, no table, nothing a sandbox would deny).
GUARD_FAIL = "abs(-9223372036854775808)"


#: A folded insert carries at most this many parameters (SQLite's limit before 3.32, so any server
#: takes it) and about this many bytes of text and blob values (a stream splits a push between
#: statements, never inside one).
FOLD_PARAMS = 999
FOLD_BYTES = 256 << 10


def _ddl_for_push(sql: str) -> str:
    return re.sub(
        r"^(\s*CREATE\s+(?:UNIQUE\s+)?(?:TABLE|INDEX|VIEW|TRIGGER))\s+(?!IF\s)",
        r"\1 IF NOT EXISTS ",
        sql,
        count=1,
        flags=re.IGNORECASE,
    )


def change_steps(
    row: OutboxRow, columns: Columns, parents: Parents | None = None, checks: list[Step] | None = None
) -> list[Step]:
    """The SQL steps for one outbox row: its schema statements, then its row changes.

    With ``parents``, the foreign-key guards of its inserted and updated rows are appended to
    ``checks`` (they run after every change of the batch: a parent may come later in it)."""
    steps = [
        Step(_ddl_for_push(sql), [], row.id, harmless_errors=bool(re.match(r"\s*ALTER\s", sql, re.IGNORECASE)))
        for sql in row.ddl
    ]
    if not row.changeset:
        return steps
    for change in apsw.Changeset.iter(row.changeset):
        if change.indirect or is_internal(change.name):
            continue  # made by a trigger: the remote's own trigger makes it there
        table_cols = columns(change.name)
        steps.append(guard_step(change, table_cols, row.id))
        steps.append(_row_step(change, table_cols, row.id))
        if parents is not None and checks is not None:
            checks.extend(parent_guards(change, table_cols, parents, row.id))
    return steps


@dataclass(frozen=True)
class Insert:
    """An INSERT of a changeset, kept past its iteration (an ``apsw.TableChange`` is not)."""

    name: str
    new: tuple[Any, ...]
    pk_columns: set[int]
    column_count: int


class _Fold:
    """Consecutive inserts into one table with a primary key, sent as one folded upsert."""

    def __init__(self) -> None:
        self.inserts: list[tuple[Insert, list[tuple[str, int]], int]] = []
        self.keys: set[tuple[Any, ...]] = set()
        self.size = 0

    def take(self, change: apsw.TableChange, table_cols: list[tuple[str, int]], outbox_id: int) -> bool:
        """Add ``change`` if it folds into this group; False if it does not (flush, then retry)."""
        if change.op != "INSERT" or change.column_count != len(table_cols) or not change.pk_columns:
            return False  # a table without a primary key (rowid first) is never folded
        new = change.new or ()
        key = tuple(new[i] for i in change.pk_columns)
        if any(v is None for v in key):
            return False  # NULL keys never clash in ON CONFLICT: the per-row guard compares them
        if self.inserts:
            head = self.inserts[0][0]
            if (
                change.name != head.name
                or change.column_count != head.column_count
                or key in self.keys
                or (len(self.inserts) + 1) * head.column_count > FOLD_PARAMS
                or self.size > FOLD_BYTES
            ):
                return False
        elif change.column_count > FOLD_PARAMS:
            return False
        self.inserts.append((Insert(change.name, new, change.pk_columns, change.column_count), table_cols, outbox_id))
        self.keys.add(key)
        self.size += sum(len(v) for v in new if isinstance(v, (str, bytes)))
        return True

    def flush(self) -> list[Step]:
        """The group's steps (none for an empty group), and an empty group."""
        inserts, self.inserts, self.keys, self.size = self.inserts, [], set(), 0
        if not inserts:
            return []
        return fold_steps([i for i, _, _ in inserts], inserts[0][1], inserts[0][2], inserts[-1][2])


def fold_steps(changes: Sequence[Insert], table_cols: list[tuple[str, int]], first: int, last: int) -> list[Step]:
    """One upsert of every insert in ``changes`` (one table, distinct non-NULL keys), then its guard.

    The upsert's ``DO UPDATE`` runs only where the remote row equals the inserted one, so
    ``changes()`` counts a row inserted or met equal, and skips one that differs: the guard
    fails unless it counts them all, as each row's own insert guard would."""
    names = [name for name, _ in table_cols]
    pk_names = [names[i] for i in sorted(changes[0].pk_columns)]
    table = quote(changes[0].name)
    col_sql = ", ".join(quote(n) for n in names)
    row_marks = "(" + ",".join("?" * len(names)) + ")"
    updates = ",".join(f"{quote(n)} = excluded.{quote(n)}" for n in names)
    others = [n for n in names if n not in pk_names]
    equal = " AND ".join(f"{quote(n)} IS excluded.{quote(n)}" for n in others) or "1"
    sql = (
        f"INSERT INTO {table}({col_sql}) VALUES {','.join([row_marks] * len(changes))} "
        f"ON CONFLICT({','.join(quote(n) for n in pk_names)}) DO UPDATE SET {updates} WHERE {equal}"
    )
    args = [v for change in changes for v in change.new]
    count = f"SELECT CASE WHEN changes() = {len(changes)} THEN 1 ELSE {GUARD_FAIL} END AS ok"
    return [Step(sql, args, first, last), Step(count, [], first, last, guard=True)]


def fold_changes(
    rows: Sequence[OutboxRow], columns: Columns, parents: Parents | None = None, fold: bool = True
) -> list[Step]:
    """The change steps of ``rows`` in order, as ``change_steps`` makes them, but with inserts
    that follow one another into one table folded (``fold_steps``) and each update's guard
    folded into it (``update_steps``), none of either without ``fold``; then the parent guards."""
    steps: list[Step] = []
    checks: list[Step] = []
    group = _Fold()
    for row in rows:
        if row.ddl:
            steps.extend(group.flush())
            steps.extend(change_steps(OutboxRow(row.id, row.gen, row.ddl, b""), columns))
        if not row.changeset:
            continue
        for change in apsw.Changeset.iter(row.changeset):
            if change.indirect or is_internal(change.name):
                continue  # made by a trigger: the remote's own trigger makes it there
            table_cols = columns(change.name)
            if not (fold and group.take(change, table_cols, row.id)):
                steps.extend(group.flush())  # what it holds comes before this change
                if not (fold and group.take(change, table_cols, row.id)):  # it may start the next group
                    update = update_steps(change, table_cols, row.id) if fold else None
                    if update is not None:
                        steps.extend(update)
                    else:
                        steps.append(guard_step(change, table_cols, row.id))
                        steps.append(_row_step(change, table_cols, row.id))
            if parents is not None:
                checks.extend(parent_guards(change, table_cols, parents, row.id))
    steps.extend(group.flush())
    return steps + checks


def update_steps(change: apsw.TableChange, table_cols: list[tuple[str, int]], outbox_id: int) -> list[Step] | None:
    """An UPDATE with its guard folded in: the statement matches the row only where it still holds
    the change's old values (its key and the columns the change touched), and the step after it
    fails unless ``changes()`` counts that one row; None for a change that is not an UPDATE, or
    whose key holds a NULL (such keys may match several rows: the per-row guard handles them).

    It means what ``guard_step`` before ``_row_step`` means, one lookup and one key fewer: the
    row must exist with those values, or nothing is written and the batch does not commit."""
    if change.op != "UPDATE":
        return None
    names, _rowid_table = _names(change, table_cols)
    pk_names = [names[i] for i in sorted(change.pk_columns)]
    old = list(change.old or ())
    keys = [old[names.index(n)] for n in pk_names]
    if not pk_names or any(v is None or v is apsw.no_change for v in keys):
        return None
    compared = [(n, v) for n, v in zip(names, old, strict=False) if v is not apsw.no_change]
    sets = [(n, v) for n, v in zip(names, change.new or (), strict=False) if v is not apsw.no_change]
    if not sets:
        return None
    assignments = ", ".join(f"{quote(n)} = ?" for n, _ in sets)
    where = " AND ".join(_is(n) for n, _ in compared)
    return [
        Step(
            f"UPDATE {quote(change.name)} SET {assignments} WHERE {where}",
            [v for _, v in sets] + [v for _, v in compared],
            outbox_id,
        ),
        Step(f"SELECT CASE WHEN changes() = 1 THEN 1 ELSE {GUARD_FAIL} END AS ok", [], outbox_id, guard=True),
    ]


def parent_guards(
    change: apsw.TableChange, table_cols: list[tuple[str, int]], parents: Parents, outbox_id: int
) -> list[Step]:
    """Guards that the rows an inserted or updated row references exist on the remote.

    Only references whose parent exists locally are checked: a reference that already dangles
    locally was journaled by the rebase that made it so (``foreign_key``) and is pushed as it is.
    A remote that deleted the parent since fails the guard, so the push pulls first and the
    rebase journals the dangling child instead of the push creating it unseen.  An UPDATE is
    checked only for the columns it wrote (a changeset does not carry the others' values).
    """
    if change.op == "DELETE":
        return []
    names, _rowid_table = _names(change, table_cols)
    row = {n: v for n, v in zip(names, change.new or (), strict=False) if v is not apsw.no_change}
    guards = []
    for parent, keys in parents(change.name, row):
        where = " AND ".join(f"{quote(col)} IS ?" for col, _ in keys)
        condition = f"EXISTS (SELECT 1 FROM {quote(parent)} WHERE {where})"
        guards.append(
            Step(
                f"SELECT CASE WHEN {condition} THEN 1 ELSE {GUARD_FAIL} END AS ok",
                [v for _, v in keys],
                outbox_id,
                guard=True,
            )
        )
    return guards


#: Runs one statement on the local database and returns its rows (``LocalDatabase.query``).
Query = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]


def local_parents(query: Query) -> Parents:
    """``Parents`` over a local database (``query`` reads it): the foreign keys of ``table``
    whose columns ``row`` holds (all non-NULL) and whose parent row exists locally."""
    cache: dict[str, list[tuple[str, list[tuple[str, str | None]]]]] = {}

    def references(table: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
        if table not in cache:
            groups: dict[int, tuple[str, list[tuple[str, str | None]]]] = {}
            for fk_id, _seq, parent, child_col, parent_col, *_rest in query(
                f"PRAGMA main.foreign_key_list({quote(table)})", ()
            ):
                groups.setdefault(fk_id, (parent, []))[1].append((child_col, parent_col))
            cache[table] = list(groups.values())
        return cache[table]

    def parent_pk(parent: str) -> list[str]:
        info = query(f"PRAGMA main.table_info({quote(parent)})", ())
        return [name for pk, name in sorted((pk, name) for _cid, name, _t, _nn, _d, pk in info) if pk > 0]

    def found(table: str, row: dict[str, Any]) -> list[tuple[str, list[tuple[str, Any]]]]:
        out = []
        for parent, pairs in references(table):
            if not all(child in row and row[child] is not None for child, _ in pairs):
                continue  # a NULL reference references nothing; an unwritten column is not checked
            targets: list[str] = [p for _, p in pairs if p is not None]
            if len(targets) != len(pairs):  # REFERENCES parent: its primary key
                targets = parent_pk(parent)
                if len(targets) != len(pairs):
                    continue  # a malformed foreign key: SQLite itself would refuse to use it
            keys = [(t, row[child]) for t, (child, _) in zip(targets, pairs, strict=True)]
            try:
                where = " AND ".join(f"{quote(col)} IS ?" for col, _ in keys)
                exists = query(f"SELECT 1 FROM main.{quote(parent)} WHERE {where} LIMIT 1", [v for _, v in keys])
            except (apsw.SQLError, errors.Error):
                continue  # no such parent table (yet): nothing to compare
            if exists:
                out.append((parent, keys))
        return out

    return found


def _names(change: apsw.TableChange, table_cols: list[tuple[str, int]]) -> tuple[list[str], bool]:
    """Column names in changeset order (``rowid`` first for a table without a primary key)."""
    names = [name for name, _ in table_cols]
    rowid_table = change.column_count == len(names) + 1
    if rowid_table:
        names = ["rowid", *names]
    return names[: change.column_count], rowid_table


def _is(name: str) -> str:
    return f"{quote(name)} IS ?" if name != "rowid" else '"rowid" IS ?'


def guard_step(change: apsw.TableChange, table_cols: list[tuple[str, int]], outbox_id: int) -> Step:
    """The compare-and-set guard that must pass before ``change`` is applied on the remote.

    UPDATE and DELETE: a row must exist whose key and touched columns hold the change's old
    values.  INSERT: no row with the key may exist unless it equals the inserted row.  The step
    fails (integer overflow) otherwise, so the batch does not commit.
    """
    names, rowid_table = _names(change, table_cols)
    pk_names = [names[i] for i in sorted(change.pk_columns)]
    table = quote(change.name)
    if change.op == "INSERT":
        new = list(change.new or ())
        keys = [new[names.index(n)] for n in pk_names]
        # a table without a primary key: rowids are no identity, so an equal row there is
        # still a clash (the rebase moves the local row to a free rowid)
        others = [
            (n, v)
            for n, v in zip(names, new, strict=False)
            if not rowid_table and n not in pk_names and v is not apsw.no_change
        ]
        if any(isinstance(v, (str, bytes)) and len(v) > GUARD_VALUE_BYTES for _, v in others):
            # not worth sending twice: any row with the key fails the guard, and if it equals
            # ours the rebase of the pull that follows finds no conflict and drops the change
            others = []
        where = " AND ".join(_is(n) for n in pk_names)
        if others:
            where += " AND NOT (" + " AND ".join(_is(n) for n, _ in others) + ")"
        condition = f"NOT EXISTS (SELECT 1 FROM {table} WHERE {where})"
        args = keys + [v for _, v in others]
    else:
        old = [(n, v) for n, v in zip(names, change.old or (), strict=False) if v is not apsw.no_change]
        condition = f"EXISTS (SELECT 1 FROM {table} WHERE {' AND '.join(_is(n) for n, _ in old)})"
        args = [v for _, v in old]
    # named: a server names the column after its expression otherwise, and sends that back per guard
    return Step(f"SELECT CASE WHEN {condition} THEN 1 ELSE {GUARD_FAIL} END AS ok", args, outbox_id, guard=True)


def _row_step(change: apsw.TableChange, table_cols: list[tuple[str, int]], outbox_id: int) -> Step:
    names, rowid_table = _names(change, table_cols)
    pk_names = [names[i] for i in sorted(change.pk_columns)]
    table = quote(change.name)
    if change.op == "INSERT":
        values = list(change.new or ())
        cols = list(zip(names, values, strict=False))
        col_sql = ", ".join(quote(n) for n, _ in cols)
        marks = ",".join("?" * len(cols))
        if rowid_table:
            # the rowid goes along, so later updates by rowid hit this row on the server too; if
            # the server already uses that rowid the guard fails, and the rebase of the pull
            # that follows moves the local row to a free one
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
    """One remote transaction: its Hrana batch and where the COMMIT sits."""

    request: BatchRequest
    sources: list[Step | None]  # per step: the change it carries (None for bookkeeping steps)
    commit_index: int
    last_outbox_id: int
    mark: Mark | None = None  # the push mark it expects the remote to hold (None: not checked)

    @property
    def steps(self) -> list[dict[str, Any]]:
        """The steps' JSON objects, as they travel (``request`` is the batch itself)."""
        return [step.to_json() for step in self.request.steps]


def build_batch(
    rows: Sequence[OutboxRow],
    columns: Columns,
    client_id: str,
    pull_gen: int,
    encode_value: object = None,
    epoch: int | None = None,
    parents: Parents | None = None,
    mark: Mark | None = None,
    fold: bool = False,
) -> PushBatch:
    """The batch that applies ``rows`` and records ``(client_id, pull_gen, last row id)`` atomically.

    It commits only under push epoch ``epoch`` (None: no fence was ever set for this client),
    and, with ``parents``, only if every locally present row its rows reference exists on the
    remote once all its changes are applied.  With ``mark``, it commits only if the remote's
    push mark for ``client_id`` is ``mark`` (``NO_MARK``: none; a remote holding none takes
    any), checked before any change; without it, the mark is not compared (the caller read it
    just before) and only ever moves forward.  Values are encoded by the shared Hrana codec (``wire/hrana.py``);
    ``encode_value`` is ignored, left for callers that still pass one.  With ``fold``, consecutive inserts
    into one table are folded (``fold_steps``), and so is each update's guard (``update_steps``); a batch
    sent as a stream of requests is built without, so no request ends between a folded statement and
    the guard that counts its rows.
    """
    changes = fold_changes(rows, columns, parents, fold)
    first, last = rows[0].id, rows[-1].id
    fence_id = client_id + FENCE_SUFFIX
    # the step after BEGIN: the bookkeeping table (no mark to expect), or the mark's move; the
    # mark's steps before the changes and after them
    head: Step | None = None
    before: list[Step] = []
    after: list[Step] = []
    if mark is None:
        # the mark also checks the push epoch: failing there is a conflict with a fence (pull, retry)
        after.append(Step(LAST_CHANGE_UPSERT, [client_id, pull_gen, fence_id, epoch, last], first, guard=True))
    else:
        expected = [None, None] if mark == NO_MARK else list(mark)
        move_args = [client_id, pull_gen, fence_id, epoch, last, *expected]
        move = Step(MARK_MOVE, move_args, first, mark=True, want_rows=True)
        if mark == NO_MARK:
            before.append(move)  # a first push: the remote may not have the table yet
        else:
            head = move
    body = [*before, *changes, *after]
    plan: list[Step | None] = [None, head, *body]  # BEGIN, table or the mark's move, …
    sql = ["BEGIN IMMEDIATE", LAST_CHANGE_TABLE if head is None else head.sql, *(s.sql for s in body)]
    args: list[list[Any]] = [[], [] if head is None else head.args, *(s.args for s in body)]
    steps, commit_index = _transaction(sql, args, plan)
    return PushBatch(BatchRequest(tuple(steps)), [*plan, None, None], commit_index, last, mark)


def _transaction(sql: list[str], args: list[list[Any]], plan: Sequence[Step | None]) -> tuple[list[BatchStep], int]:
    """Steps that run ``sql`` as one remote transaction: each step only if the one before succeeded
    (or failed harmlessly), then COMMIT, then ROLLBACK unless the COMMIT succeeded; and where the
    COMMIT sits.  ``plan`` gives each statement's change (None for bookkeeping statements)."""
    steps: list[BatchStep] = []
    previous_ok: Cond | None = None
    for i, text in enumerate(sql):
        source = plan[i]
        want_rows = True
        if source is not None:
            # a guard's rows are not wanted: only its error matters
            want_rows = source.want_rows if source.want_rows is not None else not (source.guard or source.mark)
        steps.append(BatchStep(Stmt(text, args=tuple(args[i]), want_rows=want_rows), previous_ok))
        ok: Cond = OkCond(i)
        if source is not None and source.harmless_errors:
            ok = OrCond((ok, ErrorCond(i)))
        previous_ok = ok
    commit_index = len(steps)
    steps.append(BatchStep(Stmt("COMMIT"), previous_ok))
    steps.append(BatchStep(Stmt("ROLLBACK"), NotCond(OkCond(commit_index))))
    return steps, commit_index


def fence_batch(client_id: str, epoch: int) -> BatchRequest:
    """The batch that moves this client's push epoch to ``epoch`` (one remote transaction)."""
    sql = ["BEGIN IMMEDIATE", LAST_CHANGE_TABLE, FENCE_UPSERT]
    args: list[list[Any]] = [[], [], [client_id + FENCE_SUFFIX, epoch]]
    steps, _commit = _transaction(sql, args, [None] * len(sql))
    return BatchRequest(tuple(steps))


def batch_failure(result: BatchResult | dict[str, Any], batch: PushBatch) -> tuple[Step | None, str] | None:
    """Why a batch did not commit: the first failed change step and its message; None if it committed.

    A step that failed only because an earlier one did is skipped (its result and error are
    both empty), so the first error is the cause.  ``(None, ...)`` when no change step failed.
    ``result`` is the decoded batch result, or its JSON object (decoded here).
    """
    if not isinstance(result, BatchResult):
        result = BatchResult.from_json(result, "batch result")
    answered, sent = len(result.step_results), len(batch.request.steps)
    if answered != sent:
        raise errors.ProtocolError(f"the remote answered {answered} step results for a batch of {sent} steps")
    errors_ = result.step_errors
    if result.step_results[batch.commit_index] is not None and errors_[batch.commit_index] is None:
        return None
    for i, err in enumerate(errors_):
        source = batch.sources[i] if i < len(batch.sources) else None
        if err is not None and i != batch.commit_index and not (source and source.harmless_errors):
            return source, err.message
    return None, "the batch did not commit"


def pipeline_body(requests: Sequence[StreamRequest]) -> bytes:
    """A ``/v2/pipeline`` request body opening a new stream: compact JSON (infinite floats as ``1e999``)."""
    return PipelineRequest(tuple(requests)).to_bytes()
