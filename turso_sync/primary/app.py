"""The HTTP face of the primary (aiohttp): routes, authentication, limits, error mapping.

Routes (the database ``default`` answers at the root, database NAME under ``/db/NAME``)::

    GET  /health
    POST /pull-updates            POST /db/{name}/pull-updates
    POST /v2/pipeline             POST /db/{name}/v2/pipeline
    POST /admin/rollback          POST /db/{name}/admin/rollback    (operator: ``admin`` tokens only)

``/admin/rollback`` takes ``{"revision": N}`` or ``{"at": ISO 8601 time}`` (at most
``rollback.MAX_REQUEST_BYTES``) and commits a new revision whose content is that of the target
(see ``rollback.py``); it answers what it did as JSON.  An ``r`` or ``rw`` token gets 403 there.

Errors are JSON ``{"error": message, "code": CODE}``: 400 malformed request (or a baton naming
no open stream), 401 missing or wrong token, 403 not allowed (or over the per-token database
bound, or another token's baton), 404 unknown database or route, 408 body not received in time,
409 a pinned revision that can no longer be served, 413 body (or a stream's transaction) over
the limit, 429 too many open requests or streams from one client, 503 the database failed, its
disk is full, a stream holds its write lock past the wait, or every open database or stream
place is busy, or (``serve --store``) the object store could not make the answer durable or
another server writes the database (429 and 503 carry ``Retry-After``); 403 also for a write
sent to a read-only follower of the store.  SQL errors are not HTTP errors: they come
back as Hrana step or request errors inside a 200.  Streams kept open between requests
(batons): see ``streams.py``.

Order of work in a handler: the database name, then the token (``Authorization``), then the
per-client slot, and only then the body is read (under a deadline) and the database opened;
so a client without a valid token makes the server read nothing and open nothing.  No
response carries a path, a stack trace or a version (``Server: turso-sync``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
import zlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from aiohttp import HttpVersion11, web, web_response
from aiohttp.web_protocol import RequestPayloadError

from .. import errors
from ..local.engine import Snapshot
from ..wire import answer_coding
from ..wire.hrana import PipelineRequest, encode_json, encode_pipeline_response
from ..wire.pull import (
    COMPACT_DELTAS_VERSION,
    DEFAULT_ZSTD_LEVEL,
    PAGE_SIZE,
    ZSTD_FRAME_PAGES,
    PageCompressor,
    PageDeltas,
    PageEncoding,
    PullHeader,
    PullRequest,
    frame_runs,
    page_record_prefix,
)
from .auth import Authenticator, AuthError, Grant
from .database import DiskFull, HostedDatabase, PipelineRun, WalSyncFailed
from .durable import WriterElsewhere
from .follower import FollowerReadOnly, NothingStored
from .hrana import WriteDenied
from .objectstore.errors import ObjectStoreError
from .pull import RevisionUnavailable, SnapshotMoved, check_request, wants_deltas
from .revision import format_revision
from .rollback import MAX_REQUEST_BYTES, RollbackRefused, parse_request, resolve_target, roll_back
from .sql_policy import SqlLimits
from .store import (
    DEFAULT_DATABASE,
    DEFAULT_MAX_OPEN,
    DEFAULT_MAX_PER_OWNER,
    DatabaseQuota,
    DatabaseStore,
    StoreBusy,
    UnknownDatabase,
    valid_name,
)
from .streams import (
    Stream,
    StreamForbidden,
    StreamGone,
    StreamLimits,
    StreamRegistry,
    StreamsExhausted,
    StreamTooLarge,
    TooManyStreams,
    token_digest,
)

log = logging.getLogger("turso_sync.primary")

#: Pages per write while streaming a response (about 1 MiB).
_PAGES_PER_CHUNK = 256
#: zstd answers of at most this many pages are compressed on the event loop (see ``_encode``).
_ZSTD_INLINE_PAGES = 8
#: What a page's delta costs, counted in whole zstd pages (about 35 us against 5-12 us).
_DELTA_PAGE_WEIGHT = 4
#: A zstd answer is compressed by up to this many threads at once, each a share of its page runs
#: (zstd releases the GIL), when each share holds at least ``_ZSTD_SHARE_PAGES`` pages (see ``_encode``).
_ZSTD_SHARES = max(1, min(4, os.cpu_count() or 1))
_ZSTD_SHARE_PAGES = 48

#: What the ``Server`` header says: the product, no version, no platform.
SERVER_HEADER = "turso-sync"

#: Seconds a client is told to wait (``Retry-After``) after a 429 or a 503 for a bound.
RETRY_AFTER_S = 1


@dataclass(frozen=True)
class Limits:
    """Every bound on what one client can make the server spend (see docs/primary.md, *Limits*).

    - ``max_body_bytes``: request body (taken uncompressed: a ``Content-Encoding`` gets 415); over: 413;
    - ``max_long_poll_ms``: longest a pull waits for a new revision;
    - ``page_deltas``: whether pulls that ask for page deltas get them (at most
      ``pull.MAX_DELTA_PAGES`` per answer; docs/protocol.md), else whole pages;
    - ``idle_timeout_s``: a connection may stay idle (no request, or a request line and headers
      not complete) this long, counted from its opening or from the end of its last response;
      then it is closed without an answer;
    - ``body_timeout_s``: the whole body must arrive within this after the headers; over: 408
      and the connection is closed;
    - ``send_timeout_s``: each ~1 MiB of a response must be taken by the client within this,
      else the connection is cut;
    - ``max_requests_per_client``: requests in flight (long-polls included) per client, where a
      client is a token (or development mode) from one peer address; over: 429;
    - ``max_connections``: open connections per process; over: answered 503 and closed at once;
    - ``max_databases_per_token``: databases one token may create; over: 403;
    - ``max_open_databases``: databases open at once (one worker thread each); when all are in
      use and another is needed: 503;
    - ``sql``: what one client's SQL may spend (statement and pipeline time, rows, response,
      value and SQL bytes, SQLite's heap); see ``sql_policy.SqlLimits``;
    - ``streams``: streams kept open between requests (batons): idle timeout, age, how many per
      token and in all, request bytes per stream transaction, how long another writer waits
      for a stream's write lock; see ``streams.StreamLimits``.
    """

    max_body_bytes: int = 64 * 1024 * 1024
    max_long_poll_ms: int = 300_000
    zstd_level: int = DEFAULT_ZSTD_LEVEL
    page_deltas: bool = True
    idle_timeout_s: float = 75.0
    body_timeout_s: float = 60.0
    send_timeout_s: float = 60.0
    max_requests_per_client: int = 64
    max_connections: int = 1024
    max_databases_per_token: int = DEFAULT_MAX_PER_OWNER
    max_open_databases: int = DEFAULT_MAX_OPEN
    sql: SqlLimits = field(default_factory=SqlLimits)
    streams: StreamLimits = field(default_factory=StreamLimits)


class TooManyRequests(Exception):  # noqa: N818 - reads as what happened
    """A client already has its bound of requests in flight (HTTP 429)."""


class ClientSlots:
    """Requests in flight per client; ``hold`` refuses the one over the bound (no queueing)."""

    def __init__(self, per_client: int) -> None:
        self.per_client = per_client
        self._open: dict[tuple[str, str], int] = {}

    def in_flight(self, client: tuple[str, str]) -> int:
        """Requests ``client`` has open now."""
        return self._open.get(client, 0)

    @contextlib.contextmanager
    def hold(self, client: tuple[str, str]) -> Iterator[None]:
        """One slot for ``client`` while the block runs; raises TooManyRequests when none is left."""
        count = self._open.get(client, 0)
        if count >= self.per_client:
            raise TooManyRequests(
                f"this client already has {count} requests open (long-polls included), the most the server "
                f"allows per token and address; wait for one to finish"
            )
        self._open[client] = count + 1
        try:
            yield
        finally:
            left = self._open[client] - 1
            if left:
                self._open[client] = left
            else:
                del self._open[client]


@dataclass
class ServerState:
    """What the handlers share."""

    store: DatabaseStore
    auth: Authenticator
    limits: Limits
    slots: ClientSlots = field(init=False)
    streams: StreamRegistry = field(init=False)

    def __post_init__(self) -> None:
        self.slots = ClientSlots(self.limits.max_requests_per_client)
        self.streams = StreamRegistry(self.limits.streams)


STATE = web.AppKey("turso_sync_state", ServerState)
REAPER = web.AppKey("turso_sync_stream_reaper", asyncio.Task[None])

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(store: DatabaseStore, auth: Authenticator, limits: Limits | None = None) -> web.Application:
    """The aiohttp application serving ``store``."""
    limits = limits or Limits()
    # aiohttp's default names Python's and its own versions, and is also used on the answers it
    # gives itself (malformed requests), which no hook sees: so the default itself is replaced
    web_response.SERVER_SOFTWARE = SERVER_HEADER  # type: ignore[attr-defined]
    app = web.Application(client_max_size=limits.max_body_bytes, middlewares=[_error_middleware])
    app[STATE] = ServerState(store, auth, limits)
    app.on_startup.append(_start_reaper)
    app.on_cleanup.append(_stop_reaper)
    app.router.add_get("/health", health)
    for prefix in ("", "/db/{name}"):
        app.router.add_post(prefix + "/pull-updates", pull_updates, expect_handler=_expect_continue)
        app.router.add_post(prefix + "/v2/pipeline", pipeline, expect_handler=_expect_continue)
        app.router.add_post(prefix + "/admin/rollback", admin_rollback, expect_handler=_expect_continue_admin)
    return app


#: What ``_admission`` answers when the request may go on (never sent).
_ADMITTED = web.StreamResponse()


def _admit(request: web.Request) -> tuple[str, Grant]:
    """The checks that need no body, in order: database name, token, existence or quota; ``(name, grant)``."""
    state = request.app[STATE]
    name = _database_name(request)
    grant = state.auth.check(request.headers.get("Authorization"), name)
    state.store.check(name, create=not grant.read_only, owner=grant.client)
    return name, grant


async def _admission(request: web.Request) -> web.StreamResponse:
    _admit(request)
    return _ADMITTED


def _admit_admin(request: web.Request, action: str) -> tuple[str, Grant]:
    """``_admit`` for an operator's action: the token must be an ``admin`` one; the database must exist."""
    state = request.app[STATE]
    name = _database_name(request)
    grant = state.auth.check_admin(request.headers.get("Authorization"), name, action)
    state.store.check(name, create=False)
    return name, grant


