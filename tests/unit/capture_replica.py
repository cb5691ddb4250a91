"""A local database set up as a replica (sync tables present, capture on), without a remote."""

from __future__ import annotations

from pathlib import Path

from turso_sync.local.capture import META_TABLE, SCHEMA
from turso_sync.local.connection import Connection


def open_capture_replica(path: Path, key: str | None, table: str) -> Connection:
    """Create the sync tables and ``table`` (its CREATE statement) at ``path``, then open it with capture on.

    The class itself, not ``turso_sync.connect``, which refuses a database with sync tables and no
    ``-sync`` file.
    """
    setup = Connection(path, encryption_key=key, isolation_level=None)
    raw = setup.apsw_connection
    for statement in SCHEMA:
        raw.execute(statement)
    raw.execute(f"INSERT INTO {META_TABLE}(key, value) VALUES ('pull_gen', 0)")
    raw.execute(table)
    setup.close()
    conn = Connection(path, encryption_key=key)
    assert conn._capture is not None
    return conn
