"""Rebase: pending local changes replayed on top of the remote state, in memory.

Input: the remote's state (the synced base with the pulled pages laid over it, as an overlay
whose pages are read on demand) and the outbox rows read from the current local state.  On the
overlay we drop the changes the
remote already has (its ``turso_sync_last_change_id`` row for this client), carry the sync
tables over, replay each remaining transaction (schema statements, then its changeset) with
the conflict policy, and record every conflict.  Each replayed transaction is captured again
as the new outbox (rebased onto the remote state), under the next ``pull_gen``.  The result is
the set of pages the replay wrote, which the caller installs atomically.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import apsw

from ..errors import ProgrammingError, SyncError
from ..local.capture import CONFLICTS_TABLE, META_TABLE, OUTBOX_TABLE, SCHEMA, is_internal
from .overlay import OverlayImage, open_overlay

Row = dict[str, Any]
Resolver = Callable[[str, dict[str, Any], Row | None, Row | None, Row | None, str], Any]
#: The conflict policy a replica uses unless told otherwise: Turso's behaviour.
DEFAULT_POLICY = "last_push_wins"
#: the named conflict policies, the one list the library, the CLI and the docs' checks use
POLICIES = (DEFAULT_POLICY, "remote_wins", "local_wins")


def check_policy(policy: object) -> None:
    """Refuse a conflict policy that is neither one of ``POLICIES`` nor a callable resolver.

    Raises ``ProgrammingError`` naming the accepted policies, so a typo fails when the replica
    is opened, not at the first rebase.
    """
    if callable(policy) or (isinstance(policy, str) and policy in POLICIES):
        return
    names = ", ".join(repr(name) for name in POLICIES)
    raise ProgrammingError(
        f"unknown conflict policy {policy!r}: use one of {names}, "
        "or a callable (table, pk, base, local, remote, kind) returning 'local', 'remote' or a merged row"
    )


@dataclass
class OutboxRow:
    """One captured local transaction."""

    id: int
    gen: int
    ddl: list[str]
    changeset: bytes


@dataclass
class Conflict:
    """One conflict met while replaying local changes on the remote state."""

    table: str
    pk: dict[str, Any]
    kind: str  # update/update, update/delete, delete/update, insert/insert, constraint, foreign_key, schema
    resolution: str  # local, remote, merged
    base: Row | None
    local: Row | None
    remote: Row | None
    result: Row | None
    revision: str = ""
    at: float = field(default_factory=time.time)
    id: int | None = None


@dataclass
class RebaseResult:
    image: OverlayImage  # the remote state with the replay's writes in ``image.written``
    conflicts: list[Conflict]
    pending: int  # outbox rows after the rebase
    replayed: int
    skipped_as_pushed: int


def to_json(value: Any) -> Any:
    """A JSON-safe form of an SQL value (blobs as {"$blob": base64})."""
    if isinstance(value, bytes):
        return {"$blob": base64.b64encode(value).decode("ascii")}
    return value


def from_json(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"$blob"}:
        return base64.b64decode(value["$blob"])
    return value


def _row_json(row: Row | None) -> str | None:
    return None if row is None else json.dumps({k: to_json(v) for k, v in row.items()})


def row_from_json(text: str | None) -> Row | None:
    return None if text is None else {k: from_json(v) for k, v in json.loads(text).items()}


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _columns(db: apsw.Connection, table: str) -> list[tuple[str, int]]:
    """(name, pk ordinal) per column of ``table``."""
    return [(r[1], r[5]) for r in db.execute(f"PRAGMA main.table_info({quote(table)})")]


def _ddl_for_replay(sql: str) -> str:
    """Schema statements replay idempotently: CREATE … IF NOT EXISTS, DROP … IF EXISTS."""
    sql = re.sub(
        r"^(\s*CREATE\s+(?:UNIQUE\s+)?(?:TABLE|INDEX|VIEW|TRIGGER))\s+(?!IF\s)",
        r"\1 IF NOT EXISTS ",
        sql,
        count=1,
        flags=re.IGNORECASE,
    )
    return re.sub(
        r"^(\s*DROP\s+(?:TABLE|INDEX|VIEW|TRIGGER))\s+(?!IF\s)", r"\1 IF EXISTS ", sql, count=1, flags=re.IGNORECASE
    )


def harmless_ddl_error(sql: str, message: str) -> bool:
    """Re-adding a column that exists is expected when a change is replayed twice.

    SQLite reports a duplicate column as the generic SQLITE_ERROR, so the message is the only
    signal; it is read here, for an ALTER TABLE only, and nowhere else in the rebase.
    """
    return bool(re.match(r"\s*ALTER\s+TABLE", sql, re.IGNORECASE)) and "duplicate column" in message


class Rebaser:
    """Replays outbox rows on an in-memory copy of the remote state."""

    def __init__(
        self,
        remote: OverlayImage,
        *,
        client_id: str,
        policy: str | Resolver,
        revision: str,
        base_image: Callable[[], OverlayImage] | None = None,
        reserved: int = 0,
    ) -> None:
        check_policy(policy)
        self.client_id = client_id
        self.policy = policy
        self.revision = revision
        self._base_image = base_image
        self._base_db: apsw.Connection | None = None
        self.remote = remote
        self.reserved = reserved
        self.db = open_overlay(remote, reserved)
        self.conflicts: list[Conflict] = []
        # writes to make once the changeset is applied: (table, row, "replace" | "insert" | "update",
        # key of the row to update)
        self._after_apply: list[tuple[str, Row, str, Row]] = []

    # --- the whole rebase ------------------------------------------------------------------------

    def run(
        self, rows: Sequence[OutboxRow], meta: dict[str, Any], old_conflicts: list[tuple[Any, ...]]
    ) -> RebaseResult:
        db = self.db
        local_gen = int(meta.get("pull_gen", 0))
        remote_gen, remote_change = self._remote_mark()
        if remote_gen > local_gen:
            raise SyncError(
                f"the remote records pull generation {remote_gen} for client {self.client_id}, newer than the "
                f"local {local_gen}: this replica's files do not belong together"
            )
        floor = remote_change if remote_gen == local_gen else 0
        pending = [r for r in rows if not (r.gen == local_gen and r.id <= floor)]
        skipped = len(rows) - len(pending)
        db.execute("BEGIN")
        for statement in SCHEMA:
            db.execute(statement)
        new_gen = local_gen + 1
        db.execute(f"DELETE FROM {META_TABLE}")
        for key, value in {**meta, "client_id": self.client_id, "pull_gen": new_gen}.items():
            db.execute(f"INSERT INTO {META_TABLE}(key, value) VALUES (?, ?)", (key, value))
        for conflict_row in old_conflicts:
            db.execute(f"INSERT INTO {CONFLICTS_TABLE} VALUES ({','.join('?' * len(conflict_row))})", conflict_row)
        kept = 0
        for row in combine_pending(pending):
            ddl, changeset = self._replay(row)
            if ddl or changeset:
                db.execute(
                    f"INSERT INTO {OUTBOX_TABLE}(gen, ddl, changeset) VALUES (?, ?, ?)",
                    (new_gen, json.dumps(ddl), changeset),
                )
                kept += 1
        for conflict in self.conflicts:
            cur = db.execute(
                f"INSERT INTO {CONFLICTS_TABLE}(at, revision, tbl, pk, kind, resolution, base, local, remote, result) "
                "VALUES (?,?,?,?,?,?,?,?,?,?) RETURNING id",
                (
                    conflict.at,
                    conflict.revision,
                    conflict.table,
                    json.dumps({k: to_json(v) for k, v in conflict.pk.items()}),
                    conflict.kind,
                    conflict.resolution,
                    _row_json(conflict.base),
                    _row_json(conflict.local),
                    _row_json(conflict.remote),
                    _row_json(conflict.result),
                ),
            )
            conflict.id = int(cur.fetchall()[0][0] or 0)
        db.execute("COMMIT")
        self.close()
        return RebaseResult(self.remote, self.conflicts, kept, len(pending), skipped)

    def close(self) -> None:
        self.db.close()
        if self._base_db is not None:
            self._base_db.close()

    def _remote_mark(self) -> tuple[int, int]:
        try:
            rows = self.db.execute(
                "SELECT pull_gen, change_id FROM turso_sync_last_change_id WHERE client_id = ?", (self.client_id,)
            ).fetchall()
        except apsw.SQLError:
            return 0, 0  # no such table: nobody pushed yet
        return (int(rows[0][0] or 0), int(rows[0][1] or 0)) if rows else (0, 0)

    # --- one transaction -----------------------------------------------------------------------

    def _replay(self, row: OutboxRow) -> tuple[list[str], bytes]:
        db = self.db
        session = apsw.Session(db, "main")
        session.config(apsw.SQLITE_SESSION_OBJCONFIG_ROWID, 1)
        session.table_filter(lambda name: not is_internal(name))
        session.attach()
        try:
            kept_ddl: list[str] = []
            for sql in row.ddl:
                try:
                    db.execute(_ddl_for_replay(sql))
                    kept_ddl.append(sql)
                except apsw.Error as exc:
                    if harmless_ddl_error(sql, str(exc)):
                        kept_ddl.append(sql)
                        continue
                    self.conflicts.append(
                        Conflict(
                            "sqlite_schema",
                            {"sql": sql},
                            "schema",
                            "remote",
                            None,
                            {"sql": sql},
                            None,
                            None,
                            self.revision,
                        )
                    )
            if row.changeset:
                self._after_apply = []
                direct = self._direct_changes(row.changeset)
                if direct:
                    apsw.Changeset.apply(
                        direct,
                        db,
                        filter=lambda name: not is_internal(name),
                        conflict=self._on_conflict,
                    )
                for table, values, mode, key in self._after_apply:
                    names = list(values)
                    if mode == "update":
                        if names:
                            db.execute(
                                f"UPDATE {quote(table)} SET {', '.join(f'{quote(n)} = ?' for n in names)} "
                                f"WHERE {' AND '.join(f'{quote(k)} IS ?' for k in key)}",
                                [*values.values(), *key.values()],
                            )
                        continue
                    verb = "INSERT OR REPLACE" if mode == "replace" else "INSERT"
                    db.execute(
                        f"{verb} INTO {quote(table)}({', '.join(map(quote, names))}) "
                        f"VALUES ({', '.join('?' * len(names))})",
                        [values[n] for n in names],
                    )
            changeset = session.changeset()
            self._journal_dangling_references(changeset)
            return kept_ddl, changeset
        finally:
            session.close()

    def _direct_changes(self, changeset: bytes) -> bytes:
        """The changes the application made, without those its triggers made.

        Applying a change fires the remote state's triggers (as the push's statements fire the
        server's), so replaying the trigger-made changes too would make them twice (or clash
        with what the remote's triggers made).  A change to a table the remote state no longer
        has would be skipped by SQLite without a word: it is journaled here as a ``schema``
        conflict instead.
        """
        builder = apsw.ChangesetBuilder()
        tables: dict[str, bool] = {}
        dropped = False
        for change in apsw.Changeset.iter(changeset):
            if change.indirect or is_internal(change.name):
                dropped = True
                continue
            exists = tables.get(change.name)
            if exists is None:
                exists = tables[change.name] = bool(
                    self.db.execute(
                        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (change.name,)
                    ).fetchall()
                )
            if not exists:
                values = list((change.new if change.op == "INSERT" else change.old) or ())
                pk = {f"column {i}": values[i] for i in sorted(change.pk_columns)}
                if change.op == "UPDATE":  # what the row would have become
                    values = [o if n is apsw.no_change else n for o, n in zip(values, change.new or (), strict=False)]
                row = (
                    None
                    if change.op == "DELETE"
                    else {f"column {i}": v for i, v in enumerate(values) if v is not apsw.no_change}
                )
                self.conflicts.append(
                    Conflict(change.name, pk, "schema", "remote", None, row, None, None, self.revision)
                )
                dropped = True
                continue
            builder.add_change(change)
        # nothing left out (the usual case): the changeset as it is, never rebuilt (a rebuilt
        # changeset is held in memory twice, which a transaction of tens of MiB cannot afford)
        return builder.output() if dropped else changeset

    def _journal_dangling_references(self, changeset: bytes) -> None:
        """Journal rows this replay wrote whose foreign key now points at no row (they are kept).

        Neither SQLite nor the server enforces foreign keys unless asked, so a merge can leave a
        child whose parent the remote deleted; it is not dropped, but it is not silent either.
        """
        written: dict[str, set[Any]] = {}
        for change in apsw.Changeset.iter(changeset):
            if change.op != "DELETE" and not change.indirect and not is_internal(change.name):
                names = self._names(change)
                source = (change.old if change.op == "UPDATE" else change.new) or ()
                key = {names[i]: source[i] for i in sorted(change.pk_columns)}
                written.setdefault(change.name, set()).add(tuple(key.items()))
        for table, keys in written.items():
            try:
                violations = self.db.execute(f"PRAGMA foreign_key_check({quote(table)})").fetchall()
            except apsw.SQLError:
                continue
            names = [name for name, _pk in _columns(self.db, table)]
            for _table, rowid, _parent, _fk in violations:
                if rowid is None:
                    continue  # a WITHOUT ROWID table: no row number to match
                found = self.db.execute(
                    f"SELECT rowid, {', '.join(map(quote, names))} FROM {quote(table)} WHERE rowid = ?", (rowid,)
                ).fetchall()
                if not found:
                    continue
                row: Row = dict(zip(names, found[0][1:], strict=True))
                with_rowid = {"rowid": found[0][0], **row}
                matches = [k for k in keys if all(with_rowid.get(n) == v for n, v in k)]
                if not matches:
                    continue  # a dangling reference the remote already had
                self.conflicts.append(
                    Conflict(table, dict(matches[0]), "foreign_key", "local", None, row, None, row, self.revision)
                )

    def _names(self, change: apsw.TableChange) -> list[str]:
        cols = [name for name, _pk in _columns(self.db, change.name)]
        if change.column_count == len(cols) + 1:
            return ["rowid", *cols]  # a rowid table: the session recorded the rowid first
        return cols[: change.column_count]

    def _row(self, names: list[str], values: Sequence[Any] | None) -> Row | None:
        if values is None:
            return None
        return {n: v for n, v in zip(names, values, strict=False) if v is not apsw.no_change}

    def _base_row(self, table: str, names: list[str], pk: dict[str, Any]) -> Row | None:
        """The full row as it was in the synced base (looked up lazily, only for conflicts)."""
        if self._base_image is None:
            return None
        if self._base_db is None:
            self._base_db = open_overlay(self._base_image(), self.reserved)
        where = " AND ".join(f"{quote(k)} IS ?" for k in pk)
        try:
            found = self._base_db.execute(
                f"SELECT {', '.join(map(quote, names))} FROM {quote(table)} WHERE {where}", list(pk.values())
            ).fetchall()
        except apsw.SQLError:
            return None
        return dict(zip(names, found[0], strict=True)) if found else None

    def _on_conflict(self, reason: int, change: apsw.TableChange) -> int:
        OMIT, REPLACE = apsw.SQLITE_CHANGESET_OMIT, apsw.SQLITE_CHANGESET_REPLACE
        if reason == apsw.SQLITE_CHANGESET_FOREIGN_KEY:
            self.conflicts.append(
                Conflict(change.name or "", {}, "foreign_key", "local", None, None, None, None, self.revision)
            )
            return OMIT  # keep the rows; the journal says a reference dangles
        names = self._names(change)
        if reason == apsw.SQLITE_CHANGESET_CONFLICT and change.op == "INSERT" and names[:1] == ["rowid"]:
            # a table without a primary key: rowids are local identities, so a clash is no
            # conflict; the local row goes in under a fresh rowid
            row = self._row(names, change.new) or {}
            row.pop("rowid", None)
            self._after_apply.append((change.name, row, "insert", {}))
            return OMIT
        key_source = change.old if change.op != "INSERT" else change.new
        pk = {names[i]: key_source[i] for i in sorted(change.pk_columns)} if key_source else {}
        remote = self._row(names, change.conflict) if change.conflict is not None else None
        if change.op == "INSERT":
            kind, base, local = "insert/insert", None, self._row(names, change.new)
        else:
            # the synced base row, with the values this change started from on top: after a push
            # without a pull the synced base is older than what the change was made on
            base = {**(self._base_row(change.name, names, pk) or {}), **(self._row(names, change.old) or {})}
            if change.op == "UPDATE":
                local = dict(base or {})
                local.update(self._row(names, change.new) or {})
            else:
                local = None
            if reason == apsw.SQLITE_CHANGESET_NOTFOUND:
                if change.op == "DELETE":
                    return OMIT  # deleted on both sides: nothing to decide
                kind = "update/delete"
            else:
                kind = "update/update" if change.op == "UPDATE" else "delete/update"
        if reason == apsw.SQLITE_CHANGESET_CONSTRAINT:
            kind = "constraint"
        kept: Row = {}  # local column edits the remote did not touch: they survive under every policy
        if reason == apsw.SQLITE_CHANGESET_DATA and change.op == "UPDATE" and change.conflict is not None:
            touched = [
                i
                for i, v in enumerate(change.new or ())
                if v is not apsw.no_change and (change.old or ())[i] is not apsw.no_change
            ]
            moved = [i for i in touched if not _same(change.conflict[i], change.old[i])]  # type: ignore[index]
            kept = {names[i]: change.new[i] for i in touched if i not in moved}  # type: ignore[index]
            # Both sides writing the same new value from the same base is still a conflict: values
            # are states, not operations, and two `v = v + 1` from one base write the same value
            # (one increment would vanish unseen).  The policy settles it and the journal keeps it.
        elif remote is not None and local is not None and remote == local:
            return OMIT  # both sides made the same change
        action, resolution, result = self._decide(change, kind, pk, base, local, remote, reason)
        if resolution in ("remote", "merged") and kept:
            # the policy (or the resolver's row) settles the overlapping columns; a column only
            # this side edited keeps its edit
            self._after_apply.append((change.name, kept, "update", pk))
            result = {**(result or remote or {}), **kept}
        elif resolution == "local" and change.op == "UPDATE" and remote is not None:
            # the update sets only the columns it touched; the remote's other edits stay
            result = {**remote, **(self._row(names, change.new) or {})}
        self.conflicts.append(Conflict(change.name, pk, kind, resolution, base, local, remote, result, self.revision))
        return action if action in (OMIT, REPLACE) else OMIT

    def _decide(
        self,
        change: apsw.TableChange,
        kind: str,
        pk: dict[str, Any],
        base: Row | None,
        local: Row | None,
        remote: Row | None,
        reason: int,
    ) -> tuple[int, str, Row | None]:
        OMIT, REPLACE = apsw.SQLITE_CHANGESET_OMIT, apsw.SQLITE_CHANGESET_REPLACE
        can_replace = reason in (apsw.SQLITE_CHANGESET_DATA, apsw.SQLITE_CHANGESET_CONFLICT)
        policy = self.policy
        if callable(policy):
            choice = policy(change.name, pk, base, local, remote, kind)
        elif policy == "remote_wins":
            choice = "remote"
        elif policy == "local_wins":
            choice = "local"
        else:  # last_push_wins: Turso's behaviour; a remote delete stands against a local update
            choice = "remote" if kind in ("update/delete", "constraint") else "local"
        if choice == "remote":
            return OMIT, "remote", remote
        if choice == "local":
            if can_replace:
                merged = dict(remote or {})
                merged.update(local or {})
                return REPLACE, "local", None if change.op == "DELETE" else merged
            if kind == "update/delete" and local is not None and base is not None:
                self._after_apply.append((change.name, local, "replace", {}))  # bring the row back
                return OMIT, "local", local
            return OMIT, "remote", remote  # a constraint failure cannot be forced
        if isinstance(choice, dict):
            self._after_apply.append((change.name, choice, "replace", {}))
            return OMIT, "merged", dict(choice)
        raise SyncError(f"conflict resolver returned {choice!r}; expected 'local', 'remote' or a row dict")


def _same(a: Any, b: Any) -> bool:
    """Equal as SQLite compares stored values (1 and 1.0 are equal; text and blob never are)."""
    if isinstance(a, (bytes, str)) or isinstance(b, (bytes, str)):
        return type(a) is type(b) and a == b
    return bool(a == b)


def combine_pending(rows: Sequence[OutboxRow]) -> list[OutboxRow]:
    """Pending transactions as one: schema statements in order, then one combined changeset.

    Combining lets an insert and later updates of the same new row travel as one insert, so a
    row that must move to a fresh rowid takes its later changes with it.  Changesets that
    cannot be combined (a table changed shape in between) are replayed one by one.
    """
    if len(rows) < 2:
        return list(rows)
    try:
        combined = b""
        for row in rows:
            if row.changeset:
                combined = apsw.Changeset.concat(combined, row.changeset) if combined else row.changeset
    except apsw.Error:
        return list(rows)
    ddl = [sql for row in rows for sql in row.ddl]
    return [OutboxRow(rows[-1].id, rows[-1].gen, ddl, combined)]
