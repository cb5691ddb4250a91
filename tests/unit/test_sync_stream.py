"""Stream pushes (``turso_sync.sync.stream``): one transaction over several baton requests.

The remote is a fake that keeps streams the way our primary does, on the primary's own
Hrana executor over a file database (no server, no socket): a baton-null request whose
transaction is still open at its end keeps its connection for the next request; a second
connection reads the database as another client would.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import pytest

from turso_sync import errors
from turso_sync.primary.hrana import PipelineExecutor, StreamState
from turso_sync.sync import push, stream
from turso_sync.sync.rebase import OutboxRow
from turso_sync.sync.transport import HttpResponse
from turso_sync.testing import MockTransport
from turso_sync.wire.hrana import PipelineRequest, decode_pipeline_reply, encode_pipeline_response, encode_value

CLIENT = "client-1"


class StreamRemote:
    """Answers ``/v2/pipeline`` like our primary: streams kept while their transaction is open."""

    def __init__(self, path: Path, *, keep_streams: bool = True) -> None:
        self.path = str(path)
        self.keep_streams = keep_streams
        setup = apsw.Connection(self.path)
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        setup.close()
        self.streams: dict[str, tuple[apsw.Connection, PipelineExecutor, StreamState]] = {}
        self.reader = apsw.Connection(self.path)
        self.bodies: list[int] = []
        self.seen_rows: list[int] = []  # what the reader saw after each request
        self.fail_request: Callable[[int, dict[str, Any]], None] | None = None

    def handler(self, path: str, body: bytes, content_type: str) -> HttpResponse:
        assert path == "/v2/pipeline" and content_type == "application/json"
        number = len(self.bodies) + 1
        self.bodies.append(len(body))
        if self.fail_request is not None:
            self.fail_request(number, json.loads(body))
        pipe = PipelineRequest.from_bytes(body)
        if pipe.baton is None:
            conn = apsw.Connection(self.path)
            executor = PipelineExecutor(conn)
            state = executor.new_stream(False)
        else:
            if pipe.baton not in self.streams:
                return HttpResponse(400, b'{"error": "no such stream", "code": "BAD_REQUEST"}')
            conn, executor, state = self.streams.pop(pipe.baton)
        results = executor.execute(pipe.requests, state)
        baton = None
        if executor.in_transaction and not state.closed and self.keep_streams:
            baton = secrets.token_urlsafe(8)
            self.streams[baton] = (conn, executor, state)
        else:
            executor.end_transaction()
            conn.close()
        self.seen_rows.append(self.rows())
        return HttpResponse(200, encode_pipeline_response(results, baton))

    def rows(self) -> int:
        return int(self.reader.execute("SELECT count(*) FROM t").get)  # type: ignore[arg-type]

    def mark(self) -> int | None:
        try:
            row = self.reader.execute(push.LAST_CHANGE_SELECT, (CLIENT,)).fetchone()
        except apsw.SQLError:
            return None
        return None if row is None else int(row[1])

    def rollback_abandoned(self) -> None:
        """What the primary's idle timeout does to a stream nobody continues."""
        for conn, executor, _state in self.streams.values():
            executor.end_transaction()
            conn.close()
        self.streams.clear()


def insert_changeset(first: int, count: int, value_bytes: int) -> bytes:
    """A changeset inserting ``count`` rows of ``t`` from id ``first``, each with a text of ``value_bytes``."""
    db = apsw.Connection(":memory:")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    session = apsw.Session(db, "main")
    session.attach()
    with db:
        for i in range(first, first + count):
            db.execute("INSERT INTO t VALUES (?, ?)", (i, f"{i:08d}" + "x" * (value_bytes - 8)))
    return session.changeset()


def columns(table: str) -> list[tuple[str, int]]:
    assert table == "t"
    return [("id", 1), ("v", 0)]


def batch_of(count: int, value_bytes: int = 200, first: int = 1) -> push.PushBatch:
    row = OutboxRow(5, 0, [], insert_changeset(first, count, value_bytes))
    return push.build_batch([row], columns, CLIENT, 0, encode_value)


