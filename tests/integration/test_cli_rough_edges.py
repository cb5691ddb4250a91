"""Rough edges of the CLI that need a primary (or a primary that stalls): SIGTERM during clone,
``status`` of a partial replica, a damaged page that the frame log never recorded."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator

import pytest

import turso_sync
from tests.conftest import KEY256, wait_for
from tests.integration.cli_harness import TURSO_SYNC, clean_env, cli, fresh_url, key_env, running_primary


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    with running_primary(tmp_path_factory.mktemp("primary")) as s:
        yield s


def seed(tmp_path, url: str, rows: int, key: str | None = KEY256) -> None:
    """Rows pushed to the primary by another replica."""
    writer = turso_sync.connect(tmp_path / "seed.db", url, encryption_key=key)
    writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    writer.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"row {i} " + "y" * 400) for i in range(rows)])
    writer.commit()
    writer.push()
    writer.close()


def test_sigterm_during_clone_leaves_nothing_behind(tmp_path):
    """A primary that accepts the bootstrap request and never answers: SIGTERM cleans up like Ctrl-C."""
    stalled = socket.create_server(("127.0.0.1", 0))
    port = stalled.getsockname()[1]
    clone = subprocess.Popen(
        [*TURSO_SYNC, "clone", f"http://127.0.0.1:{port}/db/slow", "slow.db"],
        cwd=tmp_path,
        env=clean_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stalled.settimeout(60)
        held, _ = stalled.accept()  # the bootstrap request is on its way
        # the clone has created its files by the time it sends the request
        wait_for(lambda: any(tmp_path.iterdir()), what="the clone's first file")
        clone.send_signal(signal.SIGTERM)
        _, err = clone.communicate(timeout=60)
    finally:
        clone.kill()
        stalled.close()
    held.close()
    assert clone.returncode == 143, err
    assert err.strip() == "turso-sync clone: terminated (SIGTERM)"
    assert list(tmp_path.iterdir()) == []


def test_status_of_a_partial_replica_shows_pages_local_of_total(tmp_path, server):
    url = fresh_url(server)
    seed(tmp_path, url, 3000)
    cloned = cli("clone", url, "part.db", "--partial", "--prefix-bytes", "65536", "-q", cwd=tmp_path, env=key_env())
    assert cloned.code == 0, cloned.err
    before = cli("status", "part.db", cwd=tmp_path, env=key_env())
    assert before.code == 0, before.err
    (line,) = [x for x in before.out.splitlines() if x.startswith("pages local / total")]
    local, total = (int(n) for n in line.split()[4:7:2])
    assert 0 < local < total and "(partial;" in line
    assert cli("exec", "part.db", "SELECT v FROM t WHERE id = 2999", cwd=tmp_path, env=key_env()).code == 0
    after = cli("status", "part.db", cwd=tmp_path, env=key_env())
    (line,) = [x for x in after.out.splitlines() if x.startswith("pages local / total")]
    assert int(line.split()[4]) > local  # the row's pages were fetched on read
    full = cli("clone", url, "full.db", "-q", cwd=tmp_path, env=key_env())
    assert full.code == 0
    assert "pages local" not in cli("status", "full.db", cwd=tmp_path, env=key_env()).out


def test_verify_a_page_changed_on_disk_that_the_frame_log_never_held_is_status_7(tmp_path, server):
    """Bootstrapped pages are not in the frame log: SQLite's read meets the failed authentication."""
    url = fresh_url(server)
    seed(tmp_path, url, 600)
    assert cli("clone", url, "r.db", "-q", cwd=tmp_path, env=key_env()).code == 0
    assert cli("verify", "r.db", "--offline", cwd=tmp_path, env=key_env()).code == 0
    data = bytearray((tmp_path / "r.db").read_bytes())
    data[9 * 4096 + 100] ^= 0xFF  # page 10, inside the table
    (tmp_path / "r.db").write_bytes(bytes(data))
    damaged = cli("verify", "r.db", cwd=tmp_path, env=key_env())
    assert damaged.code == 7, damaged.both
    lines = damaged.out.splitlines()
    assert lines[0].startswith("files:     ok")
    assert lines[1].startswith("integrity: FAILED (") and "page 10" in lines[1] and "changed on disk" in lines[1]
    assert lines[2].startswith("remedy:    run `turso-sync verify --repair r.db`")
    assert damaged.err == ""
    os.remove(tmp_path / "r.db-frames")  # and once the file check finds something, it says that first
    assert cli("verify", "r.db", "--offline", cwd=tmp_path, env=key_env()).code == 7


def test_sigterm_ends_a_shell_waiting_for_input(tmp_path, server):
    """The shell swallows Ctrl-C at its prompt to go on; SIGTERM must still end it."""
    assert cli("clone", fresh_url(server), "r.db", "-q", cwd=tmp_path).code == 0
    shell = subprocess.Popen(
        [*TURSO_SYNC, "shell", "r.db"],
        cwd=tmp_path,
        env=clean_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert shell.stdin is not None and shell.stdout is not None
        shell.stdin.write("SELECT 41 + 1 AS answer;\n")
        shell.stdin.flush()
        assert [shell.stdout.readline() for _ in range(3)][2].strip() == "42"  # it now waits on stdin
        shell.send_signal(signal.SIGTERM)
        _, err = shell.communicate(timeout=60)
    finally:
        shell.kill()
    assert shell.returncode == 143, err
    assert err.strip() == "turso-sync shell: terminated (SIGTERM)"