async def _admin_admission(request: web.Request) -> web.StreamResponse:
    _admit_admin(request, "rolling a database back")
    return _ADMITTED


async def _expect_continue(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue``: refuse before the client sends its body, else invite the body.

    aiohttp's own handler invites every body before the route's handler runs, so a client
    without a valid token would be asked for its body; here the refusal comes first.
    """
    return await _invite_body(request, _admission)


async def _expect_continue_admin(request: web.Request) -> web.StreamResponse | None:
    """``_expect_continue`` for the operator's routes (their own admission)."""
    return await _invite_body(request, _admin_admission)


async def _invite_body(request: web.Request, admission: Handler) -> web.StreamResponse | None:
    refusal = await _error_middleware(request, admission)
    if refusal is not _ADMITTED:
        return refusal
    expect = request.headers.get("Expect", "")
    if request.version == HttpVersion11:
        if expect.lower() != "100-continue":
            raise web.HTTPExpectationFailed(text=f"unknown Expect: {expect[:40]}")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the interim answer is not the response (as aiohttp does)
    return None


def error_response(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON error body."""
    return web.Response(
        status=status,
        body=encode_json({"error": message, "code": code}),
        content_type="application/json",
        headers=headers,
    )


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.upper().replace(" ", "_")
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        allow = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return error_response(exc.status, message, code, allow)
    except AuthError as exc:
        challenge = {"WWW-Authenticate": 'Bearer realm="turso-sync"'} if exc.status == 401 else None
        code = "UNAUTHORIZED" if exc.status == 401 else "FORBIDDEN"
        return error_response(exc.status, str(exc), code, challenge)
    except WriteDenied as exc:  # its own code: a client tells "read-only token" by it, not by the text
        return error_response(403, str(exc), "READ_ONLY")
    except FollowerReadOnly as exc:
        return error_response(403, str(exc), "FOLLOWER_READ_ONLY")
    except DatabaseQuota as exc:
        return error_response(403, str(exc), "DATABASE_LIMIT")
    except TooManyRequests as exc:
        return error_response(429, str(exc), "TOO_MANY_REQUESTS", {"Retry-After": str(RETRY_AFTER_S)})
    except StoreBusy as exc:
        log.warning("%s %s: %s", request.method, request.path, exc)
        return error_response(503, str(exc), "SERVER_BUSY", {"Retry-After": str(RETRY_AFTER_S)})
    except WriterElsewhere as exc:  # every request to a standby: the access line has the 503
        log.debug("%s %s: %s", request.method, request.path, exc)
        return error_response(503, str(exc), "WRITER_ELSEWHERE", {"Retry-After": str(RETRY_AFTER_S)})
    except NothingStored as exc:
        return error_response(503, str(exc), "NOT_YET_STORED", {"Retry-After": str(RETRY_AFTER_S)})
    except ObjectStoreError as exc:
        # the store's messages name the bucket, the key and the endpoint, never a credential
        log.warning("%s %s: the object store failed: %s", request.method, request.path, exc)
        return error_response(
            503,
            f"the server's object store could not make this durable, so nothing of it is acknowledged: {exc}",
            "STORE_UNAVAILABLE",
            {"Retry-After": str(RETRY_AFTER_S)},
        )
    except BodyTimeout as exc:
        log.debug("%s %s from %s: %s", request.method, request.path, request.remote, exc)  # the access line has the 408
        return error_response(408, str(exc), "REQUEST_TIMEOUT", {"Connection": "close"})
    except RequestPayloadError as exc:  # a broken chunked body
        log.debug("%s %s from %s: unreadable body: %s", request.method, request.path, request.remote, _one_line(exc))
        # the body stream holds the error: mark it ended so aiohttp does not read it again
        # (which would log the error a second time, with a traceback), and end the connection
        request.content.feed_eof()
        response = error_response(400, "the request body could not be read (broken transfer encoding)", "BAD_REQUEST")
        response.force_close()
        return response
    except UnsupportedEncoding as exc:
        return error_response(415, str(exc), "UNSUPPORTED_MEDIA_TYPE")
    except ConnectionError:  # the client hung up: nobody to answer, nothing went wrong here
        log.debug("%s %s from %s: client disconnected", request.method, request.path, request.remote)
        return error_response(400, "client disconnected", "CLIENT_GONE")
    except errors.ProtocolError as exc:
        return error_response(400, str(exc), "BAD_REQUEST")
    except UnknownDatabase as exc:
        return error_response(404, str(exc), "NOT_FOUND")
    except StreamGone as exc:
        return error_response(400, str(exc), "BAD_REQUEST")  # a baton naming no open stream
    except StreamForbidden as exc:
        log.info("%s %s from %s: a baton of another token's stream", request.method, request.path, request.remote)
        return error_response(403, str(exc), "STREAM_FORBIDDEN")
    except StreamTooLarge as exc:
        return error_response(413, str(exc), "STREAM_TOO_LARGE")
    except TooManyStreams as exc:
        return error_response(429, str(exc), "TOO_MANY_STREAMS", {"Retry-After": str(RETRY_AFTER_S)})
    except StreamsExhausted as exc:
        log.warning("%s %s: %s", request.method, request.path, exc)
        return error_response(503, str(exc), "SERVER_BUSY", {"Retry-After": str(RETRY_AFTER_S)})
    except WriteLockHeld as exc:
        return error_response(503, str(exc), "DATABASE_LOCKED", {"Retry-After": str(RETRY_AFTER_S)})
    except DiskFull:
        log.error("%s %s: the disk of the data directory is full (SQLITE_FULL)", request.method, request.path)
        return error_response(
            503,
            "the server's disk is full: nothing of this request was kept; try again later",
            "DISK_FULL",
            {"Retry-After": str(RETRY_AFTER_S)},
        )
    except WalSyncFailed as exc:  # logged (critical) where the sync failed
        return error_response(503, str(exc), "STORAGE_FAILED", {"Retry-After": str(RETRY_AFTER_S)})
    except RevisionUnavailable as exc:
        return error_response(409, str(exc), "REVISION_UNAVAILABLE")
    except RollbackRefused as exc:
        retry = {"Retry-After": str(RETRY_AFTER_S)} if exc.status == 503 else None
        return error_response(exc.status, str(exc), exc.code, retry)
    except errors.DatabaseError as exc:
        # the message can hold paths: it goes to the log, the client gets a fixed text
        log.error("database error on %s %s: %s", request.method, request.path, exc)
        return error_response(503, "the database failed; the server log says why", "DATABASE_ERROR")


class WriteLockHeld(Exception):  # noqa: N818 - reads as a state
    """A stream held the database's write lock for longer than this request may wait (HTTP 503)."""


class BodyTimeout(Exception):  # noqa: N818 - reads as what happened
    """The request body did not arrive within ``Limits.body_timeout_s`` (HTTP 408)."""


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "…"


class UnsupportedEncoding(Exception):  # noqa: N818 - reads as what happened
    """A request body sent with a ``Content-Encoding`` (HTTP 415): the server takes bodies as they are."""


async def _read_small_body(request: web.Request, limits: Limits, max_bytes: int) -> bytes:
    """``_read_body`` for a route whose body is small: more than ``max_bytes`` is 413, read no further."""
    _check_encoding(request)
    if request.content_length is not None and request.content_length > max_bytes:
        raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=request.content_length)
    body = bytearray()
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            while chunk := await request.content.read(max_bytes + 1 - len(body)):
                body += chunk
                if len(body) > max_bytes:
                    raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=len(body))
    except TimeoutError:
        raise BodyTimeout(
            f"the request body did not arrive within {limits.body_timeout_s:g} s; send it at once after the headers"
        ) from None
    return bytes(body)


