"""The one seam between the sync engine and HTTP.

The engine builds request bodies and parses responses (``wire/``); a ``Transport`` only moves
bytes.  ``HttpTransport`` is the real one (urllib3: a keep-alive connection pool, which costs
about a millisecond less per request than httpx's client on loopback; see docs/sync.md),
``AsyncHttpTransport`` its asyncio twin (an aiohttp client session, for ``turso_sync.aio``: same
retries, and a cancelled request stops at once); ``turso_sync.testing.MockTransport`` answers
from a function, for tests without a server.  Tests put a scripted transport here, or point a
real one at a scripted server, to produce exact faults.

Retries (tenacity: exponential backoff with jitter, bounded) happen only where repeating the
request cannot do harm: a pull is read-only, so any network error, timeout, 5xx or truncated
body is retried; a pipeline request is retried only when it certainly never reached the server
(connection refused).  A push that lost its response is recovered one level up, by asking the
server how far it got (``turso_sync_last_change_id``), never by resending blindly.
"""

from __future__ import annotations

import ssl
import urllib.parse
import urllib.request
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import urllib3
import urllib3.connection
import urllib3.exceptions
from tenacity import (
    AsyncRetrying,
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from ..errors import NetworkError, ProtocolError, RemoteError
from ..wire import answer_coding


@dataclass
class HttpResponse:
    """A complete response: status and the whole body.

    ``decoded``: for a request sent with ``request_streamed``, the sink that was fed this body
    as it arrived (None otherwise)."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    decoded: Any = None


class BodySink(Protocol):
    """Takes a successful answer's body a piece at a time, as it arrives (``request_streamed``)."""

    def feed(self, data: bytes) -> None:
        """The next bytes of the body (unpacked from any content coding)."""
        ...


#: Makes a new ``BodySink`` for each attempt of a request (a retried request starts over).
SinkFactory = Callable[[], BodySink]


#: ``progress(path, received_bytes, total_bytes_or_None)``, called as a response body arrives
Progress = Callable[[str, int, int | None], None]


@dataclass
class TransferStats:
    """Bytes on the wire (request and response bodies), as pyturso counts them."""

    sent: int = 0
    received: int = 0


class Transport(Protocol):
    """Moves one request to the remote and returns the whole response."""

    stats: TransferStats

    def request(self, path: str, body: bytes, content_type: str, timeout: float, idempotent: bool) -> HttpResponse:
        """POST ``body`` to ``path`` (relative to the remote URL)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


#: What never reached the server (so is always safe to send again): no connection was made.
_NOT_SENT = (
    urllib3.exceptions.NewConnectionError,
    urllib3.exceptions.ConnectTimeoutError,
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
)

#: What may have reached it: a timeout, a reset, a body cut short (safe to repeat only when idempotent).
_IN_TRANSIT = (urllib3.exceptions.HTTPError, aiohttp.ClientError, TimeoutError)


def _retryable(idempotent: bool) -> retry_if_exception:
    def check(exc: BaseException) -> bool:
        if isinstance(exc, _NOT_SENT):
            return True  # never reached the server: always safe
        if not idempotent:
            return False
        if isinstance(exc, _IN_TRANSIT):  # timeouts, resets, truncated bodies
            return True
        return isinstance(exc, RemoteError) and (exc.status >= 500 or exc.status == 429)

    return retry_if_exception(check)


def normalize_url(url: str) -> str:
    """Turso's URL forms: ``libsql://`` and ``turso://`` mean HTTPS; no trailing slash."""
    for scheme in ("libsql://", "turso://"):
        if url.startswith(scheme):
            url = "https://" + url[len(scheme) :]
    return url.rstrip("/")


def _base_headers(auth_token: str | None, client_name: str) -> dict[str, str]:
    headers = {"user-agent": client_name}
    if auth_token:
        headers["authorization"] = f"Bearer {auth_token}"
    return headers


#: The most a JSON answer in ``answer_coding.CODING`` may unpack to (a bound on a bad stream).
MAX_CODED_ANSWER = 1 << 30

#: The most a gzip (or deflate) answer may unpack to: a small compressed body must not fill
#: memory (our JSON answers are a few kilobytes; pull answers travel uncoded, their pages
#: compressed inside the message).  Bodies are unpacked here, ``max_length`` at a time, not by
#: the HTTP library, whose decoders unpack each chunk whole (httpx's zstd could turn 64 KiB into
#: gigabytes).
MAX_DECODED_ANSWER = 1 << 30

#: What a JSON request accepts: our primary's preset-dictionary coding first, then gzip (any
#: other server ignores the name it does not know).
JSON_ACCEPT_ENCODING = f"{answer_coding.CODING}, gzip"


def _request_headers(content_type: str) -> dict[str, str]:
    headers = {"content-type": content_type}
    if content_type == "application/protobuf":
        headers["accept-encoding"] = "application/protobuf"
    elif content_type == "application/json":
        headers["accept-encoding"] = JSON_ACCEPT_ENCODING
    return headers


def _decoded(data: bytes, headers: Mapping[str, str]) -> bytes:
    """The body of an answer in ``answer_coding.CODING`` (the HTTP client passes the body as it
    came); any other body as it is."""
    if headers.get("content-encoding", "").strip().lower() != answer_coding.CODING:
        return data
    return answer_coding.decode(data, MAX_CODED_ANSWER)


class _Body:
    """A response body read as it travelled and unpacked here: gzip or deflate within a bound,
    ``answer_coding.CODING`` and identity passed on, any other coding refused (none was asked for)."""

    def __init__(
        self,
        status: int,
        headers: Mapping[str, str],
        path: str,
        progress: Progress | None,
        limit: int,
        sink: BodySink | None = None,
    ) -> None:
        """``sink``: fed each piece of the body as it arrives, besides keeping it (a 200 only)."""
        coding = headers.get("content-encoding", "").strip().lower()
        self.unpacker: Any = None
        if coding in ("gzip", "x-gzip"):
            self.unpacker = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            self.unpacker = zlib.decompressobj()
        elif coding not in ("", "identity", answer_coding.CODING):
            raise ProtocolError(f"the answer to {path} is in content coding {coding[:40]!r}, which was not asked for")
        self.coding = coding
        self.limit = limit
        length = headers.get("content-length")
        self.total = int(length) if length and length.isdigit() else None
        self.path = path
        self.progress = progress
        self.chunks: list[bytes] = []
        self.received = 0
        # a body in our dictionary coding is unpacked whole, afterwards (``_decoded``): not fed
        self.sink = sink if status == 200 and coding != answer_coding.CODING else None

    def add(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.progress is not None:
            self.progress(self.path, self.received, self.total)
        unpacker = self.unpacker
        if unpacker is None:
            self.chunks.append(chunk)
            if self.sink is not None:
                self.sink.feed(chunk)
            return
        room = self.limit - self.unpacked
        try:
            while chunk:
                out = unpacker.decompress(chunk, room + 1)
                self.unpacked += len(out)
                room -= len(out)
                if room < 0:
                    raise ProtocolError(
                        f"the answer to {self.path} unpacks to more than {self.limit} bytes: refused "
                        "(a compressed body that large is no sync answer)"
                    )
                self.chunks.append(out)
                if self.sink is not None:
                    self.sink.feed(out)
                chunk = unpacker.unconsumed_tail
        except zlib.error as exc:
            raise ProtocolError(f"the answer to {self.path} is not valid {self.coding}: {exc}") from None

    unpacked = 0

    def body(self) -> bytes:
        if self.unpacker is not None and not self.unpacker.eof:
            raise ProtocolError(f"the answer to {self.path} ends inside its {self.coding} stream")
        return b"".join(self.chunks)

    def read(self, chunks: Iterator[bytes]) -> bytes:
        for chunk in chunks:  # raises if the body is cut short (content-length mismatch)
            self.add(chunk)
        return self.body()

    async def aread(self, chunks: AsyncIterator[bytes]) -> bytes:
        async for chunk in chunks:
            self.add(chunk)
        return self.body()


def _wrap(exc: BaseException | None, url: str, path: str) -> Exception:
    """The error a transport raises: RemoteError as it is, anything else a NetworkError naming the URL."""
    if isinstance(exc, RemoteError):
        return exc
    reason = type(exc).__name__ if exc is not None else "unknown error"
    detail = str(exc) if exc is not None and str(exc) else ""
    return NetworkError(f"cannot reach {url}{path}: {reason} {detail}".strip())


#: Bytes asked of the socket per read of an answer's body (what httpx read too).
_READ_SIZE = 65536

#: Keep-alive connections kept per transport (more are opened when threads share one, and closed after).
_POOL_SIZE = 4


def _u3_timeout(timeout: float) -> urllib3.Timeout:
    """``timeout`` for each socket operation (connect at most 10 s), as httpx's timeouts were."""
    return urllib3.Timeout(connect=min(timeout, 10.0), read=timeout)


def _split(url: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    return parts


def _env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``ALL_PROXY``,
    unless ``NO_PROXY`` covers its host), or None."""
    parts = _split(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        return proxy
    return None


def _tls_context() -> ssl.SSLContext:
    """Full certificate verification against certifi's CA bundle (what httpx used).  Only HTTPS
    remotes make one: loading the bundle costs ~25 ms per client."""
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


#: A request body up to this size leaves in the same write as the request's head.
_JOIN_LIMIT = 65536


class _OneWrite:
    """A urllib3 connection that sends a request's head and a ``bytes`` body in one write.

    ``http.client`` writes the head when the headers end and the body after it: two segments,
    so the server wakes twice per request (and the second waits on the first).  Here the head
    is held until the body's first write, which takes it along; a request whose body is not
    one ``bytes`` chunk of at most ``_JOIN_LIMIT`` bytes is sent as before.
    """

    _held: bytes | None = None
    _holding = False

    def request(self, method: str, url: str, body: Any = None, headers: Any = None, **kwargs: Any) -> None:
        if not isinstance(body, bytes) or not body or len(body) > _JOIN_LIMIT:
            super().request(method, url, body, headers, **kwargs)  # type: ignore[misc]
            return
        self._holding, self._held = True, None
        try:
            super().request(method, url, body, headers, **kwargs)  # type: ignore[misc]
        except BaseException:
            self._holding, self._held = False, None  # nothing held is sent: the request failed
            raise
        held, self._holding, self._held = self._held, False, None
        if held is not None:  # no body write came (not for a non-empty body): the head alone
            self.send(held)

    def send(self, data: Any) -> None:
        if self._holding:
            if self._held is None:  # the head (``endheaders``): held for the body
                self._held = bytes(data)
                return
            data, self._held, self._holding = self._held + bytes(data), None, False
        super().send(data)  # type: ignore[misc]


# named as urllib3's own: their names appear in its error messages, which reach users
class HTTPConnection(_OneWrite, urllib3.connection.HTTPConnection):
    pass


class HTTPSConnection(_OneWrite, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = HTTPSConnection


def _pool(url: str) -> tuple[urllib3.PoolManager | urllib3.HTTPConnectionPool, str, bool]:
    """The connection pool for ``url``: a direct one, or a proxy's when the environment names one
    for its scheme (``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``ALL_PROXY``, minus ``NO_PROXY``, as httpx's
    client read them); the path prefix of every request; and whether requests give the full URL
    (through a proxy) or the path only."""
    parts = _split(url)
    host = parts.hostname or ""  # never empty: ``_split`` refuses a URL without one
    tls: dict[str, Any] = {"ssl_context": _tls_context()} if parts.scheme == "https" else {}
    proxy = _env_proxy(url)
    if proxy:
        manager = urllib3.ProxyManager(proxy, num_pools=1, maxsize=_POOL_SIZE, retries=False, **tls)
        manager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        return manager, url, True
    port = parts.port or (443 if parts.scheme == "https" else 80)
    kind = _HTTPSPool if parts.scheme == "https" else _HTTPPool
    return kind(host, port, maxsize=_POOL_SIZE, retries=False, **tls), parts.path, False


class HttpTransport:
    """HTTP/1.1 through urllib3 (keep-alive connections), with bounded, jittered retries."""

    def __init__(
        self,
        url: str,
        *,
        auth_token: str | None = None,
        client_name: str = "turso-sync",
        attempts: int = 5,
        max_wait: float = 2.0,
        deadline: float = 30.0,
        progress: Progress | None = None,
        max_decoded_answer: int = MAX_DECODED_ANSWER,
    ) -> None:
        """``progress``, when given, is told the bytes of each response body as they arrive
        (for a progress bar on bootstraps and large pulls).  An answer in a content coding that
        unpacks to more than ``max_decoded_answer`` bytes is refused (``ProtocolError``)."""
        self.url = normalize_url(url)
        self._pool, self._prefix, self._full_url = _pool(self.url)
        self._headers = _base_headers(auth_token, client_name)
        self._attempts = attempts
        self._max_wait = max_wait
        self._deadline = deadline
        self._progress = progress
        self._max_decoded = max_decoded_answer
        self.stats = TransferStats()

    def request(self, path: str, body: bytes, content_type: str, timeout: float, idempotent: bool) -> HttpResponse:
        """POST with retries where safe; raises NetworkError or RemoteError."""
        return self.request_streamed(path, body, content_type, timeout, idempotent, None)

    def request_streamed(
        self, path: str, body: bytes, content_type: str, timeout: float, idempotent: bool, sink: SinkFactory | None
    ) -> HttpResponse:
        """``request``, with each attempt's successful body also fed to a new ``sink()`` as it
        arrives (a pull decodes its pages while the rest travels); the response's ``decoded``
        is the sink of the attempt that succeeded."""
        retrying = Retrying(
            retry=_retryable(idempotent),
            stop=stop_after_attempt(self._attempts) | stop_after_delay(self._deadline + timeout),
            wait=wait_exponential_jitter(multiplier=0.05, max=self._max_wait),
            reraise=False,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return self._once(path, body, content_type, timeout, sink() if sink is not None else None)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise _wrap(last, self.url, path) from None
        except (urllib3.exceptions.HTTPError, RemoteError) as exc:
            raise _wrap(exc, self.url, path) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _once(
        self, path: str, body: bytes, content_type: str, timeout: float, sink: BodySink | None = None
    ) -> HttpResponse:
        headers = {**self._headers, **_request_headers(content_type)}
        self.stats.sent += len(body)
        response = self._pool.urlopen(
            "POST",
            (self.url if self._full_url else self._prefix) + path,
            body=body,
            headers=headers,
            retries=False,
            redirect=False,
            assert_same_host=False,
            timeout=_u3_timeout(timeout),
            preload_content=False,
            decode_content=False,
            release_conn=False,
        )
        try:
            reader = _Body(response.status, response.headers, path, self._progress, self._max_decoded, sink)
            data = reader.read(response.stream(_READ_SIZE, decode_content=False))
        except BaseException:
            response.close()  # its connection may be mid-body: never reused
            response.release_conn()
            raise
        response.release_conn()
        self.stats.received += reader.received  # as it travelled (a gzip answer compressed)
        data = _decoded(data, response.headers)
        if response.status != 200:
            raise RemoteError(response.status, data, path)
        return HttpResponse(response.status, data, {k.lower(): v for k, v in response.headers.items()}, reader.sink)

    def close(self) -> None:
        if isinstance(self._pool, urllib3.PoolManager):
            self._pool.clear()
        else:
            self._pool.close()


class AsyncHttpTransport:
    """The asyncio twin of ``HttpTransport``: an aiohttp client session (keep-alive connections),
    the same retries, bounds and unpacking.

    Awaiting ``request`` holds no thread; cancelling the awaiting task abandons the request
    at once (its connection is closed), and retries stop with it.  The session is made on the
    first request, inside the event loop that awaits it.
    """

    def __init__(
        self,
        url: str,
        *,
        auth_token: str | None = None,
        client_name: str = "turso-sync",
        attempts: int = 5,
        max_wait: float = 2.0,
        deadline: float = 30.0,
        progress: Progress | None = None,
        max_decoded_answer: int = MAX_DECODED_ANSWER,
    ) -> None:
        """As ``HttpTransport``."""
        self.url = normalize_url(url)
        self._proxy = _env_proxy(self.url)  # refuses a URL that is not http(s) now, not at the first request
        self._headers = _base_headers(auth_token, client_name)
        self._session: aiohttp.ClientSession | None = None
        self._attempts = attempts
        self._max_wait = max_wait
        self._deadline = deadline
        self._progress = progress
        self._max_decoded = max_decoded_answer
        self.stats = TransferStats()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            tls: ssl.SSLContext | bool = _tls_context() if self.url.startswith("https://") else False
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=_POOL_SIZE, ssl=tls),
                headers=self._headers,
                auto_decompress=False,  # unpacked here, within the bound (``_Body``)
            )
        return self._session

    async def request(
        self, path: str, body: bytes, content_type: str, timeout: float, idempotent: bool
    ) -> HttpResponse:
        """POST with retries where safe; raises NetworkError or RemoteError."""
        return await self.request_streamed(path, body, content_type, timeout, idempotent, None)

    async def request_streamed(
        self, path: str, body: bytes, content_type: str, timeout: float, idempotent: bool, sink: SinkFactory | None
    ) -> HttpResponse:
        """As ``HttpTransport.request_streamed``."""
        retrying = AsyncRetrying(
            retry=_retryable(idempotent),
            stop=stop_after_attempt(self._attempts) | stop_after_delay(self._deadline + timeout),
            wait=wait_exponential_jitter(multiplier=0.05, max=self._max_wait),
            reraise=False,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._once(path, body, content_type, timeout, sink() if sink is not None else None)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise _wrap(last, self.url, path) from None
        except (aiohttp.ClientError, TimeoutError, RemoteError) as exc:
            raise _wrap(exc, self.url, path) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(
        self, path: str, body: bytes, content_type: str, timeout: float, sink: BodySink | None = None
    ) -> HttpResponse:
        headers = _request_headers(content_type)
        self.stats.sent += len(body)
        timeouts = aiohttp.ClientTimeout(total=None, sock_connect=min(timeout, 10.0), sock_read=timeout)
        async with self._client().post(
            self.url + path, data=body, headers=headers, timeout=timeouts, allow_redirects=False, proxy=self._proxy
        ) as response:
            reader = _Body(response.status, response.headers, path, self._progress, self._max_decoded, sink)
            data = await reader.aread(response.content.iter_chunked(_READ_SIZE))
        self.stats.received += reader.received  # as it travelled (a gzip answer compressed)
        data = _decoded(data, response.headers)
        if response.status != 200:
            raise RemoteError(response.status, data, path)
        return HttpResponse(response.status, data, {k.lower(): v for k, v in response.headers.items()}, reader.sink)

    async def aclose(self) -> None:
        """Close the session's connections."""
        if self._session is not None:
            await self._session.close()
