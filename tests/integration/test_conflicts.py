"""Conflicts between two offline replicas: every kind, every policy, and the journal."""

from __future__ import annotations

from pathlib import Path

import pytest

import turso_sync
from tests.servers import primary

pytestmark = pytest.mark.peers


def merge_update(table, pk, base, local, remote, kind):
    """A custom resolver: merge text on update/update, keep the remote side otherwise."""
    if kind == "update/update":
        return {**remote, "v": f"{remote['v']}+{local['v']}"}
    return "remote"


# expected rows of t on both replicas once everything synced, per policy
EXPECTED = {
    "last_push_wins": {1: "B", 3: None, 100: "B"},  # id 2: deleted by A; B's update dropped
    "remote_wins": {1: "A", 3: "A-update", 100: "A"},
    "local_wins": {1: "B", 2: "B-update", 3: None, 100: "B"},
    "merge": {1: "A+B", 3: "A-update", 100: "A"},
}
KINDS = {"update/update", "update/delete", "delete/update", "insert/insert", "constraint"}


@pytest.mark.parametrize("policy", ["last_push_wins", "remote_wins", "local_wins", "merge"])
def test_conflict_kinds_policies_and_journal(tmp_path: Path, policy: str):
    resolver = merge_update if policy == "merge" else policy
    with primary(tmp_path / "server") as url:
        a = turso_sync.connect(tmp_path / "a.db", url)
        b = turso_sync.connect(tmp_path / "b.db", url, conflict=resolver)
        a.executescript(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, n INTEGER);"
            "CREATE TABLE u (id INTEGER PRIMARY KEY, name TEXT UNIQUE);"
            "INSERT INTO t VALUES (1, 'base', 1), (2, 'base', 2), (3, 'base', 3), (4, 'keep', 4);"
        )
        a.push()
        b.pull()
        # offline edits on both sides
        a.executescript(
            "UPDATE t SET v = 'A' WHERE id = 1;"
            "DELETE FROM t WHERE id = 2;"
            "UPDATE t SET v = 'A-update' WHERE id = 3;"
            "INSERT INTO t VALUES (100, 'A', 0);"
            "INSERT INTO u VALUES (1, 'same-name');"
        )
        b.executescript(
            "UPDATE t SET v = 'B' WHERE id = 1;"
            "UPDATE t SET v = 'B-update' WHERE id = 2;"
            "DELETE FROM t WHERE id = 3;"
            "INSERT INTO t VALUES (100, 'B', 0);"
            "INSERT INTO u VALUES (2, 'same-name');"
        )
        a.sync()
        b.sync()  # push (last push wins on the server), then pull: B's pending changes replay
        a.pull()
        expected = EXPECTED[policy]
        for conn in (a, b):
            got = dict(conn.execute("SELECT id, v FROM t WHERE id IN (1, 2, 3, 100)"))
            want = {k: v for k, v in expected.items() if v is not None}
            assert got == want, (policy, conn.path, got)
            assert conn.execute("SELECT v FROM t WHERE id = 4").fetchall() == [("keep",)]
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert (
            a.execute("SELECT * FROM t ORDER BY id").fetchall() == b.execute("SELECT * FROM t ORDER BY id").fetchall()
        )
        assert (
            a.execute("SELECT * FROM u ORDER BY id").fetchall() == b.execute("SELECT * FROM u ORDER BY id").fetchall()
        )
        a.close()
        b.close()


def test_journal_lists_every_conflict_with_both_versions(tmp_path: Path):
    with primary(tmp_path / "server") as url:
        a = turso_sync.connect(tmp_path / "a.db", url)
        b = turso_sync.connect(tmp_path / "b.db", url, conflict="remote_wins")
        a.executescript(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, n INTEGER);"
            "CREATE TABLE u (id INTEGER PRIMARY KEY, name TEXT UNIQUE);"
            "INSERT INTO t VALUES (1, 'base', 1), (2, 'base', 2), (3, 'base', 3);"
        )
        a.push()
        b.pull()
        a.executescript(
            "UPDATE t SET v = 'A' WHERE id = 1; DELETE FROM t WHERE id = 2; UPDATE t SET v = 'A3' WHERE id = 3;"
            "INSERT INTO t VALUES (100, 'A', 0); INSERT INTO u VALUES (1, 'dup');"
        )
        b.executescript(
            "UPDATE t SET v = 'B' WHERE id = 1; UPDATE t SET v = 'B2' WHERE id = 2; DELETE FROM t WHERE id = 3;"
            "INSERT INTO t VALUES (100, 'B', 0); INSERT INTO u VALUES (2, 'dup');"
        )
        a.push()
        assert b.pull() is True
        journal = b.conflicts()
        assert {c.kind for c in journal} == KINDS
        by_kind = {c.kind: c for c in journal}
        uu = by_kind["update/update"]
        assert uu.table == "t" and uu.pk == {"id": 1}
        assert uu.base == {"id": 1, "v": "base", "n": 1}
        assert uu.local == {"id": 1, "v": "B", "n": 1}
        assert uu.remote == {"id": 1, "v": "A", "n": 1}
        assert uu.resolution == "remote"
        assert by_kind["update/delete"].remote is None and by_kind["update/delete"].local["v"] == "B2"
        assert by_kind["delete/update"].local is None and by_kind["delete/update"].remote["v"] == "A3"
        assert by_kind["insert/insert"].local["v"] == "B" and by_kind["insert/insert"].remote["v"] == "A"
        assert by_kind["constraint"].local == {"id": 2, "name": "dup"}
        # the journal is durable: it survives a reopen and later pulls
        b.close()
        b = turso_sync.connect(tmp_path / "b.db", conflict="remote_wins")
        a.execute("INSERT INTO t VALUES (200, 'later', 0)")
        a.commit()
        a.push()
        b.pull()
        assert [c.kind for c in b.conflicts()] == [c.kind for c in journal]
        assert b.stats().conflicts == len(journal)
        a.close()
        b.close()
