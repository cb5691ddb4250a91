"""Pull (``sync/pull.py``), the pusher (``sync/pusher.py``), the outbox and the journal, without a server.

The remote is ``FakeRemote``: real SQLite pages for ``/pull-updates`` and scripted Hrana answers.
"""

from __future__ import annotations

import json

import pytest

import turso_sync
from tests.unit.fake_remote import FakeRemote, batch_response, committed, sqlite_pages
from turso_sync import errors
from turso_sync.local.capture import OUTBOX_TABLE
from turso_sync.sync.exchange import drive
from turso_sync.sync.outbox import chunk, read_pending
from turso_sync.sync.push import GUARD_FAIL
from turso_sync.sync.pusher import PushOutcome, push_once
from turso_sync.sync.rebase import OutboxRow
from turso_sync.sync.results import PushResult
from turso_sync.sync.state import PUSH_MARK_KEY
from turso_sync.testing import HttpResponse

URL = "https://remote.invalid"
SCHEMA = "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'base');"


@pytest.fixture
def world(tmp_path):
    """A replica bootstrapped from a remote holding ``t``; the remote's file to change it further."""
    remote_file = tmp_path / "remote.db"
    remote = FakeRemote("r1", sqlite_pages(remote_file, SCHEMA))
    conn = turso_sync.connect(tmp_path / "a.db", URL, transport=remote.transport())
    yield conn, remote, remote_file
    conn.close()


def remote_commit(remote: FakeRemote, remote_file, revision: str, sql: str) -> None:
    remote.pages = sqlite_pages(remote_file.with_suffix(f".{revision}"), sql, start_from=remote_file)
    remote_file.with_suffix(f".{revision}").replace(remote_file)
    remote.revision = revision


def outbox_ids(conn) -> list[int]:
    return [row[0] for row in conn.replica.db.query(f"SELECT id FROM {OUTBOX_TABLE} ORDER BY id")]


def test_a_pull_installs_the_remote_pages_and_reports_what_it_did(world):
    conn, remote, remote_file = world
    remote_commit(remote, remote_file, "r2", "INSERT INTO t VALUES (2, 'remote');")
    result = conn.replica.pull()
    assert result and result.changed and result.revision == "r2"
    assert result.pages_received == len(remote.pages) and result.bytes_received > 0 and result.bytes_sent > 0
    assert result.new_conflicts == []
    assert conn.execute("SELECT id, v FROM t ORDER BY id").fetchall() == [(1, "base"), (2, "remote")]
    again = conn.replica.pull()
    assert not again and again.revision == "r2" and again.pages_received == 0
    assert conn.pull() is False  # the pyturso-shaped answer, with the result kept beside it
    assert conn.last_sync is not None and conn.last_sync.revision == "r2"


def test_a_pull_rebases_a_pending_change_and_journals_the_conflict(world):
    conn, remote, remote_file = world
    conn.execute("UPDATE t SET v = 'local' WHERE id = 1")
    conn.commit()
    remote_commit(remote, remote_file, "r2", "UPDATE t SET v = 'remote' WHERE id = 1;")
    result = conn.replica.pull()
    assert [(c.kind, c.resolution, c.table, c.pk) for c in result.new_conflicts] == [
        ("update/update", "local", "t", {"id": 1})
    ]
    assert conn.execute("SELECT v FROM t").fetchall() == [("local",)]  # last_push_wins: the local edit
    journal = conn.conflicts()
    assert [(c.kind, c.remote, c.local) for c in journal] == [
        ("update/update", {"id": 1, "v": "remote"}, {"id": 1, "v": "local"})
    ]
    assert conn.stats().pending_changes == result.pending_changes == 1  # still to push, rebased on r2


def test_a_push_in_doubt_is_fenced_off_before_the_pull_fetches_again(world):
    conn, remote, remote_file = world
    state = conn.replica.state
    state.push_in_doubt = True
    state.save(conn.replica.path)
    remote_commit(remote, remote_file, "r2", "INSERT INTO t VALUES (3, 'x');")
    remote.paths.clear()
    assert conn.replica.pull().changed
    assert remote.paths == ["/pull-updates", "/v2/pipeline", "/pull-updates"]
    fence = remote.batches[-1]
    assert any("#fence" in json.dumps(step) for step in fence)
    assert (conn.replica.state.push_epoch, conn.replica.state.push_in_doubt) == (1, False)


