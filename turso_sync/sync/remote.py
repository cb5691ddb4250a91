"""The remote's two endpoints as sans-IO steps: ``/pull-updates`` (pages) and ``/v2/pipeline`` (SQL).

``fetch_pages`` builds a pull request, decodes the answer with the shared codecs
(``wire/pull.py``) and falls back to raw pages on a server without the zstd extension; asked
to, it asks a server that speaks zstd pages (ours) for page deltas too, which the install
applies to the replica's synced images (``PulledPages.resolved``);
``run_batch`` sends one Hrana batch built from the typed classes of ``wire/hrana.py`` and
decodes its answer with the same codec the primary encodes it with (``batch_result``);
``remote_mark`` reads how far this client's pushes got (a push needs it only when its belief
may be wrong: ``pusher.py``).  Nothing here performs I/O: each
function is a generator for a driver (``exchange.py``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pyroaring import BitMap

from .. import errors
from ..wire.hrana import BatchRequest, BatchResult, BatchStep, HranaError, PipelineResponse, SqlValue, Stmt, encode_json
from ..wire.pull import (
    PAGE_DELTAS_VERSION,
    ZSTD_FRAME_PAGES,
    DeltaBaseMismatch,
    PageDeltas,
    PageEncoding,
    PullRequest,
    PullResponseDecoder,
)
from . import push as push_mod
from .exchange import Request, Steps
from .state import SyncState

PULL_PATH = "/pull-updates"
PIPELINE_PATH = "/v2/pipeline"

#: How our primary's 403 for a read-only token's write begins (``primary/hrana.py``: WriteDenied)
_READ_ONLY_WORDS = "this token may only read"


@dataclass
class PulledPages:
    """A decoded ``/pull-updates`` answer: the revision it brings, the size and the pages (1-based).

    ``deltas``: pages that came as deltas against the images at the revision asked from (only
    when ``fetch_pages`` asked for them); ``resolved`` turns them into pages.  ``previous``: an
    answer this one continues (it was asked from ``previous.revision``: see ``then``).
    """

    revision: str
    db_size: int
    pages: dict[int, bytes]
    deltas: PageDeltas | None = None
    previous: PulledPages | None = None

    @property
    def count(self) -> int:
        """Pages received, whole or as deltas (those of ``previous`` included)."""
        own = len(self.pages) + (len(self.deltas.all_ids) if self.deltas is not None else 0)
        return own + (self.previous.count if self.previous is not None else 0)

    def then(self, later: PulledPages) -> PulledPages:
        """This answer and ``later``, an answer asked from this one's revision, as one answer from
        where this one started: its pages are this one's, changed by ``later``."""
        return PulledPages(later.revision, later.db_size, later.pages, later.deltas, previous=self)

    def resolved(self, base: Callable[[int], bytes]) -> dict[int, bytes]:
        """Every page (1-based), the deltas applied to ``base(pgno)``: the replica's images at the
        revision the pull asked from.  Raises ``DeltaBaseMismatch`` (a ProtocolError) if those
        are not the images the server used, ProtocolError if the deltas are corrupt."""
        read = _base_or_mismatch(base)
        earlier = self.previous.resolved(base) if self.previous is not None else {}

        def start(pgno: int) -> bytes:  # the images at the revision this answer was asked from
            image = earlier.get(pgno)
            return image if image is not None else read(pgno)

        pages = {pgno: image for pgno, image in earlier.items() if pgno <= self.db_size}
        pages.update(self.pages)
        if self.deltas is not None:
            for page_id, image in self.deltas.apply(lambda page_id: start(page_id + 1)).items():
                pages[page_id + 1] = image
        return pages


def _base_or_mismatch(base: Callable[[int], bytes]) -> Callable[[int], bytes]:
    """``base``, where a page the replica cannot read (its file is shorter) is a base that differs."""

    def read(pgno: int) -> bytes:
        try:
            return base(pgno)
        except errors.DatabaseError as exc:
            raise DeltaBaseMismatch(f"page {pgno}: this replica holds no synced image of it ({exc})") from None

    return read


def fetch_pages(
    state: SyncState,
    client_revision: str,
    timeout: float,
    long_poll_ms: int = 0,
    *,
    server_revision: str = "",
    page_ids: BitMap | None = None,
    query: str = "",
    deltas: bool = False,
) -> Steps[PulledPages]:
    """Ask for the pages changed since ``client_revision`` (all of them for ``""``).

    ``server_revision`` pins the answer to one revision (a partial replica's lazy fetch),
    ``page_ids`` (0-based) or ``query`` select pages.  ``state.zstd`` learns from the answer
    whether the remote speaks zstd pages.  ``deltas``: ask for page deltas too, if the remote
    is known to speak zstd pages (only our primary does; others are never asked).
    """
    want_zstd = state.zstd is not False
    ask_deltas = deltas and state.zstd is True and bool(client_revision)
    request = PullRequest(
        encoding=PageEncoding.ZSTD if want_zstd else PageEncoding.RAW,
        server_revision=server_revision,
        client_revision=client_revision,
        long_poll_timeout_ms=long_poll_ms,
        page_ids=page_ids,
        query_selector=query,
        page_deltas=ask_deltas,
        page_deltas_version=PAGE_DELTAS_VERSION if ask_deltas else 0,
        zstd_frame_pages=ZSTD_FRAME_PAGES if want_zstd else 0,  # frames of several pages, where the server can
    )
    try:
        wait = timeout + long_poll_ms / 1000
        sink = functools.partial(PullSink, request.zstd_frame_pages)
        response = yield Request(PULL_PATH, request.to_bytes(), "application/protobuf", wait, True, sink)
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
    decoded = response.decoded if isinstance(response.decoded, PullSink) else None
    return decode_pull(response.body, state, deltas=ask_deltas, frame_pages=request.zstd_frame_pages, fed=decoded)


