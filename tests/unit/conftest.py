"""The fast tier's rule, enforced: a unit test opens no network socket.

Binding or connecting an IPv4/IPv6 socket (a server, a client, a DNS-free ``127.0.0.1``) raises
``NetworkInUnitTest`` and fails the test, even if the code under test swallows the exception.
Unix sockets stay allowed (asyncio's self-pipe, ``socketpair``).  A test that needs a server
belongs in ``tests/integration``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

INTERNET = (socket.AF_INET, socket.AF_INET6)


class NetworkInUnitTest(RuntimeError):
    """A unit test tried to use the network.  Not an ``OSError``, so retry loops do not absorb it."""


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[None]:
    """Refuse ``bind``/``connect`` on AF_INET and AF_INET6 sockets for the test's duration."""
    attempts: list[str] = []

    def guard(name: str):  # type: ignore[no-untyped-def]
        original = getattr(socket.socket, name)

        def refuse(self: socket.socket, *args: object, **kwargs: object) -> object:
            if self.family in INTERNET:
                where = f"{name}({', '.join(map(repr, args))})"
                attempts.append(where)
                raise NetworkInUnitTest(
                    f"{request.node.nodeid}: socket.{where} in a unit test; "
                    "a test that needs a server or the network goes in tests/integration"
                )
            return original(self, *args, **kwargs)

        return refuse

    for name in ("bind", "connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, guard(name))
    yield
    if attempts:
        pytest.fail(
            f"{request.node.nodeid} used the network ({'; '.join(attempts)}): "
            "unit tests start no server and open no connection; move it to tests/integration",
            pytrace=False,
        )
