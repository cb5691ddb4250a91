"""`turso-sync sync PATH` end to end: two replicas written offline converge."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.integration.cli_harness import cli, fresh_url, key_env, running_primary


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    with running_primary(tmp_path_factory.mktemp("primary")) as s:
        yield s


def test_offline_writes_on_two_replicas_converge(tmp_path, server):
    url = fresh_url(server)
    env = key_env()
    for name in ("a.db", "b.db"):
        assert cli("clone", url, name, "-q", cwd=tmp_path, env=env).code == 0
    cli("exec", "a.db", "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, n INTEGER)", cwd=tmp_path, env=env)
    cli("exec", "a.db", "INSERT INTO t VALUES (1, 'base', 0), (2, 'base', 0)", cwd=tmp_path, env=env)
    first = cli("sync", "a.db", cwd=tmp_path, env=env)
    assert first.code == 0 and "pushed pending changes" in first.out, first.err
    assert cli("sync", "b.db", cwd=tmp_path, env=env).code == 0
    # both "offline": each edits row 1, and each adds its own row
    cli(
        "exec",
        "a.db",
        "UPDATE t SET v = 'from a' WHERE id = 1; INSERT INTO t VALUES (10, 'a only', 1)",
        cwd=tmp_path,
        env=env,
    )
    cli(
        "exec",
        "b.db",
        "UPDATE t SET v = 'from b' WHERE id = 1; INSERT INTO t VALUES (20, 'b only', 2)",
        cwd=tmp_path,
        env=env,
    )
    assert cli("sync", "a.db", cwd=tmp_path, env=env).code == 0
    b_pull = cli("pull", "b.db", cwd=tmp_path, env=env)  # b's pending edit meets a's: a conflict
    assert b_pull.code == 0 and "1 new conflict(s)" in b_pull.out, b_pull.out
    assert cli("sync", "b.db", cwd=tmp_path, env=env).code == 0
    assert cli("sync", "a.db", cwd=tmp_path, env=env).code == 0
    query = "SELECT * FROM t ORDER BY id"
    a_rows = cli("exec", "a.db", query, "--json", cwd=tmp_path, env=env).out
    b_rows = cli("exec", "b.db", query, "--json", cwd=tmp_path, env=env).out
    assert a_rows == b_rows
    rows = json.loads(a_rows)
    assert [r["id"] for r in rows] == [1, 2, 10, 20]
    assert rows[0]["v"] == "from b"  # last push wins
    conflicts = json.loads(cli("conflicts", "b.db", "--json", cwd=tmp_path, env=env).out)
    assert [(c["table"], c["pk"], c["kind"], c["resolution"]) for c in conflicts] == [
        ("t", {"id": 1}, "update/update", "local")
    ]
    for name in ("a.db", "b.db"):
        status = json.loads(cli("status", name, "--json", cwd=tmp_path, env=env).out)
        assert status["pending_changes"] == 0
