"""Running the primary: configuration, start-up checks, binding, graceful shutdown."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from ..crypto.page_codec import parse_key
from .app import Limits, create_app
from .auth import Authenticator, load_token_file
from .durable import StoreBackend, StoreSettings
from .objectstore.client import ObjectClient
from .revision import HistoryBounds
from .store import DatabaseStore

log = logging.getLogger("turso_sync.primary")

#: How long shutdown waits for requests in flight (long-polls are woken first).
SHUTDOWN_TIMEOUT = 10.0

#: After answering a request whose body was not read to the end (413, 408, a refusal), how long
#: the rest is read and dropped so the client sees the answer rather than a reset; then the
#: connection is closed.
LINGER_S = 2.0


class QuietProtocolLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's connection-level logger, minus the noise a hostile internet makes.

    A malformed request (bad request line or header, a non-HTTP client) is the client's
    fault, and the access log already has its line (``"UNKNOWN /" 400``): the reason goes to
    DEBUG as one line naming the peer, without a traceback; so does a client gone mid-request.
    Anything else (a bug) keeps its traceback at ERROR.
    """

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return msg, kwargs

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        """Log an exception aiohttp caught, quietly when the client caused it."""
        if not self._quiet(msg, args, exc_info):
            self.logger.error(msg, *args, exc_info=exc_info, **kwargs)

    def debug(self, msg: object, *args: object, exc_info: Any = None, **kwargs: Any) -> None:
        """aiohttp logs some client faults (a non-HTTP first request) at DEBUG with a traceback: one line instead."""
        if not self._quiet(msg, args, exc_info):
            self.logger.debug(msg, *args, exc_info=exc_info, **kwargs)

    def _quiet(self, msg: object, args: tuple[object, ...], exc_info: Any) -> bool:
        exc = exc_info if isinstance(exc_info, BaseException) else None
        if isinstance(exc, HttpProcessingError):
            detail = " ".join(str(exc.message).split())[:200]
            self.logger.debug("%s: malformed HTTP request (%s)", str(msg) % args, detail)
        elif isinstance(exc, ConnectionError):
            self.logger.debug("%s: client disconnected", str(msg) % args)
        else:
            return False
        return True


class _Refuse503(asyncio.Protocol):
    """A connection over ``max_connections``: answered 503 at once and closed, its request unread."""

    BODY = b'{"error": "the server has too many open connections; try again shortly", "code": "SERVER_BUSY"}'
    ANSWER = (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
        b"Server: turso-sync\r\nConnection: close\r\nContent-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
    )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(self.ANSWER)
        transport.close()


class BoundedSite(web.SockSite):
    """A listening socket that keeps at most ``max_connections`` connections open.

    Counted from the connections aiohttp tracks, so a burst accepted in one event-loop turn
    can pass the bound by at most that burst (the listen backlog, 128).
    """

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, max_connections: int) -> None:
        super().__init__(runner, sock)
        self.max_connections = max_connections
        self.refused = 0

    async def start(self) -> None:
        """Register with the runner and listen (what ``SockSite.start`` does, with the bound)."""
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None

        def protocol() -> asyncio.BaseProtocol:
            if len(server.connections) >= self.max_connections:
                self.refused += 1
                if self.refused == 1 or self.refused % 1000 == 0:
                    log.warning(
                        "connections over --max-connections %d refused (%d so far)", self.max_connections, self.refused
                    )
                return _Refuse503()
            return server()

        self._server = await asyncio.get_running_loop().create_server(protocol, sock=self._sock, backlog=self._backlog)


class AccessLogger(AbstractAccessLogger):
    """One line per request: client, method, path (never the query string or headers), status, size, time.

    At INFO with ``--access-log``; without it at DEBUG (``QuietAccessLogger``), so the default
    level writes no line per request.
    """

    LEVEL = logging.INFO

    @property
    def enabled(self) -> bool:
        """Whether a line would be written at all (aiohttp skips the call otherwise)."""
        return self.logger.isEnabledFor(self.LEVEL)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.log(
            self.LEVEL,
            '%s "%s %s" %s %s %.4fs',
            request.remote,
            request.method,
            request.path,
            response.status,
            response.body_length,
            time,
        )


class QuietAccessLogger(AccessLogger):
    """The access lines without ``--access-log``: DEBUG only."""

    LEVEL = logging.DEBUG


class ConfigError(Exception):
    """The server cannot start with this configuration; the message says what to change."""