def test_a_push_sends_each_pending_transaction_once_and_forgets_it(world):
    conn, remote, _ = world
    for v in ("a", "b"):
        conn.execute("INSERT INTO t(v) VALUES (?)", (v,))
        conn.commit()
    first, _second = outbox_ids(conn)
    remote.mark = (0, first)  # a previous push of the first committed; its answer was lost,
    state = conn.replica.state  # which dropped the replica's belief about the mark: it reads it first
    state.extra.pop(PUSH_MARK_KEY, None)
    state.save(conn.replica.path)
    result = conn.replica.push()
    assert isinstance(result, PushResult) and result == 1 and int(result) == 1 and not result.pulled
    assert result.revision == "r1" and result.bytes_sent > 0
    sent = json.dumps(remote.batches[-1])
    assert '"b"' in sent and '"a"' not in sent  # only the second went
    assert outbox_ids(conn) == [] and conn.stats().pending_changes == result.pending_changes == 0


def test_one_push_attempt_stops_at_a_guard_and_keeps_everything_pending(world):
    conn, remote, _ = world
    conn.execute("UPDATE t SET v = 'mine' WHERE id = 1")
    conn.commit()

    def guard_fails(steps):
        result = committed(steps)
        result["step_results"] = [None] * len(steps)
        first_guard = next(  # a row's guard, not the push mark's compare-and-set (which fails the same way)
            i
            for i, step in enumerate(steps)
            if GUARD_FAIL in json.dumps(step) and "last_change_id" not in json.dumps(step)
        )
        result["step_errors"][first_guard] = {"message": "integer overflow", "code": "SQLITE_ERROR"}
        return batch_response(result)

    remote.answer = guard_fails
    replica = conn.replica
    outcome = PushOutcome()
    with replica.exclusive(), pytest.raises(errors.PushConflictError, match="outbox #"):
        drive(push_once(replica, 2000, outcome), replica.transport)
    assert outcome.pushed == 0 and conn.stats().pending_changes == 1
    assert not replica.state.push_in_doubt  # the remote answered: nothing is on its way


def test_a_read_only_token_is_told_so_and_nothing_is_in_doubt(world):
    conn, remote, _ = world
    conn.execute("INSERT INTO t(v) VALUES ('w')")
    conn.commit()
    refusal = {"error": "this token may only read, and the statement writes: BEGIN IMMEDIATE", "code": "FORBIDDEN"}
    remote.answer = lambda steps: HttpResponse(403, json.dumps(refusal).encode())
    with pytest.raises(errors.ReadOnlyTokenError, match="this token is read-only"):
        conn.push()
    assert conn.stats().pending_changes == 1 and not conn.replica.state.push_in_doubt


def test_a_batch_without_an_answer_marks_the_push_in_doubt(world):
    conn, remote, _ = world
    conn.execute("INSERT INTO t(v) VALUES ('w')")
    conn.commit()

    def lost(steps):
        raise errors.NetworkError("the answer was lost")

    remote.answer = lost
    with pytest.raises(errors.NetworkError):
        conn.push()
    assert conn.replica.state.push_in_doubt and conn.stats().pending_changes == 1


def test_sync_reports_its_push_and_its_pull(world):
    conn, remote, remote_file = world
    conn.execute("INSERT INTO t(v) VALUES ('mine')")
    conn.commit()
    remote_commit(remote, remote_file, "r2", "INSERT INTO t VALUES (50, 'theirs');")
    result = conn.replica.sync()
    assert result and result.pushed == 1 and result.pull.changed and result.revision == "r2"
    assert result.bytes_sent == result.push.bytes_sent + result.pull.bytes_sent > 0


def test_the_outbox_reads_pending_rows_and_cuts_whole_transactions(world):
    conn, _, _ = world
    for i in range(3):
        conn.execute("INSERT INTO t(v) VALUES (?)", (f"v{i}",))
        conn.commit()
    pending = read_pending(conn.replica.db)
    assert [r.id for r in pending.rows] == outbox_ids(conn) and pending.pull_gen == 0
    rows = [OutboxRow(i, 0, [], b"x" * 640) for i in range(5)]  # 10 row changes each, by size
    assert [r.id for r in chunk(rows, 25)] == [0, 1]
    assert [r.id for r in chunk(rows, 1)] == [0]  # at least one whole transaction
