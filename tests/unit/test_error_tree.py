"""One exception tree: the drawing in errors.py is the real hierarchy, and sync calls raise SyncErrors."""

from __future__ import annotations

import json
import re

import pytest

import turso_sync
from turso_sync import errors
from turso_sync.sync.push import LAST_CHANGE_SELECT
from turso_sync.testing import HttpResponse, MockTransport, pull_answer

URL = "https://remote.invalid"


def drawn_tree() -> dict[str, str]:
    """``{class: parent}`` read from the ASCII tree at the top of errors.py."""
    lines = [line for line in (errors.__doc__ or "").splitlines() if re.match(r"\s+[| ]*(\+-- )?[A-Z]\w+", line)]
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in lines:
        match = re.match(r"^(\s*(?:[| ]*\+-- )?)([A-Z]\w+)", line)
        assert match is not None
        depth, name = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[name] = stack[-1][1] if stack else "Exception"
        stack.append((depth, name))
    return parents


def test_the_drawn_tree_is_the_real_hierarchy_and_names_every_public_error():
    parents = drawn_tree()
    public = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, Exception) and not name.startswith("_")
    }
    assert set(parents) == public
    for name, parent in parents.items():
        assert getattr(errors, name).__bases__[0].__name__ == parent, name


def test_protocol_errors_are_sync_errors_and_stay_inside_pep_249():
    assert issubclass(errors.ProtocolError, errors.SyncError)
    assert issubclass(errors.SyncError, errors.OperationalError)
    assert issubclass(errors.ProtocolError, turso_sync.Error)


def test_a_malformed_page_record_is_a_protocol_error(tmp_path):
    body = pull_answer("rev-1").body + b"\x03\xff\xff\xff"  # one record of three bytes that is no PageData
    mock = MockTransport(lambda path, request, content_type: HttpResponse(200, body))
    with pytest.raises(errors.ProtocolError, match="malformed page record"):
        turso_sync.connect(tmp_path / "a.db", URL, transport=mock)


def remote(batch_answer):
    """A remote with an empty database whose pipeline answers the mark query 'no table' and a
    push batch with ``batch_answer(steps)``; the batches it was sent are collected."""
    batches: list[list[dict]] = []

    def handler(path: str, body: bytes, content_type: str) -> HttpResponse:
        if path == "/pull-updates":
            return pull_answer("rev-1")
        steps = json.loads(body)["requests"][0]["batch"]["steps"]
        if steps[0]["stmt"]["sql"] == LAST_CHANGE_SELECT:
            error = {"message": "SQLite error: no such table: turso_sync_last_change_id", "code": "SQLITE_ERROR"}
            result = {"step_results": [None], "step_errors": [error]}
        else:
            batches.append(steps)
            result = batch_answer(steps)
        return HttpResponse(200, json.dumps({"results": [{"type": "ok", "response": {"result": result}}]}).encode())

    return handler, batches


def replica_with_a_change(tmp_path, handler):
    conn = turso_sync.connect(tmp_path / "a.db", URL, transport=MockTransport(handler))
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("INSERT INTO t VALUES (1, 'x')")
    conn.commit()
    return conn


def test_a_malformed_batch_result_is_a_protocol_error(tmp_path):
    handler, _ = remote(lambda steps: {"no": "step lists"})
    conn = replica_with_a_change(tmp_path, handler)
    try:
        with pytest.raises(errors.ProtocolError, match="not a Hrana batch result"):
            conn.push()
        assert conn.stats().pending_changes >= 1
    finally:
        conn.close()


def test_the_same_refusal_after_a_pull_ends_the_push_by_its_refusal_attribute(tmp_path):
    def refuse(steps):
        failed = {"message": "UNIQUE constraint failed: t.v", "code": "SQLITE_CONSTRAINT_UNIQUE"}
        return {"step_results": [None] * len(steps), "step_errors": [None, failed] + [None] * (len(steps) - 2)}

    handler, batches = remote(refuse)
    conn = replica_with_a_change(tmp_path, handler)
    try:
        with pytest.raises(errors.PushRejectedError) as caught:
            conn.push()
        assert type(caught.value) is errors.PushRejectedError
        assert caught.value.refusal == "UNIQUE constraint failed: t.v"
        assert len(batches) == 2  # refused, pulled once, refused the same way: no third round
        assert conn.stats().pending_changes >= 1
    finally:
        conn.close()


def test_a_different_refusal_each_round_is_retried_every_round(tmp_path):
    rounds = iter(range(100))

    def refuse(steps):
        failed = {"message": f"refused for reason {next(rounds)}", "code": "SQLITE_CONSTRAINT"}
        return {"step_results": [None] * len(steps), "step_errors": [None, failed] + [None] * (len(steps) - 2)}

    handler, batches = remote(refuse)
    conn = replica_with_a_change(tmp_path, handler)
    try:
        with pytest.raises(errors.PushRejectedError, match="still refused after 5"):
            conn.push()
        assert len(batches) == 5
    finally:
        conn.close()
