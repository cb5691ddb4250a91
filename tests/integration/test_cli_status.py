"""`turso-sync status PATH [--json]`: no network needed."""

from __future__ import annotations

import json
import re

from tests.integration.cli_harness import cli, fresh_url, key_env, running_primary


def test_status_text_and_json_work_offline(tmp_path):
    env = key_env()
    with running_primary(tmp_path / "p") as server:
        url = fresh_url(server)
        assert cli("clone", url, "r.db", "-q", cwd=tmp_path, env=env).code == 0
        cli("exec", "r.db", "CREATE TABLE t (id INTEGER PRIMARY KEY)", cwd=tmp_path, env=env)
        assert cli("push", "r.db", cwd=tmp_path, env=env).code == 0
        cli("exec", "r.db", "INSERT INTO t VALUES (1)", cwd=tmp_path, env=env)
    # the primary is gone: status still answers
    text = cli("status", "r.db", cwd=tmp_path, env=env)
    assert text.code == 0, text.err
    lines = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in text.out.splitlines())
    assert lines["remote"] == url and lines["encrypted"] == "yes"
    assert lines["pending changes"] == "1"
    assert lines["last push"].endswith("s ago)")
    data = json.loads(cli("status", "r.db", "--json", cwd=tmp_path, env=env).out)
    assert data["pending_changes"] == 1 and data["pushes"] == 1 and data["remote_url"] == url
    assert data["network_sent_bytes"] > 0 and data["revision"] == "0"  # a push alone does not move it
    assert set(data) >= {"last_pull_unix_time", "last_push_unix_time", "conflicts", "network_received_bytes"}


def test_status_of_something_that_is_not_a_replica(tmp_path):
    (tmp_path / "plain.db").write_bytes(b"")
    result = cli("status", "plain.db", cwd=tmp_path)
    assert result.code == 2 and "is not a replica" in result.err
    missing = cli("status", "missing.db", cwd=tmp_path)
    assert missing.code == 2 and "turso-sync clone URL missing.db" in missing.err
    assert not (tmp_path / "missing.db").exists()
