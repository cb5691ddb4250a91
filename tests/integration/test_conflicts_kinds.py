"""The conflict kinds beyond rows meeting rows: foreign keys, schema changes, triggers, no primary key.

Each under every built-in policy: what both replicas hold once synced, and what the journal of
the replica that synced last records.  Nothing a replica committed disappears without a journal
entry.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import turso_sync
from tests.servers import primary

pytestmark = pytest.mark.peers

POLICIES = ["last_push_wins", "remote_wins", "local_wins"]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with primary(tmp_path_factory.mktemp("kinds") / "srv") as u:
        yield u


def pair(tmp_path: Path, url: str, name: str, policy: Any, setup: str) -> tuple[turso_sync.Connection, ...]:
    remote = f"{url}/db/{name}"
    a = turso_sync.connect(tmp_path / "a.db", remote, conflict=policy)
    a.executescript(setup)
    a.push()
    b = turso_sync.connect(tmp_path / "b.db", remote, conflict=policy)
    b.pull()
    return a, b


@pytest.mark.parametrize("policy", POLICIES)
def test_foreign_key_left_dangling_by_a_merge_is_kept_and_journaled(url: str, tmp_path: Path, policy: str):
    a, b = pair(
        tmp_path,
        url,
        f"fk-{policy}",
        policy,
        "CREATE TABLE p (id INTEGER PRIMARY KEY);"
        "CREATE TABLE c (id INTEGER PRIMARY KEY, p INTEGER REFERENCES p(id));"
        "INSERT INTO p VALUES (1);",
    )
    a.execute("DELETE FROM p WHERE id = 1")
    a.commit()
    b.execute("INSERT INTO c VALUES (7, 1)")
    b.commit()
    a.sync()
    b.pull()  # the rebase sees the merge leave c(7) without its parent
    b.sync()
    a.pull()
    for conn in (a, b):
        assert conn.execute("SELECT id, p FROM c").fetchall() == [(7, 1)]
        assert conn.execute("SELECT count(*) FROM p").fetchone() == (0,)
    (conflict,) = b.conflicts()
    assert (conflict.kind, conflict.resolution, conflict.table, conflict.pk) == ("foreign_key", "local", "c", {"id": 7})
    a.close()
    b.close()


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("path", ["sync", "push"])
def test_a_child_pushed_after_its_parent_was_deleted_is_journaled(url: str, tmp_path: Path, policy: str, path: str):
    """B pushes first (no pull before): the foreign-key guard fails, B pulls, and the rebase journals it."""
    a, b = pair(
        tmp_path,
        url,
        f"fk-push-{path}-{policy}",
        policy,
        "CREATE TABLE p (id INTEGER PRIMARY KEY);"
        "CREATE TABLE c (id INTEGER PRIMARY KEY, p INTEGER REFERENCES p(id));"
        "INSERT INTO p VALUES (1), (2);",
    )
    a.execute("DELETE FROM p WHERE id = 1")
    a.commit()
    a.sync()
    b.execute("INSERT INTO c VALUES (7, 1)")
    b.execute("INSERT INTO c VALUES (8, 2)")  # its parent is still there: no conflict
    b.commit()
    getattr(b, path)()
    b.sync()
    a.pull()
    for conn in (a, b):
        assert conn.execute("SELECT id, p FROM c ORDER BY id").fetchall() == [(7, 1), (8, 2)]
        assert conn.execute("SELECT id FROM p").fetchall() == [(2,)]
    assert [(c.kind, c.resolution, c.table, c.pk) for c in b.conflicts()] == [("foreign_key", "local", "c", {"id": 7})]
    a.close()
    b.close()


@pytest.mark.parametrize("policy", POLICIES)
def test_schema_change_meeting_data_changes(url: str, tmp_path: Path, policy: str):
    a, b = pair(
        tmp_path,
        url,
        f"schema-{policy}",
        policy,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);"
        "CREATE TABLE gone (id INTEGER PRIMARY KEY, v TEXT);"
        "INSERT INTO t VALUES (1, 'base'); INSERT INTO gone VALUES (1, 'x');",
    )
    a.executescript("ALTER TABLE t ADD COLUMN w TEXT DEFAULT 'dw'; UPDATE t SET w = 'A' WHERE id = 1; DROP TABLE gone;")
    b.executescript(
        "UPDATE t SET v = 'B' WHERE id = 1; INSERT INTO gone VALUES (2, 'B'); UPDATE gone SET v = 'B1' WHERE id = 1;"
    )
    a.sync()
    b.sync()  # its push meets a table that is gone: pull, the rebase journals what cannot apply
    a.pull()
    for conn in (a, b):
        # a new column and an edit of another column merge
        assert conn.execute("SELECT id, v, w FROM t").fetchall() == [(1, "B", "A")]
        assert conn.execute("SELECT name FROM sqlite_schema WHERE name = 'gone'").fetchall() == []
        assert conn.stats().pending_changes == 0
    journal = sorted((c.kind, c.resolution, c.table, c.local and c.local.get("column 1")) for c in b.conflicts())
    assert journal == [("schema", "remote", "gone", "B"), ("schema", "remote", "gone", "B1")]
    a.close()
    b.close()


def test_trigger_made_changes_and_tables_without_primary_key_converge(url: str, tmp_path: Path):
    a, b = pair(
        tmp_path,
        url,
        "triggers",
        "last_push_wins",
        "CREATE TABLE k (x TEXT, n INTEGER);"
        "CREATE TABLE log (id INTEGER PRIMARY KEY, msg TEXT);"
        "CREATE TRIGGER tk AFTER INSERT ON k BEGIN INSERT INTO log(msg) VALUES ('k:' || new.x); END;"
        "INSERT INTO k VALUES ('base', 0);",
    )
    a.executescript("INSERT INTO k VALUES ('a', 1); UPDATE k SET n = 5 WHERE x = 'base';")
    b.executescript("INSERT INTO k VALUES ('b', 2); INSERT INTO k VALUES ('b2', 3); DELETE FROM k WHERE x = 'base';")
    a.sync()
    b.sync()
    a.sync()
    for conn in (a, b):
        assert sorted(conn.execute("SELECT x, n FROM k")) == [("a", 1), ("b", 2), ("b2", 3)]
        # each insert's trigger ran once, wherever the insert was made: none lost, none doubled
        assert sorted(r[0] for r in conn.execute("SELECT msg FROM log")) == ["k:a", "k:b", "k:b2", "k:base"]
        assert conn.stats().pending_changes == 0
    assert [(c.kind, c.resolution) for c in b.conflicts()] == [("delete/update", "local")]
    assert a.conflicts() == []
    a.close()
    b.close()


def add_increments(table: str, pk: dict[str, Any], base: Any, local: Any, remote: Any, kind: str) -> Any:
    """A resolver for counters: both sides' increments count."""
    if kind == "update/update" and base and local and remote:
        return {**remote, "v": remote["v"] + local["v"] - base["v"]}
    return "remote"


