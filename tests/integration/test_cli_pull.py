"""`turso-sync pull PATH` end to end against a real primary."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

import turso_sync
from tests.conftest import KEY256
from tests.integration.cli_harness import TURSO_SYNC, cli, fresh_url, key_env, running_primary


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    with running_primary(tmp_path_factory.mktemp("primary")) as s:
        yield s


def test_pull_brings_remote_commits_and_keeps_local_ones(tmp_path, server):
    url = fresh_url(server)
    assert cli("clone", url, "r.db", "-q", cwd=tmp_path, env=key_env()).code == 0
    writer = turso_sync.connect(tmp_path / "w.db", url, encryption_key=KEY256)
    writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    writer.execute("INSERT INTO t VALUES (1, 'remote')")
    writer.commit()
    writer.push()
    assert (
        cli(
            "exec",
            "r.db",
            "CREATE TABLE mine (k TEXT PRIMARY KEY); INSERT INTO mine VALUES ('local')",
            cwd=tmp_path,
            env=key_env(),
        ).code
        == 0
    )
    result = cli("pull", "r.db", cwd=tmp_path, env=key_env())
    assert result.code == 0, result.err
    assert "pulled" in result.out and "now at revision" in result.out
    assert "local change(s) still to push" in result.out
    rows = cli("exec", "r.db", "SELECT v FROM t; SELECT k FROM mine", "--json", cwd=tmp_path, env=key_env())
    assert rows.out.splitlines() == ['[{"v": "remote"}]', '[{"k": "local"}]']
    again = cli("pull", "r.db", cwd=tmp_path, env=key_env())
    assert again.code == 0 and "already up to date" in again.out
    writer.close()


def test_pull_long_poll_returns_when_the_primary_commits(tmp_path, server):
    url = fresh_url(server)
    assert cli("clone", url, "r.db", "-q", cwd=tmp_path).code == 0
    proc = subprocess.Popen(
        [*TURSO_SYNC, "pull", "r.db", "--long-poll-ms", "60000"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        writer = turso_sync.connect(tmp_path / "w.db", url)
        writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        writer.commit()
        writer.push()
        writer.close()
        out, err = proc.communicate(timeout=30)  # far sooner than the 60 s window
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert "pulled" in out


def test_pull_with_the_primary_gone_exits_3_and_keeps_the_replica(tmp_path):
    with running_primary(tmp_path / "own") as own:
        url = fresh_url(own)
        assert cli("clone", url, "r.db", "-q", cwd=tmp_path).code == 0
        assert (
            cli("exec", "r.db", "CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (7)", cwd=tmp_path).code
            == 0
        )
    result = cli("pull", "r.db", cwd=tmp_path)
    assert result.code == 3, result.err
    assert "cannot reach" in result.err and "local reads and writes keep working" in result.err
    assert cli("exec", "r.db", "SELECT id FROM t", "--json", cwd=tmp_path).out.strip() == '[{"id": 7}]'
