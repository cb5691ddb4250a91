"""Pushing one local transaction over several requests: a Hrana stream held open by batons.

A push batch (``push.build_batch``) is one remote transaction: ``BEGIN IMMEDIATE``, the move
of the change-id mark (a compare-and-set on the mark and push epoch the batch was built on;
after the bookkeeping table on a first push), a compare-and-set guard and a change per row,
``COMMIT``, then ``ROLLBACK`` unless the ``COMMIT`` succeeded.
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
``COMMIT`` travels in the last request, so a retry of the whole transaction after a lost last
answer is exactly-once, as for a one-request push: the next push reads the remote's mark
first.  The mark's move is in the first request: a stream built on a wrong belief stops there.

Each step's condition refers to earlier steps of the same batch.  A step whose condition names
a step of an earlier request gets that outcome as a constant (conditions are evaluated here,
from the answers already received); the others are renumbered within their request.  When the
first step of the next request could not run (an earlier step failed), nothing more is sent:
the stream is closed and the batch reported as failed, as the single-request batch would be.

A server that keeps no transaction open between requests (``tursodb --sync-server`` refuses
``get_autocommit``; a server answering baton null while the transaction is open) is found by
``supports_streams`` before any change is sent; ``push_transaction`` then raises the same
fixed refusal a too-big push always had.

Requests are built from the typed classes of ``wire/hrana.py`` and answers decoded with the
same codec (the primary's).

Entry points: ``supports_streams(transport, timeout)`` and ``push_transaction(transport,
batch, timeout)``, which returns the ``BatchResult`` over all of the batch's steps for
``push.batch_failure``.  Both are thin drivers over sans-IO steps
(``probe_steps``, ``push_steps``: generators yielding ``exchange.Request``), which the push
path (``pusher.push_once``) drives itself.  Everything else is pure.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from .. import errors
from ..wire.hrana import (
    AndCond,
    BatchRequest,
    BatchResult,
    BatchStep,
    CloseRequest,
    Cond,
    ErrorCond,
    GetAutocommitRequest,
    HranaError,
    NotCond,
    OkCond,
    OrCond,
    PipelineRequest,
    PipelineResponse,
    StmtResult,
    StreamRequest,
    StreamResponse,
    StreamResult,
    decode_cond,
    encode_cond,
    encode_json,
)
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
ALWAYS: Cond = AndCond(())
NEVER: Cond = NotCond(ALWAYS)
#: Their JSON objects.
TRUE_COND: dict[str, Any] = encode_cond(ALWAYS)
FALSE_COND: dict[str, Any] = encode_cond(NEVER)

#: A step as ``PushBatch.request`` holds it, or its JSON object (as ``PushBatch.steps`` lists it).
AnyStep = BatchStep | dict[str, Any]

#: The ``refusal`` of a push too big for one request to a server without streams (as before).
TOO_BIG_REFUSAL = "over the push size limit"


@dataclass
class StepOutcome:
    """What one step of the batch did: ran and succeeded (``ok``), ran and failed (``error``), or neither."""

    result: StmtResult | None = None
    error: HranaError | None = None


def typed_steps(steps: Sequence[AnyStep]) -> list[BatchStep]:
    """``steps`` as ``BatchStep``s (a JSON object is decoded with the shared codec)."""
    return [s if isinstance(s, BatchStep) else BatchStep.from_json(s, f"steps[{i}]") for i, s in enumerate(steps)]


def plan_requests(steps: Sequence[AnyStep], commit_index: int, max_body: int) -> list[range]:
    """Which steps go in which request: consecutive ranges, each request at most ``max_body`` bytes.

    The step before ``COMMIT`` (the last change, or the mark of a batch built without one),
    ``COMMIT`` and everything after it go in the last request.  Raises PushRejectedError when
    one step alone is too big for a request.
    """
    budget = max_body - _REQUEST_OVERHEAD
    sizes = [len(encode_json(step.to_json())) + 1 + _STEP_SLACK for step in typed_steps(steps)]
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


def holds(cond: Cond | dict[str, Any] | None, outcome: Sequence[StepOutcome]) -> bool | None:
    """Whether ``cond`` holds given the outcome of earlier steps; None if it names a step not yet known."""
    if cond is None:
        return True
    if isinstance(cond, dict):
        cond = decode_cond(cond, "condition")
    if isinstance(cond, OkCond | ErrorCond):
        if cond.step >= len(outcome):
            return None
        done = outcome[cond.step]
        return done.result is not None if isinstance(cond, OkCond) else done.error is not None
    if isinstance(cond, NotCond):
        inner = holds(cond.cond, outcome)
        return None if inner is None else not inner
    if isinstance(cond, AndCond | OrCond):
        values = [holds(c, outcome) for c in cond.conds]
        if isinstance(cond, AndCond):
            return False if False in values else (None if None in values else True)
        return True if True in values else (None if None in values else False)
    return None  # is_autocommit: only the server knows


@overload
def rewrite_condition(cond: None, start: int, outcome: Sequence[StepOutcome]) -> None: ...
@overload
def rewrite_condition(cond: Cond, start: int, outcome: Sequence[StepOutcome]) -> Cond: ...
@overload
def rewrite_condition(cond: dict[str, Any], start: int, outcome: Sequence[StepOutcome]) -> dict[str, Any]: ...


def rewrite_condition(
    cond: Cond | dict[str, Any] | None, start: int, outcome: Sequence[StepOutcome]
) -> Cond | dict[str, Any] | None:
    """``cond`` for a request whose first step is batch step ``start`` (a JSON object gives one back).

    A reference to an earlier request's step becomes a constant (its outcome is known);
    a reference within the request is renumbered from the request's first step.
    """
    if cond is None:
        return None
    if isinstance(cond, dict):
        return encode_cond(rewrite_condition(decode_cond(cond, "condition"), start, outcome))
    if isinstance(cond, OkCond | ErrorCond):
        if cond.step < start:
            return ALWAYS if holds(cond, outcome) else NEVER
        return type(cond)(cond.step - start)
    if isinstance(cond, NotCond):
        return NotCond(rewrite_condition(cond.cond, start, outcome))
    if isinstance(cond, AndCond | OrCond):
        return type(cond)(tuple(rewrite_condition(c, start, outcome) for c in cond.conds))
    return cond


def request_body(
    steps: Sequence[AnyStep], part: range, outcome: Sequence[StepOutcome], baton: str | None, last: bool
) -> bytes:
    """The body of the request carrying ``part`` of the batch (``get_autocommit`` after it unless ``last``)."""
    typed = typed_steps([steps[i] for i in part])
    rewritten = tuple(BatchStep(s.stmt, rewrite_condition(s.condition, part.start, outcome)) for s in typed)
    requests: list[StreamRequest] = [BatchRequest(rewritten)]
    if not last:
        requests.append(GetAutocommitRequest())
    return PipelineRequest(tuple(requests), baton).to_bytes()


def read_part(results: Sequence[StreamResult], part: range) -> tuple[list[StepOutcome], bool | None]:
    """The outcome of each step of ``part`` from a request's results, and the ``get_autocommit`` answer."""
    if not results:
        raise errors.ProtocolError("the /v2/pipeline response is not a Hrana batch result (no results)")
    first = results[0]
    if isinstance(first, HranaError):
        raise errors.ProtocolError(f"the remote refused a push request of a stream: {first.message[:200]}")
    batch = first.result
    if not isinstance(batch, BatchResult):
        raise errors.ProtocolError(f"the /v2/pipeline response is not a Hrana batch result (a {first.type!r} response)")
    if len(batch.step_results) != len(part):
        raise errors.ProtocolError(
            f"the /v2/pipeline response is not a Hrana batch result ({len(batch.step_results)} step results "
            f"for {len(part)} steps)"
        )
    autocommit: bool | None = None
    if len(results) > 1 and isinstance(results[1], StreamResponse):
        autocommit = bool(results[1].is_autocommit)
    return [StepOutcome(r, e) for r, e in zip(batch.step_results, batch.step_errors, strict=True)], autocommit