@pytest.mark.parametrize("policy", [*POLICIES, "add"])
def test_equal_updates_from_one_base_are_journaled(url: str, tmp_path: Path, policy: str):
    resolver: Any = add_increments if policy == "add" else policy
    a, b = pair(
        tmp_path,
        url,
        f"counter-{policy}",
        resolver,
        "CREATE TABLE counters (name TEXT PRIMARY KEY, v INTEGER); INSERT INTO counters VALUES ('c', 5);",
    )
    for conn in (a, b):  # the same increment from the same base: the same new value, 6
        conn.execute("UPDATE counters SET v = v + 1 WHERE name = 'c'")
        conn.commit()
    a.sync()
    b.sync()
    a.pull()
    want = 7 if policy == "add" else 6
    for conn in (a, b):
        assert conn.execute("SELECT v FROM counters").fetchone() == (want,)
    (conflict,) = b.conflicts()  # never silent: one of the two increments is not in the value
    assert (conflict.kind, conflict.base["v"], conflict.local["v"], conflict.remote["v"]) == ("update/update", 5, 6, 6)
    a.close()
    b.close()


def test_journal_base_is_what_the_change_started_from_after_a_push_without_pull(url: str, tmp_path: Path):
    a, b = pair(
        tmp_path,
        url,
        "stale-base",
        add_increments,
        "CREATE TABLE counters (name TEXT PRIMARY KEY, v INTEGER); INSERT INTO counters VALUES ('c', 0);",
    )
    b.execute("UPDATE counters SET v = v + 1")
    b.commit()
    b.push()  # no pull after: b's synced base still says 0, the remote says 1
    a.pull()
    for conn in (a, b):  # both increment from 1
        conn.execute("UPDATE counters SET v = v + 1")
        conn.commit()
    a.sync()
    b.sync()
    a.pull()
    for conn in (a, b):
        assert conn.execute("SELECT v FROM counters").fetchone() == (3,)  # three increments, none lost
    (conflict,) = b.conflicts()
    assert (conflict.base["v"], conflict.local["v"], conflict.remote["v"]) == (1, 2, 2)
    a.close()
    b.close()
