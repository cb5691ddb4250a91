"""The primary's SQL sandbox over HTTP: a catalogue of hostile statements, every route, both token kinds,
before and after every kind of pull; each must be refused and leave the server as it was.

The server runs in this process (on 127.0.0.1, from a background event loop), so the test
reads the database's connection settings back through the server's own access on its worker
(``HostedDatabase.server_settings``) after every statement.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import httpx
import pytest
from pyroaring import BitMap

from tests.unit.test_primary_sandbox import REFUSED_EVERYWHERE
from turso_sync.primary.app import Limits
from turso_sync.primary.server import PrimaryServer, ServerConfig
from turso_sync.primary.sql_policy import SqlLimits
from turso_sync.wire.pull import PullRequest, PullResponseDecoder

WRITER = "writer-" + os.urandom(12).hex()
READER = "reader-" + os.urandom(12).hex()
DATABASES = ("default", "other")

#: Hostile statements beyond those refused in the unit tests: temp objects, leaks, pragma forms.
HOSTILE = [
    *REFUSED_EVERYWHERE,
    "CREATE TABLE temp.t(id INTEGER PRIMARY KEY, v TEXT)",
    "CREATE TEMP TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
    "CREATE TEMP VIEW v AS SELECT 1",
    "CREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END",
    "CREATE TRIGGER temp.tr AFTER INSERT ON main.t BEGIN SELECT 1; END",
    "SELECT * FROM temp.sqlite_master",
    "PRAGMA database_list",
    "SELECT * FROM pragma_database_list",
    "PRAGMA compile_options",
    "SELECT sqlite_version()",
    "SELECT sqlite_compileoption_get(0)",
    "VACUUM",
    "PRAGMA main.query_only = 1",
    "SELECT * FROM pragma_query_only",
    "PRAGMA main.locking_mode = EXCLUSIVE",
    "ANALYZE temp",
]

#: Statements that must not reveal anything about the host either (no path, no version).
SECRETS = ("/", "3.5", "sqlite3")


class Primary:
    """Our server on 127.0.0.1 from a background event loop, with a writer and a reader token."""

    def __init__(self, root: Path) -> None:
        tokens = root / "tokens"
        tokens.write_text(f"{WRITER} rw *\n{READER} r *\n")
        tokens.chmod(0o600)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sandbox-primary", daemon=True)
        self.thread.start()
        # a short statement time, so the CPU bomb below is stopped quickly
        limits = Limits(sql=SqlLimits(max_statement_seconds=1.0))
        config = ServerConfig(str(root / "data"), host="127.0.0.1", port=0, token_file=str(tokens), limits=limits)
        self.server = PrimaryServer(config)
        self.url = self.run(self.server.start())
        self.http = httpx.Client(timeout=60)

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)

    def settings(self, name: str) -> dict[str, object]:
        """The database's connection settings, read on its worker with the server's own access."""
        store = self.server.store
        assert store is not None

        async def read() -> dict[str, object]:
            db = await store.get(name, create=False)
            return await db.call(db.server_settings)

        return dict(self.run(read()))

    def path(self, name: str, route: str) -> str:
        return f"{self.url}{'' if name == 'default' else '/db/' + name}/{route}"

    def pipeline(self, name: str, token: str, requests: list[dict[str, Any]]) -> httpx.Response:
        body = {"baton": None, "requests": requests}
        return self.http.post(self.path(name, "v2/pipeline"), json=body, headers={"Authorization": f"Bearer {token}"})

    def execute(self, name: str, token: str, sql: str) -> httpx.Response:
        return self.pipeline(name, token, [{"type": "execute", "stmt": {"sql": sql}}])

    def pull(self, name: str, token: str, request: PullRequest) -> tuple[Any, dict[int, bytes], httpx.Response]:
        resp = self.http.post(
            self.path(name, "pull-updates"), content=request.to_bytes(), headers={"Authorization": f"Bearer {token}"}
        )
        if resp.status_code != 200:
            return None, {}, resp
        decoder = PullResponseDecoder()
        pages = {p.page_id: p.data for p in decoder.feed(resp.content)}
        decoder.close()
        return decoder.header, pages, resp

    def close(self) -> None:
        self.http.close()
        self.run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture(scope="module")
def primary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Primary]:
    server = Primary(tmp_path_factory.mktemp("sandbox"))
    try:
        for name in DATABASES:
            resp = server.pipeline(
                name,
                WRITER,
                [
                    {"type": "execute", "stmt": {"sql": "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"}},
                    {"type": "execute", "stmt": {"sql": "INSERT INTO t(v) VALUES ('seed')"}},
                ],
            )
            assert resp.status_code == 200, resp.text
        yield server
    finally:
        server.close()


def revision(primary: Primary, name: str) -> str:
    header, _, resp = primary.pull(name, READER, PullRequest(page_ids=BitMap([0])))
    assert resp.status_code == 200, resp.text
    return str(header.server_revision)


def do_pull(primary: Primary, name: str, token: str, kind: str) -> None:
    """One pull of ``kind``; each must answer as documented."""
    if kind == "none":
        return
    if kind == "full":
        header, pages, resp = primary.pull(name, token, PullRequest())
        assert resp.status_code == 200 and len(pages) == header.db_size
    elif kind == "prefix":
        _, pages, resp = primary.pull(name, token, PullRequest(page_ids=BitMap([0, 1])))
        assert resp.status_code == 200 and set(pages) <= {0, 1}
    elif kind == "query":
        _, pages, resp = primary.pull(name, token, PullRequest(query_selector="SELECT * FROM t WHERE id > 0"))
        assert resp.status_code == 200 and 0 in pages
        for hostile in ("PRAGMA query_only=1", "ATTACH ':memory:' AS a", "CREATE TABLE temp.x(a)", "SELECT 1; VACUUM"):
            _, _, resp = primary.pull(name, token, PullRequest(query_selector=hostile))
            assert resp.status_code == 400, (hostile, resp.text)
    elif kind == "long-poll":
        current = revision(primary, name)
        header, pages, resp = primary.pull(name, token, PullRequest(client_revision=current, long_poll_timeout_ms=30))
        assert resp.status_code == 200 and header.server_revision == current and not pages
    elif kind == "long-poll-woken":
        current = revision(primary, name)
        answers: list[Any] = []
        poll = threading.Thread(
            target=lambda: answers.append(
                primary.pull(name, token, PullRequest(client_revision=current, long_poll_timeout_ms=20_000))
            )
        )
        poll.start()
        resp = primary.execute(name, WRITER, "INSERT INTO t(v) VALUES ('wake')")
        assert resp.status_code == 200 and resp.json()["results"][0]["type"] == "ok", resp.text
        poll.join(60)
        assert answers and answers[0][2].status_code == 200
    else:
        raise ValueError(kind)


PULLS = ("none", "full", "prefix", "query", "long-poll", "long-poll-woken")


@pytest.mark.parametrize("pull_kind", PULLS)
@pytest.mark.parametrize("pull_token", ["reader", "writer"])
def test_hostile_statements_are_refused_before_and_after_every_pull(
    primary: Primary, pull_kind: str, pull_token: str
) -> None:
    baseline = {name: primary.settings(name) for name in DATABASES}
    for name in DATABASES:
        assert baseline[name]["policy_installed"] is True and baseline[name]["schemas"] == ["main"]
        assert baseline[name]["temp_objects"] == 0 and baseline[name]["query_only"] == 0
        do_pull(primary, name, READER if pull_token == "reader" else WRITER, pull_kind)
    for name in DATABASES:
        for token in (READER, WRITER):
            for sql in HOSTILE:
                resp = primary.execute(name, token, sql)
                assert_refused(resp, sql, read_only=token == READER)
                assert primary.settings(name) == baseline[name], (name, sql)


def assert_refused(resp: httpx.Response, sql: str, read_only: bool) -> None:
    """A step error from the policy (or "no such table" for what this build lacks), or 403 for a reader's write."""
    if resp.status_code == 403:
        assert read_only and resp.json()["code"] == "READ_ONLY", (sql, resp.text)
        return
    assert resp.status_code == 200, (sql, resp.text)
    result = resp.json()["results"][0]
    assert result["type"] == "error", (sql, result)
    error = result["error"]
    if not error["message"].startswith("no such table: "):
        assert error["code"] == "SQLITE_AUTH" and sql[:40] in error["message"], (sql, error)
    for secret in ("/tmp", "/srv", "/home", str(Path.cwd())):
        assert secret not in error["message"].replace(sql, ""), (sql, error)


