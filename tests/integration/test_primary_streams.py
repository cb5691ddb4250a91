"""Hrana streams on our primary (batons), and stream pushes of transactions over 64 MiB.

A real primary on 127.0.0.1 (``turso-sync serve`` in a subprocess, with a token file) and our
client's stream sender (``turso_sync.sync.stream``) over the real HTTP transport.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import httpx
import pytest

from tests.conftest import wait_for
from tests.integration.primary_harness import PrimaryProcess
from turso_sync import errors
from turso_sync.sync import push, stream
from turso_sync.sync.rebase import OutboxRow
from turso_sync.sync.transport import HttpResponse, HttpTransport, TransferStats
from turso_sync.wire.hrana import encode_value
from turso_sync.wire.pull import PullRequest, PullResponseDecoder

WRITER = "writer-" + os.urandom(12).hex()
OTHER = "other-" + os.urandom(12).hex()
READER = "reader-" + os.urandom(12).hex()
CLIENT = "stream-client"
GENEROUS = 60.0


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., PrimaryProcess]]:
    """Start a primary with a token file (two writers, one reader) and extra options; stopped after the test."""
    started: list[PrimaryProcess] = []

    def start(*args: str) -> PrimaryProcess:
        tokens = tmp_path / "tokens"
        tokens.write_text(f"{WRITER} rw *\n{OTHER} rw *\n{READER} r *\n")
        tokens.chmod(0o600)
        proc = PrimaryProcess(tmp_path / f"data{len(started)}", "--token-file", str(tokens), *args)
        started.append(proc)
        proc.start()
        return proc

    yield start
    for proc in started:
        proc.close()


def post(server: PrimaryProcess, body: dict[str, Any], token: str = WRITER) -> httpx.Response:
    return httpx.post(server.url + "/v2/pipeline", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def ex(sql: str) -> dict[str, Any]:
    return {"type": "execute", "stmt": {"sql": sql}}


def rows(server: PrimaryProcess) -> int:
    """What another client reads on the primary now (a plain one-request pipeline)."""
    resp = post(server, {"baton": None, "requests": [ex("SELECT count(*) FROM t")]}, token=READER)
    assert resp.status_code == 200, resp.text
    return int(resp.json()["results"][0]["response"]["result"]["rows"][0][0]["value"])


def mark(server: PrimaryProcess) -> int | None:
    sql = {"sql": push.LAST_CHANGE_SELECT, "args": [encode_value(CLIENT)]}
    resp = post(server, {"baton": None, "requests": [{"type": "execute", "stmt": sql}]}, token=READER)
    result = resp.json()["results"][0]
    if result["type"] != "ok" or not result["response"]["result"]["rows"]:
        return None
    return int(result["response"]["result"]["rows"][0][1]["value"])


def bootstrap_pages(server: PrimaryProcess) -> int:
    """A whole-database pull by another client: how many pages it brought."""
    resp = httpx.post(
        server.url + "/pull-updates",
        content=PullRequest().to_bytes(),
        headers={"Authorization": f"Bearer {READER}"},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    decoder = PullResponseDecoder()
    count = sum(1 for _ in decoder.feed(resp.content))
    decoder.close()
    return count


def make_table(server: PrimaryProcess) -> None:
    resp = post(server, {"baton": None, "requests": [ex("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")]})
    assert resp.status_code == 200 and resp.json()["results"][0]["type"] == "ok", resp.text


def big_batch(count: int, value_bytes: int) -> push.PushBatch:
    """One local transaction inserting ``count`` rows of about ``value_bytes`` each, as a push batch."""
    db = apsw.Connection(":memory:")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    session = apsw.Session(db, "main")
    session.attach()
    filler = "x" * value_bytes
    with db:
        for i in range(1, count + 1):
            db.execute("INSERT INTO t VALUES (?, ?)", (i, f"{i:08d}{filler}"))
    row = OutboxRow(41, 0, [], session.changeset())

    def columns(table: str) -> list[tuple[str, int]]:
        return [("id", 1), ("v", 0)]

    return push.build_batch([row], columns, CLIENT, 0, encode_value)


class Watched:
    """A transport that runs ``after(n)`` once the answer to the n-th request arrived."""

    def __init__(self, inner: HttpTransport, after: Callable[[int, bytes], None]) -> None:
        self.inner = inner
        self.after = after
        self.count = 0
        self.stats: TransferStats = inner.stats

    def request(self, path: str, body: bytes, content_type: str, timeout: float, idempotent: bool) -> HttpResponse:
        self.count += 1
        response = self.inner.request(path, body, content_type, timeout, idempotent)
        self.after(self.count, body)
        return response

    def close(self) -> None:
        self.inner.close()


def test_a_100_mib_transaction_commits_all_at_once_and_readers_never_see_part(serve: Any) -> None:
    server = serve()
    make_table(server)
    batch = big_batch(10_000, 10_500)
    assert sum(len(s["stmt"].get("args", [{}])[-1].get("value", "")) for s in batch.steps) > 100 << 20
    seen: list[tuple[int, int]] = []

    def between(number: int, body: bytes) -> None:
        # another client reads and bootstraps while the stream holds the write lock
        seen.append((rows(server), bootstrap_pages(server)))

    transport = Watched(HttpTransport(server.url, auth_token=WRITER), between)
    try:
        result = stream.push_transaction(transport, batch, 120.0)
    finally:
        transport.close()
    assert push.batch_failure(result, batch) is None
    assert transport.count >= 7, "a 100 MiB transaction goes in several requests"
    assert [n for n, _pages in seen[:-1]] == [0] * (len(seen) - 1), "a reader saw part of the transaction"
    assert all(pages >= 2 for _n, pages in seen), "pulls went on while the stream held the write lock"
    assert seen[-1][0] == 10_000 and rows(server) == 10_000 and mark(server) == 41
    other = post(server, {"baton": None, "requests": [ex("INSERT INTO t VALUES (0, 'other')")]}, OTHER)
    assert other.status_code == 200 and other.json()["results"][0]["type"] == "ok", "the write lock is free"


def test_a_stream_dropped_after_the_second_request_leaves_nothing_and_the_retry_lands_once(serve: Any) -> None:
    server = serve("--stream-idle-timeout", "1", "--stream-lock-wait", "0.2")
    make_table(server)
    batch = big_batch(3000, 2000)

    def drop(number: int, body: bytes) -> None:
        if number == 2:
            raise errors.NetworkError("connection dropped by the test after the second request was taken")

    transport = Watched(HttpTransport(server.url, auth_token=WRITER), drop)
    with pytest.raises(errors.NetworkError, match="cut at request 2"):
        stream.push_transaction(transport, batch, 60.0, max_body=1 << 20)
    transport.close()
    assert rows(server) == 0 and mark(server) is None

    retry = HttpTransport(server.url, auth_token=WRITER)
    outcomes: list[object] = []

    def pushed() -> bool:
        try:
            outcomes.append(stream.push_transaction(retry, batch, 60.0, max_body=1 << 20))
        except errors.NetworkError as exc:  # 503 while the abandoned stream still holds the lock
            assert "503" in str(exc), exc
            return False
        return True

    wait_for(pushed, GENEROUS, "the retry to get past the abandoned stream's lock")
    retry.close()
    assert push.batch_failure(outcomes[-1], batch) is None  # type: ignore[arg-type]
    assert rows(server) == 3000 and mark(server) == 41


def test_a_hostile_token_cannot_continue_another_tokens_stream(serve: Any) -> None:
    server = serve()
    make_table(server)
    opened = post(server, {"baton": None, "requests": [ex("BEGIN IMMEDIATE"), ex("INSERT INTO t VALUES (1, 'a')")]})
    baton = opened.json()["baton"]
    assert opened.status_code == 200 and baton
    for token in (OTHER, READER):
        evil = [ex("INSERT INTO t VALUES (2, 'evil')"), ex("COMMIT")]
        hostile = post(server, {"baton": baton, "requests": evil}, token)
        assert hostile.status_code == 403 and hostile.json()["code"] == "STREAM_FORBIDDEN", hostile.text
    guessed = post(server, {"baton": baton[:-2] + "xx", "requests": [ex("COMMIT")]}, OTHER)
    assert guessed.status_code == 400
    assert rows(server) == 0
    done = post(server, {"baton": baton, "requests": [ex("INSERT INTO t VALUES (3, 'c')"), ex("COMMIT")]})
    assert done.status_code == 200 and done.json()["baton"] is None, done.text
    assert rows(server) == 2
    replay = post(server, {"baton": baton, "requests": [ex("SELECT 1")]})
    assert replay.status_code == 400, "a baton is good for one request"


def test_an_idle_stream_is_rolled_back_and_the_database_takes_the_next_push(serve: Any) -> None:
    server = serve("--stream-idle-timeout", "1", "--stream-lock-wait", "0")
    make_table(server)
    opened = post(server, {"baton": None, "requests": [ex("BEGIN IMMEDIATE"), ex("INSERT INTO t VALUES (1, 'a')")]})
    baton = opened.json()["baton"]
    assert baton
    answers: list[httpx.Response] = []

    def next_push_lands() -> bool:  # 503 DATABASE_LOCKED while the abandoned stream holds the lock
        answers.append(post(server, {"baton": None, "requests": [ex("INSERT INTO t VALUES (2, 'b')")]}, OTHER))
        return answers[-1].status_code == 200

    wait_for(next_push_lands, GENEROUS, "the idle stream to be rolled back")
    assert all(a.json().get("code") == "DATABASE_LOCKED" for a in answers[:-1])
    assert answers[-1].json()["results"][0]["type"] == "ok"
    late = post(server, {"baton": baton, "requests": [ex("COMMIT")]})
    assert late.status_code == 400 and "start it again" in late.json()["error"]
    assert rows(server) == 1


def test_another_writer_waits_a_bounded_time_for_a_streams_lock(serve: Any) -> None:
    server = serve("--stream-lock-wait", "0.2", "--stream-idle-timeout", "30")
    make_table(server)
    opened = post(server, {"baton": None, "requests": [ex("BEGIN IMMEDIATE"), ex("INSERT INTO t VALUES (1, 'a')")]})
    baton = opened.json()["baton"]
    blocked = post(server, {"baton": None, "requests": [ex("INSERT INTO t VALUES (2, 'b')")]}, OTHER)
    assert blocked.status_code == 503 and blocked.headers["Retry-After"], blocked.text
    assert blocked.json()["code"] == "DATABASE_LOCKED"
    assert rows(server) == 0, "reads go on"
    assert post(server, {"baton": baton, "requests": [ex("COMMIT")]}).json()["baton"] is None
    after = post(server, {"baton": None, "requests": [ex("INSERT INTO t VALUES (2, 'b')")]}, OTHER)
    assert after.status_code == 200 and rows(server) == 2


def test_stream_bounds_per_token_and_bytes_are_clear_4xx(serve: Any) -> None:
    server = serve("--max-streams-per-client", "1", "--max-stream-bytes", "100000", "--stream-lock-wait", "0")
    make_table(server)
    first = post(server, {"baton": None, "requests": [ex("BEGIN")]})
    assert first.status_code == 200 and first.json()["baton"]
    second = post(server, {"baton": None, "requests": [ex("BEGIN")]})
    assert second.status_code == 429 and second.json()["code"] == "TOO_MANY_STREAMS", second.text
    plain = post(server, {"baton": None, "requests": [ex("SELECT 1")]})
    assert plain.status_code == 200 and plain.json()["baton"] is None, "a one-request pipeline is as before"
    insert = ex(f"INSERT INTO t VALUES (1, '{'x' * 120_000}')")
    big = post(server, {"baton": first.json()["baton"], "requests": [insert]})
    assert big.status_code == 413 and big.json()["code"] == "STREAM_TOO_LARGE", big.text
    assert rows(server) == 0
    again = post(server, {"baton": None, "requests": [ex("BEGIN")]})
    assert again.status_code == 200 and again.json()["baton"], "the rolled-back stream's place is free"


def test_the_sandbox_applies_to_every_request_of_a_stream(serve: Any) -> None:
    server = serve()
    make_table(server)
    opened = post(server, {"baton": None, "requests": [ex("BEGIN"), ex("SELECT count(*) FROM t")]}, READER)
    baton = opened.json()["baton"]
    assert baton, "a read transaction is a stream too"
    write = post(server, {"baton": baton, "requests": [ex("INSERT INTO t VALUES (1, 'a')")]}, READER)
    assert write.status_code == 403 and "may only read" in write.json()["error"]
    assert post(server, {"baton": baton, "requests": [ex("SELECT 1")]}, READER).status_code == 400, "it ended"
    writer = post(server, {"baton": None, "requests": [ex("BEGIN"), ex("ATTACH DATABASE ':memory:' AS x")]})
    assert writer.json()["results"][1]["type"] == "error", "refused as in a one-request pipeline"


def test_turso_clients_pipelines_get_no_baton(serve: Any) -> None:
    server = serve()
    steps = [
        {"condition": None, "stmt": {"sql": "BEGIN IMMEDIATE"}},
        {"condition": {"type": "not", "cond": {"type": "is_autocommit"}}, "stmt": {"sql": push.LAST_CHANGE_TABLE}},
        {"condition": {"type": "not", "cond": {"type": "is_autocommit"}}, "stmt": {"sql": "COMMIT"}},
    ]
    resp = post(server, {"baton": None, "requests": [{"type": "batch", "batch": {"steps": steps}}]})
    assert resp.status_code == 200 and resp.json()["baton"] is None
    assert resp.json()["results"][0]["response"]["result"]["step_errors"] == [None, None, None]


def test_a_server_stopped_with_a_stream_open_rolls_it_back_and_stops_cleanly(serve: Any) -> None:
    server = serve()
    make_table(server)
    opened = post(server, {"baton": None, "requests": [ex("BEGIN IMMEDIATE"), ex("INSERT INTO t VALUES (1, 'a')")]})
    assert opened.json()["baton"]
    assert server.stop() == 0
    server.start()
    assert rows(server) == 0
    assert "Traceback" not in server.log() and " ERROR " not in server.log(), server.log()
