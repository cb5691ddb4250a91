"""``rollback.reconcile``: a live database made equal in content to a target, the sync's tables left alone.

Pure SQLite (apsw, in memory): no server.  The live database starts as the target, then changes
the way clients would; after ``reconcile`` every user-visible query answers as on the target.
"""

from __future__ import annotations

from typing import Any

import apsw
import pytest

from turso_sync import errors
from turso_sync.primary.rollback import ImageVFS, RollbackRefused, image_from_pages, parse_request, reconcile

BASE = """
CREATE TABLE a (id INTEGER PRIMARY KEY, v);
CREATE TABLE b (k TEXT PRIMARY KEY, v) WITHOUT ROWID;
CREATE TABLE c (x, y);
CREATE TABLE g (x INTEGER, doubled INTEGER GENERATED ALWAYS AS (x * 2) STORED);
CREATE TABLE odd ("rowid" TEXT, v);
CREATE TABLE s (id INTEGER PRIMARY KEY AUTOINCREMENT, v);
CREATE TABLE parent (id INTEGER PRIMARY KEY);
CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES parent(id));
CREATE INDEX a_v ON a(v);
CREATE VIEW a_view AS SELECT id FROM a;
CREATE TABLE audit (what);
CREATE TRIGGER a_audit AFTER DELETE ON a BEGIN INSERT INTO audit VALUES ('deleted ' || old.id); END;
CREATE TABLE turso_sync_last_change_id (client_id TEXT PRIMARY KEY, pull_gen, change_id);
INSERT INTO a VALUES (1, 'x'), (2, 'y'), (3, 3);
INSERT INTO b VALUES ('p', 1), ('q', 2);
INSERT INTO c VALUES (1, 2), (1, 2), (3, 4);
INSERT INTO g (x) VALUES (1), (2);
INSERT INTO odd VALUES ('r1', 1), ('r2', 2);
INSERT INTO s (v) VALUES (1), (2);
INSERT INTO parent VALUES (1), (2);
INSERT INTO child VALUES (1, 1), (2, 2);
INSERT INTO turso_sync_last_change_id VALUES ('replica', 1, 3);
PRAGMA user_version = 3;
PRAGMA application_id = 7;
"""

LATER = """
INSERT INTO a VALUES (4, 'new');
UPDATE a SET v = 3.0 WHERE id = 3;
DELETE FROM a WHERE id = 1;
DELETE FROM audit;
INSERT INTO b VALUES ('r', 3);
ALTER TABLE c ADD COLUMN z;
INSERT INTO c VALUES (9, 9, 9);
UPDATE g SET x = 10 WHERE x = 2;
DELETE FROM odd WHERE v = 1;
INSERT INTO odd VALUES ('r3', 3);
CREATE TABLE extra (q);
INSERT INTO extra VALUES (1);
CREATE INDEX b_v ON b(v);
INSERT INTO s (v) VALUES (3), (4);
DELETE FROM child WHERE id = 2;
DELETE FROM parent WHERE id = 2;
DROP VIEW a_view;
CREATE VIEW a_view AS SELECT v FROM a;
CREATE TRIGGER extra_t AFTER INSERT ON extra BEGIN SELECT 1; END;
UPDATE turso_sync_last_change_id SET change_id = 9;
INSERT INTO turso_sync_last_change_id VALUES ('other', 1, 1);
PRAGMA user_version = 4;
PRAGMA application_id = 8;
"""

QUERIES = [
    "SELECT rowid, * FROM a ORDER BY rowid",
    "SELECT * FROM b ORDER BY k",
    "SELECT rowid, * FROM c ORDER BY rowid",
    "SELECT rowid, * FROM g ORDER BY rowid",
    "SELECT _rowid_, * FROM odd ORDER BY _rowid_",
    "SELECT * FROM s ORDER BY id",
    "SELECT * FROM parent ORDER BY id",
    "SELECT * FROM child ORDER BY id",
    "SELECT * FROM audit",
    "SELECT * FROM a_view ORDER BY 1",
    "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE name NOT LIKE 'turso_sync_%' ORDER BY type, name",
    "PRAGMA user_version",
    "PRAGMA application_id",
    "PRAGMA foreign_key_check",
    "PRAGMA integrity_check",
]