@pytest.mark.parametrize("kind", ["batch", "sequence", "describe", "stored"])
def test_every_hrana_request_kind_goes_through_the_policy(primary: Primary, kind: str) -> None:
    hostile = ["PRAGMA query_only = 1", "ATTACH ':memory:' AS a", "CREATE TABLE temp.t(a)", "PRAGMA database_list"]
    baseline = primary.settings("default")
    for sql in hostile:
        requests: list[dict[str, Any]]
        if kind == "batch":
            requests = [{"type": "batch", "batch": {"steps": [{"stmt": {"sql": "SELECT 1"}}, {"stmt": {"sql": sql}}]}}]
        elif kind == "sequence":
            requests = [{"type": "sequence", "sql": f"SELECT 1; {sql}; SELECT 2"}]
        elif kind == "describe":
            requests = [{"type": "describe", "sql": sql}]
        else:
            requests = [
                {"type": "store_sql", "sql_id": 1, "sql": sql},
                {"type": "execute", "stmt": {"sql_id": 1}},
            ]
        for token in (READER, WRITER):
            resp = primary.pipeline("default", token, requests)
            assert resp.status_code == 200, resp.text
            results = resp.json()["results"]
            if kind == "batch":
                errors = results[0]["response"]["result"]["step_errors"]
                assert errors[0] is None and errors[1]["code"] == "SQLITE_AUTH", errors
            else:
                assert results[-1]["type"] == "error" and results[-1]["error"]["code"] == "SQLITE_AUTH", results
            assert primary.settings("default") == baseline, (kind, sql)


