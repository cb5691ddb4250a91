"""The sans-IO seam (``sync/exchange.py``) and the remote's endpoints as steps (``sync/remote.py``)."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from turso_sync import errors
from turso_sync.sync.exchange import Request, Steps, adrive, drive
from turso_sync.sync.remote import decode_pull, fetch_pages, pipeline_body, remote_mark
from turso_sync.sync.state import SyncState
from turso_sync.sync.transport import HttpResponse, TransferStats
from turso_sync.testing import MockTransport, pull_answer
from turso_sync.wire.pull import PageEncoding, PullRequest

PAGE = bytes(range(256)) * 16


def echo_twice() -> Steps[list[bytes]]:
    """Two requests; a NetworkError at the second is recovered from."""
    first = yield Request("/a", b"one", "text/plain", 1.0, True)
    try:
        second = yield Request("/b", b"two!", "text/plain", 1.0, False)
    except errors.NetworkError:
        return [first.body, b"recovered"]
    return [first.body, second.body]


def test_drive_sends_each_response_back_and_returns_the_result():
    transport = MockTransport(lambda path, body, ct: HttpResponse(200, body.upper()))
    traffic = TransferStats()
    assert drive(echo_twice(), transport, traffic) == [b"ONE", b"TWO!"]
    assert [r.path for r in transport.requests] == ["/a", "/b"]
    assert [r.idempotent for r in transport.requests] == [True, False]
    assert (traffic.sent, traffic.received) == (7, 7)


def test_drive_throws_a_transport_error_into_the_step_which_may_recover():
    def handler(path: str, body: bytes, ct: str) -> HttpResponse:
        if path == "/b":
            raise errors.NetworkError("down")
        return HttpResponse(200, b"1")

    assert drive(echo_twice(), MockTransport(handler)) == [b"1", b"recovered"]


def test_an_error_the_step_does_not_handle_reaches_the_caller():
    transport = MockTransport(lambda path, body, ct: HttpResponse(503, b"busy"))
    with pytest.raises(errors.RemoteError) as caught:
        drive(echo_twice(), transport)
    assert caught.value.status == 503 and len(transport.requests) == 1


class AsyncMock:
    """An async transport answering from a function; ``hold`` makes requests wait until cancelled."""

    def __init__(self, handler, hold: bool = False) -> None:
        self.handler = handler
        self.hold = hold
        self.stats = TransferStats()
        self.waiting = asyncio.Event()

    async def request(self, path, body, content_type, timeout, idempotent):
        if self.hold:
            self.waiting.set()
            await asyncio.Event().wait()  # until cancelled
        response = self.handler(path, body, content_type)
        if response.status != 200:
            raise errors.RemoteError(response.status, response.body, path)
        return response

    async def aclose(self) -> None:
        pass


def run_on(executor: ThreadPoolExecutor):
    async def run_local(fn):
        return await asyncio.get_running_loop().run_in_executor(executor, fn)

    return run_local


def test_adrive_runs_the_same_steps_with_local_work_on_one_worker_thread():
    threads: set[str] = set()

    def recorded() -> Steps[list[bytes]]:
        import threading

        threads.add(threading.current_thread().name)
        out = yield from echo_twice()
        threads.add(threading.current_thread().name)
        return out

    async def scenario() -> list[bytes]:
        with ThreadPoolExecutor(1, thread_name_prefix="local") as executor:
            traffic = TransferStats()
            out = await adrive(
                recorded(), AsyncMock(lambda p, b, c: HttpResponse(200, b.upper())), run_on(executor), traffic
            )
            assert (traffic.sent, traffic.received) == (7, 7)
            return out

    assert asyncio.run(scenario()) == [b"ONE", b"TWO!"]
    assert len(threads) == 1 and next(iter(threads)).startswith("local")


def test_cancelling_adrive_closes_the_step_before_the_cancellation_propagates():
    closed: list[str] = []

    def step() -> Steps[None]:
        try:
            yield Request("/slow", b"", "text/plain", 30.0, True)
        finally:
            import threading

            closed.append(threading.current_thread().name)

    async def scenario() -> None:
        transport = AsyncMock(lambda p, b, c: HttpResponse(200, b""), hold=True)
        with ThreadPoolExecutor(1, thread_name_prefix="local") as executor:
            task = asyncio.create_task(adrive(step(), transport, run_on(executor)))
            await asyncio.wait_for(transport.waiting.wait(), 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    assert len(closed) == 1 and closed[0].startswith("local")  # the finally ran, on the local thread


def test_fetch_pages_falls_back_to_raw_pages_on_a_server_without_zstd():
    state = SyncState(remote_url="https://remote.invalid", client_id="c")
    steps = fetch_pages(state, "", 5.0, 2000)
    first = next(steps)
    assert first.path == "/pull-updates" and first.idempotent and first.timeout == 7.0  # the long poll added
    assert PullRequest.from_bytes(first.body).encoding == PageEncoding.ZSTD
    second = steps.throw(errors.RemoteError(415, b"no zstd here", "/pull-updates"))
    assert PullRequest.from_bytes(second.body).encoding == PageEncoding.RAW
    with pytest.raises(StopIteration) as done:
        steps.send(pull_answer("rev-2", {1: PAGE}))
    assert done.value.value.revision == "rev-2" and done.value.value.pages == {1: PAGE}
    assert state.zstd is False  # remembered: the next fetch asks for raw pages at once


def test_a_body_cut_inside_a_message_is_a_network_error_and_a_bad_record_a_protocol_error():
    state = SyncState(remote_url="u", client_id="c")
    body = pull_answer("rev-1", {1: PAGE}).body
    with pytest.raises(errors.NetworkError, match="ended early"):
        decode_pull(body[: len(body) - 10], state)
    with pytest.raises(errors.ProtocolError, match="malformed page record"):
        decode_pull(pull_answer("rev-1").body + b"\x03\xff\xff\xff", state)


def test_a_403_refusing_a_write_names_the_read_only_token():
    refusal = json.dumps({"error": "this token may only read, and the statement writes: INSERT", "code": "FORBIDDEN"})
    steps = pipeline_body(b"{}", 5.0)
    next(steps)
    with pytest.raises(errors.ReadOnlyTokenError, match="this token is read-only") as caught:
        steps.throw(errors.RemoteError(403, refusal.encode(), "/v2/pipeline"))
    assert caught.value.status == 403 and isinstance(caught.value, errors.RemoteError)
    other = pipeline_body(b"{}", 5.0)
    next(other)
    no_access = json.dumps({"error": "this token has no access to database 'x'", "code": "FORBIDDEN"}).encode()
    with pytest.raises(errors.RemoteError) as plain:
        other.throw(errors.RemoteError(403, no_access, "/v2/pipeline"))
    assert type(plain.value) is errors.RemoteError


@pytest.mark.parametrize(
    ("body", "read_only"),
    [
        (b'{"error": "writes are not allowed with this token", "code": "READ_ONLY"}', True),
        (b"forbidden", False),  # not JSON: a proxy's page, say
        (b'{"error": "no access to database \'read-only-copy\'", "code": "FORBIDDEN"}', False),
    ],
)
def test_a_403_is_read_only_by_its_code_or_the_primary_s_words_only(body, read_only):
    steps = pipeline_body(b"{}", 5.0)
    next(steps)
    with pytest.raises(errors.RemoteError) as caught:
        steps.throw(errors.RemoteError(403, body, "/v2/pipeline"))
    assert isinstance(caught.value, errors.ReadOnlyTokenError) is read_only


def test_remote_mark_reads_the_row_or_zero_without_the_table():
    from tests.unit.fake_remote import batch_response, mark_result

    steps = remote_mark("client-1", 5.0)
    request = next(steps)
    assert json.loads(request.body)["requests"][0]["batch"]["steps"][0]["stmt"]["args"][0]["value"] == "client-1"
    with pytest.raises(StopIteration) as done:
        steps.send(batch_response(mark_result((3, 17))))
    assert done.value.value == (3, 17)
    steps = remote_mark("client-1", 5.0)
    next(steps)
    with pytest.raises(StopIteration) as done:
        steps.send(batch_response(mark_result(None)))
    assert done.value.value == (0, 0)