def _db(*scripts: str) -> apsw.Connection:
    conn = apsw.Connection(":memory:")
    conn.execute("PRAGMA foreign_keys = ON")
    for script in scripts:
        conn.execute(script)
    return conn


def _answers(conn: apsw.Connection) -> list[list[tuple[Any, ...]]]:
    return [[tuple(r) for r in conn.execute(q)] for q in QUERIES]


def _reconcile(live: apsw.Connection, target: apsw.Connection) -> dict[str, int]:
    live.execute("BEGIN IMMEDIATE")
    changes = reconcile(live, target)
    live.execute("COMMIT")
    return dict(changes)


def test_the_live_database_gets_the_targets_content_and_keeps_the_syncs_tables() -> None:
    target, live = _db(BASE), _db(BASE, LATER)
    marks = [tuple(r) for r in live.execute("SELECT * FROM turso_sync_last_change_id ORDER BY 1")]
    changes = _reconcile(live, target)
    assert _answers(live) == _answers(target)
    # the trigger on a did not fire on the rollback's own deletes; the sync's table is the head's
    assert [tuple(r) for r in live.execute("SELECT * FROM audit")] == []
    assert [tuple(r) for r in live.execute("SELECT * FROM turso_sync_last_change_id ORDER BY 1")] == marks
    # AUTOINCREMENT: the larger of the head's and the target's counter
    assert live.execute("SELECT seq FROM sqlite_sequence WHERE name = 's'").get == 4
    assert changes["tables_dropped"] == 2 and changes["tables_created"] == 1  # extra; c (altered) made again
    assert changes["user_version_set"] == 1 and changes["application_id_set"] == 1
    # equal now: a second pass finds nothing that differs
    assert _reconcile(live, target) == {"content": 0}


def test_an_empty_target_drops_every_user_object_and_nothing_else() -> None:
    live = _db(BASE)
    _reconcile(live, apsw.Connection(":memory:"))
    left = [r[0] for r in live.execute("SELECT name FROM sqlite_schema ORDER BY name")]
    assert left == ["sqlite_autoindex_turso_sync_last_change_id_1", "sqlite_sequence", "turso_sync_last_change_id"]


def test_a_virtual_table_is_refused_before_anything_changes() -> None:
    live = _db(BASE)
    target = _db(BASE, "CREATE VIRTUAL TABLE f USING fts5(x)")
    live.execute("BEGIN IMMEDIATE")
    with pytest.raises(RollbackRefused) as caught:
        reconcile(live, target)
    live.execute("ROLLBACK")
    assert caught.value.status == 409 and "virtual table" in str(caught.value)


def test_a_target_image_is_read_through_its_own_vfs() -> None:
    source = _db(BASE)
    data = source.serialize("main")
    page = source.execute("PRAGMA page_size").get
    assert isinstance(page, int)
    pages = {n + 1: data[n * page : (n + 1) * page] for n in range(len(data) // page)}
    vfs = ImageVFS(image_from_pages(pages, len(pages)))
    try:
        target = apsw.Connection(
            "file:t?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI, vfs=vfs.name
        )
        assert _answers(target) == _answers(source)
        target.close()
    finally:
        vfs.unregister()
    with pytest.raises(Exception, match="lacks pages"):
        image_from_pages({1: pages[1]}, 2)


@pytest.mark.parametrize(
    ("body", "want"),
    [(b'{"revision": 5}', 5), (b'{"revision": "12"}', 12), (b'{"at": "2026-12-02T00:00:00Z"}', 1796169600.0)],
)
def test_requests_that_parse(body: bytes, want: float) -> None:
    assert parse_request(body) == want


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"[]",
        b"{}",
        b'{"revision": -1}',
        b'{"revision": true}',
        b'{"revision": 1.5}',
        b'{"at": 5}',
        b'{"at": "soon"}',
        b'{"revision": 1, "at": "2026-12-02T00:00:00Z"}',
        b'{"rev": 1}',
        b"\xff",
    ],
)
def test_requests_that_do_not(body: bytes) -> None:
    with pytest.raises(errors.ProtocolError):
        parse_request(body)