def test_a_transaction_over_several_requests_commits_all_at_once(tmp_path: Path) -> None:
    remote = StreamRemote(tmp_path / "remote.db")
    transport = MockTransport(remote.handler)
    batch = batch_of(2000)
    result = stream.push_transaction(transport, batch, 30.0, max_body=64 * 1024)
    assert push.batch_failure(result, batch) is None
    assert len(remote.bodies) > 5 and max(remote.bodies) <= 64 * 1024
    assert remote.seen_rows[:-1] == [0] * (len(remote.bodies) - 1), "a reader saw part of the transaction"
    assert remote.seen_rows[-1] == 2000 and remote.mark() == 5
    assert not remote.streams


def test_the_mark_and_commit_travel_in_the_last_request(tmp_path: Path) -> None:
    remote = StreamRemote(tmp_path / "remote.db")
    transport = MockTransport(remote.handler)
    batch = batch_of(500)
    stream.push_transaction(transport, batch, 30.0, max_body=32 * 1024)
    bodies = [json.loads(r.body) for r in transport.requests]
    assert bodies[0]["baton"] is None and all(b["baton"] for b in bodies[1:])
    first = bodies[0]["requests"][0]["batch"]["steps"][0]["stmt"]["sql"]
    last = [s["stmt"]["sql"] for s in bodies[-1]["requests"][0]["batch"]["steps"]]
    assert first == "BEGIN IMMEDIATE"
    assert last[-3:] == [push.LAST_CHANGE_UPSERT, "COMMIT", "ROLLBACK"]
    assert all(b["requests"][-1] == {"type": "get_autocommit"} for b in bodies[:-1])


def test_a_stream_cut_after_the_second_request_leaves_nothing_and_the_retry_lands_once(tmp_path: Path) -> None:
    remote = StreamRemote(tmp_path / "remote.db")
    batch = batch_of(1500)

    def cut(number: int, body: dict[str, Any]) -> None:
        if number == 3:
            raise errors.NetworkError("connection reset by the test")

    remote.fail_request = cut
    transport = MockTransport(remote.handler)
    with pytest.raises(errors.NetworkError, match="cut at request 3"):
        stream.push_transaction(transport, batch, 30.0, max_body=64 * 1024)
    closes = [r for r in transport.requests if b'"close"' in r.body]
    assert len(closes) == 1, "the client closes the stream when it can"
    remote.rollback_abandoned()  # had the close not arrived: the idle timeout
    assert remote.rows() == 0 and remote.mark() is None
    remote.fail_request = None
    result = stream.push_transaction(MockTransport(remote.handler), batch, 30.0, max_body=64 * 1024)
    assert push.batch_failure(result, batch) is None and remote.rows() == 1500
    assert remote.mark() == 5


def test_a_lost_last_answer_is_in_doubt_and_the_mark_tells(tmp_path: Path) -> None:
    remote = StreamRemote(tmp_path / "remote.db")
    batch = batch_of(800)
    transport = MockTransport(remote.handler)
    plan = stream.plan_requests(batch.steps, batch.commit_index, 64 * 1024)
    inner = remote.handler

    def lose_last(path: str, body: bytes, content_type: str) -> HttpResponse:
        answer = inner(path, body, content_type)
        if len(remote.bodies) == len(plan):
            raise errors.NetworkError("answer lost")
        return answer

    transport.handler = lose_last
    with pytest.raises(errors.NetworkError, match="may have committed"):
        stream.push_transaction(transport, batch, 30.0, max_body=64 * 1024)
    assert remote.rows() == 800 and remote.mark() == 5


def test_a_failed_guard_in_an_early_request_stops_the_stream(tmp_path: Path) -> None:
    remote = StreamRemote(tmp_path / "remote.db")
    remote.reader.execute("INSERT INTO t VALUES (3, 'theirs')")
    transport = MockTransport(remote.handler)
    batch = batch_of(2000)
    result = stream.push_transaction(transport, batch, 30.0, max_body=64 * 1024)
    failure = push.batch_failure(result, batch)
    assert failure is not None and failure[0] is not None and failure[0].guard
    sent = [json.loads(r.body)["requests"] for r in transport.requests]
    assert len(sent) == 2 and sent[1] == [{"type": "close"}], "nothing more is sent once an earlier step failed"
    assert remote.rows() == 1 and not remote.streams


