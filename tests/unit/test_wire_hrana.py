"""Hrana JSON codec: values, requests (with validation paths), responses."""

from __future__ import annotations

import json
import math

import pytest

from turso_sync.errors import ProtocolError
from turso_sync.wire import hrana as h


@pytest.mark.parametrize(
    ("value", "obj"),
    [
        (None, {"type": "null"}),
        (42, {"type": "integer", "value": "42"}),
        (-(2**63), {"type": "integer", "value": "-9223372036854775808"}),
        (1.5, {"type": "float", "value": 1.5}),
        ("héllo", {"type": "text", "value": "héllo"}),
        (b"\x00\x01\xff", {"type": "blob", "base64": "AAH/"}),
        (b"ab", {"type": "blob", "base64": "YWI"}),  # no padding on output, as Turso's clients
    ],
)
def test_value_round_trip(value: h.SqlValue, obj: dict) -> None:
    assert h.encode_value(value) == obj
    assert h.decode_value(obj, "$") == value


def test_value_decoding_is_lenient_where_harmless() -> None:
    assert h.decode_value({"type": "blob", "base64": "YWI="}, "$") == b"ab"  # padding accepted
    assert h.decode_value({"type": "integer", "value": 7}, "$") == 7  # a JSON number too
    assert h.decode_value({"type": "float", "value": 2}, "$") == 2.0
    assert h.decode_value({"type": "text", "value": "x", "extra": 1}, "$") == "x"  # unknown keys ignored


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ({"type": "integer", "value": "1.5"}, "decimal string"),
        ({"type": "integer", "value": "9223372036854775808"}, "64 bits"),
        ({"type": "integer", "value": True}, "decimal string"),
        ({"type": "float", "value": "1.5"}, "JSON number"),
        ({"type": "text", "value": 3}, "JSON string"),
        ({"type": "blob", "base64": "!!!"}, "base64"),
        ({"type": "blob"}, "base64"),
        ({"type": "date", "value": "x"}, "unknown value type"),
        ([], "JSON object"),
    ],
)
def test_bad_values_name_the_path(obj: object, match: str) -> None:
    with pytest.raises(ProtocolError, match=match) as info:
        h.decode_value(obj, "$.requests[0].stmt.args[2]")
    assert "$.requests[0].stmt.args[2]" in str(info.value)


PUSH = {
    "baton": None,
    "requests": [
        {
            "type": "batch",
            "batch": {
                "steps": [
                    {
                        "condition": None,
                        "stmt": {"sql": "BEGIN IMMEDIATE", "sql_id": None, "args": [], "named_args": []},
                    },
                    {
                        "condition": {"type": "not", "cond": {"type": "is_autocommit"}},
                        "stmt": {
                            "sql": "INSERT INTO t VALUES (?, ?)",
                            "args": [{"type": "integer", "value": "1"}, {"type": "text", "value": "a"}],
                            "named_args": [],
                            "want_rows": False,
                            "replication_index": None,
                        },
                    },
                    {
                        "condition": {
                            "type": "and",
                            "conds": [
                                {"type": "ok", "step": 1},
                                {"type": "or", "conds": [{"type": "error", "step": 0}]},
                            ],
                        },
                        "stmt": {"sql": "COMMIT"},
                    },
                ],
                "replication_index": None,
            },
        },
        {"type": "execute", "stmt": {"sql": "SELECT :a", "named_args": [{"name": ":a", "value": {"type": "null"}}]}},
        {"type": "close"},
    ],
}


def test_pipeline_request_decodes_turso_push() -> None:
    pipe = h.PipelineRequest.from_bytes(json.dumps(PUSH).encode())
    batch, execute, close = pipe.requests
    assert isinstance(batch, h.BatchRequest) and isinstance(execute, h.ExecuteRequest)
    assert isinstance(close, h.CloseRequest)
    assert batch.steps[1].condition == h.NotCond(h.IsAutocommitCond())
    assert batch.steps[1].stmt.args == (1, "a") and batch.steps[1].stmt.want_rows is False
    assert batch.steps[2].condition == h.AndCond((h.OkCond(1), h.OrCond((h.ErrorCond(0),))))
    assert execute.stmt.named_args == ((":a", None),)
    again = h.PipelineRequest.from_bytes(pipe.to_bytes())
    assert again == pipe


