"""A commit landing right after a pull's install is never recorded as synced (issue 9, part 5a).

The install appends the pulled state as one WAL transaction under the write lock, releases the
lock and runs WAL recovery.  A commit by another connection in that window must stay pending:
the synced base the pull records is the install's own sequence number, read under the lock.
The window is hit deterministically: an exec trace on the engine's connection commits from a
second connection when the install's recovery read starts (the lock is already released).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import turso_sync
from tests.conftest import KEY256
from tests.servers import primary

pytestmark = pytest.mark.peers


def test_commit_in_the_install_window_stays_pending(tmp_path: Path):
    with primary(tmp_path / "server") as url:
        writer = turso_sync.connect(tmp_path / "w.db", url, encryption_key=KEY256)
        writer.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'remote');")
        writer.push()
        replica = turso_sync.connect(tmp_path / "r.db", url, encryption_key=KEY256)
        app = turso_sync.connect(tmp_path / "r.db", encryption_key=KEY256)  # another agent on the replica
        writer.execute("INSERT INTO t VALUES (2, 'remote')")
        writer.commit()
        writer.push()

        engine = replica.replica.db._conn.apsw_connection
        fired: list[str] = []

        def in_window(cursor: Any, sql: str, bindings: Any) -> bool:
            if sql.startswith(("SELECT count(*) FROM sqlite_schema", "PRAGMA shrink_memory")) and not fired:
                fired.append(sql)  # the statement after the install's ROLLBACK: the write lock is released
                app.execute("INSERT INTO t VALUES (3, 'app')")
                app.commit()
            return True

        engine.exec_trace = in_window
        try:
            assert replica.pull()
        finally:
            engine.exec_trace = None
        assert fired, "the install window was not reached: the test no longer exercises it"
        state = replica.replica.state
        log = replica.replica.db.log
        assert log.current_seq() == state.synced_seq + 1, "the app's commit was recorded as part of the synced base"
        assert replica.stats().pending_changes == 1
        replica.sync()
        writer.pull()
        assert writer.execute("SELECT id, v FROM t ORDER BY id").fetchall() == [
            (1, "remote"),
            (2, "remote"),
            (3, "app"),
        ]
        for conn in (app, replica, writer):
            conn.close()
