"""`turso-sync push PATH` end to end: exactly once, nothing pending, a refused change (exit 6)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import turso_sync
from tests.integration.cli_harness import cli, fresh_url, running_primary


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    with running_primary(tmp_path_factory.mktemp("primary")) as s:
        yield s


def test_push_sends_pending_changes_once(tmp_path, server):
    url = fresh_url(server)
    assert cli("clone", url, "a.db", "-q", cwd=tmp_path).code == 0
    cli("exec", "a.db", "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", cwd=tmp_path)
    cli("exec", "a.db", "INSERT INTO t VALUES (1, 'one'), (2, 'two')", cwd=tmp_path)
    result = cli("push", "a.db", cwd=tmp_path)
    assert result.code == 0, result.err
    assert result.out.strip() == "pushed 2 transaction(s)"
    assert cli("push", "a.db", cwd=tmp_path).out.strip() == "nothing to push"
    reader = turso_sync.connect(tmp_path / "b.db", url)
    assert reader.execute("SELECT * FROM t ORDER BY id").fetchall() == [(1, "one"), (2, "two")]
    reader.close()


def test_a_change_the_primary_refuses_is_settled_by_push(tmp_path, server):
    url = fresh_url(server)
    for name in ("a.db", "b.db"):
        assert cli("clone", url, name, "-q", cwd=tmp_path).code == 0
    cli("exec", "a.db", "CREATE TABLE u (id INTEGER PRIMARY KEY, email TEXT UNIQUE)", cwd=tmp_path)
    assert cli("push", "a.db", cwd=tmp_path).code == 0
    assert cli("pull", "b.db", cwd=tmp_path).code == 0
    cli("exec", "a.db", "INSERT INTO u VALUES (1, 'x@example.com')", cwd=tmp_path)
    assert cli("push", "a.db", cwd=tmp_path).code == 0
    cli("exec", "b.db", "INSERT INTO u VALUES (2, 'x@example.com')", cwd=tmp_path)  # b has not seen a's row
    # push pulls, the policy settles the clash (journaled), and the push completes, as sync does
    settled = cli("push", "b.db", cwd=tmp_path)
    assert settled.code == 0, settled.err
    assert "new conflict(s)" in settled.out
    status = cli("status", "b.db", "--json", cwd=tmp_path)
    assert '"pending_changes": 0' in status.out
    journal = cli("conflicts", "b.db", cwd=tmp_path)
    assert "constraint on u" in journal.out
