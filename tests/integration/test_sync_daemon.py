"""The library's SyncDaemon (what `turso-sync daemon` runs): syncing, status, a clean stop, a fatal token.

Writes and reads go through `turso-sync exec` in child processes, as an app beside the daemon would.
"""

from __future__ import annotations

import json
import subprocess
import sys

import turso_sync
from tests.conftest import KEY256, wait_for
from tests.integration.cli_harness import cli, fresh_url, key_env, running_primary
from turso_sync.sync.daemon import SyncDaemon

LOCK_PROBE = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1] + "-sync.lock", os.O_RDWR | os.O_CREAT, 0o600)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("free")
except BlockingIOError:
    print("held")
"""


def sync_lock(path) -> str:
    return subprocess.run([sys.executable, "-c", LOCK_PROBE, str(path)], capture_output=True, text=True).stdout.strip()


def rows(tmp_path, name: str) -> list:
    result = cli("exec", name, "SELECT id FROM t ORDER BY id", "--json", cwd=tmp_path, env=key_env())
    return [r["id"] for r in json.loads(result.out)] if result.code == 0 else []


def test_syncs_reports_and_stops_holding_the_sync_locks(tmp_path):
    with running_primary(tmp_path / "p") as server:
        url = fresh_url(server)
        for name in ("a.db", "b.db"):
            turso_sync.connect(tmp_path / name, url, encryption_key=KEY256).close()
        daemon = SyncDaemon([str(tmp_path / "a.db"), str(tmp_path / "b.db")], encryption_key=KEY256, long_poll=5)
        daemon.start()
        try:
            cli(
                "exec",
                "a.db",
                "CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1), (2)",
                cwd=tmp_path,
                env=key_env(),
            )
            wait_for(lambda: rows(tmp_path, "b.db") == [1, 2], 30, "a's rows on b")
            wait_for(lambda: all(s.pending_changes == 0 and s.connected for s in daemon.status()), 10, "in sync")
            a_status, b_status = daemon.status()
            assert a_status.pushes >= 1 and b_status.pulls >= 1 and a_status.revision == b_status.revision
            assert a_status.errors == 0 and b_status.lag_seconds is not None and b_status.lag_seconds < 10
            assert daemon.healthy()
        finally:
            abandoned = daemon.stop(grace=0.2)
        assert set(abandoned) <= {str(tmp_path / "a.db"), str(tmp_path / "b.db")}  # long-polls left waiting
        assert not daemon.healthy()
        assert sync_lock(tmp_path / "a.db") == "held"  # no pull can be applied after stop()
        daemon.close()
        assert sync_lock(tmp_path / "a.db") == "free"
        assert cli("verify", "b.db", cwd=tmp_path, env=key_env()).code == 0


def test_a_refused_token_stops_the_daemon(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "tokens").write_text("the-right-token rw *\n")
    with running_primary(folder, "--token-file", str(folder / "tokens")) as server:
        path = tmp_path / "a.db"
        turso_sync.connect(path, fresh_url(server), auth_token="the-right-token").close()
        daemon = SyncDaemon([str(path)], auth_token="a-wrong-token")
        daemon.start()
        try:
            assert daemon.wait(30), "the daemon kept running with a refused token"
            assert isinstance(daemon.fatal, turso_sync.RemoteError) and daemon.fatal.status == 401
        finally:
            daemon.close()


def test_a_path_that_is_not_a_replica_is_refused_at_start(tmp_path):
    daemon = SyncDaemon([str(tmp_path / "nothing.db")])
    try:
        daemon.start()
    except turso_sync.ProgrammingError as exc:
        assert "is not a replica" in str(exc)
    else:
        raise AssertionError("started on a path that is not a replica")
    assert not (tmp_path / "nothing.db").exists()
