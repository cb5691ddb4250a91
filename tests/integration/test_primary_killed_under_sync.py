"""The primary killed (SIGKILL) twice while replicas sync the ways users run them: nothing is lost.

A real ``turso-sync serve`` in a subprocess, on local disk (so with group commit: its commits
write the WAL unsynced and it syncs before answering). Replica A writes and calls ``sync()`` in a
loop; replica B's app writes on a connection of its own while a ``SyncDaemon`` syncs the same
file. The server is killed with SIGKILL twice mid-run and started again on the same port from
what its process left on disk. Afterwards every row either replica committed is on the server
exactly once, and both replicas hold exactly the server's rows.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import turso_sync
from tests.conftest import wait_for
from tests.integration.primary_harness import PrimaryProcess, pipeline
from turso_sync import errors
from turso_sync.sync.daemon import SyncDaemon

ROWS_EACH = 80


def _server_ids(url: str) -> list[int]:
    batch = pipeline(url, "SELECT id FROM t ORDER BY id")
    return [int(row[0]["value"]) for row in batch["step_results"][0]["rows"]]


def test_killed_primary_loses_no_row_of_sync_or_the_daemon(tmp_path: Path) -> None:
    server = PrimaryProcess(tmp_path / "srv")
    url = server.start()
    daemon: SyncDaemon | None = None
    # each app writes a third of its rows, then the next third once the server was killed (while
    # it is down and starting again), then the last third after the second kill
    killed = [threading.Event(), threading.Event()]
    threads: list[threading.Thread] = []
    failures: list[BaseException] = []
    try:
        pipeline(url, "CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT)")
        a_path, b_path = tmp_path / "a.db", tmp_path / "b.db"
        turso_sync.connect(str(a_path), url).close()
        turso_sync.connect(str(b_path), url).close()
        daemon = running = SyncDaemon([str(b_path)], watch_interval=0.05, long_poll=2)
        running.start()

        def write(path: Path, first: int, sync_each: bool) -> None:
            conn = turso_sync.connect(str(path), url)
            try:
                for i in range(ROWS_EACH):
                    if i in (ROWS_EACH // 3, 2 * ROWS_EACH // 3):
                        assert killed[0 if i == ROWS_EACH // 3 else 1].wait(60), "the server was never killed"
                    conn.execute("INSERT INTO t VALUES (?, ?)", (first + i, path.stem))
                    conn.commit()
                    if sync_each:  # the app syncs after each write; a failure leaves the row pending
                        _try_sync(conn)
                    time.sleep(0.01)
                if sync_each:
                    wait_for(lambda: _try_sync(conn), 60, f"{path.stem}'s last sync")
            except BaseException as exc:  # reported below
                failures.append(exc)
            finally:
                conn.close()

        # A calls sync() itself; B's app only writes, and the daemon on the same file pushes
        threads = [
            threading.Thread(target=write, args=(a_path, 0, True)),
            threading.Thread(target=write, args=(b_path, 10_000, False)),
        ]
        for t in threads:
            t.start()
        for n, event in enumerate(killed):
            # both apps' rows of the phase before reached the server: then it is killed
            upto = (n + 1) * (ROWS_EACH // 3)
            wait_for(lambda: len(_server_ids(url)) >= 2 * upto, 60, "pushes before the kill")
            server.kill()
            event.set()
            time.sleep(0.3)  # down for a moment: the apps go on writing, their syncs fail
            assert server.start() == url
        for t in threads:
            t.join(120)
        assert not failures, failures[0]

        expected = sorted([*range(ROWS_EACH), *range(10_000, 10_000 + ROWS_EACH)])
        wait_for(lambda: _server_ids(url) == expected, 60, "every committed row on the server")
        wait_for(lambda: all(s.pending_changes == 0 for s in running.status()), 30, "the daemon caught up")
        assert _server_ids(url) == expected  # each exactly once (the key is the row's id)
        daemon = None
        running.stop(grace=0.5)
        running.close()
        for path in (a_path, b_path):
            conn = turso_sync.connect(str(path), url)
            try:
                conn.sync()
                assert [row[0] for row in conn.execute("SELECT id FROM t ORDER BY id").fetchall()] == expected
            finally:
                conn.close()
    finally:
        for event in killed:
            event.set()
        for t in threads:
            t.join(120)
        if daemon is not None:
            daemon.stop(grace=0.5)
            daemon.close()
        server.close()


def _try_sync(conn: turso_sync.Connection) -> bool:
    try:
        conn.sync()
    except errors.SyncError:
        return False
    return True
