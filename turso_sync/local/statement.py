"""What a statement does, as SQLite itself says when it prepares it, not as its text looks.

A statement is prepared once (never run): the exec tracer reads the prepared statement's facts
(read-only or not, EXPLAIN or not, whether it has result columns) and stops it before its first
step; the authorizer, called by SQLite's compiler for every action the statement takes, says
which tables it inserts into, updates or deletes from, which objects it creates, alters or
drops and in which database, and which transaction or savepoint operation it is.  So
``WITH ... INSERT``, comments before the keyword, ``REPLACE``, UPSERT and ``RETURNING`` are all
seen for what they are.

Preparing costs tens of microseconds, so a connection keeps the answer per SQL text, except for
statements whose answer depends on the schema of the moment: a ``DROP TABLE IF EXISTS t`` or a
``CREATE TABLE IF NOT EXISTS t`` compiles to nothing (and calls no authorizer) when ``t`` is
missing or present, so schema statements, and statements that took no action at all, are
classified again on every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import apsw

_CREATE_DROP = {
    apsw.SQLITE_CREATE_INDEX,
    apsw.SQLITE_CREATE_TABLE,
    apsw.SQLITE_CREATE_TRIGGER,
    apsw.SQLITE_CREATE_VIEW,
    apsw.SQLITE_CREATE_VTABLE,
    apsw.SQLITE_DROP_INDEX,
    apsw.SQLITE_DROP_TABLE,
    apsw.SQLITE_DROP_TRIGGER,
    apsw.SQLITE_DROP_VIEW,
    apsw.SQLITE_DROP_VTABLE,
}
_TEMP_SCHEMA = {
    apsw.SQLITE_CREATE_TEMP_INDEX,
    apsw.SQLITE_CREATE_TEMP_TABLE,
    apsw.SQLITE_CREATE_TEMP_TRIGGER,
    apsw.SQLITE_CREATE_TEMP_VIEW,
    apsw.SQLITE_DROP_TEMP_INDEX,
    apsw.SQLITE_DROP_TEMP_TABLE,
    apsw.SQLITE_DROP_TEMP_TRIGGER,
    apsw.SQLITE_DROP_TEMP_VIEW,
}
_ROW_WRITES = {apsw.SQLITE_INSERT, apsw.SQLITE_UPDATE, apsw.SQLITE_DELETE}
# any of these makes the answer depend on the schema of the moment (see the module docstring)
_SCHEMA_DEPENDENT = _CREATE_DROP | _TEMP_SCHEMA | {apsw.SQLITE_ALTER_TABLE}

# lets the statement prepare whatever parameters it has: the tracer stops it before they matter
_ANY_BINDINGS = getattr(apsw, "_null_bindings", None)


@dataclass(frozen=True, slots=True)
class Statement:
    """The facts SQLite gave about one SQL text."""

    #: SQLite could prepare it (when False, running it raises SQLite's own error)
    prepared: bool = True
    #: it inserts, updates or deletes rows of a table (REPLACE, UPSERT, CTE-led and RETURNING
    #: forms included; EXPLAIN and schema statements are not)
    writes_rows: bool = False
    #: it produces result columns (a query, a PRAGMA that answers, a RETURNING clause, EXPLAIN)
    returns_rows: bool = False
    #: ``BEGIN``/``COMMIT``/``ROLLBACK`` (``END`` is COMMIT) for a transaction statement
    transaction: str | None = None
    #: (``BEGIN``/``RELEASE``/``ROLLBACK``, name) for ``SAVEPOINT``/``RELEASE``/``ROLLBACK TO``
    savepoint: tuple[str, str] | None = None
    #: (table or object names) it creates, alters or drops in the main database
    schema_objects: tuple[str, ...] = ()
    #: the answer holds for this text whatever the schema becomes
    cacheable: bool = True
    #: the text holds more than one statement (``execute`` refuses it; only the first was looked at)
    several: bool = False
    #: prepared, and nothing to follow: no row writes, no schema change, no transaction or
    #: savepoint control, so a replica runs it as a plain connection does
    is_read: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        follow = self.writes_rows or self.transaction or self.savepoint or self.schema_objects
        object.__setattr__(self, "is_read", self.prepared and not follow)  # derived once, read per execution

    @property
    def changes_schema(self) -> bool:
        """It creates, alters or drops something in the main database."""
        return bool(self.schema_objects)


NOT_PREPARED = Statement(prepared=False, cacheable=False)


def split_statements(script: str) -> list[str]:
    """Split SQL text into complete statements (SQLite's own notion of complete)."""
    out: list[str] = []
    current = ""
    for piece in script.split(";"):
        current += piece + ";"
        if apsw.complete(current):
            if current.strip(" \t\r\n;"):
                out.append(current.strip())
            current = ""
    if current.strip(" \t\r\n;"):
        out.append(current.strip())
    return out


def classify(db: apsw.Connection, sql: str) -> Statement:
    """Prepare ``sql`` (without running it) and return what SQLite says it does.

    Only the first statement of ``sql`` is looked at (``several`` says whether more follow).
    Any authorizer already set on ``db`` is put back afterwards (it is not consulted while the
    statement is prepared here).
    """
    statement = _classify_first(db, sql)
    if ";" in sql and len(split_statements(sql)) > 1:
        return replace(statement, several=True)
    return statement


def _classify_first(db: apsw.Connection, sql: str) -> Statement:
    actions: list[tuple[int, str | None, str | None, str | None, str | None]] = []
    facts: dict[str, bool] = {}

    def authorize(code: int, third: str | None, fourth: str | None, dbname: str | None, trigger: str | None) -> int:
        actions.append((code, third, fourth, dbname, trigger))
        return apsw.SQLITE_OK

    def tracer(cursor: apsw.Cursor, _sql: str, _bindings: object) -> bool:
        facts["explain"] = bool(cursor.is_explain)
        try:
            facts["columns"] = bool(cursor.get_description())
        except apsw.ExecutionCompleteError:
            facts["columns"] = False
        return False  # stop before the first step: nothing runs

    cursor = db.cursor()
    cursor.exec_trace = tracer
    previous = db.authorizer
    db.authorizer = authorize
    try:
        cursor.execute(sql, _ANY_BINDINGS, can_cache=False)
    except apsw.ExecTraceAbort:
        pass
    except apsw.Error:
        return NOT_PREPARED
    finally:
        db.authorizer = previous
        cursor.exec_trace = None
    if not facts:
        return NOT_PREPARED  # nothing but whitespace and comments
    return _from_actions(actions, facts["explain"], facts["columns"])


def _from_actions(
    actions: list[tuple[int, str | None, str | None, str | None, str | None]], explain: bool, columns: bool
) -> Statement:
    writes = False
    transaction: str | None = None
    savepoint: tuple[str, str] | None = None
    objects: list[str] = []
    dependent = not actions
    for code, third, fourth, dbname, trigger in actions:
        if code in _SCHEMA_DEPENDENT:
            dependent = True
        if trigger is not None:
            continue  # done by a trigger or through a view: the statement's own action says it
        if code in _ROW_WRITES and third is not None and not third.lower().startswith("sqlite_"):
            writes = True
        elif code == apsw.SQLITE_TRANSACTION and third is not None:
            transaction = third.upper()
        elif code == apsw.SQLITE_SAVEPOINT and third is not None and fourth is not None:
            savepoint = (third.upper(), fourth)
        elif code in _CREATE_DROP and dbname == "main" and third is not None:
            if third.lower().startswith("sqlite_autoindex_"):
                continue  # the index of a UNIQUE or PRIMARY KEY constraint: part of its table
            objects.append(third)
            if fourth is not None:
                objects.append(fourth)  # the table an index or trigger belongs to
        elif code == apsw.SQLITE_ALTER_TABLE and third == "main" and fourth is not None:
            objects.append(fourth)  # ALTER TABLE's arguments are (database, table)
    if explain:
        return Statement(returns_rows=True, cacheable=not dependent)
    if objects:
        writes = False  # CREATE TABLE ... AS SELECT fills its new table as part of the schema change
    return Statement(
        writes_rows=writes,
        returns_rows=columns,
        transaction=transaction,
        savepoint=savepoint,
        schema_objects=tuple(dict.fromkeys(objects)),
        cacheable=not dependent,
    )