def bootstrap_rows(primary: Primary, tmp_path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Bootstrap the default database over /pull-updates into a file, and query it with plain SQLite."""
    header, pages, resp = primary.pull("default", READER, PullRequest())
    assert resp.status_code == 200
    path = tmp_path / "replica.db"
    with open(path, "wb") as f:
        for page_id in range(header.db_size):
            f.write(pages[page_id])
    db = apsw.Connection(str(path))
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_a_temp_table_cannot_swallow_a_push(primary: Primary, tmp_path: Path) -> None:
    resp = primary.execute("default", WRITER, "CREATE TABLE temp.t(id INTEGER PRIMARY KEY, v TEXT)")
    assert resp.json()["results"][0]["error"]["code"] == "SQLITE_AUTH"
    # a replica's push, as pyturso sends it, in a request of its own
    push = [
        {"stmt": {"sql": "BEGIN IMMEDIATE"}},
        {
            "stmt": {
                "sql": 'INSERT INTO "t"("id", "v") VALUES (?,?) ON CONFLICT("id") DO UPDATE SET "v" = excluded."v"',
                "args": [{"type": "integer", "value": "1000"}, {"type": "text", "value": "pushed"}],
            },
            "condition": {"type": "not", "cond": {"type": "is_autocommit"}},
        },
        {"stmt": {"sql": "COMMIT"}, "condition": {"type": "not", "cond": {"type": "is_autocommit"}}},
    ]
    resp = primary.pipeline("default", WRITER, [{"type": "batch", "batch": {"steps": push}}])
    assert resp.json()["results"][0]["response"]["result"]["step_errors"] == [None, None, None], resp.text
    assert bootstrap_rows(primary, tmp_path, "SELECT v FROM t WHERE id = 1000") == [("pushed",)]


def test_bombs_get_a_step_error_naming_the_limit_and_a_small_answer(primary: Primary) -> None:
    for sql, code in (
        ("SELECT zeroblob(40000000), zeroblob(40000000)", "LIMIT_VALUE_BYTES"),
        ("SELECT randomblob(1e9)", "LIMIT_VALUE_BYTES"),
        (
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
            "LIMIT_STATEMENT_TIME",
        ),
        ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 200000) SELECT x FROM c", "LIMIT_ROWS"),
        (
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 5) SELECT zeroblob(10000000) FROM c",
            "LIMIT_RESPONSE_BYTES",
        ),
    ):
        resp = primary.execute("default", READER, sql)
        assert resp.status_code == 200 and len(resp.content) < 4096, (sql, resp.status_code, len(resp.content))
        error = resp.json()["results"][0]["error"]
        assert error["code"] == code, (sql, error)
    # and the server goes on
    resp = primary.execute("default", READER, "SELECT count(*) FROM t")
    assert resp.json()["results"][0]["type"] == "ok"


def test_the_server_answers_nothing_about_the_host(primary: Primary) -> None:
    for sql in ("SELECT * FROM nosuch", "SELECT 1 +", "INSERT INTO t VALUES (1, 'dup')"):
        resp = primary.execute("default", WRITER, sql)
        text = json.dumps(resp.json())
        assert primary.url.split("//")[1] not in text
        assert str(Path.cwd()) not in text and "Traceback" not in text
