"""A transport that meets the faults a step planned: the seed decides, not the clock.

Wraps the replica's real transport (which talks to a real primary on 127.0.0.1), so a
response dropped "after the server committed" is real: the server did commit.

- ``drop_request``: the request never leaves; the client sees a network error.
- ``drop_response``: the server handles it; the answer is lost.
- ``duplicate``: the server receives it twice (a retrying proxy); the client gets the 2nd answer.
- ``delay``: the client times out; the request reaches the server later (``deliver_delayed``),
  after requests sent since: this is also how requests get reordered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from turso_sync.errors import Error, NetworkError
from turso_sync.sync.transport import HttpResponse, TransferStats, Transport


@dataclass
class Held:
    """A delayed request, not yet delivered."""

    path: str
    body: bytes
    content_type: str
    idempotent: bool


@dataclass
class FaultLog:
    """What the transport did (for the report of a failing seed)."""

    events: list[str] = field(default_factory=list)


class FaultyTransport:
    """A ``Transport`` that applies ``plan`` to the next requests, in order, then passes through."""

    def __init__(self, real: Transport, backlog: list[Held], log: FaultLog) -> None:
        self.real = real
        self.stats: TransferStats = real.stats
        self.plan: list[str | None] = []
        self.backlog = backlog  # shared by every replica: delayed requests from anyone
        self.log = log

    def request(self, path: str, body: bytes, content_type: str, timeout: float, idempotent: bool) -> HttpResponse:
        """Deliver, or meet the next planned fault."""
        fault = self.plan.pop(0) if self.plan else None
        if fault is not None:
            self.log.events.append(f"{fault} {path}")
        if fault == "drop_request":
            raise NetworkError(f"cannot reach {path}: ConnectError (simulated: request dropped)")
        if fault == "delay":
            self.backlog.append(Held(path, body, content_type, idempotent))
            raise NetworkError(f"cannot reach {path}: ReadTimeout (simulated: request delayed)")
        response = self.real.request(path, body, content_type, timeout, idempotent)
        if fault == "duplicate":
            response = self.real.request(path, body, content_type, timeout, idempotent)
        if fault == "drop_response":
            raise NetworkError(f"cannot reach {path}: RemoteProtocolError (simulated: response lost)")
        return response

    def close(self) -> None:
        """Close the real transport."""
        self.real.close()


def deliver_delayed(backlog: list[Held], transport: Transport, log: FaultLog) -> int:
    """Send every held request now (answers go nowhere); returns how many reached the server."""
    delivered = 0
    while backlog:
        held = backlog.pop(0)
        try:
            transport.request(held.path, held.body, held.content_type, 30.0, held.idempotent)
            delivered += 1
            log.events.append(f"delivered late {held.path}")
        except Error as exc:  # the server may refuse a stale request: that is its right
            log.events.append(f"late {held.path} refused: {type(exc).__name__}")
    return delivered
