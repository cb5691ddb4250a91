"""`turso-sync clone --partial` / `--query`: the partial-sync options of the library, from the shell."""

from __future__ import annotations

import json

import pytest

import turso_sync
from tests.conftest import KEY256
from tests.integration.cli_harness import cli, fresh_url, key_env, running_primary

pytestmark = pytest.mark.peers


def test_clone_partial_prefix_then_query_lazily(tmp_path):
    with running_primary(tmp_path / "primary") as server:
        url = fresh_url(server)
        seed = turso_sync.connect(tmp_path / "seed.db", url, encryption_key=KEY256)
        seed.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        seed.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"row {i} " + "y" * 400) for i in range(6000)])
        seed.commit()
        seed.push()
        seed.close()
        result = cli("clone", url, "part.db", "--partial", "--prefix-bytes", "65536", cwd=tmp_path, env=key_env())
        assert result.code == 0, result.err
        assert "local (partial)" in result.err
        status = json.loads(cli("status", "part.db", "--json", cwd=tmp_path, env=key_env()).out)
        assert status  # the replica answers status
        # a row far past the prefix: fetched on first read, through the real command
        rows = cli("exec", "part.db", "SELECT v FROM t WHERE id = 5999", "--json", cwd=tmp_path, env=key_env())
        assert rows.code == 0, rows.err
        assert json.loads(rows.out) == [{"v": "row 5999 " + "y" * 400}]
        conn = turso_sync.connect(tmp_path / "part.db", encryption_key=KEY256)
        stats = conn.stats()
        assert stats.pages_total is not None and 0 < stats.pages_present < stats.pages_total
        conn.close()
        bad = cli("clone", url, "bad.db", "--partial", "--segment-size", "1000", cwd=tmp_path, env=key_env())
        assert bad.code == 2 and "--segment-size must be" in bad.err and not (tmp_path / "bad.db").exists()


def test_clone_by_query_bootstraps_what_it_reads(tmp_path):
    with running_primary(tmp_path / "primary") as server:
        url = fresh_url(server)
        seed = turso_sync.connect(tmp_path / "seed.db", url)
        seed.executescript(
            "CREATE TABLE small (k INTEGER PRIMARY KEY, v TEXT); INSERT INTO small VALUES (1, 'one'), (2, 'two');"
            "CREATE TABLE big (id INTEGER PRIMARY KEY, v TEXT);"
        )
        seed.executemany("INSERT INTO big VALUES (?, ?)", [(i, "z" * 500) for i in range(3000)])
        seed.commit()
        seed.push()
        seed.close()
        result = cli("clone", url, "q.db", "--query", "SELECT * FROM small", cwd=tmp_path)
        assert result.code == 0, result.err
        assert "local (partial)" in result.err
    # the primary is stopped now: the queried table was bootstrapped, so it reads offline
    rows = cli("exec", "q.db", "SELECT v FROM small ORDER BY k", "--json", cwd=tmp_path)
    assert rows.code == 0, rows.err
    assert json.loads(rows.out) == [{"v": "one"}, {"v": "two"}]
