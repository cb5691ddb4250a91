"""The primary's HTTP surface, request by request: auth, limits, bad input, pulls on the wire.

One server (with a token file and a small body limit) serves the whole module.  Nothing may
ever answer 500; every refusal has the documented status and a JSON body.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pyroaring import BitMap

from tests.conftest import wait_for
from tests.integration.primary_harness import PrimaryProcess
from turso_sync.sync.transport import HttpTransport
from turso_sync.wire import answer_coding
from turso_sync.wire import pull_updates_pb2 as pb
from turso_sync.wire.pull import PageEncoding, PullRequest, PullResponseDecoder

WRITER = "writer-" + os.urandom(12).hex()
READER = "reader-" + os.urandom(12).hex()
ORDERS = "orders-" + os.urandom(12).hex()
LIMIT = 64 * 1024
HTTP = httpx.Client(timeout=60)  # one client: a new one per request costs more than the request


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrimaryProcess]:
    root = tmp_path_factory.mktemp("primary-http")
    tokens = root / "tokens"
    tokens.write_text(f"{WRITER} rw *\n{READER} r default\n{ORDERS} rw orders\n")
    tokens.chmod(0o600)
    proc = PrimaryProcess(root / "data", "--token-file", str(tokens), "--max-body-bytes", str(LIMIT))
    proc.start()
    yield proc
    proc.close()
    log = proc.log()
    for token in (WRITER, READER, ORDERS):
        assert token not in log, "a token reached the server log"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post(server: PrimaryProcess, path: str, body: bytes | dict[str, Any], token: str | None = WRITER) -> httpx.Response:
    content = json.dumps(body).encode() if isinstance(body, dict) else body
    return HTTP.post(server.url + path, content=content, headers=auth(token) if token else {})


def execute(sql: str, *args: dict[str, Any]) -> dict[str, Any]:
    return {"baton": None, "requests": [{"type": "execute", "stmt": {"sql": sql, "args": list(args)}}]}


def result_of(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    return resp.json()["results"][0]


def pull(server: PrimaryProcess, req: PullRequest, path: str = "/pull-updates") -> tuple[Any, dict[int, bytes], int]:
    resp = post(server, path, req.to_bytes())
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/protobuf"
    decoder = PullResponseDecoder()
    pages = {p.page_id: p.data for p in decoder.feed(resp.content)}
    decoder.close()
    return decoder.header, pages, len(resp.content)


def test_health(server: PrimaryProcess) -> None:
    resp = httpx.get(server.url + "/health", timeout=10)
    assert resp.status_code == 200 and resp.json()["status"] == "ok"


# --- authentication and authorization --------------------------------------------------------


@pytest.mark.parametrize("path", ["/pull-updates", "/v2/pipeline", "/db/orders/pull-updates"])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope-" + "x" * 20}, {"Authorization": WRITER}])
def test_missing_or_wrong_token_is_401(server: PrimaryProcess, path: str, headers: dict[str, str]) -> None:
    resp = httpx.post(server.url + path, content=b"", headers=headers, timeout=10)
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"].startswith("Bearer")
    assert resp.json()["code"] == "UNAUTHORIZED"


def test_token_scoped_to_other_databases_is_403(server: PrimaryProcess) -> None:
    assert post(server, "/db/orders/v2/pipeline", execute("SELECT 1"), ORDERS).status_code == 200
    for path in ("/v2/pipeline", "/db/stock/v2/pipeline", "/pull-updates"):
        resp = post(server, path, execute("SELECT 1") if "pipeline" in path else b"", ORDERS)
        assert resp.status_code == 403, path
        assert resp.json()["code"] == "FORBIDDEN"
    assert post(server, "/db/orders/pull-updates", b"", READER).status_code == 403


def test_read_only_token_reads_but_may_not_write(server: PrimaryProcess) -> None:
    assert result_of(post(server, "/v2/pipeline", execute("CREATE TABLE IF NOT EXISTS ro(x)")))["type"] == "ok"
    assert result_of(post(server, "/v2/pipeline", execute("SELECT count(*) FROM ro"), READER))["type"] == "ok"
    assert post(server, "/pull-updates", b"", READER).status_code == 200
    for sql in ("INSERT INTO ro VALUES (1)", "CREATE TABLE ro2(x)", "BEGIN IMMEDIATE"):
        resp = post(server, "/v2/pipeline", execute(sql), READER)
        assert resp.status_code == 403, sql
        assert "may only read" in resp.json()["error"]
    count = result_of(post(server, "/v2/pipeline", execute("SELECT count(*) FROM ro"), READER))
    assert count["response"]["result"]["rows"] == [[{"type": "integer", "value": "0"}]]


def test_read_only_token_cannot_create_a_database(server: PrimaryProcess, tmp_path: Path) -> None:
    tokens = tmp_path / "t"
    tokens.write_text(f"{READER} r *\n")
    proc = PrimaryProcess(tmp_path / "data", "--token-file", str(tokens))
    proc.start()
    try:
        resp = httpx.post(proc.url + "/db/fresh/pull-updates", content=b"", headers=auth(READER), timeout=10)
        assert resp.status_code == 404 and "does not exist" in resp.json()["error"]
        assert not (tmp_path / "data" / "databases" / "fresh").exists()
    finally:
        proc.close()


# --- limits and malformed input --------------------------------------------------------------


@pytest.mark.parametrize("path", ["/pull-updates", "/v2/pipeline", "/db/big/v2/pipeline"])
def test_oversized_body_is_413(server: PrimaryProcess, path: str) -> None:
    resp = post(server, path, b"x" * (LIMIT + 1))
    assert resp.status_code == 413
    assert resp.json()["code"] == "REQUEST_ENTITY_TOO_LARGE"


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xff\xff\xff",  # truncated varint
        b"\x1a\x10short",  # length runs past the end
        b"\x0c",  # end of a group that never started
        b"\x0f",  # wire type 7 does not exist
        pb.PullUpdatesReqProtoBody(client_revision="not-a-number").SerializeToString(),
        pb.PullUpdatesReqProtoBody(client_revision="-3").SerializeToString(),
        pb.PullUpdatesReqProtoBody(client_revision="99999999999999999999").SerializeToString(),
        pb.PullUpdatesReqProtoBody(client_revision="999999").SerializeToString(),  # newer than the database
        pb.PullUpdatesReqProtoBody(server_revision="abc").SerializeToString(),
        pb.PullUpdatesReqProtoBody(encoding=5).SerializeToString(),  # type: ignore[arg-type]
        pb.PullUpdatesReqProtoBody(stream_kind=1).SerializeToString(),  # type: ignore[arg-type]
        pb.PullUpdatesReqProtoBody(server_pages_selector=b"\x00garbage").SerializeToString(),
    ],
)
def test_malformed_pull_requests_are_400(server: PrimaryProcess, body: bytes) -> None:
    resp = post(server, "/pull-updates", body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["code"] == "BAD_REQUEST"


def test_unknown_protobuf_fields_are_ignored(server: PrimaryProcess) -> None:
    body = pb.PullUpdatesReqProtoBody().SerializeToString() + b"\xf8\x06\x01" + b"\x8a\x07\x03abc"
    assert post(server, "/pull-updates", body).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"null",
        b"[]",
        b'{"requests": "nope"}',
        b'{"requests": [{"type": "explode"}]}',
        b'{"requests": [{"type": "execute"}]}',
        b'{"requests": [{"type": "execute", "stmt": {"sql": "SELECT ?", '
        b'"args": [{"type": "integer", "value": 1.5}]}}]}',
        b'{"requests": [{"type": "execute", "stmt": {"sql": "SELECT ?", "args": [{"type": "blob", "base64": "*"}]}}]}',
        b'{"requests": [{"type": "batch", "batch": {"steps": [{"stmt": {"sql": "SELECT 1"}, '
        b'"condition": {"type": "ok", "step": 5}}]}}]}',
        b'{"baton": "abc", "requests": []}',
        b"\xff\xfe\x00",
    ],
)
def test_malformed_pipelines_are_400(server: PrimaryProcess, body: bytes) -> None:
    resp = post(server, "/v2/pipeline", body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["code"] == "BAD_REQUEST" and resp.json()["error"]


def test_an_unknown_baton_is_refused_clearly(server: PrimaryProcess) -> None:
    """Streams exist (docs/primary.md), but only for batons this server handed out."""
    resp = post(server, "/v2/pipeline", {"baton": "b1", "requests": []})
    assert resp.status_code == 400 and resp.json()["code"] == "BAD_REQUEST", resp.text
    assert "baton" in resp.json()["error"]


def test_unknown_json_fields_are_ignored(server: PrimaryProcess) -> None:
    body = execute("SELECT 1")
    body["future_field"] = {"x": 1}
    body["requests"][0]["stmt"]["replication_index"] = "7"
    body["requests"][0]["stmt"]["another"] = True
    assert result_of(post(server, "/v2/pipeline", body))["type"] == "ok"


def test_sql_errors_are_hrana_errors_not_http_errors(server: PrimaryProcess) -> None:
    post(server, "/v2/pipeline", execute("CREATE TABLE IF NOT EXISTS uniq(id INTEGER PRIMARY KEY)"))
    resp = post(
        server,
        "/v2/pipeline",
        {
            "baton": None,
            "requests": [
                {"type": "execute", "stmt": {"sql": "SELEKT 1"}},
                {
                    "type": "batch",
                    "batch": {
                        "steps": [
                            {"stmt": {"sql": "SELECT * FROM turso_sync_missing_table"}},
                            {"stmt": {"sql": "INSERT INTO uniq VALUES (1)"}},
                            {"stmt": {"sql": "INSERT INTO uniq VALUES (1)"}},
                            {"stmt": {"sql": "SELECT 42"}, "condition": {"type": "error", "step": 2}},
                        ]
                    },
                },
            ],
        },
    )
    assert resp.status_code == 200
    first, second = resp.json()["results"]
    assert first["type"] == "error" and "syntax error" in first["error"]["message"]
    batch = second["response"]["result"]
    assert "no such table" in batch["step_errors"][0]["message"]  # what Turso's first push relies on
    assert batch["step_errors"][1] is None
    assert batch["step_errors"][2]["code"] == "SQLITE_CONSTRAINT_PRIMARYKEY"
    assert batch["step_results"][3]["rows"] == [[{"type": "integer", "value": "42"}]]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/pull-updates", 405),
        ("GET", "/v2/pipeline", 405),
        ("POST", "/v3/pipeline", 404),
        ("POST", "/db/bad.name/pull-updates", 404),
        ("POST", "/db/" + "x" * 65 + "/pull-updates", 404),
        ("POST", "/db/a/b/pull-updates", 404),
        ("GET", "/db/../../etc/passwd", 404),
    ],
)
def test_routes_and_names(server: PrimaryProcess, method: str, path: str, status: int) -> None:
    resp = httpx.request(method, server.url + path, headers=auth(WRITER), content=b"", timeout=10)
    assert resp.status_code == status
    assert resp.json()["code"]


def test_random_bodies_never_500(server: PrimaryProcess) -> None:
    rng = random.Random(1234)
    valid_pull = PullRequest(client_revision="1", page_ids=BitMap([0, 1])).to_bytes()
    valid_pipe = json.dumps(execute("SELECT ?", {"type": "integer", "value": "5"})).encode()
    statuses = set()
    for i in range(300):
        base = valid_pull if i % 2 else valid_pipe
        body = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            pos = rng.randrange(len(body) + 1)
            if op < 0.4 and body:
                body[min(pos, len(body) - 1)] = rng.randrange(256)
            elif op < 0.7:
                body[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            else:
                del body[pos : pos + rng.randint(1, 8)]
        path = "/pull-updates" if i % 2 else "/v2/pipeline"
        resp = post(server, path, bytes(body))
        statuses.add(resp.status_code)
        assert resp.status_code in (200, 400), (path, bytes(body), resp.status_code, resp.text)
    assert statuses == {200, 400}
    assert server.health()["status"] == "ok"


# --- pulls on the wire -----------------------------------------------------------------------


def test_bootstrap_incremental_selector_and_zstd(server: PrimaryProcess) -> None:
    path = "/db/wire/v2/pipeline"
    post(server, path, execute("CREATE TABLE w(id INTEGER PRIMARY KEY, body TEXT)"))
    post(server, path, execute("INSERT INTO w(body) SELECT printf('%.3000c', 'a') FROM (SELECT 1 UNION SELECT 2)"))
    header, pages, _ = pull(server, PullRequest(), "/db/wire/pull-updates")
    assert header.encoding == PageEncoding.RAW
    assert sorted(pages) == list(range(header.db_size))  # 0-based ids, every page
    assert pages[0][:16] == b"SQLite format 3\0" and pages[0][20] == 28  # reserved bytes for encrypted replicas
    revision = header.server_revision

    post(server, path, execute("INSERT INTO w(body) VALUES ('one more')"))
    delta_header, delta, _ = pull(server, PullRequest(client_revision=revision), "/db/wire/pull-updates")
    assert int(delta_header.server_revision) == int(revision) + 1
    assert 0 < len(delta) < len(pages)
    up_to_date = PullRequest(client_revision=delta_header.server_revision)
    again, nothing, size = pull(server, up_to_date, "/db/wire/pull-updates")
    assert nothing == {} and again.server_revision == delta_header.server_revision and size < 32

    _, picked, _ = pull(server, PullRequest(page_ids=BitMap([0, 2, 10_000])), "/db/wire/pull-updates")
    assert sorted(picked) == [0, 2]

    z_header, z_pages, z_size = pull(server, PullRequest(encoding=PageEncoding.ZSTD), "/db/wire/pull-updates")
    _, r_pages, r_size = pull(server, PullRequest(), "/db/wire/pull-updates")
    assert z_header.encoding == PageEncoding.ZSTD and z_pages == r_pages
    assert z_size < r_size / 2


def test_pinned_server_revision(server: PrimaryProcess) -> None:
    path = "/db/pinned/v2/pipeline"
    post(server, path, execute("CREATE TABLE p(x)"))
    header, _, _ = pull(server, PullRequest(), "/db/pinned/pull-updates")
    pinned, pages, _ = pull(server, PullRequest(server_revision=header.server_revision), "/db/pinned/pull-updates")
    assert pinned.server_revision == header.server_revision and pages
    post(server, path, execute("INSERT INTO p VALUES (randomblob(3000))"))
    # pages changed after the pinned revision come back as they were then (partial replicas need this)
    again, old_pages, _ = pull(server, PullRequest(server_revision=header.server_revision), "/db/pinned/pull-updates")
    assert again.server_revision == header.server_revision and again.db_size == pinned.db_size
    assert old_pages == pages
    _, latest, _ = pull(server, PullRequest(), "/db/pinned/pull-updates")
    assert latest != pages


def test_long_poll_on_the_wire(server: PrimaryProcess) -> None:
    path = "/db/poll/v2/pipeline"
    post(server, path, execute("CREATE TABLE e(x)"))
    header, _, _ = pull(server, PullRequest(), "/db/poll/pull-updates")
    started = time.monotonic()
    quiet, pages, _ = pull(
        server, PullRequest(client_revision=header.server_revision, long_poll_timeout_ms=200), "/db/poll/pull-updates"
    )
    assert pages == {} and quiet.server_revision == header.server_revision
    assert time.monotonic() - started >= 0.2  # it did wait for its timeout

    answer: dict[str, Any] = {}

    def poll() -> None:
        answer["result"] = pull(
            server,
            PullRequest(client_revision=header.server_revision, long_poll_timeout_ms=120_000),
            "/db/poll/pull-updates",
        )

    waiter = threading.Thread(target=poll)
    waiter.start()
    wait_for(lambda: server.health()["long_polls_waiting"] >= 1, timeout=30, what="the long-poll to park")
    post(server, path, execute("INSERT INTO e VALUES (1)"))
    waiter.join(60)
    assert not waiter.is_alive()
    woke, changed, _ = answer["result"]
    assert int(woke.server_revision) > int(header.server_revision) and changed


def test_client_going_away_mid_pull_is_harmless(server: PrimaryProcess) -> None:
    import socket

    path = "/db/gone/v2/pipeline"
    post(server, path, execute("CREATE TABLE g(x)"))
    fill = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000) "
    post(server, path, execute(fill + "INSERT INTO g SELECT randomblob(1000) FROM n"))
    request = (
        f"POST /db/gone/pull-updates HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WRITER}\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(request)
            assert sock.recv(1000).startswith(b"HTTP/1.1 200")
    assert server.health()["status"] == "ok"
    _, pages, _ = pull(server, PullRequest(), "/db/gone/pull-updates")
    assert len(pages) > 1000
    assert "Error handling request" not in server.log()


def test_development_mode_accepts_any_token_and_says_so(tmp_path: Path) -> None:
    proc = PrimaryProcess(tmp_path / "data")
    proc.start()
    try:
        for headers in ({}, {"Authorization": "Bearer anything-at-all"}, {"Authorization": "garbage"}):
            resp = HTTP.post(proc.url + "/v2/pipeline", json=execute("SELECT 1"), headers=headers)
            assert resp.status_code == 200
    finally:
        proc.close()
    log = proc.log()
    assert "development mode" in log and "loopback only" in log
    assert "anything-at-all" not in log


@pytest.mark.parametrize(
    ("accept", "gzipped"),
    [
        ("gzip", True),
        ("gzip, deflate, zstd", True),
        ("br, *", True),
        ("identity", False),
        ("gzip;q=0", False),
        ("", False),
    ],
)
def test_json_answers_go_gzipped_only_to_clients_that_accept_gzip(
    server: PrimaryProcess, accept: str, gzipped: bool
) -> None:
    long_text = "a row of text " * 60
    resp = HTTP.post(
        server.url + "/v2/pipeline",
        content=json.dumps(execute("SELECT ? AS v", {"type": "text", "value": long_text})).encode(),
        headers={**auth(WRITER), "Accept-Encoding": accept},
    )
    assert resp.status_code == 200, resp.text
    assert (resp.headers.get("content-encoding") == "gzip") is gzipped
    assert result_of(resp)["response"]["result"]["rows"] == [[{"type": "text", "value": long_text}]]
    if gzipped:
        assert resp.headers["vary"] == "Accept-Encoding"
        assert resp.num_bytes_downloaded < len(resp.content) / 3  # the repeated text packs well
    else:
        assert resp.num_bytes_downloaded == len(resp.content)
    short = HTTP.post(
        server.url + "/v2/pipeline",
        content=json.dumps(execute("SELECT 1")).encode(),
        headers={**auth(WRITER), "Accept-Encoding": accept},
    )
    assert "content-encoding" not in short.headers  # too short to pay
    assert result_of(short)["response"]["result"]["rows"] == [[{"type": "integer", "value": "1"}]]


CODED = answer_coding.CODING


@pytest.mark.parametrize("accept", [CODED, f"{CODED}, gzip", f"gzip, {CODED}"])
def test_json_answers_go_in_the_preset_dictionary_coding_to_clients_that_name_it(
    server: PrimaryProcess, accept: str
) -> None:
    for sql in ("SELECT 1", "SELECT 2 AS two, 'text' AS t"):  # short answers too: the dictionary pays
        resp = HTTP.post(
            server.url + "/v2/pipeline",
            content=json.dumps(execute(sql)).encode(),
            headers={**auth(WRITER), "Accept-Encoding": accept},
        )
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-encoding"] == answer_coding.CODING
        assert resp.headers["vary"] == "Accept-Encoding"
        plain = answer_coding.decode(resp.content, 1 << 20)  # httpx hands over the coding it does not know as is
        assert json.loads(plain)["results"][0]["response"]["result"]["rows"][0][0]["value"] in ("1", "2")
        assert len(resp.content) < len(plain) / 2


def test_our_transport_counts_the_bytes_that_travelled(server: PrimaryProcess) -> None:
    transport = HttpTransport(server.url, auth_token=WRITER)
    try:
        body = json.dumps(execute("SELECT ? AS v", {"type": "text", "value": "x" * 4000})).encode()
        answer = transport.request("/v2/pipeline", body, "application/json", timeout=30, idempotent=False)
        assert answer.headers.get("content-encoding") == answer_coding.CODING  # ours: the preset dictionary
        assert "x" * 4000 in answer.body.decode()  # handed over decoded
        assert transport.stats.sent == len(body)
        assert 0 < transport.stats.received < len(answer.body) / 10  # counted as sent: compressed
    finally:
        transport.close()
