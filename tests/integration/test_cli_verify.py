"""`turso-sync verify PATH`: integrity, and whether the replica has the primary's latest revision."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import turso_sync
from tests.integration.cli_harness import cli, fresh_url, running_primary


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    with running_primary(tmp_path_factory.mktemp("primary")) as s:
        yield s


def test_up_to_date_then_behind(tmp_path, server):
    url = fresh_url(server)
    assert cli("clone", url, "r.db", "-q", cwd=tmp_path).code == 0
    fresh = cli("verify", "r.db", cwd=tmp_path)
    assert fresh.code == 0, fresh.err
    lines = fresh.out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("files:     ok (") and lines[1].startswith("integrity: ok (")
    assert lines[2] == "revision:  up to date with the primary (revision 0)"
    writer = turso_sync.connect(tmp_path / "w.db", url)
    writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    writer.commit()
    writer.push()
    writer.close()
    cli("exec", "r.db", "CREATE TABLE mine (id INTEGER PRIMARY KEY)", cwd=tmp_path)
    behind = cli("verify", "r.db", cwd=tmp_path)
    assert behind.code == 0, behind.err
    assert "pending:   1 local change(s) not pushed yet" in behind.out
    assert "was behind the primary (had 0); pulled revision 1, now up to date" in behind.out
    assert "up to date with the primary (revision 1)" in cli("verify", "r.db", cwd=tmp_path).out


def test_offline(tmp_path):
    with running_primary(tmp_path / "p") as own:
        assert cli("clone", fresh_url(own), "r.db", "-q", cwd=tmp_path).code == 0
    local_only = cli("verify", "r.db", "--offline", cwd=tmp_path)
    assert local_only.code == 0 and "not compared with the primary: --offline" in local_only.out
    unreachable = cli("verify", "r.db", cwd=tmp_path)
    assert unreachable.code == 3
    assert "integrity: ok" in unreachable.out and "could not ask the primary" in unreachable.out
    assert "cannot reach" in unreachable.err


def test_damaged_replica_exits_7(tmp_path, server):
    assert cli("clone", fresh_url(server), "r.db", "-q", cwd=tmp_path).code == 0
    cli(
        "exec",
        "r.db",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE);"
        "INSERT INTO t VALUES (1, 'MARKER-aaaa'), (2, 'MARKER-bbbb')",
        cwd=tmp_path,
    )
    conn = turso_sync.connect(tmp_path / "r.db")
    (root,) = conn.execute("SELECT rootpage FROM sqlite_schema WHERE name = 'sqlite_autoindex_t_1'").fetchone()
    conn.checkpoint()
    conn.close()
    data = bytearray((tmp_path / "r.db").read_bytes())
    page = data[(root - 1) * 4096 : root * 4096]
    at = (root - 1) * 4096 + page.index(b"MARKER-aaaa")
    data[at : at + 11] = b"MARKER-zzzz"  # the index entry no longer matches its row
    (tmp_path / "r.db").write_bytes(bytes(data))
    damaged = cli("verify", "r.db", cwd=tmp_path)
    assert damaged.code == 7, damaged.both
    # the frame log recorded that page last: the file check names it before SQLite's integrity check
    assert damaged.out.startswith("files:     DAMAGED")
    assert f"page {root} of the database file is not the image its frame log recorded last" in damaged.out


def test_emptied_replica_exits_7_everywhere_and_repair_reclones(tmp_path, server):
    assert cli("clone", fresh_url(server), "r.db", "-q", cwd=tmp_path).code == 0
    cli("exec", "r.db", "CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1)", cwd=tmp_path)
    assert cli("push", "r.db", "-q", cwd=tmp_path).code == 0
    for suffix in ("", "-wal", "-shm"):
        if (tmp_path / f"r.db{suffix}").exists():
            os.truncate(tmp_path / f"r.db{suffix}", 0)  # `: > r.db` (and its WAL)
    damaged = cli("verify", "r.db", cwd=tmp_path)
    assert damaged.code == 7, damaged.both
    assert damaged.out.startswith("files:     DAMAGED (1 problem(s))")
    assert "r.db: the database file is empty" in damaged.out
    assert "turso-sync verify --repair r.db" in damaged.out
    pulled = cli("pull", "r.db", cwd=tmp_path)
    assert pulled.code == 7 and "verify --repair" in pulled.err, pulled.both
    repaired = cli("verify", "r.db", "--repair", cwd=tmp_path)
    assert repaired.code == 0, repaired.both
    assert "local changes not pushed before the damage are lost" in repaired.out
    assert "integrity: ok" in repaired.out
    assert cli("exec", "r.db", "SELECT count(*) FROM t", cwd=tmp_path).out.split()[-1] == "1"
    assert cli("verify", "r.db", cwd=tmp_path).code == 0


def test_lost_frame_log_repair_keeps_the_pending_change(tmp_path, server):
    url = fresh_url(server)
    assert cli("clone", url, "r.db", "-q", cwd=tmp_path).code == 0
    cli("exec", "r.db", "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", cwd=tmp_path)
    assert cli("push", "r.db", "-q", cwd=tmp_path).code == 0
    cli("exec", "r.db", "INSERT INTO t VALUES (7, 'pending')", cwd=tmp_path)
    os.remove(tmp_path / "r.db-frames")
    damaged = cli("verify", "r.db", "--offline", cwd=tmp_path)
    assert damaged.code == 7 and "r.db-frames: the frame log is missing" in damaged.out, damaged.both
    assert cli("verify", "r.db", "--repair", "--offline", cwd=tmp_path).code == 2  # repair needs the primary
    repaired = cli("verify", "r.db", "--repair", cwd=tmp_path)
    assert repaired.code == 0, repaired.both
    assert "kept 1 pending change(s)" in repaired.out and "pending:   1 local change(s)" in repaired.out
    assert cli("sync", "r.db", "-q", cwd=tmp_path).code == 0
    other = turso_sync.connect(tmp_path / "o.db", url)
    assert other.execute("SELECT v FROM t").fetchall() == [("pending",)]
    other.close()


def test_lost_sync_state_exits_7_and_repairs_with_the_url(tmp_path, server):
    url = fresh_url(server)
    assert cli("clone", url, "r.db", "-q", cwd=tmp_path).code == 0
    cli("exec", "r.db", "CREATE TABLE t (id INTEGER PRIMARY KEY)", cwd=tmp_path)
    os.remove(tmp_path / "r.db-sync")
    damaged = cli("verify", "r.db", cwd=tmp_path)
    assert damaged.code == 7, damaged.both
    assert "r.db-sync: the sync state is missing, but the database is a replica" in damaged.out
    assert "verify --repair r.db --remote URL" in damaged.out
    repaired = cli("verify", "r.db", "--repair", "--remote", url, cwd=tmp_path)
    assert repaired.code == 0, repaired.both
    assert "kept 1 pending change(s)" in repaired.out
    assert cli("push", "r.db", cwd=tmp_path).out.strip() == "pushed 1 transaction(s)"