def _check_encoding(request: web.Request) -> None:
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedEncoding(
            f"request bodies are taken uncompressed; send the body without Content-Encoding ({encoding[:40]!r})"
        )


async def _read_body(request: web.Request, limits: Limits) -> bytes:
    """The whole body, within ``limits.body_timeout_s`` (over ``client_max_size``: 413).

    Bodies are taken as sent: no client of the protocol compresses requests, and refusing
    ``Content-Encoding`` keeps decompression (and its bombs and broken streams) out of the
    server; the runner turns aiohttp's own decompression off to match.
    """
    _check_encoding(request)
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            return await request.read()
    except TimeoutError:
        raise BodyTimeout(
            f"the request body did not arrive within {limits.body_timeout_s:g} s; send it at once after the headers"
        ) from None


def _client_of(request: web.Request, grant: Grant) -> tuple[str, str]:
    """The key of the per-client bounds: the token's identity and the peer address."""
    return grant.client, request.remote or ""


def _database_name(request: web.Request) -> str:
    name = request.match_info.get("name", DEFAULT_DATABASE)
    if not valid_name(name):
        raise UnknownDatabase(f"'{name[:64]}' is not a valid database name (use A-Z a-z 0-9 _ -, at most 64)")
    return name


async def health(request: web.Request) -> web.Response:
    """Liveness: 200 while the server runs, with totals over every open database (no names)."""
    dbs = request.app[STATE].store.opened()
    return web.json_response(
        {
            "status": "ok",
            "databases_open": len(dbs),
            "long_polls_waiting": sum(db.feed.waiting for db in dbs),
            "pulls": sum(db.counters.pulls for db in dbs),
            "pages_sent": sum(db.counters.pages for db in dbs),
        }
    )