class PullSink:
    """A ``/pull-updates`` body decoded as it arrives (``transport.BodySink``): the pages of
    each piece are unpacked while the next pieces travel.  An error is kept, not raised, so
    ``decode_pull`` reports it as it would for the whole body."""

    def __init__(self, frame_pages: int) -> None:
        self.decoder = PullResponseDecoder(frame_pages)
        self.pages: dict[int, bytes] = {}
        self.error: errors.ProtocolError | None = None

    def feed(self, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            for page in self.decoder.feed(data):
                self.pages[page.page_id + 1] = page.data
        except errors.ProtocolError as exc:
            self.error = exc


def decode_pull(
    body: bytes, state: SyncState, *, deltas: bool = False, frame_pages: int = 1, fed: PullSink | None = None
) -> PulledPages:
    """Decode a whole ``/pull-updates`` body; NetworkError if it stops short, ProtocolError if malformed
    (page deltas in the answer to a request that did not ask for them, ``deltas`` False, too; a zstd
    frame of more pages than ``frame_pages``, what the request asked, too).  ``fed``: a sink
    that was fed this body as it arrived; its pages are taken instead of decoding ``body`` again."""
    if fed is None:
        fed = PullSink(frame_pages)
        fed.feed(body)
    decoder, pages = fed.decoder, fed.pages
    if fed.error is not None:
        if decoder.header is None:
            raise fed.error
        raise errors.ProtocolError(f"pull-updates response holds a malformed page record ({fed.error})") from None
    try:
        decoder.close()
    except errors.ProtocolError as exc:
        # a body that stops inside a message was cut short on the way: retrying can help
        raise errors.NetworkError(f"pull-updates response ended early ({exc})") from None
    header = decoder.header
    assert header is not None  # close() raised otherwise
    if header.deltas is not None and not deltas:
        raise errors.ProtocolError("pull-updates response carries page deltas, which the request did not ask for")
    if state.zstd is None:
        state.zstd = header.encoding == PageEncoding.ZSTD
    return PulledPages(header.server_revision, header.db_size, pages, header.deltas)


def run_batch(steps: Sequence[BatchStep], timeout: float) -> Steps[BatchResult]:
    """Run ``steps`` as one Hrana batch in one ``/v2/pipeline`` call; its result."""
    return (yield from pipeline_body(push_mod.pipeline_body([BatchRequest(tuple(steps))]), timeout))


def pipeline_body(body: bytes, timeout: float) -> Steps[BatchResult]:
    """``run_batch`` for a body already encoded (a push batch, whose size was checked first)."""
    try:
        response = yield Request(PIPELINE_PATH, body, "application/json", timeout, False)
    except errors.RemoteError as exc:
        raise read_only_refusal(exc) or exc from None
    return batch_result(response.body)


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


def batch_result(body: bytes) -> BatchResult:
    """The result of the first (batch) request of a pipeline answer.

    RemoteError if the remote answered that request with an error; ProtocolError if the body
    is not a Hrana pipeline response carrying a batch result.
    """
    try:
        results = PipelineResponse.from_bytes(body, (BatchRequest.type,)).results
    except errors.ProtocolError as exc:
        raise _not_a_batch_result(str(exc)) from None
    if not results:
        raise _not_a_batch_result("no results")
    first = results[0]
    if isinstance(first, HranaError):
        raise errors.RemoteError(200, encode_json(first.to_json()), PIPELINE_PATH)
    if not isinstance(first.result, BatchResult):
        raise _not_a_batch_result(f"a {first.type!r} response")
    return first.result


def _not_a_batch_result(why: str) -> errors.ProtocolError:
    return errors.ProtocolError(
        f"the /v2/pipeline response is not a Hrana batch result ({why}); is the remote a Turso sync server?"
    )


def statement(sql: str, args: Sequence[SqlValue]) -> BatchStep:
    """One batch step without a condition (its rows come back: Hrana's default)."""
    return BatchStep(Stmt(sql, args=tuple(args)))


def remote_mark(client_id: str, timeout: float) -> Steps[tuple[int, int]]:
    """``(pull_gen, change_id)`` the remote recorded for ``client_id``: how far its pushes got."""
    step = statement(push_mod.LAST_CHANGE_SELECT, [client_id])
    batch = yield from run_batch([step], timeout)
    error = batch.step_errors[0]
    if error is not None:
        # the one reading of a message: a remote that never took a push has no mark table, and
        # SQLite reports that as the generic SQLITE_ERROR (no code of its own to test instead)
        if "no such table" in error.message:
            return 0, 0
        raise errors.RemoteError(200, encode_json(error.to_json()), PIPELINE_PATH)
    result = batch.step_results[0]
    if result is None or not result.rows:
        return 0, 0
    pull_gen, change_id = result.rows[0][:2]
    if not isinstance(pull_gen, int) or not isinstance(change_id, int):
        raise errors.ProtocolError(
            f"the remote's push mark for {client_id} is not two integers: {result.rows[0]!r:.80}"
        )
    return pull_gen, change_id
