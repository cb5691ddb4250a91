"""Bootstrap (``sync/bootstrap.py``) driven by hand: pages in, a replica's files out; no server."""

from __future__ import annotations

import os

import pytest

import turso_sync
from tests.conftest import KEY256
from tests.unit.fake_remote import FakeRemote, sqlite_pages
from turso_sync import errors
from turso_sync.local.presence import PresenceMap
from turso_sync.sync.bootstrap import KeyOptions, bootstrap
from turso_sync.sync.partial import PartialSync
from turso_sync.sync.state import SyncState
from turso_sync.testing import pull_answer
from turso_sync.wire.pull import PullRequest

URL = "https://remote.invalid"


def state() -> SyncState:
    return SyncState(remote_url=URL, client_id="test-client")


def run(steps, answer):
    """Answer the one request of a bootstrap with ``answer``; the step's result."""
    request = next(steps)
    assert request.path == "/pull-updates" and request.idempotent
    with pytest.raises(StopIteration) as done:
        steps.send(answer)
    return request, done.value.value


def test_a_bootstrap_writes_every_page_and_records_the_revision(tmp_path):
    pages = sqlite_pages(tmp_path / "remote.db", "CREATE TABLE t (x); INSERT INTO t VALUES (42);")
    path = str(tmp_path / "a.db")
    s = state()
    request, received = run(bootstrap(path, s, KeyOptions(), 5.0), pull_answer("rev-9", pages))
    assert PullRequest.from_bytes(request.body).client_revision == ""  # everything
    assert received == len(pages)
    assert (s.synced_revision, s.synced_seq, s.synced_db_size, s.bootstrapping) == ("rev-9", 0, len(pages), False)
    s.save(path)
    conn = turso_sync.connect(path)
    try:
        assert conn.execute("SELECT x FROM t").fetchall() == [(42,)]
    finally:
        conn.close()


def test_a_bootstrap_from_an_empty_remote_creates_an_empty_replica(tmp_path):
    path = str(tmp_path / "a.db")
    s = state()
    _request, received = run(bootstrap(path, s, KeyOptions(), 5.0), pull_answer("rev-1"))
    assert received == 0 and s.synced_revision == "rev-1" and not s.bootstrapping
    assert os.path.exists(path)


def test_a_remote_with_other_pages_is_refused_before_anything_takes_the_name(tmp_path):
    pages = sqlite_pages(tmp_path / "remote.db", "CREATE TABLE t (x);")
    # 0 reserved bytes picks the envelope layout and 28 Turso's format; anything else is refused
    pages[1] = pages[1][:20] + bytes([8]) + pages[1][21:]
    path = str(tmp_path / "a.db")
    s = state()
    steps = bootstrap(path, s, KeyOptions(KEY256), 5.0)
    next(steps)
    with pytest.raises(errors.EncryptionError, match="reserves 8 bytes per page"):
        steps.send(pull_answer("rev-1", pages))
    assert not os.path.exists(path)
    assert SyncState.load(path) is not None and SyncState.load(path).bootstrapping  # opening starts over


def test_a_bootstrap_missing_pages_writes_nothing(tmp_path):
    pages = sqlite_pages(tmp_path / "remote.db", "CREATE TABLE t (x); CREATE TABLE u (y);")
    assert len(pages) >= 3
    del pages[2]
    path = str(tmp_path / "a.db")
    steps = bootstrap(path, state(), KeyOptions(), 5.0)
    next(steps)
    with pytest.raises(errors.SyncError, match="missing 1 pages"):
        steps.send(pull_answer("rev-1", pages))
    assert not os.path.exists(path)


def test_a_partial_bootstrap_asks_for_the_prefix_and_saves_what_it_holds(tmp_path):
    pages = sqlite_pages(
        tmp_path / "remote.db",
        "CREATE TABLE t (x); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400) "
        "INSERT INTO t SELECT randomblob(500) FROM n;",
    )
    path = str(tmp_path / "a.db")
    s = state()
    options = PartialSync(prefix_bytes=2 * 4096)
    steps = bootstrap(path, s, KeyOptions(), 5.0, options)
    request = next(steps)
    asked = PullRequest.from_bytes(request.body).page_ids
    assert asked is not None and list(asked) == [0, 1]
    held = {p: pages[p] for p in (1, 2)}
    with pytest.raises(StopIteration):
        steps.send(pull_answer("rev-3", {**held, len(pages): pages[len(pages)]}))
    presence = PresenceMap.load(path)
    assert presence is not None and presence.boot_size == len(pages) and presence.present_count() == 3
    assert s.partial == options.to_json() and s.synced_db_size == len(pages)


def test_replica_open_runs_the_bootstrap_over_its_transport(tmp_path):
    remote = FakeRemote("rev-5", sqlite_pages(tmp_path / "remote.db", "CREATE TABLE t (x); INSERT INTO t VALUES (1);"))
    conn = turso_sync.connect(tmp_path / "a.db", URL, transport=remote.transport())
    try:
        assert remote.paths == ["/pull-updates"]
        assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
        assert conn.stats().revision == "rev-5"
    finally:
        conn.close()
