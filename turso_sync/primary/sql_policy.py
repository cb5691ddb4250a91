"""What SQL clients may run on the primary: an SQLite authorizer for the shared connection.

All clients of a database share one connection, so a statement must not reach outside the
database file (ATTACH, VACUUM INTO), leave state behind for the next client (temporary
objects, connection settings) or break what the server relies on (WAL journal mode, page size,
the frame log).  Everything else SQLite offers is allowed.
"""

from __future__ import annotations

import apsw

#: Pragmas a client may set: they change the database file, not the connection.
SETTABLE_PRAGMAS = frozenset({"user_version", "application_id"})

#: Pragmas that take an argument only to say what to look at.
QUERY_PRAGMAS = frozenset(
    {
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
        "foreign_key_check",
        "integrity_check",
        "quick_check",
    }
)

#: Pragmas that act even without an argument (write, checkpoint, rebuild).
ACTING_PRAGMAS = frozenset({"wal_checkpoint", "optimize", "incremental_vacuum", "shrink_memory"})

_DENIED_ACTIONS = frozenset(
    {
        apsw.SQLITE_ATTACH,  # also what VACUUM INTO asks for
        apsw.SQLITE_DETACH,
        apsw.SQLITE_CREATE_TEMP_TABLE,
        apsw.SQLITE_CREATE_TEMP_INDEX,
        apsw.SQLITE_CREATE_TEMP_TRIGGER,
        apsw.SQLITE_CREATE_TEMP_VIEW,
    }
)


def authorize(action: int, arg1: str | None, arg2: str | None, dbname: str | None, trigger: str | None) -> int:
    """SQLite authorizer callback: ``SQLITE_OK`` or ``SQLITE_DENY`` for one action of a statement."""
    if action in _DENIED_ACTIONS:
        return apsw.SQLITE_DENY
    if action == apsw.SQLITE_PRAGMA:
        name = (arg1 or "").lower()
        if arg2 is not None and name not in SETTABLE_PRAGMAS and name not in QUERY_PRAGMAS:
            return apsw.SQLITE_DENY
        if name in ACTING_PRAGMAS:
            return apsw.SQLITE_DENY
    if action == apsw.SQLITE_FUNCTION and (arg2 or "").lower() == "load_extension":
        return apsw.SQLITE_DENY
    return apsw.SQLITE_OK


def install(conn: apsw.Connection) -> None:
    """Apply the policy to a connection (prepared statements are checked when compiled)."""
    conn.authorizer = authorize
