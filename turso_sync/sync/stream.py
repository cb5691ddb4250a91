"""Pushing one local transaction over several requests: a Hrana stream held open by batons.

A push batch (``push.build_batch``) is one remote transaction: ``BEGIN IMMEDIATE``, the
bookkeeping table, a compare-and-set guard and a change per row, the change-id mark (which
also checks the push epoch), ``COMMIT``, then ``ROLLBACK`` unless the ``COMMIT`` succeeded.
One request carries at most ``MAX_PUSH_BODY`` bytes, so a bigger transaction is sent here as a
chain of requests on one server-side stream::

    request 1   baton null   steps 0..a     BEGIN IMMEDIATE, …          + get_autocommit
    request 2   baton B1     steps a+1..b   …                          + get_autocommit
    …
    request n   baton Bn-1   steps …..end   …, mark, COMMIT, ROLLBACK

The server keeps the transaction open between requests (our primary: ``primary/streams.py``),
so it commits all at once, in the last request, or not at all: a stream cut short (a network
error, a timeout, a 4xx, a client that stops) never reaches ``COMMIT``, and the server rolls
it back (at once on ``close``, which is sent when possible; else after its idle timeout).  The
mark and ``COMMIT`` travel together in the last request, so a retry of the whole transaction
after a lost last answer is exactly-once, as for a one-request push: the next push reads the
remote's mark first.

Each step's condition refers to earlier steps of the same batch.  A step whose condition names
a step of an earlier request gets that outcome as a constant (conditions are evaluated here,
from the answers already received); the others are renumbered within their request.  When the
first step of the next request could not run (an earlier step failed), nothing more is sent:
the stream is closed and the batch reported as failed, as the single-request batch would be.

A server that keeps no transaction open between requests (``tursodb --sync-server`` refuses
``get_autocommit``; a server answering baton null while the transaction is open) is found by
``supports_streams`` before any change is sent; ``push_transaction`` then raises the same
fixed refusal a too-big push always had.

Entry points: ``supports_streams(transport, timeout)`` and ``push_transaction(transport,
batch, timeout)``, which returns the batch result (``step_results``/``step_errors`` over all of
the batch's steps) for ``push.batch_failure``.  Both are thin drivers over sans-IO steps
(``probe_steps``, ``push_steps``: generators yielding ``exchange.Request``), which the push
path (``pusher.push_once``) drives itself.  Everything else is pure.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .. import errors
from ..wire.hrana import decode_pipeline_reply, encode_json
from .exchange import Request
from .push import MAX_PUSH_BODY, PushBatch
from .transport import HttpResponse, Transport

T = TypeVar("T")

PIPELINE_PATH = "/v2/pipeline"

#: The largest request of a stream push: smaller than ``MAX_PUSH_BODY`` so each request's
#: statements finish well within a server's per-request time limit (60 s on our primary).
STREAM_REQUEST_BYTES = min(16 << 20, MAX_PUSH_BODY)

#: Bytes of each request kept free for the wrapper, the baton and the ``get_autocommit``.
_REQUEST_OVERHEAD = 1024

#: Bytes a rewritten condition may add to a step (a constant replacing a step reference).
_STEP_SLACK = 64

#: Conditions that always hold / never hold (Hrana has no literal: ``and`` of nothing is true).
TRUE_COND: dict[str, Any] = {"type": "and", "conds": []}
FALSE_COND: dict[str, Any] = {"type": "not", "cond": TRUE_COND}

#: The ``refusal`` of a push too big for one request to a server without streams (as before).
TOO_BIG_REFUSAL = "over the push size limit"


@dataclass
class StepOutcome:
    """What one step of the batch did: ran and succeeded (``ok``), ran and failed (``error``), or neither."""

    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


def plan_requests(steps: Sequence[dict[str, Any]], commit_index: int, max_body: int) -> list[range]:
    """Which steps go in which request: consecutive ranges, each request at most ``max_body`` bytes.

    The change-id mark (the step before ``COMMIT``), ``COMMIT`` and everything after it go in
    the last request.  Raises PushRejectedError when one step alone is too big for a request.
    """
    budget = max_body - _REQUEST_OVERHEAD
    sizes = [len(encode_json(step)) + 1 + _STEP_SLACK for step in steps]
    tail = max(commit_index - 1, 0)
    too_big = [i for i, size in enumerate(sizes) if size > budget]
    if too_big or sum(sizes[tail:]) > budget:
        first = too_big[0] if too_big else tail
        raise errors.PushRejectedError(
            f"one statement of the push (step {first}) takes {sizes[first]} bytes, more than the "
            f"{max_body} one request may carry; it stays pending: make the value smaller",
            refusal=TOO_BIG_REFUSAL,
        )
    ranges: list[range] = []
    start, used = 0, 0
    for i in range(tail):
        if used + sizes[i] > budget:
            ranges.append(range(start, i))
            start, used = i, 0
        used += sizes[i]
    if used + sum(sizes[tail:]) > budget:
        ranges.append(range(start, tail))
        start = tail
    ranges.append(range(start, len(steps)))
    return [r for r in ranges if len(r)]


def holds(cond: dict[str, Any] | None, outcome: Sequence[StepOutcome]) -> bool | None:
    """Whether ``cond`` holds given the outcome of earlier steps; None if it names a step not yet known."""
    if cond is None:
        return True
    kind = cond.get("type")
    if kind in ("ok", "error"):
        step = int(cond["step"])
        if step >= len(outcome):
            return None
        done = outcome[step]
        return done.result is not None if kind == "ok" else done.error is not None
    if kind == "not":
        inner = holds(cond["cond"], outcome)
        return None if inner is None else not inner
    if kind in ("and", "or"):
        values = [holds(c, outcome) for c in cond["conds"]]
        if kind == "and":
            return False if False in values else (None if None in values else True)
        return True if True in values else (None if None in values else False)
    return None  # is_autocommit: only the server knows


def rewrite_condition(cond: dict[str, Any] | None, start: int, outcome: Sequence[StepOutcome]) -> dict[str, Any] | None:
    """``cond`` for a request whose first step is batch step ``start``.

    A reference to an earlier request's step becomes a constant (its outcome is known);
    a reference within the request is renumbered from the request's first step.
    """
    if cond is None:
        return None
    kind = cond.get("type")
    if kind in ("ok", "error"):
        step = int(cond["step"])
        if step < start:
            return TRUE_COND if holds(cond, outcome) else FALSE_COND
        return {"type": kind, "step": step - start}
    if kind == "not":
        return {"type": "not", "cond": rewrite_condition(cond["cond"], start, outcome)}
    if kind in ("and", "or"):
        return {"type": kind, "conds": [rewrite_condition(c, start, outcome) for c in cond["conds"]]}
    return dict(cond)


def request_body(
    steps: Sequence[dict[str, Any]], part: range, outcome: Sequence[StepOutcome], baton: str | None, last: bool
) -> bytes:
    """The body of the request carrying ``part`` of the batch (``get_autocommit`` after it unless ``last``)."""
    rewritten = []
    for i in part:
        step = steps[i]
        condition = rewrite_condition(step.get("condition"), part.start, outcome)
        new = {"stmt": step["stmt"]}
        if condition is not None:
            new["condition"] = condition
        rewritten.append(new)
    requests: list[dict[str, Any]] = [{"type": "batch", "batch": {"steps": rewritten}}]
    if not last:
        requests.append({"type": "get_autocommit"})
    return encode_json({"baton": baton, "requests": requests})


def read_part(results: list[dict[str, Any]], part: range) -> tuple[list[StepOutcome], bool | None]:
    """The outcome of each step of ``part`` from a request's results, and the ``get_autocommit`` answer."""
    try:
        first = results[0]
        if first.get("type") != "ok":
            error = first.get("error") or {}
            raise errors.ProtocolError(
                f"the remote refused a push request of a stream: {str(error.get('message', ''))[:200]}"
            )
        batch = first["response"]["result"]
        step_results, step_errors = batch["step_results"], batch["step_errors"]
        if len(step_results) != len(part) or len(step_errors) != len(part):
            raise ValueError(f"{len(step_results)} step results for {len(part)} steps")
        autocommit: bool | None = None
        if len(results) > 1 and results[1].get("type") == "ok":
            autocommit = bool(results[1]["response"].get("is_autocommit"))
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise errors.ProtocolError(f"the /v2/pipeline response is not a Hrana batch result ({exc})") from None
    return [StepOutcome(r, e) for r, e in zip(step_results, step_errors, strict=True)], autocommit


