"""`turso-sync exec PATH SQL [--json]`: local SQL, captured for push."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

import turso_sync
from tests.integration.cli_harness import cli, fresh_url, running_primary


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    with running_primary(tmp_path_factory.mktemp("primary")) as s:
        yield s


def test_exec_prints_rows_and_writes_are_pushed(tmp_path, server):
    url = fresh_url(server)
    assert cli("clone", url, "r.db", "-q", cwd=tmp_path).code == 0
    made = cli(
        "exec",
        "r.db",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, b BLOB, f REAL);"
        "INSERT INTO t VALUES (1, 'one', x'00ff', 1.5), (2, NULL, NULL, NULL)",
        cwd=tmp_path,
    )
    assert made.code == 0 and "2 row(s) changed" in made.err
    table = cli("exec", "r.db", "SELECT * FROM t ORDER BY id", cwd=tmp_path)
    assert table.out.splitlines() == [
        "id | v    | b       | f",
        "---+------+---------+-----",
        "1  | one  | x'00ff' | 1.5",
        "2  | NULL | NULL    | NULL",
    ]
    as_json = json.loads(cli("exec", "r.db", "SELECT * FROM t ORDER BY id", "--json", cwd=tmp_path).out)
    assert as_json == [
        {"id": 1, "v": "one", "b": {"$base64": "AP8="}, "f": 1.5},
        {"id": 2, "v": None, "b": None, "f": None},
    ]
    assert cli("push", "r.db", cwd=tmp_path).code == 0
    other = turso_sync.connect(tmp_path / "o.db", url)
    assert other.execute("SELECT id, v, b FROM t ORDER BY id").fetchall() == [(1, "one", b"\x00\xff"), (2, None, None)]
    other.close()


def test_several_statements_commit_all_or_nothing(tmp_path, server):
    assert cli("clone", fresh_url(server), "r.db", "-q", cwd=tmp_path).code == 0
    failed = cli(
        "exec",
        "r.db",
        "CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1); INSERT INTO nope VALUES (2)",
        cwd=tmp_path,
    )
    assert failed.code == 1 and failed.err.strip() == "turso-sync exec: no such table: nope"
    tables = cli("exec", "r.db", "SELECT count(*) AS n FROM sqlite_schema WHERE name = 't'", "--json", cwd=tmp_path)
    assert json.loads(tables.out) == [{"n": 0}]
    status = json.loads(cli("status", "r.db", "--json", cwd=tmp_path).out)
    assert status["pending_changes"] == 0


def test_exec_without_sql_is_a_usage_error(tmp_path, server):
    assert cli("clone", fresh_url(server), "r.db", "-q", cwd=tmp_path).code == 0
    assert cli("exec", "r.db", "  ;  ", cwd=tmp_path).code == 2
    assert cli("exec", "r.db", cwd=tmp_path).code == 2  # argparse: SQL missing
