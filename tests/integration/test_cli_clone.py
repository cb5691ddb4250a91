"""`turso-sync clone URL PATH` end to end against a real primary."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import turso_sync
from tests.conftest import KEY256
from tests.integration.cli_harness import cli, fresh_url, key_env, running_primary
from tests.servers import free_port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    with running_primary(tmp_path_factory.mktemp("primary")) as s:
        yield s


def seeded(tmp_path: Path, url: str, rows: int, key: str | None = None) -> None:
    """Put ``rows`` rows on the primary through a library replica."""
    conn = turso_sync.connect(tmp_path / "seed.db", url, encryption_key=key)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"row {i} " + "x" * 200) for i in range(rows)])
    conn.commit()
    conn.push()
    conn.close()


def test_clone_encrypted_then_read(tmp_path, server):
    url = fresh_url(server)
    seeded(tmp_path, url, 2000, KEY256)
    result = cli("clone", url, "copy.db", cwd=tmp_path, env=key_env())
    assert result.code == 0, result.err
    assert "cloned" in result.err and "encrypted" in result.err and result.out == ""
    with open(tmp_path / "copy.db", "rb") as f:
        assert b"row 1" not in f.read()  # encrypted at rest
    count = cli("exec", "copy.db", "SELECT count(*) AS n FROM t", "--json", cwd=tmp_path, env=key_env())
    assert count.out.strip() == '[{"n": 2000}]'
    status = cli("status", "copy.db", "--json", cwd=tmp_path, env=key_env())
    assert '"encrypted": true' in status.out and url in status.out


def test_clone_plaintext_and_quiet(tmp_path, server):
    url = fresh_url(server)
    result = cli("clone", url, "p.db", "--quiet", cwd=tmp_path)
    assert (result.code, result.out, result.err) == (0, "", "")
    assert os.path.exists(tmp_path / "p.db-sync")


def test_clone_refuses_an_existing_path(tmp_path, server):
    (tmp_path / "taken.db").write_text("mine")
    result = cli("clone", fresh_url(server), "taken.db", cwd=tmp_path)
    assert result.code == 2 and "already exists" in result.err
    assert (tmp_path / "taken.db").read_text() == "mine"


def test_failed_clone_leaves_nothing_behind(tmp_path):
    result = cli("clone", f"http://127.0.0.1:{free_port()}/db/x", "gone.db", cwd=tmp_path, env=key_env())
    assert result.code == 3, result.err
    assert "cannot reach" in result.err and "Traceback" not in result.err
    assert result.err.count("\n") == 1  # one line
    assert sorted(os.listdir(tmp_path)) == []


def test_clone_with_a_bad_key_is_refused_before_the_network(tmp_path, server):
    result = cli("clone", fresh_url(server), "k.db", "--encryption-key", "abc123", cwd=tmp_path)
    assert result.code == 5 and "abc123" not in result.both
    assert not os.path.exists(tmp_path / "k.db")