async def pull_updates(request: web.Request) -> web.StreamResponse:
    """``POST /pull-updates``: pages changed since the client's revision (long-poll if none)."""
    state = request.app[STATE]
    name, grant = _admit(request)
    with state.slots.hold(_client_of(request, grant)):  # a long-poll holds its slot while it waits
        body = await _read_body(request, state.limits)
        pull = PullRequest.from_bytes(body)
        client, pinned = check_request(pull)  # reject bad input before touching the database
        async with state.store.use(name, create=not grant.read_only, owner=grant.client) as db:
            return await _answer_pull(request, state, db, pull, client, pinned)


async def admin_rollback(request: web.Request) -> web.StreamResponse:
    """``POST /admin/rollback``: commit a new revision whose content is that of an earlier one (operator only)."""
    state = request.app[STATE]
    name, grant = _admit_admin(request, "rolling a database back")
    with state.slots.hold(_client_of(request, grant)):
        target = parse_request(await _read_small_body(request, state.limits, MAX_REQUEST_BYTES))
        backend = state.store.backend
        async with state.store.use(name, create=False) as db:
            revision = await resolve_target(db, backend, target)
            outcome = await roll_back(db, revision, backend=backend, lock_wait_s=state.limits.streams.lock_wait_s)
    # the client's identity is a one-way hash: it leads back to neither the token nor its line
    if outcome.revision == outcome.previous_head:
        log.info(
            "database %s: rollback to revision %d asked by client %s: nothing differs (head %d)",
            name,
            outcome.target,
            grant.client,
            outcome.revision,
        )
    else:
        log.info(
            "database %s: rolled back to the content of revision %d as revision %d (head was %d, from the %s) "
            "by client %s",
            name,
            outcome.target,
            outcome.revision,
            outcome.previous_head,
            outcome.source,
            grant.client,
        )
    return web.json_response(outcome.to_json())


