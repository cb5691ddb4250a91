"""The transports (``HttpTransport`` on urllib3, ``AsyncHttpTransport`` on aiohttp) against real HTTP
servers on loopback: each keeps one connection alive across requests, sends the token and the client's
name, goes through the proxy the environment names (``HTTP_PROXY``, minus ``NO_PROXY``) as httpx's
clients did, and a connection the server closed between requests is replaced without losing a request."""

from __future__ import annotations

import asyncio
import datetime
import http.client
import ipaddress
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from turso_sync.errors import NetworkError
from turso_sync.sync import transport as transport_mod
from turso_sync.sync.transport import _JOIN_LIMIT, AsyncHttpTransport, HttpTransport


class _Echo(BaseHTTPRequestHandler):
    """Answers every POST with what it saw: the request target and two headers."""

    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str, str, int]] = []  # (target, authorization, user-agent, client port)
    close_after: set[int] = set()  # answer the n-th request (1-based) with Connection: close

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        auth, agent = self.headers.get("authorization", ""), self.headers.get("user-agent", "")
        self.seen.append((self.path, auth, agent, self.client_address[1]))
        answer = b"echo:" + body
        self.send_response(200)
        self.send_header("content-length", str(len(answer)))
        if len(self.seen) in self.close_after:
            self.send_header("connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


class _ForwardProxy(BaseHTTPRequestHandler):
    """A plain-HTTP forward proxy: takes absolute-form requests and relays them (one per connection)."""

    targets: list[str] = []

    def do_POST(self) -> None:
        self.targets.append(self.path)
        url = urllib.parse.urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        upstream = http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=10)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection")}
        upstream.request("POST", url.path, body=body, headers=headers)
        answer = upstream.getresponse()
        data = answer.read()
        upstream.close()
        self.send_response(answer.status)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def _serve(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def echo(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for scheme in ("http", "https", "all", "no"):
        monkeypatch.delenv(f"{scheme}_proxy", raising=False)
        monkeypatch.delenv(f"{scheme.upper()}_PROXY", raising=False)
    _Echo.seen = []
    _Echo.close_after = set()
    server, url = _serve(_Echo)
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()


def test_requests_share_one_kept_alive_connection_and_carry_the_token(echo: str) -> None:
    transport = HttpTransport(echo + "/db", auth_token="t0ken", client_name="the-app")
    try:
        for i in range(5):
            answer = transport.request("/pull-updates", b"%d" % i, "application/protobuf", 10, True)
            assert answer.body == b"echo:%d" % i
    finally:
        transport.close()
    assert [s[:3] for s in _Echo.seen] == [("/db/pull-updates", "Bearer t0ken", "the-app")] * 5
    assert len({s[3] for s in _Echo.seen}) == 1  # one TCP connection for the five requests
    assert transport.stats.sent == 5 and transport.stats.received == 5 * len(b"echo:0")


def test_a_connection_the_server_closed_is_replaced_and_no_request_is_lost(echo: str) -> None:
    _Echo.close_after = {2, 3}
    transport = HttpTransport(echo, attempts=1)  # no retry may hide a lost request
    try:
        bodies = [transport.request("/v2/pipeline", b"w%d" % i, "application/json", 10, False).body for i in range(5)]
    finally:
        transport.close()
    assert bodies == [b"echo:w%d" % i for i in range(5)]
    assert len(_Echo.seen) == 5  # each write reached the server once
    assert len({s[3] for s in _Echo.seen}) == 3  # a new connection after each close


def test_the_environment_s_proxy_is_used_and_no_proxy_bypasses_it(echo: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _ForwardProxy.targets = []
    proxy, proxy_url = _serve(_ForwardProxy)
    try:
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        transport = HttpTransport(echo, auth_token="t0ken")
        try:
            assert transport.request("/pull-updates", b"x", "application/protobuf", 10, True).body == b"echo:x"
        finally:
            transport.close()
        assert _ForwardProxy.targets == [echo + "/pull-updates"]  # absolute form: it went through the proxy
        assert _Echo.seen[-1][:2] == ("/pull-updates", "Bearer t0ken")

        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        direct = HttpTransport(echo)
        try:
            assert direct.request("/pull-updates", b"y", "application/protobuf", 10, True).body == b"echo:y"
        finally:
            direct.close()
        assert _ForwardProxy.targets == [echo + "/pull-updates"]  # not through the proxy this time
    finally:
        proxy.shutdown()
        proxy.server_close()


def _client_sends(monkeypatch: pytest.MonkeyPatch, kind: type[socket.socket] = socket.socket) -> list[bytes]:
    """What this thread (the client; the servers run on their own) hands ``kind.sendall`` (a plain
    socket's, or ``ssl.SSLSocket``'s, which overrides it), call by call."""
    sent: list[bytes] = []
    me = threading.get_ident()
    real = kind.sendall

    def spy(sock: socket.socket, data: bytes, *args: object) -> None:
        if threading.get_ident() == me:
            sent.append(bytes(data))
        real(sock, data, *args)

    monkeypatch.setattr(kind, "sendall", spy)
    return sent


def test_a_request_s_head_and_body_leave_in_one_write(echo: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sent = _client_sends(monkeypatch)
    transport = HttpTransport(echo, auth_token="t0ken")
    try:
        for i in range(3):
            assert (
                transport.request("/v2/pipeline", b"small-%d" % i, "application/json", 10, False).body
                == b"echo:small-%d" % i
            )
        assert len(sent) == 3 and all(d.startswith(b"POST /v2/pipeline HTTP/1.1\r\n") for d in sent)
        assert [d.split(b"\r\n\r\n", 1)[1] for d in sent] == [b"small-0", b"small-1", b"small-2"]
        # a body over the limit goes in a write of its own after the head, as http.client sends it
        big = b"b" * (_JOIN_LIMIT + 1)
        sent.clear()
        assert transport.request("/v2/pipeline", big, "application/json", 10, False).body == b"echo:" + big
        assert len(sent) == 2 and sent[0].endswith(b"\r\n\r\n") and sent[1] == big
    finally:
        transport.close()
    assert len(_Echo.seen) == 4 and len({s[3] for s in _Echo.seen}) == 1


def test_through_a_proxy_a_request_is_one_write_too(echo: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _ForwardProxy.targets = []
    proxy, proxy_url = _serve(_ForwardProxy)
    try:
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        sent = _client_sends(monkeypatch)
        transport = HttpTransport(echo)
        try:
            assert transport.request("/pull-updates", b"x", "application/protobuf", 10, True).body == b"echo:x"
        finally:
            transport.close()
        assert len(sent) == 1 and sent[0].startswith(f"POST {echo}/pull-updates HTTP/1.1".encode())
        assert sent[0].endswith(b"\r\n\r\nx") and _ForwardProxy.targets == [echo + "/pull-updates"]
    finally:
        proxy.shutdown()
        proxy.server_close()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself, and its key (PEM files in ``folder``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


def test_over_https_a_request_is_verified_kept_alive_and_one_write(
    echo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real TLS server on loopback: the certificate is checked against the trusted roots (here
    the test's own, in place of certifi's), one connection serves every request, and each
    request is one TLS write."""
    cert_file, key_file = _self_signed(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert_file, key_file)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}"
    try:
        # no trusted root for it: refused
        untrusted = HttpTransport(url, attempts=1)
        try:
            with pytest.raises(NetworkError):
                untrusted.request("/pull-updates", b"x", "application/protobuf", 10, True)
        finally:
            untrusted.close()
        monkeypatch.setattr(transport_mod, "_tls_context", lambda: ssl.create_default_context(cafile=str(cert_file)))
        sent = _client_sends(monkeypatch, ssl.SSLSocket)
        _Echo.seen = []
        transport = HttpTransport(url, auth_token="t0ken")
        try:
            for i in range(3):
                answer = transport.request("/pull-updates", b"tls-%d" % i, "application/protobuf", 10, True)
                assert answer.body == b"echo:tls-%d" % i
        finally:
            transport.close()
        assert [d.split(b"\r\n\r\n", 1)[1] for d in sent] == [b"tls-0", b"tls-1", b"tls-2"]
        assert [s[:2] for s in _Echo.seen] == [("/pull-updates", "Bearer t0ken")] * 3
        assert len({s[3] for s in _Echo.seen}) == 1
    finally:
        server.shutdown()
        server.server_close()


def test_a_url_that_is_not_http_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="not an http"):
        HttpTransport("ftp://127.0.0.1/db")


def test_the_async_transport_keeps_one_connection_and_carries_the_token(echo: str) -> None:
    async def run() -> list[bytes]:
        transport = AsyncHttpTransport(echo + "/db", auth_token="t0ken", client_name="the-app")
        try:
            return [
                (await transport.request("/pull-updates", b"%d" % i, "application/protobuf", 10, True)).body
                for i in range(5)
            ]
        finally:
            await transport.aclose()

    assert asyncio.run(run()) == [b"echo:%d" % i for i in range(5)]
    assert [s[:3] for s in _Echo.seen] == [("/db/pull-updates", "Bearer t0ken", "the-app")] * 5
    assert len({s[3] for s in _Echo.seen}) == 1  # one TCP connection for the five requests


def test_the_async_transport_replaces_a_closed_connection_and_loses_no_request(echo: str) -> None:
    _Echo.close_after = {2, 3}

    async def run() -> list[bytes]:
        transport = AsyncHttpTransport(echo, attempts=1)  # no retry may hide a lost request
        try:
            return [
                (await transport.request("/v2/pipeline", b"w%d" % i, "application/json", 10, False)).body
                for i in range(5)
            ]
        finally:
            await transport.aclose()

    assert asyncio.run(run()) == [b"echo:w%d" % i for i in range(5)]
    assert len(_Echo.seen) == 5 and len({s[3] for s in _Echo.seen}) == 3


def test_the_async_transport_uses_the_environment_s_proxy(echo: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _ForwardProxy.targets = []
    proxy, proxy_url = _serve(_ForwardProxy)

    async def one(body: bytes) -> bytes:
        transport = AsyncHttpTransport(echo)
        try:
            return (await transport.request("/pull-updates", body, "application/protobuf", 10, True)).body
        finally:
            await transport.aclose()

    try:
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        assert asyncio.run(one(b"x")) == b"echo:x"
        assert _ForwardProxy.targets == [echo + "/pull-updates"]
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        assert asyncio.run(one(b"y")) == b"echo:y"
        assert _ForwardProxy.targets == [echo + "/pull-updates"]  # bypassed
    finally:
        proxy.shutdown()
        proxy.server_close()
    with pytest.raises(ValueError, match="not an http"):
        AsyncHttpTransport("ftp://127.0.0.1/db")
