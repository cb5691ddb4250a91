"""`turso-sync conflicts PATH [--json]`: the journal, as text and as JSON."""

from __future__ import annotations

import json

import turso_sync
from tests.integration.cli_harness import cli, fresh_url, running_primary


def test_conflicts_lists_every_journaled_conflict(tmp_path):
    with running_primary(tmp_path / "p") as server:
        url = fresh_url(server)
        assert cli("clone", url, "b.db", "-q", cwd=tmp_path).code == 0
        assert cli("conflicts", "b.db", cwd=tmp_path).out.strip() == "no conflicts in b.db"
        assert json.loads(cli("conflicts", "b.db", "--json", cwd=tmp_path).out) == []
        a = turso_sync.connect(tmp_path / "a.db", url)
        a.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, tag BLOB)")
        a.execute("INSERT INTO notes VALUES (1, 'base', x'01'), (2, 'base', NULL)")
        a.commit()
        a.push()
        assert cli("pull", "b.db", "-q", cwd=tmp_path).code == 0
        a.execute("UPDATE notes SET body = 'remote edit' WHERE id = 1")
        a.execute("DELETE FROM notes WHERE id = 2")
        a.commit()
        a.push()
        a.close()
        cli(
            "exec",
            "b.db",
            "UPDATE notes SET body = 'local edit' WHERE id = 1; UPDATE notes SET body = 'edited here' WHERE id = 2",
            cwd=tmp_path,
        )
        pulled = cli("pull", "b.db", "--conflict", "remote_wins", cwd=tmp_path)
        assert pulled.code == 0 and "2 new conflict(s)" in pulled.out
    text = cli("conflicts", "b.db", cwd=tmp_path).out
    assert "update/update on notes id=1 -> remote" in text
    assert "update/delete on notes id=2 -> remote" in text
    assert "local  id=1, body='local edit', tag=b'\\x01'" in text
    items = json.loads(cli("conflicts", "b.db", "--json", cwd=tmp_path).out)
    assert [(c["kind"], c["resolution"], c["pk"]) for c in items] == [
        ("update/update", "remote", {"id": 1}),
        ("update/delete", "remote", {"id": 2}),
    ]
    first = items[0]
    assert first["local"]["body"] == "local edit" and first["remote"]["body"] == "remote edit"
    assert first["result"]["body"] == "remote edit" and first["base"]["tag"] == {"$base64": "AQ=="}
    assert {"revision", "at", "id", "table"} <= set(first)
