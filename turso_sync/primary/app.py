"""The HTTP face of the primary (aiohttp): routes, authentication, limits, error mapping.

Routes (the database ``default`` answers at the root, database NAME under ``/db/NAME``)::

    GET  /health
    POST /pull-updates            POST /db/{name}/pull-updates
    POST /v2/pipeline             POST /db/{name}/v2/pipeline

Errors are JSON ``{"error": message, "code": CODE}``: 400 malformed request, 401 missing or
wrong token, 403 not allowed, 404 unknown database or route, 409 a pinned revision that can no
longer be served, 413 body over the limit, 503 the database failed.  SQL errors are not HTTP
errors: they come back as Hrana step or request errors inside a 200.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from dataclasses import dataclass

from aiohttp import web

from .. import errors
from ..local.engine import Snapshot
from ..sync.wire.hrana import PipelineRequest, encode_json, encode_pipeline_response
from ..sync.wire.pull import (
    PAGE_SIZE,
    PageCompressor,
    PageEncoding,
    PullHeader,
    PullRequest,
    encode_page,
    page_record_prefix,
)
from .auth import Authenticator, AuthError
from .database import HostedDatabase
from .hrana import WriteDenied
from .pull import RevisionUnavailable, SnapshotMoved, check_request
from .revision import format_revision
from .store import DEFAULT_DATABASE, DatabaseStore, UnknownDatabase, valid_name

log = logging.getLogger("turso_sync.primary")

#: Pages per write while streaming a response (about 1 MiB).
_PAGES_PER_CHUNK = 256


@dataclass(frozen=True)
class Limits:
    """Request limits and tunables of the HTTP layer."""

    max_body_bytes: int = 64 * 1024 * 1024
    max_long_poll_ms: int = 300_000
    zstd_level: int = 3


@dataclass
class ServerState:
    """What the handlers share."""

    store: DatabaseStore
    auth: Authenticator
    limits: Limits


STATE = web.AppKey("turso_sync_state", ServerState)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(store: DatabaseStore, auth: Authenticator, limits: Limits | None = None) -> web.Application:
    """The aiohttp application serving ``store``."""
    limits = limits or Limits()
    app = web.Application(client_max_size=limits.max_body_bytes, middlewares=[_error_middleware])
    app[STATE] = ServerState(store, auth, limits)
    app.router.add_get("/health", health)
    for prefix in ("", "/db/{name}"):
        app.router.add_post(prefix + "/pull-updates", pull_updates)
        app.router.add_post(prefix + "/v2/pipeline", pipeline)
    return app


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
    except WriteDenied as exc:
        return error_response(403, str(exc), "FORBIDDEN")
    except errors.ProtocolError as exc:
        return error_response(400, str(exc), "BAD_REQUEST")
    except UnknownDatabase as exc:
        return error_response(404, str(exc), "NOT_FOUND")
    except RevisionUnavailable as exc:
        return error_response(409, str(exc), "REVISION_UNAVAILABLE")
    except errors.DatabaseError as exc:
        log.error("database error on %s %s: %s", request.method, request.path, exc)
        return error_response(503, f"the database failed: {exc}", "DATABASE_ERROR")


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
    name = _database_name(request)
    grant = state.auth.check(request.headers.get("Authorization"), name)
    body = await request.read()  # over client_max_size: 413
    pull = PullRequest.from_bytes(body)
    client, pinned = check_request(pull)  # reject bad input before touching the database
    db = await state.store.get(name, create=not grant.read_only)
    long_poll = client is not None and pinned is None and pull.long_poll_timeout_ms > 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(pull.long_poll_timeout_ms, state.limits.max_long_poll_ms) / 1000
    while True:
        version = db.feed.version  # noted before the snapshot, so no commit slips in between
        slices = db.slices(pull)
        first = await anext(slices)
        if not long_poll or first.seq != client:
            break
        await slices.aclose()
        if not await db.feed.wait_after(version, deadline - loop.time()):
            break  # timed out (or shutting down): answer with the header only
    streaming = client is None and pinned is None  # a bootstrap: sent slice by slice
    return await _send_pages(request, db, first, slices, streaming, pull.encoding, state.limits)


async def pipeline(request: web.Request) -> web.Response:
    """``POST /v2/pipeline``: run Hrana requests as one stream; SQL errors come back inside a 200."""
    state = request.app[STATE]
    name = _database_name(request)
    grant = state.auth.check(request.headers.get("Authorization"), name)
    body = await request.read()  # over client_max_size: 413
    pipe = PipelineRequest.from_bytes(body)
    if pipe.baton is not None:
        raise errors.ProtocolError(
            "batons are not supported: this server keeps no stream open between requests; "
            "send baton null and put the whole stream in one request"
        )
    db = await state.store.get(name, create=not grant.read_only)
    results = await db.call(db.run_pipeline, pipe.requests, grant.read_only)
    return web.Response(body=encode_pipeline_response(results), content_type="application/json")


async def _send_pages(
    request: web.Request,
    db: HostedDatabase,
    first: Snapshot,
    rest: AsyncGenerator[Snapshot, None],
    streaming: bool,
    encoding: PageEncoding,
    limits: Limits,
) -> web.StreamResponse:
    """The header, then every slice's pages; chunked while streaming a bootstrap, else with a length."""
    header = PullHeader(format_revision(first.seq), first.db_size, encoding, limits.zstd_level).to_bytes()
    chunks = await _encode(first, encoding, limits.zstd_level)
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/protobuf"})
    if streaming:
        response.enable_chunked_encoding()
    else:
        response.content_length = len(header) + sum(len(c) for c in chunks)
    await response.prepare(request)
    pages, sent = len(first.pages), len(header)
    try:
        await response.write(header)
        while True:
            for chunk in chunks:
                await response.write(chunk)
                sent += len(chunk)
            snap = await anext(rest, None)
            if snap is None:
                break
            pages += len(snap.pages)
            chunks = await _encode(snap, encoding, limits.zstd_level)
        await response.write_eof()
    except ConnectionError:  # the client went away mid-stream; it will pull again
        log.debug("pull %s: client disconnected after %d bytes", db.name, sent)
        await rest.aclose()
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
    log.debug("pull %s: revision %s, %d pages, %d bytes", db.name, first.seq, pages, sent)
    return response


async def _encode(snap: Snapshot, encoding: PageEncoding, level: int) -> list[bytes]:
    """A slice's page records, in about 1 MiB chunks (zstd compression runs off the event loop)."""
    pgnos = sorted(snap.pages)
    if encoding == PageEncoding.ZSTD:
        return await asyncio.to_thread(_zstd_records, snap, pgnos, level)
    return list(_raw_chunks(snap, pgnos))


def _raw_chunks(snap: Snapshot, pgnos: list[int]) -> Iterator[bytes]:
    pages = snap.pages
    for start in range(0, len(pgnos), _PAGES_PER_CHUNK):
        parts: list[bytes] = []
        for pgno in pgnos[start : start + _PAGES_PER_CHUNK]:
            parts.append(page_record_prefix(pgno - 1, PAGE_SIZE))
            parts.append(pages[pgno])  # copied once, by the join
        yield b"".join(parts)


def _zstd_records(snap: Snapshot, pgnos: list[int], level: int) -> list[bytes]:
    compressor = PageCompressor(level)
    out = []
    for start in range(0, len(pgnos), _PAGES_PER_CHUNK):
        batch = pgnos[start : start + _PAGES_PER_CHUNK]
        out.append(b"".join(encode_page(pgno - 1, compressor.compress(snap.pages[pgno])) for pgno in batch))
    return out
