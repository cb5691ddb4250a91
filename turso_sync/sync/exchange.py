"""The sans-IO seam: sync steps are generators that yield requests and receive responses.

Bootstrap, pull and push never call the network themselves.  Each is a generator (``Steps``)
that yields a ``Request`` when it needs the remote and is sent the ``HttpResponse`` (or has the
transport's exception thrown in at the ``yield``); its return value is the step's result.  A
driver performs the requests: ``drive`` over a blocking ``Transport`` here, ``adrive`` over an
``AsyncTransport`` for ``turso_sync.aio``.  So both APIs run the very same protocol code, and a
test can drive a step by hand (``next``, ``send``, ``throw``) without any transport at all.

Local SQLite work happens inside the generator, between two yields.  ``adrive`` runs those
stretches through ``run_local`` (a worker thread in ``turso_sync.aio``) and awaits only the
network on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from .transport import HttpResponse, SinkFactory, TransferStats, Transport

T = TypeVar("T")


@dataclass(frozen=True)
class Request:
    """One POST a step needs: ``path`` relative to the remote URL, the body and how to send it.

    ``idempotent`` tells the transport whether repeating the request can do harm (a pull cannot,
    a push batch can), so only idempotent requests are retried after they may have arrived.
    """

    path: str
    body: bytes
    content_type: str
    timeout: float
    idempotent: bool
    #: the step can take the body as it arrives: a transport with ``request_streamed`` feeds a
    #: ``sink()`` and returns it as the response's ``decoded``; any other leaves ``decoded`` None
    sink: SinkFactory | None = None


#: A sync step: yields requests, is sent their responses, returns its result.
Steps = Generator[Request, HttpResponse, T]


class AsyncTransport(Protocol):
    """The asyncio twin of ``Transport``: moves one request and returns the whole response."""

    stats: TransferStats

    async def request(
        self, path: str, body: bytes, content_type: str, timeout: float, idempotent: bool
    ) -> HttpResponse:
        """POST ``body`` to ``path``; raises NetworkError or RemoteError."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def drive(steps: Steps[T], transport: Transport, traffic: TransferStats | None = None) -> T:
    """Run ``steps`` to the end, performing each request on the blocking ``transport``.

    ``traffic``, when given, counts the request and response bodies of this run (each once,
    whatever the transport retried).
    """
    traffic = traffic if traffic is not None else TransferStats()
    try:
        request = next(steps)
        while True:
            traffic.sent += len(request.body)
            try:
                response = send(transport, request)
            except BaseException as exc:  # the step decides: it may recover, or it re-raises
                request = steps.throw(exc)
            else:
                traffic.received += len(response.body)
                request = steps.send(response)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def adrive(
    steps: Steps[T],
    transport: AsyncTransport,
    run_local: Callable[[Callable[[], Any]], Awaitable[Any]],
    traffic: TransferStats | None = None,
) -> T:
    """Run ``steps`` with the network awaited on ``transport`` and the local work in ``run_local``.

    ``run_local(fn)`` runs ``fn()`` (the step's SQLite work up to its next request) and returns
    its result; every call must run on the same thread, as the replica's sync lock is a
    thread's lock.  ``traffic`` counts the bodies as ``drive`` does.  When the awaiting task is
    cancelled, the request is abandoned at once and the step is closed (its ``finally`` blocks
    run, its locks are released) before the cancellation propagates: nothing is left
    half-done, as after an interrupted blocking call.
    """
    traffic = traffic if traffic is not None else TransferStats()
    advance: Callable[[], Any] = steps.__next__
    while True:
        local = asyncio.ensure_future(run_local(functools.partial(_advance, advance)))
        try:
            done, value = await asyncio.shield(local)
        except asyncio.CancelledError:
            # the local stretch runs to its end on its thread (SQLite cannot be stopped midway);
            # then the step is closed there, as on a cancelled request
            with contextlib.suppress(BaseException):
                await asyncio.shield(local)
            await asyncio.shield(run_local(steps.close))
            raise
        if done:
            return value  # type: ignore[no-any-return]
        request: Request = value
        traffic.sent += len(request.body)
        try:
            response = await asend(transport, request)
        except asyncio.CancelledError:
            await asyncio.shield(run_local(steps.close))
            raise
        except BaseException as exc:  # handed to the step, which re-raises what it cannot handle
            advance = functools.partial(steps.throw, exc)
        else:
            traffic.received += len(response.body)
            advance = functools.partial(steps.send, response)


def send(transport: Transport, request: Request) -> HttpResponse:
    """Perform ``request`` on ``transport``, streamed into its sink where both can."""
    if request.sink is not None and streams(transport):
        return transport.request_streamed(  # type: ignore[attr-defined,no-any-return]
            request.path, request.body, request.content_type, request.timeout, request.idempotent, request.sink
        )
    return transport.request(request.path, request.body, request.content_type, request.timeout, request.idempotent)


async def asend(transport: AsyncTransport, request: Request) -> HttpResponse:
    """``send`` on an ``AsyncTransport``."""
    if request.sink is not None and streams(transport):
        return await transport.request_streamed(  # type: ignore[attr-defined,no-any-return]
            request.path, request.body, request.content_type, request.timeout, request.idempotent, request.sink
        )
    return await transport.request(
        request.path, request.body, request.content_type, request.timeout, request.idempotent
    )


def streams(transport: object) -> bool:
    """Whether ``transport`` takes a sink: it has ``request_streamed``, and its ``request`` is the
    one defined beside it.  A subclass that overrides ``request`` alone (a test's fault injector,
    an application's wrapper) keeps seeing every request, the whole body decoded afterwards."""
    if "request" in vars(transport) or "request_streamed" in vars(transport):
        return False
    return _defined_together(type(transport))


def _defined_together(cls: type) -> bool:
    def owner(name: str) -> type | None:
        return next((klass for klass in cls.__mro__ if name in vars(klass)), None)

    streamed = owner("request_streamed")
    return streamed is not None and streamed is owner("request")


def _advance(action: Callable[[], Any]) -> tuple[bool, Any]:
    """``(False, next request)`` or ``(True, result)``: a StopIteration cannot cross a Future."""
    try:
        return False, action()
    except StopIteration as stop:
        return True, stop.value
