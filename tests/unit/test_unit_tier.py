"""The unit tier's network guard (tests/unit/conftest.py) refuses what it should and nothing else."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from tests.unit.conftest import (
    HERE,
    UNIT_TIMEOUT_SECONDS,
    NetworkInUnitTest,
    pytest_collection_modifyitems,
    refuse_network,
)


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


class Item:
    """What the collection hook reads and writes of a test item."""

    def __init__(self, path: Path, timeout: int | None = None) -> None:
        self.path = path
        self.markers = [pytest.mark.timeout(timeout).mark] if timeout else []

    def get_closest_marker(self, name: str):
        return next((m for m in self.markers if m.name == name), None)

    def add_marker(self, marker) -> None:
        self.markers.append(marker.mark)


def test_a_unit_test_has_a_minute_and_others_keep_the_suite_timeout(request):
    assert request.node.get_closest_marker("timeout").args == (UNIT_TIMEOUT_SECONDS,)
    unit, own, integration = (
        Item(HERE / "test_x.py"),
        Item(HERE / "test_y.py", timeout=5),
        Item(HERE.parent / "integration" / "test_z.py"),
    )
    pytest_collection_modifyitems([unit, own, integration])  # type: ignore[list-item]
    assert unit.get_closest_marker("timeout").args == (UNIT_TIMEOUT_SECONDS,)
    assert own.get_closest_marker("timeout").args == (5,)
    assert integration.get_closest_marker("timeout") is None
