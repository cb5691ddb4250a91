"""The unit tier's network guard (tests/unit/conftest.py) refuses what it should and nothing else."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.unit.conftest import NetworkInUnitTest, refuse_network


def test_binding_or_connecting_an_internet_socket_is_refused_and_recorded(monkeypatch):
    attempts = refuse_network(monkeypatch, "this test")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server, pytest.raises(NetworkInUnitTest) as info:
        server.bind(("127.0.0.1", 0))
    assert "tests/integration" in str(info.value)
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as client, pytest.raises(NetworkInUnitTest):
        client.connect_ex(("::1", 9))
    with pytest.raises(NetworkInUnitTest):
        httpx.get("http://127.0.0.1:9/", timeout=1)  # a client library, not just raw sockets
    assert [a.split("(")[0] for a in attempts] == ["bind", "connect_ex", "connect"]


def test_unix_sockets_stay_allowed(monkeypatch):
    attempts = refuse_network(monkeypatch, "this test")
    left, right = socket.socketpair()  # asyncio's self-pipe is one of these
    with left, right:
        left.sendall(b"ping")
        assert right.recv(4) == b"ping"
    assert attempts == []