async def _answer_pull(
    request: web.Request,
    state: ServerState,
    db: HostedDatabase,
    pull: PullRequest,
    client: int | None,
    pinned: int | None,
) -> web.StreamResponse:
    """Wait (long-poll) if asked and nothing is new, then send the pages."""
    bases: dict[int, bytes] = {}
    if client is None and pinned is None:  # a bootstrap: read and sent slice by slice
        slices = db.slices(pull)
        first = await anext(slices)
        streaming = True
    else:  # one snapshot, read by one job on the database's thread
        first, bases = await _changed_pages(db, pull, client, pinned, state.limits)
        slices = _no_more_slices()
        streaming = False
    try:
        await db.make_durable(first.seq)  # on a store: never serve a revision it does not hold
    except BaseException:
        await slices.aclose()
        raise
    new_pages = pull.page_deltas_version >= 2  # version 2: pages without a base go in the delta frame too
    compact = pull.page_deltas_version >= COMPACT_DELTAS_VERSION
    frame_pages = max(1, min(pull.zstd_frame_pages, ZSTD_FRAME_PAGES))  # zstd frames of consecutive pages
    return await _send_pages(
        request, db, first, slices, streaming, pull.encoding, state.limits, bases, new_pages, compact, frame_pages
    )


async def _changed_pages(
    db: HostedDatabase, pull: PullRequest, client: int | None, pinned: int | None, limits: Limits
) -> tuple[Snapshot, dict[int, bytes]]:
    """The snapshot answering a pull that is not a bootstrap; if the client asked to wait (a
    long-poll) and nothing is new after its revision, the first one with news, or the last
    one read when the wait ends (the header alone then tells the client nothing changed).
    With it, the bases of its pages' deltas, if the client asked for deltas (``pull.delta_bases``)."""
    long_poll = client is not None and pinned is None and pull.long_poll_timeout_ms > 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(pull.long_poll_timeout_ms, limits.max_long_poll_ms) / 1000
    while True:
        version = db.feed.version  # noted before the snapshot, so no commit slips in between
        if limits.page_deltas and wants_deltas(pull):
            snap, bases = await db.call(db.select_pages_and_bases, pull)
        else:
            snap, bases = await db.call(db.select_pages, pull), {}
        if not long_poll or snap.seq != client:
            return snap, bases
        if not await db.feed.wait_after(version, deadline - loop.time()):
            return snap, bases  # timed out (or shutting down)


async def _no_more_slices() -> AsyncGenerator[Snapshot, None]:
    """The slices after the only one of an answer that is not a bootstrap: none."""
    return
    yield


async def pipeline(request: web.Request) -> web.StreamResponse:
    """``POST /v2/pipeline``: run Hrana requests as a stream; SQL errors come back inside a 200.

    Baton null: a new stream, kept open (a baton in the answer) only when a transaction is open
    at its end; a baton: the next request of that stream (see ``streams.py``).
    """
    state = request.app[STATE]
    name, grant = _admit(request)
    with state.slots.hold(_client_of(request, grant)):
        body = await _read_body(request, state.limits)
        pipe = PipelineRequest.from_bytes(body)
        token = token_digest(request.headers.get("Authorization"))
        if pipe.baton is not None:
            return await _continue_stream(request, state, pipe, len(body), name, grant.read_only, token)
        async with state.store.use(name, create=not grant.read_only, owner=grant.client) as db:
            reserved = state.streams.reserve(grant.client)
            kept: Stream | None = None
            read_only = grant.read_only or db.follower is not None
            try:
                try:
                    run = await _run_new_stream(db, pipe, read_only, reserved, state.limits.streams.lock_wait_s)
                except WriteDenied:
                    _refuse_on_follower(db, grant.read_only)
                    raise
                await _durable(db, run)
                if run.stream is not None:
                    kept = state.streams.add(
                        db,
                        run.stream,
                        database=name,
                        client=grant.client,
                        token=token,
                        read_only=read_only,
                        bytes_in=len(body),
                    )
            finally:
                if reserved and kept is None:
                    state.streams.unreserve(grant.client)
        if run.refused and not run.committed:
            # it wanted its transaction kept and no place was left: rolled back, say why
            refusal = state.streams.refusal(grant.client)
            if refusal is not None:
                raise refusal
        assert run.results is not None
        payload = encode_pipeline_response(run.results, kept.baton if kept is not None else None)
        return await _send_json(request, payload, state.limits)


