"""The rebase's per-column merge, in memory (no server): a local change replayed on a remote state.

The remote state is a database image; the local change is a session changeset made on the synced
base.  Edits of different columns both survive under every policy; overlapping columns follow
the policy; equal updates from one base are journaled.
"""

from __future__ import annotations

from typing import Any

import apsw
import pytest

from turso_sync.local.capture import SCHEMA
from turso_sync.sync.overlay import OverlayImage, open_overlay
from turso_sync.sync.rebase import OutboxRow, Rebaser

P = 4096
BASE = "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, n INTEGER, w TEXT); INSERT INTO t VALUES (1, 'base', 0, 'w0');"


def image(sql: str) -> OverlayImage:
    """A database image after ``sql`` (4096-byte pages, as replicas use)."""
    db = apsw.Connection(":memory:")
    db.execute("PRAGMA page_size = 4096")
    db.execute(sql)
    for statement in SCHEMA:
        db.execute(statement)
    data = db.serialize("main")
    return OverlayImage(lambda pgno: data[(pgno - 1) * P : pgno * P], len(data) // P)


def local_change(sql: str) -> bytes:
    db = apsw.Connection(":memory:")
    db.execute(BASE)
    session = apsw.Session(db, "main")
    session.attach()
    db.execute(sql)
    return session.changeset()


def rebase(remote_sql: str, local_sql: str, policy: Any) -> tuple[dict[int, tuple[Any, ...]], list[Any]]:
    remote = image(BASE + remote_sql)
    rebaser = Rebaser(remote, client_id="c", policy=policy, revision="r", base_image=lambda: image(BASE))
    result = rebaser.run([OutboxRow(1, 0, [], local_change(local_sql))], {"pull_gen": 0}, [])
    db = open_overlay(result.image, 0)
    rows = {r[0]: tuple(r[1:]) for r in db.execute("SELECT id, v, n, w FROM t")}
    db.close()
    return rows, result.conflicts


def resolver(table: str, pk: Any, base: Any, local: Any, remote: Any, kind: str) -> Any:
    return {**remote, "v": f"{remote['v']}+{local['v']}"}


POLICIES = ["last_push_wins", "remote_wins", "local_wins", resolver]


@pytest.mark.parametrize("policy", POLICIES)
def test_different_columns_both_survive_without_a_conflict(policy: Any):
    rows, conflicts = rebase("UPDATE t SET n = 9;", "UPDATE t SET v = 'L'", policy)
    assert rows[1] == ("L", 9, "w0")
    assert conflicts == []


@pytest.mark.parametrize(
    ("policy", "want_v", "resolution"),
    [
        ("last_push_wins", "L", "local"),
        ("remote_wins", "R", "remote"),
        ("local_wins", "L", "local"),
        (resolver, "R+L", "merged"),
    ],
)
def test_overlap_follows_the_policy_and_the_rest_is_kept(policy: Any, want_v: str, resolution: str):
    # local edits v and w; remote edits v and n: v overlaps, w is local's alone, n remote's alone
    rows, conflicts = rebase("UPDATE t SET v = 'R', n = 9;", "UPDATE t SET v = 'L', w = 'wL'", policy)
    assert rows[1] == (want_v, 9, "wL")
    (conflict,) = conflicts
    assert (conflict.kind, conflict.resolution) == ("update/update", resolution)
    assert conflict.remote is not None and conflict.remote["v"] == "R"  # the value met, kept in the journal
    assert conflict.result is not None and conflict.result["w"] == "wL" and conflict.result["n"] == 9


@pytest.mark.parametrize("policy", POLICIES)
def test_equal_updates_from_one_base_are_journaled(policy: Any):
    rows, conflicts = rebase("UPDATE t SET v = 'same';", "UPDATE t SET v = 'same'", policy)
    assert rows[1][0] in ("same", "same+same")
    (conflict,) = conflicts
    assert conflict.kind == "update/update" and conflict.base is not None and conflict.base["v"] == "base"