def test_a_remote_that_keeps_no_stream_is_refused_with_nothing_committed(tmp_path: Path) -> None:
    remote = StreamRemote(tmp_path / "remote.db", keep_streams=False)
    batch = batch_of(1000)
    with pytest.raises(errors.PushRejectedError, match="does not keep a transaction open") as caught:
        stream.push_transaction(MockTransport(remote.handler), batch, 30.0, max_body=64 * 1024)
    assert caught.value.refusal == stream.TOO_BIG_REFUSAL
    assert remote.rows() == 0 and len(remote.bodies) == 1


def test_supports_streams_probes_without_sql(tmp_path: Path) -> None:
    remote = StreamRemote(tmp_path / "remote.db")
    transport = MockTransport(remote.handler)
    assert stream.supports_streams(transport, 5.0)
    assert json.loads(transport.requests[0].body)["requests"] == [{"type": "get_autocommit"}]

    def tursodb_like(path: str, body: bytes, content_type: str) -> HttpResponse:
        return HttpResponse(500, b"Internal Server Error: Failed to parse pipeline request: unknown variant")

    assert not stream.supports_streams(MockTransport(tursodb_like), 5.0)


def test_a_413_mid_stream_is_a_fixed_refusal(tmp_path: Path) -> None:
    remote = StreamRemote(tmp_path / "remote.db")
    inner = remote.handler

    def bounded(path: str, body: bytes, content_type: str) -> HttpResponse:
        if len(remote.bodies) == 2:
            return HttpResponse(413, b'{"error": "too large", "code": "STREAM_TOO_LARGE"}')
        return inner(path, body, content_type)

    with pytest.raises(errors.PushRejectedError, match="too large") as caught:
        stream.push_transaction(MockTransport(bounded), batch_of(1500), 30.0, max_body=64 * 1024)
    assert caught.value.refusal == stream.TOO_BIG_REFUSAL


def test_plan_keeps_requests_under_the_bound_and_the_tail_together() -> None:
    batch = batch_of(3000, value_bytes=100)
    plan = stream.plan_requests(batch.steps, batch.commit_index, 50_000)
    assert [i for part in plan for i in part] == list(range(len(batch.steps)))
    assert plan[-1].stop == len(batch.steps) and batch.commit_index - 1 in plan[-1]
    outcome = [stream.StepOutcome({"cols": []}) for _ in range(len(batch.steps))]
    baton = "b" * 40
    for part in plan:
        assert len(stream.request_body(batch.steps, part, outcome[: part.start], baton, False)) <= 50_000


def test_a_step_too_big_for_any_request_is_refused() -> None:
    batch = batch_of(1, value_bytes=100_000)
    with pytest.raises(errors.PushRejectedError, match="more than the 50000"):
        stream.plan_requests(batch.steps, batch.commit_index, 50_000)


def test_conditions_on_earlier_requests_become_constants() -> None:
    outcome = [stream.StepOutcome({"cols": []}), stream.StepOutcome(None, {"message": "x"})]
    cond = {"type": "or", "conds": [{"type": "ok", "step": 1}, {"type": "error", "step": 1}, {"type": "ok", "step": 3}]}
    rewritten = stream.rewrite_condition(cond, 2, outcome)
    assert rewritten == {"type": "or", "conds": [stream.FALSE_COND, stream.TRUE_COND, {"type": "ok", "step": 1}]}
    assert stream.holds({"type": "ok", "step": 0}, outcome) is True
    assert stream.holds({"type": "not", "cond": {"type": "error", "step": 1}}, outcome) is False
    assert stream.holds({"type": "ok", "step": 2}, outcome) is None
    assert stream.holds({"type": "is_autocommit"}, outcome) is None


def test_the_reply_decoder_reads_the_baton() -> None:
    body = encode_pipeline_response([], "b-1")
    assert decode_pipeline_reply(body) == ("b-1", [])
    assert decode_pipeline_reply(encode_pipeline_response([]))[0] is None
    with pytest.raises(errors.ProtocolError, match="baton"):
        decode_pipeline_reply(b'{"baton": 7, "results": []}')