async def _run_new_stream(
    db: HostedDatabase, pipe: PipelineRequest, read_only: bool, keep_open: bool, lock_wait_s: float
) -> PipelineRun:
    """Run a baton-null pipeline; while a stream's write lock keeps its writes out, wait (bounded) and run it again."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + lock_wait_s
    while True:
        seen = db.streams_ended
        job = asyncio.ensure_future(db.call(db.run_pipeline, pipe.requests, read_only, keep_open))
        try:
            run = await asyncio.shield(job)
        except asyncio.CancelledError:
            # the job runs on regardless: a stream it keeps open would belong to nobody
            job.add_done_callback(functools.partial(_end_orphan, db))
            raise
        if not run.locked:
            return run
        if not await db.wait_stream_end(seen, deadline - loop.time()):
            raise WriteLockHeld(
                f"a transaction kept open between requests (a stream) holds the write lock of database "
                f"'{db.name}' and did not end within {lock_wait_s:g} s; nothing of this request was kept; "
                "try again shortly"
            )


def _refuse_on_follower(db: HostedDatabase, token_read_only: bool) -> None:
    """A write refused because this node is a read-only follower (not because of the token): say so."""
    if db.follower is not None and not token_read_only:
        raise FollowerReadOnly(
            f"this server follows database '{db.name}' read-only from the object store (--follow); "
            "send writes and pushes to its writer"
        )


async def _durable(db: HostedDatabase, run: PipelineRun) -> None:
    """On an object store, wait until what the answer shows is durable there (a push is
    acknowledged only then); a failure rolls back the stream the run kept, and the request
    fails (503).  A retried push whose first attempt committed here waits for that commit too:
    its answer shows the revision that holds it."""
    try:
        await db.make_durable(run.seq)
    except BaseException:
        if run.stream is not None:
            with contextlib.suppress(RuntimeError):
                await db.call(db.end_stream, run.stream)
        raise


def _end_orphan(db: HostedDatabase, job: asyncio.Future[PipelineRun]) -> None:
    """Roll back a stream kept by a job whose request was cancelled (no baton ever left the server)."""
    if job.cancelled() or job.exception() is not None:
        return
    stream = job.result().stream
    if stream is not None:
        task = asyncio.ensure_future(db.call(db.end_stream, stream))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # nothing to report: best effort


async def _continue_stream(
    request: web.Request,
    state: ServerState,
    pipe: PipelineRequest,
    body_bytes: int,
    name: str,
    read_only: bool,
    token: bytes,
) -> web.StreamResponse:
    """The next request of an open stream; any failure ends the stream (its transaction is rolled back)."""
    assert pipe.baton is not None
    streams = state.streams
    stream = streams.take(pipe.baton, token, name)
    db = stream.db
    try:
        stream.bytes_in += body_bytes
        if stream.bytes_in > streams.limits.max_bytes:
            raise StreamTooLarge(
                f"this stream's transaction took in {stream.bytes_in} request bytes, more than the "
                f"{streams.limits.max_bytes} the server allows (--max-stream-bytes); it was rolled back"
            )
        if read_only and not stream.read_only:  # the token's rights shrank: the stream keeps the lesser
            stream.handle.state.read_only = True
        try:
            run = await db.call(db.continue_stream, stream.handle, pipe.requests)
        except WriteDenied:
            _refuse_on_follower(db, read_only)
            raise
        await _durable(db, run)
    except BaseException:
        streams.drop(stream)
        with contextlib.suppress(RuntimeError):  # the worker stopped (shutdown): closing it rolled back
            await db.call(db.end_stream, stream.handle)
        raise
    assert run.results is not None
    if run.stream is None:
        streams.drop(stream)
        baton = None
    else:
        baton = streams.put_back(stream)
    payload = encode_pipeline_response(run.results, baton)
    return await _send_json(request, payload, state.limits)


async def _start_reaper(app: web.Application) -> None:
    app[REAPER] = asyncio.create_task(_reap(app[STATE]))


async def _stop_reaper(app: web.Application) -> None:
    task = app[REAPER]
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _reap(state: ServerState) -> None:
    """Roll back streams left idle past the idle timeout or open past the age bound."""
    limits = state.limits.streams
    period = max(0.05, min(1.0, limits.idle_timeout_s / 4))
    while True:
        await asyncio.sleep(period)  # a timer, not a wait for a condition: the reaper's clock
        for stream in state.streams.expired():
            state.streams.drop(stream)
            idle = time.monotonic() - stream.last_used
            log.info(
                "database %s: a stream's transaction was rolled back (idle %.1f s, open %.1f s)",
                stream.database,
                idle,
                time.monotonic() - stream.opened,
            )
            with contextlib.suppress(RuntimeError):  # the database closed meanwhile: closing rolled it back
                await stream.db.call(stream.db.end_stream, stream.handle)


#: JSON answers at least this long go gzip-compressed to a client that accepts gzip; below it the
#: header and trailer (18 bytes) and the CPU hardly pay.
GZIP_MIN_BYTES = 256


def accepts_gzip(header: str) -> bool:
    """Whether an ``Accept-Encoding`` value admits gzip (``gzip`` or ``*``, not with ``q=0``)."""
    for item in header.split(","):
        coding, _, params = item.partition(";")
        if coding.strip().lower() not in ("gzip", "*"):
            continue
        quality = params.strip().lower()
        if quality.startswith("q="):
            try:
                if float(quality[2:]) <= 0:
                    continue
            except ValueError:
                continue
        return True
    return False


class _Answer(web.StreamResponse):
    """A streamed answer whose status line and headers leave with the first bytes of its body, in one
    send: sent alone, they wake the client to parse them, only for it to wait again for the body."""

    _send_headers_immediately = False  # aiohttp's switch (``web.Response`` turns it off the same way)


async def _send_json(request: web.Request, body: bytes, limits: Limits) -> web.StreamResponse:
    """A JSON answer, gzip-compressed when the client accepts it and it is long enough to pay.

    A one-row push's answer (a Hrana batch result, ~700 bytes) goes in about a third of that; to a
    client that accepts ``answer_coding.CODING`` (ours), zlib with a preset dictionary of such
    answers, in about a twentieth, whatever its length.
    """
    accept = request.headers.get("Accept-Encoding", "")
    if answer_coding.accepts(accept):
        packed = answer_coding.encode(body)
        if len(packed) < len(body):
            return await _send_body(request, packed, "application/json", limits, encoding=answer_coding.CODING)
    if len(body) >= GZIP_MIN_BYTES and accepts_gzip(accept):
        packer = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: the gzip container
        packed = packer.compress(body) + packer.flush()
        return await _send_body(request, packed, "application/json", limits, encoding="gzip")
    return await _send_body(request, body, "application/json", limits)


async def _send_body(
    request: web.Request, body: bytes, content_type: str, limits: Limits, encoding: str | None = None
) -> web.StreamResponse:
    """Send a whole body in ~1 MiB writes, each within ``send_timeout_s`` (a client that stops reading is cut).

    ``encoding``: the ``Content-Encoding`` ``body`` is already in (then ``Vary: Accept-Encoding``).
    """
    headers = {"Content-Type": content_type}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
        headers["Vary"] = "Accept-Encoding"
    response = _Answer(status=200, headers=headers)
    response.content_length = len(body)
    await response.prepare(request)
    step = _PAGES_PER_CHUNK * PAGE_SIZE
    view = memoryview(body)
    try:
        for start in range(0, len(body), step):
            await _write(response, view[start : start + step], limits)
        await response.write_eof()
    except ConnectionError:
        log.debug("%s %s: client disconnected while reading the answer", request.method, request.path)
    except TimeoutError:
        log.info(
            "%s %s from %s: client stopped reading the answer; connection cut",
            request.method,
            request.path,
            request.remote,
        )
        if request.transport is not None:
            request.transport.abort()
    return response


async def _write(response: web.StreamResponse, data: bytes | memoryview, limits: Limits) -> None:
    async with asyncio.timeout(limits.send_timeout_s):
        await response.write(data)


async def _send_pages(
    request: web.Request,
    db: HostedDatabase,
    first: Snapshot,
    rest: AsyncGenerator[Snapshot, None],
    streaming: bool,
    encoding: PageEncoding,
    limits: Limits,
    bases: dict[int, bytes] | None = None,
    new_pages: bool = False,
    compact: bool = False,
    frame_pages: int = 1,
) -> web.StreamResponse:
    """The header, then every slice's pages; chunked while streaming a bootstrap, else with a length.

    The pages with an image in ``bases`` (only for a client that asked for page deltas, see
    ``pull.delta_bases``) go in the header as deltas against it; with ``new_pages`` (the client
    speaks version 2), the pages without one too, in the same frame; ``compact`` (version 3): in a
    compact frame.  ``frame_pages``: the most consecutive pages one zstd page frame holds (the
    client's ``zstd_frame_pages``, bounded by ``ZSTD_FRAME_PAGES``).
    """
    block: PageDeltas | None = None
    if encoding == PageEncoding.ZSTD and bases:
        first, block = await _deltas(first, bases, limits.zstd_level, new_pages, compact)
    header = PullHeader(format_revision(first.seq), first.db_size, encoding, limits.zstd_level, block).to_bytes()
    chunks = await _encode(first, encoding, limits.zstd_level, frame_pages)
    response = _Answer(status=200, headers={"Content-Type": "application/protobuf"})
    if streaming and request.version >= HttpVersion11:
        response.enable_chunked_encoding()
    elif streaming:  # HTTP/1.0 has no chunks: the body ends when the connection closes
        response.force_close()
    else:
        response.content_length = len(header) + sum(len(c) for c in chunks)
    await response.prepare(request)
    pages, sent = len(first.pages) + (len(block.all_ids) if block is not None else 0), len(header)
    try:
        await _write(response, header, limits)
        while True:
            for chunk in chunks:
                await _write(response, chunk, limits)
                sent += len(chunk)
            snap = await anext(rest, None)
            if snap is None:
                break
            pages += len(snap.pages)
            chunks = await _encode(snap, encoding, limits.zstd_level, frame_pages)
        await response.write_eof()
    except ConnectionError:  # the client went away mid-stream; it will pull again
        log.debug("pull %s: client disconnected after %d bytes", db.name, sent)
        await rest.aclose()
        return response
    except TimeoutError:  # the client stopped reading: free the connection and the snapshot
        log.info("pull %s: client stopped reading after %d bytes; connection cut", db.name, sent)
        await rest.aclose()
        if request.transport is not None:
            request.transport.abort()
        return response
    except (SnapshotMoved, errors.Error) as exc:
        # the status line is gone already: cut the connection, so the client sees a failed pull
        # rather than a complete-looking stream with pages missing
        log.warning("pull %s: stream aborted after %d bytes: %s", db.name, sent, exc)
        if request.transport is not None:
            request.transport.abort()
        return response
    db.counters.pulls += 1
    db.counters.pages += pages
    db.counters.bytes += sent
    log.debug(
        "pull %s: revision %s, %d pages (%d as deltas), %d bytes",
        db.name,
        first.seq,
        pages,
        len(block.all_ids) if block is not None else 0,
        sent,
    )
    return response


async def _deltas(
    snap: Snapshot, bases: dict[int, bytes], level: int, new_pages: bool = False, compact: bool = False
) -> tuple[Snapshot, PageDeltas]:
    """The pages of ``snap`` with a base (``new_pages``: every page), as one ``PageDeltas``; and the
    snapshot of the others (sent whole).  Compressed on the event loop when small (see ``_encode``)."""
    in_frame = snap.pages if new_pages else {pgno: page for pgno, page in snap.pages.items() if pgno in bases}
    framed = {pgno - 1: page for pgno, page in in_frame.items()}  # 0-based ids, as on the wire
    old = {pgno - 1: bases[pgno] for pgno in snap.pages if pgno in bases}
    weight = _DELTA_PAGE_WEIGHT * (2 if compact else 1)  # a compact frame is made twice, the shorter sent
    if len(framed) * weight <= _ZSTD_INLINE_PAGES:
        block = PageDeltas.make(framed, old, level, compact)
    else:
        block = await asyncio.to_thread(PageDeltas.make, framed, old, level, compact)
    rest = {pgno: page for pgno, page in snap.pages.items() if pgno not in in_frame}
    return Snapshot(snap.seq, snap.db_size, rest), block


async def _encode(snap: Snapshot, encoding: PageEncoding, level: int, frame_pages: int = 1) -> list[bytes]:
    """A slice's page records, in about 1 MiB chunks (zstd: runs of up to ``frame_pages`` consecutive
    pages share one frame).

    zstd compression runs off the event loop, except for a few pages (a read-your-writes pull
    of one row brings two): there the hop to a thread and back (about 30 us on an idle machine, more
    on a busy one) would add about as much as the loop is held (5-12 us a page at level 1).
    """
    pgnos = sorted(snap.pages)
    if encoding != PageEncoding.ZSTD:
        return list(_raw_chunks(snap, pgnos))
    if len(pgnos) <= _ZSTD_INLINE_PAGES:
        return _zstd_records(snap, pgnos, level, frame_pages)
    shares = _shares(pgnos, frame_pages, min(_ZSTD_SHARES, len(pgnos) // _ZSTD_SHARE_PAGES))
    if len(shares) == 1:
        return await asyncio.to_thread(_zstd_records, snap, pgnos, level, frame_pages)
    # a large answer's shares at once on several threads: the answer waits for the slowest share,
    # not for all of them in a row (138 pages in 16-page frames at level 1, two cores, 300
    # alternating pairs: 3.55 -> 2.46 ms)
    jobs = (asyncio.to_thread(_zstd_records, snap, share, level, frame_pages) for share in shares)
    done = await asyncio.gather(*jobs)
    return [chunk for chunks in done for chunk in chunks]


def _shares(pgnos: list[int], frame_pages: int, count: int) -> list[list[int]]:
    """``pgnos`` (ascending) cut into at most ``count`` shares of about as many pages, each ending
    where a zstd frame's run ends: compressed one after the other they give the same records as
    the whole list compressed at once."""
    if count <= 1:
        return [pgnos]
    shares: list[list[int]] = [[]]
    taken = 0
    for run in frame_runs(pgnos, frame_pages):
        if len(shares) < count and taken >= len(pgnos) * len(shares) / count:
            shares.append([])
        shares[-1].extend(run)
        taken += len(run)
    return shares


def _raw_chunks(snap: Snapshot, pgnos: list[int]) -> Iterator[bytes]:
    pages = snap.pages
    for start in range(0, len(pgnos), _PAGES_PER_CHUNK):
        parts: list[bytes] = []
        for pgno in pgnos[start : start + _PAGES_PER_CHUNK]:
            parts.append(page_record_prefix(pgno - 1, PAGE_SIZE))
            parts.append(pages[pgno])  # copied once, by the join
        yield b"".join(parts)


#: One zstd compressor per thread and level: a new one's first frame costs about 0.2 ms more
#: (its tables are set up), a sixth of a 138-page answer's compression.
_compressors = threading.local()


def _compressor(level: int) -> PageCompressor:
    made: dict[int, PageCompressor] | None = getattr(_compressors, "by_level", None)
    if made is None:
        made = _compressors.by_level = {}
    compressor = made.get(level)
    if compressor is None:
        compressor = made[level] = PageCompressor(level)
    return compressor


def _zstd_records(snap: Snapshot, pgnos: list[int], level: int, frame_pages: int = 1) -> list[bytes]:
    """The zstd page records of ``pgnos`` (ascending), one frame per run of up to ``frame_pages``
    consecutive pages, in chunks of about ``_PAGES_PER_CHUNK`` pages."""
    compressor = _compressor(level)
    out = []
    compress, pages = compressor.compress, snap.pages
    parts: list[bytes] = []
    in_chunk = 0
    for run in frame_runs(pgnos, frame_pages):
        frame = compress(pages[run[0]] if len(run) == 1 else b"".join(pages[pgno] for pgno in run))
        parts.append(page_record_prefix(run[0] - 1, len(frame)))
        parts.append(frame)  # copied once, by the join
        in_chunk += len(run)
        if in_chunk >= _PAGES_PER_CHUNK:
            out.append(b"".join(parts))
            parts, in_chunk = [], 0
    if parts:
        out.append(b"".join(parts))
    return out
