"""The primary's bounds, piece by piece, without a server: slots, the store's caps, quiet logs, options."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from pathlib import Path

import pytest
from aiohttp.http_exceptions import BadHttpMessage

from turso_sync.cli.main import build_parser
from turso_sync.cli.serve import limits_from
from turso_sync.primary.app import ClientSlots, Limits, TooManyRequests
from turso_sync.primary.auth import DEV_CLIENT, Authenticator, parse_token_file
from turso_sync.primary.server import ConfigError, QuietProtocolLog
from turso_sync.primary.sql_policy import SERVE_SQLITE_HEAP_BYTES
from turso_sync.primary.store import DatabaseQuota, DatabaseStore, StoreBusy, UnknownDatabase


def test_client_slots_refuse_the_one_over_the_bound_and_give_back() -> None:
    slots = ClientSlots(2)
    a, b = ("tok", "10.0.0.1"), ("tok", "10.0.0.2")
    with slots.hold(a), slots.hold(a):
        with pytest.raises(TooManyRequests, match="2 requests open"), slots.hold(a):
            pass
        with slots.hold(b):  # the same token from another address is another client
            assert slots.in_flight(b) == 1
        assert slots.in_flight(a) == 2
    assert slots.in_flight(a) == 0
    with pytest.raises(RuntimeError), slots.hold(a):
        raise RuntimeError("a failing request gives its slot back")
    assert slots.in_flight(a) == 0


def test_grant_names_the_client_without_the_token() -> None:
    token = "s3cret-token-value"
    auth = Authenticator(parse_token_file(f"{token} rw *\nother-token-42 r *\n"))
    mine = auth.check(f"Bearer {token}", "default")
    theirs = auth.check("Bearer other-token-42", "default")
    assert mine.client == auth.check(f"bearer {token}", "x").client  # stable
    assert mine.client != theirs.client and token not in mine.client
    assert Authenticator(None).check(None, "default").client == DEV_CLIENT


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def worker_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("db-"))


def test_store_keeps_at_most_max_open_and_closes_the_least_recently_used(tmp_path: Path) -> None:
    before = worker_threads()  # other tests' threads, if any

    async def scenario() -> None:
        store = DatabaseStore(str(tmp_path), max_open=2)
        await store.start()
        try:
            for name in ("a", "b", "c"):
                await store.get(name, create=True)
            assert sorted(db.name for db in store.opened()) == ["b", "c"]
            assert worker_threads() - before == 2
            await store.get("b", create=False)  # b is now the most recently used
            await store.get("a", create=False)  # so c is closed for a
            assert sorted(db.name for db in store.opened()) == ["a", "b"]
            async with store.use("a", create=False), store.use("b", create=False):
                with pytest.raises(StoreBusy, match="every one is in use"):
                    await store.get("c", create=False)
                assert sorted(db.name for db in store.opened()) == ["a", "b"]
            await store.get("c", create=False)
        finally:
            await store.close()
        assert worker_threads() == before

    run(scenario())


def test_a_start_opens_at_most_max_open_databases_and_the_rest_on_request(tmp_path: Path) -> None:
    async def create() -> None:
        store = DatabaseStore(str(tmp_path), max_open=8)
        await store.start()
        try:
            for i in range(6):
                await store.get(f"d{i}", create=True, owner="alice")
        finally:
            await store.close()

    async def restart() -> None:
        store = DatabaseStore(str(tmp_path), max_open=2)
        await store.start()
        try:
            assert len(store.opened()) == 2  # checked at start (a wrong key fails there)
            assert len(store.names()) == 6 and store.owned_by("alice") == 6  # every owner known
            db = await store.get("d5", create=False)  # one not opened at start opens on request
            assert db.name == "d5" and len(store.opened()) == 2
        finally:
            await store.close()

    run(create())
    run(restart())


def test_a_database_in_use_is_never_closed_under_its_request(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = DatabaseStore(str(tmp_path), max_open=1)
        await store.start()
        try:
            async with store.use("a", create=True) as a:
                with pytest.raises(StoreBusy):
                    await store.get("b", create=True)
                assert a.feed.closed is False and store.opened() == [a]
            b = await store.get("b", create=True)
            assert a.feed.closed and store.opened() == [b]
        finally:
            await store.close()

    run(scenario())


def test_databases_per_owner_are_bounded_and_remembered(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = DatabaseStore(str(tmp_path), max_per_owner=2)
        await store.start()
        try:
            await store.get("x1", create=True, owner="alice")
            await store.get("x2", create=True, owner="alice")
            with pytest.raises(DatabaseQuota, match=r"'x3'.*--max-databases-per-token"):
                await store.get("x3", create=True, owner="alice")
            assert not store.exists("x3")
            await store.get("x1", create=True, owner="alice")  # an existing one is no creation
            await store.get("y1", create=True, owner="bob")
            with pytest.raises(UnknownDatabase):
                store.check("nope", create=False)
        finally:
            await store.close()
        again = DatabaseStore(str(tmp_path), max_per_owner=2)
        await again.start()
        try:
            assert again.owned_by("alice") == 2 and again.owned_by("bob") == 1
            with pytest.raises(DatabaseQuota):
                again.check("x3", create=True, owner="alice")
        finally:
            await again.close()

    run(scenario())


def test_parse_errors_log_one_debug_line_and_bugs_keep_their_traceback(caplog: pytest.LogCaptureFixture) -> None:
    quiet = QuietProtocolLog(logging.getLogger("aiohttp.server"), {})
    caplog.set_level(logging.DEBUG, logger="aiohttp.server")
    quiet.exception("Error handling request from %s", "10.1.2.3", exc_info=BadHttpMessage("Invalid header token"))
    quiet.exception("Error handling request from %s", "10.1.2.3", exc_info=ConnectionResetError("gone"))
    quiet.debug("Error handling request from %s", "10.1.2.3", exc_info=BadHttpMessage("Invalid method"))
    (parse, gone, first) = caplog.records
    assert parse.levelno == logging.DEBUG and parse.exc_info is None
    assert first.levelno == logging.DEBUG and first.exc_info is None and "malformed" in first.getMessage()
    assert "10.1.2.3" in parse.getMessage() and "malformed HTTP request" in parse.getMessage()
    assert gone.levelno == logging.DEBUG and gone.exc_info is None
    caplog.clear()
    try:
        raise KeyError("a bug")
    except KeyError as exc:
        quiet.exception("Unhandled exception", exc_info=exc)
    (bug,) = caplog.records
    assert bug.levelno == logging.ERROR and bug.exc_info is not None


def test_serve_options_give_the_limits_and_refuse_nonsense() -> None:
    parser = build_parser()
    defaults = limits_from(parser.parse_args(["serve", "--data-dir", "d"]))
    # serve owns its process, so it also bounds SQLite's (process-wide) memory; an embedded primary does not
    assert defaults == dataclasses.replace(
        Limits(), sql=dataclasses.replace(Limits().sql, sqlite_heap_bytes=SERVE_SQLITE_HEAP_BYTES)
    )
    assert Limits().sql.sqlite_heap_bytes is None
    args = parser.parse_args(
        [
            "serve",
            "--data-dir",
            "d",
            "--idle-timeout",
            "5",
            "--body-timeout",
            "7",
            "--send-timeout",
            "9",
            "--max-requests-per-client",
            "3",
            "--max-connections",
            "10",
            "--max-databases-per-token",
            "0",
            "--max-open-databases",
            "2",
        ]
    )
    assert limits_from(args) == Limits(
        idle_timeout_s=5,
        body_timeout_s=7,
        send_timeout_s=9,
        max_requests_per_client=3,
        max_connections=10,
        max_databases_per_token=0,
        max_open_databases=2,
        sql=defaults.sql,
    )
    for option in ("--idle-timeout", "--max-open-databases", "--max-requests-per-client", "--max-connections"):
        with pytest.raises(ConfigError, match=option):
            limits_from(parser.parse_args(["serve", "--data-dir", "d", option, "0"]))
    with pytest.raises(ConfigError, match="--max-databases-per-token"):
        limits_from(parser.parse_args(["serve", "--data-dir", "d", "--max-databases-per-token", "-1"]))


def test_sql_limit_options_reach_the_store(tmp_path: Path) -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["serve", "--data-dir", "d", "--max-rows", "5", "--max-statement-seconds", "0.5", "--sqlite-heap-bytes", "0"]
    )
    limits = limits_from(args)
    assert limits.sql.max_rows == 5 and limits.sql.max_statement_seconds == 0.5
    assert limits.sql.sqlite_heap_bytes is None  # 0: no limit
    with pytest.raises(ConfigError, match="--max-rows"):
        limits_from(parser.parse_args(["serve", "--data-dir", "d", "--max-rows", "0"]))

    async def scenario() -> None:
        store = DatabaseStore(str(tmp_path), sql_limits=limits.sql)
        await store.start()
        try:
            db = await store.get("a", create=True)
            assert db.sql_limits == limits.sql
        finally:
            await store.close()

    run(scenario())


def test_a_failing_database_answers_503_without_its_cause(caplog: pytest.LogCaptureFixture) -> None:
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from turso_sync import errors
    from turso_sync.primary.app import _error_middleware

    async def failing(request: web.Request) -> web.StreamResponse:
        raise errors.DatabaseError("disk I/O error in /srv/secret/databases/x/db-wal")

    async def scenario() -> web.StreamResponse:
        return await _error_middleware(make_mocked_request("POST", "/v2/pipeline"), failing)

    caplog.set_level(logging.ERROR, logger="turso_sync.primary")
    resp = run(scenario())
    assert isinstance(resp, web.Response) and resp.status == 503
    assert resp.body is not None and b"/srv" not in bytes(resp.body) and b"DATABASE_ERROR" in bytes(resp.body)
    assert "/srv/secret" in caplog.text  # the operator still learns the cause
