"""Running the primary: configuration, start-up checks, binding, graceful shutdown."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from ..crypto.page_codec import parse_key
from .app import Limits, create_app
from .auth import Authenticator, load_token_file
from .store import DatabaseStore

log = logging.getLogger("turso_sync.primary")

#: How long shutdown waits for requests in flight (long-polls are woken first).
SHUTDOWN_TIMEOUT = 10.0


class AccessLogger(AbstractAccessLogger):
    """One line per request: client, method, path (never the query string or headers), status, size, time."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %s %s %.4fs',
            request.remote,
            request.method,
            request.path,
            response.status,
            response.body_length,
            time,
        )


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
        store = DatabaseStore(cfg.data_dir, encryption_key=key, cipher=cfg.cipher)
        await store.start()
        self.store = store
        app = create_app(store, auth, cfg.limits)
        runner = web.AppRunner(
            app,
            access_log_class=AccessLogger,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            handle_signals=False,
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
            raise ConfigError(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror}") from None
        site = web.SockSite(runner, sock)
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