def merged_result(outcome: Sequence[StepOutcome], total: int) -> dict[str, Any]:
    """The batch result over all ``total`` steps, as one request would have answered (unsent steps: neither)."""
    padded = [*outcome, *(StepOutcome() for _ in range(total - len(outcome)))]
    return {"step_results": [o.result for o in padded], "step_errors": [o.error for o in padded]}


#: One POST the stream steps need: the sans-IO seam's own request type, so the push path's
#: driver (blocking or asyncio) runs these steps like any other.
PipelineCall = Request


#: A stream step: yields the calls, is sent their responses (or has the transport's error thrown in).
Calls = Generator[PipelineCall, HttpResponse, T]


def drive(calls: Calls[T], transport: Transport) -> T:
    """Run ``calls`` to the end on a blocking ``transport``."""
    try:
        call = next(calls)
        while True:
            try:
                response = transport.request(call.path, call.body, call.content_type, call.timeout, call.idempotent)
            except BaseException as exc:  # the step decides: it may recover, or it re-raises
                call = calls.throw(exc)
            else:
                call = calls.send(response)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def supports_streams(transport: Transport, timeout: float, path: str = PIPELINE_PATH) -> bool:
    """True if the remote answers ``get_autocommit``, as servers keeping streams between requests do.

    The probe runs no SQL.  ``tursodb --sync-server`` refuses the request type outright (HTTP
    500) before running anything; a server that keeps no transaction between requests yet
    answers it is found by ``push_transaction`` at the first request (nothing commits there).
    """
    return drive(probe_steps(timeout, path), transport)


