"""The remote's two endpoints as sans-IO steps: ``/pull-updates`` (pages) and ``/v2/pipeline`` (SQL).

``fetch_pages`` builds a pull request, decodes the answer with the shared codecs
(``wire/pull.py``) and falls back to raw pages on a server without the zstd extension;
``pipeline`` sends Hrana requests and returns their results; ``batch_result`` and
``remote_mark`` read what a pipeline answered.  Nothing here performs I/O: each function is a
generator for a driver (``exchange.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pyroaring import BitMap

from .. import errors
from ..wire.hrana import encode_value
from ..wire.pull import PageEncoding, PullRequest, PullResponseDecoder
from . import push as push_mod
from .exchange import Request, Steps
from .state import SyncState

PULL_PATH = "/pull-updates"
PIPELINE_PATH = "/v2/pipeline"

#: How our primary's 403 for a read-only token's write begins (``primary/hrana.py``: WriteDenied)
_READ_ONLY_WORDS = "this token may only read"


@dataclass
class PulledPages:
    """A decoded ``/pull-updates`` answer: the revision it brings, the size and the pages (1-based)."""

    revision: str
    db_size: int
    pages: dict[int, bytes]


def fetch_pages(
    state: SyncState,
    client_revision: str,
    timeout: float,
    long_poll_ms: int = 0,
    *,
    server_revision: str = "",
    page_ids: BitMap | None = None,
    query: str = "",
) -> Steps[PulledPages]:
    """Ask for the pages changed since ``client_revision`` (all of them for ``""``).

    ``server_revision`` pins the answer to one revision (a partial replica's lazy fetch),
    ``page_ids`` (0-based) or ``query`` select pages.  ``state.zstd`` learns from the answer
    whether the remote speaks zstd pages.
    """
    want_zstd = state.zstd is not False
    request = PullRequest(
        encoding=PageEncoding.ZSTD if want_zstd else PageEncoding.RAW,
        server_revision=server_revision,
        client_revision=client_revision,
        long_poll_timeout_ms=long_poll_ms,
        page_ids=page_ids,
        query_selector=query,
    )
    try:
        wait = timeout + long_poll_ms / 1000
        response = yield Request(PULL_PATH, request.to_bytes(), "application/protobuf", wait, True)
    except errors.RemoteError as exc:
        if want_zstd and exc.status in (400, 415, 422, 500, 501):
            state.zstd = False  # a server without our zstd extension: speak raw
            return (
                yield from fetch_pages(
                    state,
                    client_revision,
                    timeout,
                    long_poll_ms,
                    server_revision=server_revision,
                    page_ids=page_ids,
                    query=query,
                )
            )
        raise
    return decode_pull(response.body, state)


def decode_pull(body: bytes, state: SyncState) -> PulledPages:
    """Decode a whole ``/pull-updates`` body; NetworkError if it stops short, ProtocolError if malformed."""
    decoder = PullResponseDecoder()
    try:
        pages = {page.page_id + 1: page.data for page in decoder.feed(body)}
    except errors.ProtocolError as exc:
        if decoder.header is None:
            raise
        raise errors.ProtocolError(f"pull-updates response holds a malformed page record ({exc})") from None
    try:
        decoder.close()
    except errors.ProtocolError as exc:
        # a body that stops inside a message was cut short on the way: retrying can help
        raise errors.NetworkError(f"pull-updates response ended early ({exc})") from None
    header = decoder.header
    assert header is not None  # close() raised otherwise
    if state.zstd is None:
        state.zstd = header.encoding == PageEncoding.ZSTD
    return PulledPages(header.server_revision, header.db_size, pages)


def pipeline(requests: list[dict[str, Any]], timeout: float) -> Steps[list[dict[str, Any]]]:
    """Send Hrana stream requests in one ``/v2/pipeline`` call; return their results."""
    return (yield from pipeline_body(push_mod.pipeline_body(requests), timeout))


def pipeline_body(body: bytes, timeout: float) -> Steps[list[dict[str, Any]]]:
    """``pipeline`` for a body already encoded (a push batch, whose size was checked first)."""
    try:
        response = yield Request(PIPELINE_PATH, body, "application/json", timeout, False)
    except errors.RemoteError as exc:
        raise read_only_refusal(exc) or exc from None
    try:
        results = json.loads(response.body)["results"]
    except (ValueError, KeyError, TypeError):
        raise errors.ProtocolError("pipeline response is not Hrana JSON") from None
    return list(results)


def read_only_refusal(exc: errors.RemoteError) -> errors.ReadOnlyTokenError | None:
    """The ``ReadOnlyTokenError`` for a 403 that refuses a write to a read-only token, else None.

    The status alone does not tell it from a token without access to the database; the
    answer's JSON does: a ``READ_ONLY`` code, or our primary's words for a write it refused
    (it answers ``{"error": "this token may only read, ...", "code": "FORBIDDEN"}``).
    """
    if exc.status != 403:
        return None
    try:
        answer = json.loads(exc.body)
    except ValueError:
        return None
    if not isinstance(answer, dict):
        return None
    code, message = str(answer.get("code", "")), str(answer.get("error", ""))
    if code != "READ_ONLY" and not message.startswith(_READ_ONLY_WORDS):
        return None
    return errors.ReadOnlyTokenError(exc.status, exc.body, exc.path)


def batch_result(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The result of the first (batch) request; RemoteError if it failed, ProtocolError if malformed."""
    try:
        if not results or results[0].get("type") != "ok":
            error = results[0].get("error", {}) if results else {}
            raise errors.RemoteError(200, json.dumps(error).encode(), PIPELINE_PATH)
        result = dict(results[0]["response"]["result"])
        if not isinstance(result.get("step_results"), list) or not isinstance(result.get("step_errors"), list):
            raise TypeError("step_results and step_errors must be lists")
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise errors.ProtocolError(
            f"the /v2/pipeline response is not a Hrana batch result ({exc}); is the remote a Turso sync server?"
        ) from None
    return result


def statement(sql: str, args: list[Any], *, want_rows: bool = False) -> dict[str, Any]:
    """One batch step without a condition."""
    stmt: dict[str, Any] = {"sql": sql}
    if args:
        stmt["args"] = [encode_value(v) for v in args]
    if want_rows:
        stmt["want_rows"] = True
    return {"stmt": stmt}


def remote_mark(client_id: str, timeout: float) -> Steps[tuple[int, int]]:
    """``(pull_gen, change_id)`` the remote recorded for ``client_id``: how far its pushes got."""
    step = statement(push_mod.LAST_CHANGE_SELECT, [client_id], want_rows=True)
    batch = batch_result((yield from pipeline([push_mod.batch_request([step])], timeout)))
    error = batch["step_errors"][0]
    if error:
        # the one reading of a message: a remote that never took a push has no mark table, and
        # SQLite reports that as the generic SQLITE_ERROR (no code of its own to test instead)
        if "no such table" in str(error.get("message", "")):
            return 0, 0
        raise errors.RemoteError(200, json.dumps(error).encode(), PIPELINE_PATH)
    rows = batch["step_results"][0]["rows"]
    if not rows:
        return 0, 0
    return int(rows[0][0]["value"]), int(rows[0][1]["value"])
