"""The fast tier's rules, enforced: a unit test opens no network socket and ends within a minute.

Binding or connecting an IPv4/IPv6 socket (a server, a client, a DNS-free ``127.0.0.1``) raises
``NetworkInUnitTest`` and fails the test, even if the code under test swallows the exception.
Unix sockets stay allowed (asyncio's self-pipe, ``socketpair``).  A test that needs a server
belongs in ``tests/integration``.  Each unit test gets a 60 s timeout (instead of the suite's 600 s)
unless it sets its own, so a hang in the fast tier fails fast.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

INTERNET = (socket.AF_INET, socket.AF_INET6)
UNIT_TIMEOUT_SECONDS = 60
HERE = Path(__file__).parent


class NetworkInUnitTest(RuntimeError):
    """A unit test tried to use the network.  Not an ``OSError``, so retry loops do not absorb it."""


def refuse_network(monkeypatch: pytest.MonkeyPatch, test: str) -> list[str]:
    """Make ``bind``/``connect`` on AF_INET and AF_INET6 sockets raise; returns the attempts, as they happen."""
    attempts: list[str] = []

    def guard(name: str):  # type: ignore[no-untyped-def]
        original = getattr(socket.socket, name)

        def refuse(self: socket.socket, *args: object, **kwargs: object) -> object:
            if self.family in INTERNET:
                where = f"{name}({', '.join(map(repr, args))})"
                attempts.append(where)
                raise NetworkInUnitTest(
                    f"{test}: socket.{where} in a unit test; "
                    "a test that needs a server or the network goes in tests/integration"
                )
            return original(self, *args, **kwargs)

        return refuse

    for name in ("bind", "connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, guard(name))
    return attempts


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[None]:
    """Every unit test runs under ``refuse_network``; an attempt fails it even if the code caught the error."""
    attempts = refuse_network(monkeypatch, request.node.nodeid)
    yield
    if attempts:
        pytest.fail(
            f"{request.node.nodeid} used the network ({'; '.join(attempts)}): "
            "unit tests start no server and open no connection; move it to tests/integration",
            pytrace=False,
        )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A minute per unit test unless it says otherwise (this hook sees every collected test: only ours)."""
    for item in items:
        if item.path.is_relative_to(HERE) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT_SECONDS))