def probe_steps(timeout: float, path: str = PIPELINE_PATH) -> Calls[bool]:
    """``supports_streams`` as sans-IO steps."""
    body = encode_json({"baton": None, "requests": [{"type": "get_autocommit"}]})
    try:
        response = yield PipelineCall(path, body, "application/json", timeout, False)
        _baton, results = decode_pipeline_reply(response.body)
    except errors.RemoteError as exc:
        if exc.status in (400, 404, 500, 501):
            return False
        raise
    except errors.ProtocolError:
        return False
    return bool(results) and results[0].get("type") == "ok"


def push_transaction(
    transport: Transport,
    batch: PushBatch,
    timeout: float,
    *,
    max_body: int = STREAM_REQUEST_BYTES,
    path: str = PIPELINE_PATH,
) -> dict[str, Any]:
    """Send ``batch`` as one remote transaction over a chain of requests; its result over every step.

    Feed the result to ``push.batch_failure`` as for a one-request batch.  Raises:
    ``NetworkError`` when the stream was cut (nothing committed, unless the last request was
    sent and its answer lost: then the next push finds out from the remote's mark);
    ``PushRejectedError`` (refusal ``TOO_BIG_REFUSAL``) when the remote keeps no transaction
    open between requests, or a step alone is too big, or the server's bound on a stream's
    bytes was passed; ``ProtocolError`` for an answer that is not Hrana.
    """
    return drive(push_steps(batch, timeout, max_body=max_body, path=path), transport)


def push_steps(
    batch: PushBatch, timeout: float, *, max_body: int = STREAM_REQUEST_BYTES, path: str = PIPELINE_PATH
) -> Calls[dict[str, Any]]:
    """``push_transaction`` as sans-IO steps (for the push path's driver)."""
    steps = batch.steps
    plan = plan_requests(steps, batch.commit_index, max_body)
    outcome: list[StepOutcome] = []
    baton: str | None = None
    for number, part in enumerate(plan, start=1):
        last = number == len(plan)
        if part.start and holds(steps[part.start].get("condition"), outcome) is False:
            # an earlier step failed: nothing more would run; end the stream now
            yield from _close(baton, timeout, path)
            return merged_result(outcome, len(steps))
        body = request_body(steps, part, outcome, baton, last)
        try:
            response = yield PipelineCall(path, body, "application/json", timeout, False)
            new_baton, results = decode_pipeline_reply(response.body)
        except (errors.NetworkError, errors.RemoteError) as exc:
            if number > 1:
                yield from _close(baton, timeout, path)  # the server may never have seen the request
            raise _cut(exc, number, len(plan), last) from None
        done, autocommit = read_part(results, part)
        outcome.extend(done)
        if last:
            if new_baton is not None:  # the transaction should have ended with COMMIT or ROLLBACK
                yield from _close(new_baton, timeout, path)
            return merged_result(outcome, len(steps))
        failed = any(o.error is not None for o in done)
        if new_baton is None or autocommit is not False:
            if failed:  # the transaction ended with the failure: report it as the batch would
                yield from _close(new_baton, timeout, path)
                return merged_result(outcome, len(steps))
            raise errors.PushRejectedError(
                "the remote does not keep a transaction open between requests (no Hrana batons), so a "
                f"transaction bigger than one request ({max_body} bytes) cannot be pushed to it; nothing was "
                "committed and it stays pending: split it into smaller transactions",
                refusal=TOO_BIG_REFUSAL,
            )
        baton = new_baton
    raise AssertionError("unreachable: the plan ends with the last request")  # pragma: no cover


def _cut(exc: errors.SyncError, number: int, total: int, last: bool) -> errors.SyncError:
    """The error for a stream cut at request ``number`` of ``total``."""
    if isinstance(exc, errors.RemoteError) and exc.status == 413:
        return errors.PushRejectedError(
            f"the remote refused request {number} of {total} of a stream push as too large ({exc}); the "
            "transaction was rolled back and stays pending: split it into smaller transactions",
            refusal=TOO_BIG_REFUSAL,
        )
    if last:
        return errors.NetworkError(
            f"the last request ({number} of {total}) of a stream push got no answer ({exc}); the transaction "
            "may have committed: the next push asks the remote how far it got"
        )
    return errors.NetworkError(
        f"a stream push was cut at request {number} of {total} ({exc}); the remote rolls the transaction "
        "back (nothing of it was committed): push again"
    )


def _close(baton: str | None, timeout: float, path: str) -> Calls[None]:
    """End the stream ``baton`` names now (best effort: else the server's idle timeout ends it)."""
    if baton is None:
        return
    body = encode_json({"baton": baton, "requests": [{"type": "close"}]})
    with contextlib.suppress(errors.SyncError):
        yield PipelineCall(path, body, "application/json", min(timeout, 10.0), False)