def merged_result(outcome: Sequence[StepOutcome], total: int) -> BatchResult:
    """The batch result over all ``total`` steps, as one request would have answered (unsent steps: neither)."""
    padded = [*outcome, *(StepOutcome() for _ in range(total - len(outcome)))]
    return BatchResult([o.result for o in padded], [o.error for o in padded])


def decode_reply(body: bytes, asked: Sequence[str]) -> tuple[str | None, list[StreamResult]]:
    """The baton and the results of a pipeline answer to requests of types ``asked`` (ProtocolError
    if it is not one)."""
    reply = PipelineResponse.from_bytes(body, asked)
    return reply.baton, reply.results


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
    body = PipelineRequest((GetAutocommitRequest(),)).to_bytes()
    try:
        response = yield PipelineCall(path, body, "application/json", timeout, False)
        _baton, results = decode_reply(response.body, (GetAutocommitRequest.type,))
    except errors.RemoteError as exc:
        if exc.status in (400, 404, 500, 501):
            return False
        raise
    except errors.ProtocolError:
        return False
    return bool(results) and isinstance(results[0], StreamResponse)


def push_transaction(
    transport: Transport,
    batch: PushBatch,
    timeout: float,
    *,
    max_body: int = STREAM_REQUEST_BYTES,
    path: str = PIPELINE_PATH,
) -> BatchResult:
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
) -> Calls[BatchResult]:
    """``push_transaction`` as sans-IO steps (for the push path's driver)."""
    steps = batch.request.steps
    plan = plan_requests(steps, batch.commit_index, max_body)
    outcome: list[StepOutcome] = []
    baton: str | None = None
    for number, part in enumerate(plan, start=1):
        last = number == len(plan)
        if part.start and holds(steps[part.start].condition, outcome) is False:
            # an earlier step failed: nothing more would run; end the stream now
            yield from _close(baton, timeout, path)
            return merged_result(outcome, len(steps))
        body = request_body(steps, part, outcome, baton, last)
        try:
            response = yield PipelineCall(path, body, "application/json", timeout, False)
            asked = (BatchRequest.type,) if last else (BatchRequest.type, GetAutocommitRequest.type)
            new_baton, results = decode_reply(response.body, asked)
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
    body = PipelineRequest((CloseRequest(),), baton).to_bytes()
    with contextlib.suppress(errors.SyncError):
        yield PipelineCall(path, body, "application/json", min(timeout, 10.0), False)