def _one_step_batch(condition: dict) -> bytes:
    steps = [{"stmt": {"sql": "x"}, "condition": condition}]
    return json.dumps({"requests": [{"type": "batch", "batch": {"steps": steps}}]}).encode()


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'{"requests": {}}', "must be a list"),
        (b'{"requests": [{"type": "frobnicate"}]}', "unknown request type"),
        (b'{"requests": [{"type": "execute", "stmt": {}}]}', "exactly one of sql and sql_id"),
        (b'{"requests": [{"type": "execute", "stmt": {"sql": 5}}]}', "str"),
        (b'{"requests": [{"type": "execute", "stmt": {"sql": "x", "want_rows": "yes"}}]}', "bool"),
        (_one_step_batch({"type": "ok", "step": 0}), "earlier steps"),
        (_one_step_batch({"type": "maybe"}), "unknown condition"),
        (
            b'{"requests": [{"type": "execute", "stmt": {"sql": "x", "args": [{"type": "float", "value": NaN}]}}]}',
            "NaN",
        ),
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 100000, "not valid JSON"),
    ],
)
def test_bad_pipelines_raise_protocol_errors(body: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        h.PipelineRequest.from_bytes(body)


def test_conditions_may_not_nest_without_bound() -> None:
    cond: dict = {"type": "is_autocommit"}
    for _ in range(h.MAX_COND_DEPTH + 2):
        cond = {"type": "not", "cond": cond}
    body = {"requests": [{"type": "batch", "batch": {"steps": [{"stmt": {"sql": "x"}, "condition": cond}]}}]}
    with pytest.raises(ProtocolError, match="deeper"):
        h.PipelineRequest.from_bytes(json.dumps(body).encode())


def test_response_encoding() -> None:
    result = h.StmtResult([h.Col("x", "INTEGER")], [[1, None, b"\x01", math.inf, -math.inf]], 1, 7)
    batch = h.BatchResult([result, None], [None, h.HranaError("boom", "SQLITE_ERROR")])
    body = h.encode_pipeline_response(
        [
            h.StreamResponse("batch", batch),
            h.HranaError("bad", "X"),
            h.StreamResponse("get_autocommit", is_autocommit=True),
        ]
    )
    obj = json.loads(body)  # infinities travel as 1e999: valid JSON
    assert obj["baton"] is None and obj["base_url"] is None
    first, second, third = obj["results"]
    assert first["type"] == "ok" and first["response"]["type"] == "batch"
    step = first["response"]["result"]["step_results"][0]
    assert step["last_insert_rowid"] == "7" and step["affected_row_count"] == 1
    assert step["rows"][0][:3] == [
        {"type": "integer", "value": "1"},
        {"type": "null"},
        {"type": "blob", "base64": "AQ"},
    ]
    assert step["rows"][0][3]["value"] == math.inf and step["rows"][0][4]["value"] == -math.inf
    assert first["response"]["result"]["step_errors"] == [None, {"message": "boom", "code": "SQLITE_ERROR"}]
    assert second == {"type": "error", "error": {"message": "bad", "code": "X"}}
    assert third == {"type": "ok", "response": {"type": "get_autocommit", "is_autocommit": True}}
    decoded = h.StmtResult.from_json(step, "$")
    assert decoded.rows[0][:3] == [1, None, b"\x01"] and decoded.last_insert_rowid == 7


def test_infinity_substitution_leaves_strings_alone() -> None:
    tricky = 'he said "value": Infinity'
    body = h.encode_pipeline_response([h.StreamResponse("execute", h.StmtResult(rows=[[tricky, math.inf]]))])
    row = json.loads(body)["results"][0]["response"]["result"]["rows"][0]
    assert row[0]["value"] == tricky and row[1]["value"] == math.inf


# --- both directions: what the client encodes the primary decodes, and back -----------------------


def test_client_encoded_requests_decode_to_the_same_objects() -> None:
    """Every request type, every value type and condition, through ``to_bytes`` and ``from_bytes``."""
    values = (None, 0, -(2**63), 2**63 - 1, 1.5, math.inf, -math.inf, "", "héllo", b"", b"\x00\xff")
    steps = (
        h.BatchStep(h.Stmt("BEGIN IMMEDIATE")),
        h.BatchStep(h.Stmt("INSERT INTO t VALUES (?, ?)", args=values, want_rows=False), h.OkCond(0)),
        h.BatchStep(h.Stmt(sql_id=3, named_args=((":a", 1), ("$b", b"x"))), h.OrCond((h.OkCond(1), h.ErrorCond(1)))),
        h.BatchStep(h.Stmt("COMMIT"), h.AndCond((h.OkCond(2), h.NotCond(h.IsAutocommitCond())))),
        h.BatchStep(h.Stmt("ROLLBACK"), h.NotCond(h.OkCond(3))),
        h.BatchStep(h.Stmt("SELECT 1"), h.AndCond(())),
    )
    pipe = h.PipelineRequest(
        (
            h.StoreSqlRequest(3, "UPDATE t SET v = :a WHERE k = $b"),
            h.BatchRequest(steps),
            h.ExecuteRequest(h.Stmt("SELECT ?", args=(7,))),
            h.SequenceRequest("SELECT 1; SELECT 2"),
            h.DescribeRequest(sql_id=3),
            h.CloseSqlRequest(3),
            h.GetAutocommitRequest(),
            h.CloseRequest(),
        ),
        "baton-1",
    )
    assert h.PipelineRequest.from_bytes(pipe.to_bytes()) == pipe


def test_requests_carry_only_what_differs_from_hrana_defaults() -> None:
    """Fewer bytes per push: no null, empty or default fields."""
    assert h.Stmt("SELECT 1").to_json() == {"sql": "SELECT 1"}
    assert h.Stmt(sql_id=2, want_rows=False).to_json() == {"sql_id": 2, "want_rows": False}
    assert h.BatchStep(h.Stmt("x")).to_json() == {"stmt": {"sql": "x"}}
    assert h.BatchStep(h.Stmt("x", args=(1,)), h.OkCond(0)).to_json() == {
        "stmt": {"sql": "x", "args": [{"type": "integer", "value": "1"}]},
        "condition": {"type": "ok", "step": 0},
    }
    assert h.SequenceRequest("x").to_json() == {"type": "sequence", "sql": "x"}
    assert h.PipelineRequest((h.CloseRequest(),)).to_bytes() == b'{"baton":null,"requests":[{"type":"close"}]}'


def test_primary_encoded_responses_decode_to_the_same_objects() -> None:
    rows: list[list[h.SqlValue]] = [[1, None, b"\x01", "t", 2.5, math.inf], [-(2**63), 0.0, b"", "", -math.inf, 0]]
    result = h.StmtResult([h.Col("a", "INTEGER"), h.Col(None)], rows, 2, 7)
    results: list[h.StreamResult] = [
        h.StreamResponse(
            "batch", h.BatchResult([result, None, h.StmtResult()], [None, h.HranaError("boom", "E"), None])
        ),
        h.HranaError("bad", "X"),
        h.StreamResponse("execute", h.StmtResult(affected_row_count=1)),
        h.StreamResponse("get_autocommit", is_autocommit=False),
        h.StreamResponse("describe", h.DescribeResult([":a", None], [h.Col("x", "TEXT")], False, True)),
        h.StreamResponse("close"),
        h.StreamResponse("store_sql"),
    ]
    body = h.encode_pipeline_response(results, "b-2")
    decoded = h.PipelineResponse.from_bytes(body)
    assert decoded == h.PipelineResponse(results, "b-2")
    assert decoded.to_bytes() == body
    asked = ("batch", "execute", "execute", "get_autocommit", "describe", "close", "store_sql")
    assert h.PipelineResponse.from_bytes(body, asked) == decoded


def test_a_response_is_read_as_the_answer_to_its_request() -> None:
    untyped = b'{"results": [{"type": "ok", "response": {"result": {"step_results": [], "step_errors": []}}}]}'
    (result,) = h.PipelineResponse.from_bytes(untyped, ("batch",)).results
    assert result == h.StreamResponse("batch", h.BatchResult([], []))
    with pytest.raises(ProtocolError, match="type string"):
        h.PipelineResponse.from_bytes(untyped)
    with pytest.raises(
        ProtocolError, match=r"\$\.results\[0\]\.response\.type: a 'batch' response answers a 'execute'"
    ):
        h.PipelineResponse.from_bytes(
            h.encode_pipeline_response([h.StreamResponse("batch", h.BatchResult([], []))]), ("execute",)
        )


def _batch_answer(result: object) -> bytes:
    return json.dumps({"results": [{"type": "ok", "response": {"type": "batch", "result": result}}]}).encode()


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b'{"baton": 7, "results": []}', r"\$\.baton"),
        (b'{"results": {}}', r"\$\.results: must be a list"),
        (b'{"results": [{"type": "maybe"}]}', r"\$\.results\[0\]\.type: a result is ok or error"),
        (b'{"results": [{"type": "error", "error": {"code": "X"}}]}', r"\$\.results\[0\]\.error\.message"),
        (_batch_answer({"no": "step lists"}), "step_results and step_errors must be lists"),
        (_batch_answer({"step_results": [None], "step_errors": []}), "1 step results but 0 step errors"),
        (_batch_answer({"step_results": [{"rows": [7]}], "step_errors": [None]}), r"step_results\[0\]\.rows\[0\]"),
        (
            _batch_answer({"step_results": [{"rows": [[{"type": "integer", "value": "x"}]]}], "step_errors": [None]}),
            r"step_results\[0\]\.rows\[0\]\[0\]\.value: an integer value must be a decimal string",
        ),
        (
            _batch_answer({"step_results": [{"last_insert_rowid": "1.5"}], "step_errors": [None]}),
            r"step_results\[0\]\.last_insert_rowid",
        ),
        (_batch_answer({"step_results": [{"affected_row_count": "2"}], "step_errors": [None]}), "affected_row_count"),
        (
            b'{"results": [{"type": "ok", "response": {"type": "get_autocommit"}}]}',
            r"\$\.results\[0\]\.response\.is_autocommit",
        ),
    ],
)
def test_bad_responses_raise_protocol_errors_naming_the_path(body: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        h.PipelineResponse.from_bytes(body)


def test_responses_take_hrana_defaults_and_ignore_unknown_fields() -> None:
    """What ``tursodb --sync-server`` sends: more fields than we read, and an error without a code is fine."""
    body = _batch_answer(
        {
            "step_results": [{"rows": [], "rows_read": 0, "query_duration_ms": 0.0}, None],
            "step_errors": [None, {"message": "no such table: x"}],
            "replication_index": None,
        }
    )
    (response,) = h.PipelineResponse.from_bytes(body, ("batch",)).results
    assert response == h.StreamResponse(
        "batch", h.BatchResult([h.StmtResult(), None], [None, h.HranaError("no such table: x", "")])
    )
