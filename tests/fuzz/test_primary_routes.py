"""Fuzzing the primary's routes with hypothesis against a real ``turso-sync serve`` on 127.0.0.1 (issue 13).

What is generated: Hrana pipelines (valid shapes with wrong types, odd values, hostile SQL),
protobuf pull requests (every field, out-of-range enums, broken page selectors, raw and
mutated bytes), bodies under ``Content-Encoding`` (zstd, gzip, deflate; valid and garbage),
database names in the path, and headers (``Authorization``, ``Content-Type``, extras); and
malformed HTTP over raw sockets.

The invariants, for every request: never a 500 (a 4xx, or 503 for a bound, and 2xx); never a
connection dropped without a status on a well-formed HTTP request; no path, traceback or
version in any answer; and at the end the server still answers ``/health`` and its log holds
no traceback.

Budget: ``make test`` runs each test for ``TURSO_FUZZ_EXAMPLES`` examples (default 50, well
under a minute for the module); a campaign raises it, for example::

    TURSO_FUZZ_EXAMPLES=5000 TURSO_FUZZ_SEED=$(date +%s) .venv/bin/pytest -q tests/fuzz --hypothesis-show-statistics

Runs are seeded (``TURSO_FUZZ_SEED``, default 13), so a failure replays with the same seed.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import socket
import urllib.parse
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import zstandard
from hypothesis import HealthCheck, event, given, reject, seed, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from pyroaring import BitMap

from tests.integration.primary_harness import PrimaryProcess
from turso_sync.wire import pull_updates_pb2 as pb

EXAMPLES = int(os.environ.get("TURSO_FUZZ_EXAMPLES") or "50")
SEED = int(os.environ.get("TURSO_FUZZ_SEED") or "13")
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # seeded runs, nothing kept between them
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)

WRITER = "fuzz-writer-" + os.urandom(8).hex()
READER = "fuzz-reader-" + os.urandom(8).hex()
BODY_LIMIT = 256 * 1024

#: Names a client may use, so most requests reach a database; the rest are generated.
NAMES = ["default", "fz1", "fz-2", "Fz_3"]

#: SQL a hostile client would try, beside generated text; each must end in a 200 or a clean refusal.
SQL = [
    "SELECT 1",
    "SELECT ?",
    "SELECT :a, @b, $c",
    "CREATE TABLE IF NOT EXISTS f(a, b)",
    "INSERT INTO f VALUES (?, ?)",
    "INSERT INTO f SELECT a, b FROM f LIMIT 50",
    "SELECT * FROM f",
    "UPDATE f SET a = a + 1",
    "DELETE FROM f",
    "DROP TABLE IF EXISTS f",
    "CREATE INDEX IF NOT EXISTS fi ON f(a)",
    "BEGIN",
    "BEGIN IMMEDIATE",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT s",
    "RELEASE s",
    "PRAGMA database_list",
    "PRAGMA user_version = 7",
    "PRAGMA query_only = 1",
    "PRAGMA writable_schema = 1",
    "PRAGMA hard_heap_limit = 1",
    "PRAGMA journal_mode = DELETE",
    "ATTACH ':memory:' AS m",
    "ATTACH '/etc/passwd' AS p",
    "CREATE TEMP TABLE t(x)",
    "CREATE TABLE temp.t2(x)",
    "VACUUM",
    "VACUUM INTO '/tmp/x.db'",
    "SELECT load_extension('x')",
    "SELECT sqlite_version(), sqlite_source_id()",
    "SELECT zeroblob(1000000)",
    "SELECT randomblob(?)",
    "SELECT * FROM nope",
    "SELECT 1; SELECT 2",
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n",
    "SELECT * FROM sqlite_schema",
    "SELECT * FROM dbstat",
    "",
    ";",
    "-- only a comment",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrimaryProcess]:
    root = tmp_path_factory.mktemp("fuzz")
    tokens = root / "tokens"
    tokens.write_text(f"{WRITER} rw *\n{READER} r *\n")
    tokens.chmod(0o600)
    proc = PrimaryProcess(
        root / "data",
        "--token-file",
        str(tokens),
        "--max-body-bytes",
        str(BODY_LIMIT),
        "--max-long-poll-ms",
        "50",
        "--max-statement-seconds",
        "0.2",
        "--max-pipeline-seconds",
        "1",
        "--max-response-bytes",
        str(1024 * 1024),
        "--max-value-bytes",
        str(1024 * 1024),
        "--access-log",  # one line per request at the default level: the 500 check below reads them
    )
    proc.start()
    httpx.post(
        proc.url + "/v2/pipeline",
        json={"baton": None, "requests": [{"type": "execute", "stmt": {"sql": "CREATE TABLE f(a, b)"}}]},
        headers={"Authorization": f"Bearer {WRITER}"},
        timeout=30,
    ).raise_for_status()
    yield proc
    assert httpx.get(proc.url + "/health", timeout=30).json()["status"] == "ok"
    proc.close()
    log = proc.log()
    at = log.find("Traceback")
    assert at < 0, log[max(0, at - 300) : at + 4000]  # the first traceback, whatever followed it
    assert '" 200 ' in log, "no access log lines: the 500 check would read nothing"
    assert '" 500 ' not in log, "a 500 in the access log"


HTTP = httpx.Client(timeout=60)


def host_facts(server: PrimaryProcess) -> list[str]:
    """Strings no answer may hold: the data directory (and its parents below /tmp), versions, traces."""
    data = str(server.data_dir)
    return [data, str(Path(data).parent), "Traceback", 'File "', "aiohttp/", "Python/", str(Path.home())]


def send(server: PrimaryProcess, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    """One request; a connection dropped without a status fails the test, as does any invariant."""
    try:
        resp = HTTP.post(server.url + path, content=body, headers=headers)
    except httpx.LocalProtocolError:
        reject()  # httpx would not send it: not a well-formed request (raw bytes have their own test)
    except httpx.TransportError as exc:
        raise AssertionError(f"no status for POST {path!r} ({type(exc).__name__}: {exc})") from None
    check(server, resp)
    if currently_in_test_context():
        event(f"status {resp.status_code}")  # shown by --hypothesis-show-statistics: how deep the inputs get
    return resp


def check(server: PrimaryProcess, resp: httpx.Response) -> None:
    assert resp.status_code < 500 or resp.status_code == 503, (resp.status_code, resp.text[:500])
    assert resp.headers.get("server") == "turso-sync", resp.headers
    text = resp.content.decode("utf-8", "replace")
    for fact in host_facts(server):
        assert fact not in text, f"{fact!r} in an answer: {text[:500]}"


# --- strategies ---------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=16)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

sql_texts = (
    st.sampled_from(SQL)
    | st.text(max_size=40)
    | st.builds(lambda a, b: f"{a} {b}", st.sampled_from(SQL), st.text(max_size=12))
)


def hrana_value() -> st.SearchStrategy[Any]:
    good = st.one_of(
        st.just({"type": "null"}),
        st.integers(-(2**63), 2**63 - 1).map(lambda i: {"type": "integer", "value": str(i)}),
        st.floats(allow_nan=False).map(lambda f: {"type": "float", "value": f}),
        st.text(max_size=30).map(lambda t: {"type": "text", "value": t}),
        st.binary(max_size=64).map(lambda b: {"type": "blob", "base64": base64.b64encode(b).decode()}),
    )
    odd = st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["null", "integer", "float", "text", "blob", "bool", ""]) | st.text(max_size=6),
            "value": json_values,
            "base64": json_values | st.text(alphabet="ABCD=+/_-!", max_size=12),
        },
    )
    return good | odd | json_values


stmts = st.fixed_dictionaries(
    {"sql": sql_texts},
    optional={
        "args": st.lists(hrana_value(), max_size=4) | json_values,
        "named_args": st.lists(
            st.fixed_dictionaries({"name": st.sampled_from([":a", "@b", "$c", "a", ""]), "value": hrana_value()}),
            max_size=3,
        )
        | json_values,
        "want_rows": st.booleans() | json_values,
        "sql_id": st.integers(-2, 3) | json_values,
    },
) | st.dictionaries(st.sampled_from(["sql", "sql_id", "args", "named_args", "want_rows"]), json_values, max_size=3)

conditions = st.recursive(
    st.one_of(
        st.builds(
            lambda k, s: {"type": k, "step": s}, st.sampled_from(["ok", "error"]), st.integers(-1, 5) | json_values
        ),
        st.just({"type": "is_autocommit"}),
        json_values,
    ),
    lambda inner: st.one_of(
        inner.map(lambda c: {"type": "not", "cond": c}),
        st.builds(lambda k, cs: {"type": k, "conds": cs}, st.sampled_from(["and", "or"]), st.lists(inner, max_size=3)),
    ),
    max_leaves=6,
)

steps = st.fixed_dictionaries({"stmt": stmts}, optional={"condition": conditions})

stream_requests = st.one_of(
    stmts.map(lambda s: {"type": "execute", "stmt": s}),
    st.lists(steps, max_size=5).map(lambda ss: {"type": "batch", "batch": {"steps": ss}}),
    sql_texts.map(lambda q: {"type": "sequence", "sql": q}),
    sql_texts.map(lambda q: {"type": "describe", "sql": q}),
    st.builds(lambda i, q: {"type": "store_sql", "sql_id": i, "sql": q}, st.integers(-2, 3) | json_values, sql_texts),
    st.builds(lambda i: {"type": "close_sql", "sql_id": i}, st.integers(-2, 3) | json_values),
    st.just({"type": "close"}),
    st.just({"type": "get_autocommit"}),
    st.dictionaries(st.sampled_from(["type", "stmt", "batch", "sql", "sql_id"]), json_values, max_size=3),
)

well_formed_pipelines = st.builds(
    lambda reqs: {"baton": None, "requests": reqs},
    st.lists(st.one_of(stmts.map(lambda x: {"type": "execute", "stmt": x}), stream_requests), min_size=1, max_size=5),
)
pipeline_bodies = st.one_of(
    well_formed_pipelines,
    well_formed_pipelines,
    well_formed_pipelines,
    st.builds(
        lambda reqs, baton: {"baton": baton, "requests": reqs},
        st.lists(stream_requests, max_size=5),
        st.none() | json_values,
    ),
    json_values,
).map(lambda doc: json.dumps(doc).encode()) | st.binary(max_size=200)


def database_paths(route: str) -> st.SearchStrategy[str]:
    generated = st.text(max_size=80).map(lambda n: "/db/" + urllib.parse.quote(n, safe="") + route)
    named = st.sampled_from(NAMES).map(lambda n: f"/db/{n}{route}")
    return st.one_of(  # about four in six reach a database
        st.just(route),
        named,
        named,
        named,
        generated,
        st.sampled_from(
            ["/db/../" + route.lstrip("/"), "/db/%2e%2e" + route, "/db/a%2Fb" + route, "/db/" + "n" * 70 + route]
        ),
    )


valid_tokens = st.sampled_from([WRITER, WRITER, READER]).map(lambda t: f"Bearer {t}")
tokens = st.one_of(  # about four in six are valid
    valid_tokens,
    valid_tokens,
    valid_tokens,
    valid_tokens,
    st.sampled_from(["", "Bearer", "Bearer ", "Basic abc", f"bearer {WRITER}", f"Bearer {WRITER} extra"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60),
)

extra_headers = st.dictionaries(
    st.sampled_from(["Content-Type", "Accept", "Accept-Encoding", "X-Forwarded-For", "Expect", "Origin", "Cookie"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
    max_size=3,
)


def selector_bytes() -> st.SearchStrategy[bytes]:
    valid = st.lists(st.integers(0, 5000), max_size=20).map(lambda ids: BitMap(ids).serialize())
    return (
        valid
        | st.binary(max_size=40)
        | valid.flatmap(lambda b: st.integers(0, max(0, len(b) - 1)).map(lambda n: b[:n]))
    )


revisions = st.one_of(st.just(""), st.integers(0, 50).map(str), st.text(max_size=20), st.just("18446744073709551616"))


@st.composite
def pull_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["message", "message", "message", "bytes", "mutated"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    msg = pb.PullUpdatesReqProtoBody()
    msg.encoding = draw(st.sampled_from([0, 0, 1, 2, 7]))  # type: ignore[assignment]
    msg.server_revision = draw(revisions)
    msg.client_revision = draw(revisions)
    msg.long_poll_timeout_ms = draw(st.sampled_from([0, 0, 10, 4294967295]))
    if draw(st.booleans()):
        msg.server_pages_selector = draw(selector_bytes())
    msg.client_pages = draw(st.binary(max_size=10))
    if draw(st.integers(0, 3)) == 0:
        msg.server_query_selector = draw(sql_texts)
    msg.stream_kind = draw(st.sampled_from([0, 0, 1, 2, 9]))  # type: ignore[assignment]
    data = msg.SerializeToString()
    if kind == "mutated" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
        data = data[: draw(st.integers(0, len(data)))]
    return data


def encoded(body: bytes, encoding: str) -> bytes:
    if encoding == "zstd":
        return zstandard.ZstdCompressor().compress(body)
    if encoding == "gzip":
        return gzip.compress(body)
    if encoding == "deflate":
        return zlib.compress(body)
    return body


# --- the tests ----------------------------------------------------------------------------------


@seed(SEED)
@FUZZ
@given(path=database_paths("/v2/pipeline"), body=pipeline_bodies, authorization=tokens, headers=extra_headers)
def test_pipeline_route(
    server: PrimaryProcess, path: str, body: bytes, authorization: str, headers: dict[str, str]
) -> None:
    headers = {**headers, "Authorization": authorization}
    resp = send(server, path, body, headers)
    if resp.status_code == 200:
        assert "results" in resp.json()


@seed(SEED)
@FUZZ
@given(
    name=st.sampled_from(NAMES), body=well_formed_pipelines.map(lambda d: json.dumps(d).encode()), token=valid_tokens
)
def test_pipeline_sql_deep(server: PrimaryProcess, name: str, body: bytes, token: str) -> None:
    """Past the HTTP checks every time: the SQL, values and conditions are what vary."""
    resp = send(server, f"/db/{name}/v2/pipeline", body, {"Authorization": token})
    assert resp.status_code in (200, 400, 403, 404), resp.text  # 403: a reader's write; 404: a reader's new name
    if resp.status_code == 200:
        results = resp.json()["results"]
        assert len(results) == len(json.loads(body)["requests"])


@seed(SEED)
@FUZZ
@given(name=st.sampled_from(NAMES), body=pull_bodies(), token=valid_tokens)
def test_pull_deep(server: PrimaryProcess, name: str, body: bytes, token: str) -> None:
    """Past the HTTP checks every time: the protobuf fields are what vary."""
    send(server, f"/db/{name}/pull-updates", body, {"Authorization": token})


@seed(SEED)
@FUZZ
@given(path=database_paths("/pull-updates"), body=pull_bodies(), authorization=tokens, headers=extra_headers)
def test_pull_route(
    server: PrimaryProcess, path: str, body: bytes, authorization: str, headers: dict[str, str]
) -> None:
    send(server, path, body, {**headers, "Authorization": authorization})


@seed(SEED)
@FUZZ
@given(
    route=st.sampled_from(["/v2/pipeline", "/pull-updates"]),
    body=pipeline_bodies | pull_bodies(),
    encoding=st.sampled_from(["zstd", "gzip", "deflate", "br", "identity", "zstd, gzip", "x-unknown"]),
    garble=st.booleans(),
    authorization=st.sampled_from([f"Bearer {WRITER}", f"Bearer {READER}"]),
)
def test_compressed_bodies(
    server: PrimaryProcess, route: str, body: bytes, encoding: str, garble: bool, authorization: str
) -> None:
    data = encoded(body, encoding.split(",")[0])
    if garble and data:
        data = data[: len(data) // 2] + b"\x00garbage"
    resp = send(server, route, data, {"Authorization": authorization, "Content-Encoding": encoding})
    if encoding != "identity":  # bodies are taken uncompressed
        assert resp.status_code == 415 and resp.json()["code"] == "UNSUPPORTED_MEDIA_TYPE", resp.text


def test_decompression_bombs_are_never_opened(server: PrimaryProcess) -> None:
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\x00" * (BODY_LIMIT * 64))
    for route in ("/v2/pipeline", "/pull-updates"):
        for encoding, data in (("zstd", bomb), ("gzip", gzip.compress(b"\x00" * (BODY_LIMIT * 64)))):
            resp = send(server, route, data, {"Authorization": f"Bearer {WRITER}", "Content-Encoding": encoding})
            assert resp.status_code == 415, (route, encoding, resp.status_code, resp.text)


@seed(SEED)
@FUZZ
@given(
    request_line=st.one_of(
        st.sampled_from(
            [
                b"POST /v2/pipeline HTTP/1.1",
                b"GET /health HTTP/1.1",
                b"POST /db/fz1/pull-updates HTTP/1.0",
                b"PRI * HTTP/2.0",
                b"GET /health HTTP/9.9",
                b"POST /v2/pipeline",
            ]
        ),
        st.binary(max_size=60),
    ),
    header_lines=st.lists(
        st.one_of(
            st.sampled_from(
                [
                    b"Host: x",
                    b"Content-Length: 5",
                    b"Content-Length: -1",
                    b"Content-Length: 99999999999999999999",
                    b"Transfer-Encoding: chunked",
                    b"Transfer-Encoding: gzip, chunked",
                    b"Content-Length: 3\r\nContent-Length: 4",
                    b"Expect: 100-continue",
                    b"Connection: upgrade\r\nUpgrade: websocket",
                    b"Authorization: Bearer " + WRITER.encode(),
                    b"X" * 9000 + b": y",
                ]
            ),
            st.binary(max_size=40),
        ),
        max_size=6,
    ),
    body=st.binary(max_size=50),
)
def test_malformed_http_keeps_the_server_up(
    server: PrimaryProcess, request_line: bytes, header_lines: list[bytes], body: bytes
) -> None:
    raw = request_line + b"\r\n" + b"".join(h + b"\r\n" for h in header_lines) + b"\r\n" + body
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        try:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)  # the server sees the end instead of waiting for more
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionResetError, BrokenPipeError):
            answer = b""
    status_line = answer.split(b"\r\n", 1)[0]
    assert b" 500 " not in status_line, answer[:300]
    for fact in host_facts(server):
        assert fact.encode() not in answer, (fact, answer[:300])
    assert b"Python/" not in answer and b"aiohttp" not in answer
    assert HTTP.get(server.url + "/health").status_code == 200