@dataclass
class ServerConfig:
    """Everything ``turso-sync serve`` takes."""

    data_dir: str
    host: str = "127.0.0.1"
    port: int = 8080
    token_file: str | None = None
    encryption_key_file: str | None = None
    cipher: str = "aes256gcm"
    limits: Limits = field(default_factory=Limits)
    access_log: bool = False  # one INFO line per request (``--access-log``); off: those lines are DEBUG
    store: StoreSettings | None = None  # ``--store``: databases live in an object store, the data dir is a cache
    history: HistoryBounds = field(default_factory=HistoryBounds)  # ``--history-seconds``, ``--history-bytes``


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as ``(host, port)``."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"--listen {text!r}: expected HOST:PORT, for example 127.0.0.1:8080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """True if ``host`` names only loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_key_file(path: str, cipher: str) -> str:
    """The at-rest key from a file holding it as hex (whitespace around it is ignored)."""
    try:
        with open(path, encoding="ascii") as f:
            key = f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read encryption key file {path}: {exc}") from None
    try:
        parse_key(key, cipher)
    except (ValueError, TypeError) as exc:  # parse_key's messages never echo the key
        raise ConfigError(f"encryption key file {path}: {exc}") from None
    return key


class PrimaryServer:
    """The primary server: ``await start()``, then ``await stop()``."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.url = ""
        self._runner: web.AppRunner | None = None
        self.store: DatabaseStore | None = None
        self._object_client: ObjectClient | None = None

    async def _backend(self) -> StoreBackend | None:
        """The object store of ``--store`` (None without it); ConfigError when it cannot be used."""
        settings = self.config.store
        if settings is None:
            return None
        try:
            from .objectstore.s3 import S3Client, S3Location
        except ImportError:
            raise ConfigError(
                "--store needs the S3 client library (aiobotocore): pip install 'turso-sync[s3]'"
            ) from None
        try:
            location = S3Location.parse(settings.url, settings.endpoint_url, settings.region)
        except ValueError as exc:
            raise ConfigError(f"--store: {exc}") from None
        client = await S3Client.open(location)
        self._object_client = client
        where = f" at {location.endpoint_url}" if location.endpoint_url else ""
        description = f"s3://{location.bucket}/{location.prefix}{where}"
        try:
            backend = StoreBackend(
                client,
                location.prefix,
                description=description,
                lease_ttl=settings.lease_ttl,
                snapshot_every=settings.snapshot_every,
                retention_s=settings.retention_s,
                follow=settings.follow,
                follow_poll=settings.follow_poll,
            )
        except ValueError as exc:
            raise ConfigError(f"--store: {exc}") from None
        role = "followed read-only from" if settings.follow else "live in"
        log.info("databases %s the object store %s; %s is a cache", role, description, self.config.data_dir)
        return backend

    def _authenticator(self) -> Authenticator:
        cfg = self.config
        if cfg.token_file is None:
            if not is_loopback(cfg.host):
                raise ConfigError(
                    f"without --token-file the server runs in development mode and only binds to loopback "
                    f"addresses; pass --token-file to listen on {cfg.host}"
                )
            log.warning(
                "development mode: no --token-file, so ANY token (or none) may read and write every "
                "database; listening on loopback only"
            )
            return Authenticator(None)
        rules, warnings = load_token_file(cfg.token_file)
        for message in warnings:
            log.warning("%s", message)
        return Authenticator(rules)

    async def start(self) -> str:
        """Check the configuration, open the databases, bind; return the base URL."""
        cfg = self.config
        auth = self._authenticator()
        key = read_key_file(cfg.encryption_key_file, cfg.cipher) if cfg.encryption_key_file else None
        limits = cfg.limits
        try:
            backend = await self._backend()
        except BaseException:
            await self._close_client()
            raise
        store = DatabaseStore(
            cfg.data_dir,
            encryption_key=key,
            cipher=cfg.cipher,
            max_open=limits.max_open_databases,
            max_per_owner=limits.max_databases_per_token,
            sql_limits=limits.sql,
            backend=backend,
            history=cfg.history,
        )
        try:
            await store.start()
        except BaseException:
            await store.close()
            await self._close_client()
            raise
        self.store = store
        app = create_app(store, auth, limits)
        runner = web.AppRunner(
            app,
            access_log_class=AccessLogger if cfg.access_log else QuietAccessLogger,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            handle_signals=False,
            # idle connections, and request lines and headers, must arrive within this: aiohttp's
            # keep-alive timer runs from the connection's opening and from the end of each answer
            # until the next request is complete, and then closes the connection
            keepalive_timeout=limits.idle_timeout_s,
            lingering_time=LINGER_S,
            auto_decompress=False,  # bodies are taken as sent (see app._read_body): no decompression bombs
            logger=QuietProtocolLog(logging.getLogger("aiohttp.server"), {}),
        )
        await runner.setup()
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((cfg.host, cfg.port))
        except OSError as exc:
            sock.close()
            await runner.cleanup()
            await store.close()
            await self._close_client()
            raise ConfigError(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror}") from None
        site = BoundedSite(runner, sock, limits.max_connections)
        await site.start()
        self._runner = runner
        port = sock.getsockname()[1]
        host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        """Wake long-polls, finish requests in flight, close every database."""
        if self.store is not None:
            self.store.wake_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.store is not None:
            await self.store.close()
            self.store = None
        await self._close_client()

    async def _close_client(self) -> None:
        client, self._object_client = self._object_client, None
        if client is not None:
            await client.close()


async def run_until_signalled(config: ServerConfig, announce: bool = True) -> None:
    """Start the server, print its URL, serve until SIGINT or SIGTERM, then stop cleanly."""
    server = PrimaryServer(config)
    url = await server.start()
    if announce:
        print(f"turso-sync primary listening on {url} (data dir {os.path.abspath(config.data_dir)})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await server.stop()
