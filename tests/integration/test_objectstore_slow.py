"""``serve --store`` with a slow, stalled or 412-answering store: slow is never wrong.

Two small proxies of this module's own sit between the primary and ``weed mini`` on 127.0.0.1:

- ``SlowStore``, a TCP proxy (asyncio streams): it can delay every chunk of the store's answers,
  or stall the connection in both directions (nothing passes until it is released; what was
  held is then delivered, late, so a request the primary gave up on may still land in the store);
- ``PreconditionStore``, an HTTP proxy (aiohttp) that answers PUTs of revision segments, or of the
  writer lease, with 412 Precondition Failed, either instead of forwarding them or after the store
  has stored them.  (Answers 500 and 503 are tested in test_primary_store_faults.py.)

What must hold in every case: a push is acknowledged only once its revision is in the store
(each acknowledged push is checked there, read straight from ``weed mini``, at once); a push that
cannot be stored is a 503 ``STORE_UNAVAILABLE``; the primary recovers by itself when the store does;
no acknowledged push is lost and none is applied twice (a log table counts the pushes' rows).

A stall beyond the primary's S3 timeout: ``serve`` opens its S3 client with botocore's read timeout
of 15 s and 3 attempts.  The stall tests run the same server in this process (``PrimaryServer``,
as ``serve`` builds it) with the client's own ``read_timeout`` parameter set to 2 s, so that a
stall costs seconds.  (Found here, and fixed in ``objectstore/s3.py`` since: botocore's PUT waits
for a ``100 Continue`` before aiohttp's read timeout starts, so a PUT to a stalled store never timed
out and the push hung for as long as the store stalled; each PUT now has a deadline of its own.)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import turso_sync
from tests.integration.primary_harness import PrimaryProcess
from tests.s3_harness import BUCKET, InProcessPrimary, WeedMini, aws_env
from turso_sync.primary.durable import StoreSettings
from turso_sync.primary.objectstore import DatabaseKeys, restore
from turso_sync.primary.objectstore.s3 import S3Client

_prefixes = itertools.count()


class _LoopThread:
    """An event loop of its own in a daemon thread (the proxies run there, the test talks to them)."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


class SlowStore(_LoopThread):
    """A TCP proxy to ``target_port``: ``delay`` seconds before each chunk of an answer is passed on;
    ``stall()`` holds every byte in both directions until ``release()``."""

    def __init__(self, target_port: int) -> None:
        super().__init__("slow-store")
        self.target_port = target_port
        self.delay = 0.0
        self.delayed = 0  # answer chunks passed on late
        self.held = 0  # chunks that waited for a release
        self.run(self._start())

    async def _start(self) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def stall(self) -> None:
        self.loop.call_soon_threadsafe(self.open.clear)

    def release(self) -> None:
        self.loop.call_soon_threadsafe(self.open.set)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)  # type: ignore[arg-type]
        try:
            await asyncio.gather(self._pipe(reader, up_writer, False), self._pipe(up_reader, writer, True))
        finally:
            self.tasks.discard(task)  # type: ignore[arg-type]
            for w in (writer, up_writer):
                w.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, answer: bool) -> None:
        try:
            while data := await src.read(65536):
                if not self.open.is_set():
                    self.held += 1
                    await self.open.wait()
                if answer and self.delay:
                    self.delayed += 1
                    await asyncio.sleep(self.delay)  # the slow store: this is the fault being injected
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                if dst.can_write_eof():
                    dst.write_eof()  # half-close: a request the client gave up on still reaches the store

    def close(self) -> None:
        async def stop() -> None:
            self.open.set()
            self.server.close()
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

        self.run(stop())
        self.stop_loop()


class PreconditionStore(_LoopThread):
    """An HTTP proxy to ``target``; PUTs whose path contains ``match`` are answered 412 while ``mode`` is
    ``"refuse"`` (not forwarded) or ``"after"`` (forwarded, stored, then answered 412 all the same)."""

    def __init__(self, target: str) -> None:
        super().__init__("precondition-store")
        self.target = target
        self.mode = ""
        self.match = "/log/"
        self.answered_412 = 0
        self.url = self.run(self._start())

    async def _start(self) -> str:
        self.session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        hit = request.method == "PUT" and self.match in request.path and self.mode in ("refuse", "after")
        if hit and self.mode == "refuse":
            return self._precondition_failed()
        skip = ("content-length", "transfer-encoding")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in skip}
        async with self.session.request(
            request.method, self.target + request.path_qs, headers=headers, data=body, allow_redirects=False
        ) as resp:
            data = await resp.read()
            if hit and resp.status == 200:
                return self._precondition_failed()  # stored, but the answer says otherwise
            out = {k: v for k, v in resp.headers.items() if k.lower() not in skip}
            return web.Response(status=resp.status, body=data, headers=out)

    def _precondition_failed(self) -> web.Response:
        self.answered_412 += 1
        error = "<Error><Code>PreconditionFailed</Code><Message>injected 412</Message></Error>"
        return web.Response(status=412, text=error, content_type="application/xml")

    def close(self) -> None:
        async def stop() -> None:
            await self.runner.cleanup()
            await self.session.close()

        self.run(stop())
        self.stop_loop()


# --- what the store holds, read straight from weed mini -------------------------------------------


def stored_rows(weed: WeedMini, prefix: str, folder: Path) -> tuple[list[int], int]:
    """The ids in ``notes`` and the row count of ``log`` in the newest database the store holds."""

    async def image() -> bytes:
        with aws_env(weed):
            client = await S3Client.open(weed.location())
            try:
                return (await restore(client, DatabaseKeys(prefix, "default"))).data
            finally:
                await client.close()

    path = folder / f"stored-{time.monotonic_ns()}.db"
    path.write_bytes(asyncio.run(image()))
    try:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM notes ORDER BY id")]
            return ids, conn.execute("SELECT count(*) FROM log").fetchone()[0]
    finally:
        path.unlink()


def write_row(replica: Any, n: int) -> None:
    """One row in ``notes`` and one in ``log`` (a pushed twice row would count twice there)."""
    replica.execute("INSERT INTO notes VALUES (?, ?)", (n, f"row {n}"))
    replica.execute("INSERT INTO log VALUES (?)", (n,))
    replica.commit()


def create_tables(replica: Any) -> None:
    replica.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    replica.execute("CREATE TABLE log (n INTEGER)")
    replica.commit()
    replica.push()


def push_acknowledged_and_stored(replica: Any, weed: WeedMini, prefix: str, folder: Path, acked: list[int]) -> None:
    """Push; once acknowledged, every row acknowledged so far must already be in the store."""
    replica.push()
    ids, _ = stored_rows(weed, prefix, folder)
    missing = sorted(set(acked) - set(ids))
    assert not missing, f"acknowledged but not in the store: {missing}"


def is_store_unavailable(exc: BaseException) -> bool:
    return "503" in str(exc) and "STORE_UNAVAILABLE" in str(exc)


def is_503(exc: BaseException) -> bool:
    """A 503 of the store layer: the store failed, or the lease is not (yet) this server's."""
    return "503" in str(exc) and ("STORE_UNAVAILABLE" in str(exc) or "WRITER_ELSEWHERE" in str(exc))


def push_until_acknowledged(replica: Any, what: str, timeout: float = 90.0, network_errors: bool = False) -> int:
    """Push until the primary acknowledges (the store is back); returns the refusals seen meanwhile
    (503s of the store layer; with ``network_errors``, also the replica's own timeouts)."""
    deadline = time.monotonic() + timeout
    refused = 0
    while True:
        try:
            replica.push()
            return refused
        except turso_sync.Error as exc:
            assert is_503(exc) or (network_errors and isinstance(exc, turso_sync.NetworkError)), exc
            refused += 1
            assert time.monotonic() < deadline, f"the primary did not recover by itself: {what}"


def check_exactly_once(url: str, folder: Path, weed: WeedMini, prefix: str, acked: list[int]) -> None:
    """A fresh replica and the store itself both hold every acknowledged row, each once."""
    fresh = turso_sync.connect(folder / f"fresh-{time.monotonic_ns()}.db", url, timeout=60)
    try:
        ids = [r[0] for r in fresh.execute("SELECT id FROM notes ORDER BY id").fetchall()]
        log = [r[0] for r in fresh.execute("SELECT n FROM log ORDER BY n").fetchall()]
    finally:
        fresh.close()
    assert ids == sorted(acked) and log == sorted(acked), (ids, log, acked)
    stored_ids, stored_log = stored_rows(weed, prefix, folder)
    assert stored_ids == sorted(acked) and stored_log == len(acked)


# --- a slow store -------------------------------------------------------------------------------


def test_a_slow_store_delays_acknowledgements_and_never_acknowledges_early(weed: WeedMini, tmp_path: Path) -> None:
    """Every answer of the store comes 0.25 s late (below the primary's timeout): pushes succeed, each
    only once its row is in the store, and no row is lost or doubled."""
    proxy = SlowStore(weed.s3)
    prefix = f"slow-{next(_prefixes)}"
    server = PrimaryProcess(tmp_path / "data", "--store", f"s3://{BUCKET}/{prefix}", "--s3-endpoint", proxy.url)
    try:
        url = server.start()
        a = turso_sync.connect(tmp_path / "a.db", url, timeout=60)
        create_tables(a)
        proxy.delay = 0.25
        acked: list[int] = []
        for n in range(1, 7):
            write_row(a, n)
            acked.append(n)
            push_acknowledged_and_stored(a, weed, prefix, tmp_path, acked)
        assert proxy.delayed >= 6  # the store's answers to those pushes really came late
        proxy.delay = 0.0
        a.close()
        check_exactly_once(url, tmp_path, weed, prefix, acked)
        assert server.stop() == 0
        assert "Traceback" not in server.log()
    finally:
        if server.proc is not None:
            server.stop()
        proxy.close()


@pytest.fixture
def short_s3_timeout(monkeypatch: pytest.MonkeyPatch) -> float:
    """The primary's S3 client opens with a 2 s read timeout (its own parameter; ``serve`` uses 15 s)."""
    original = S3Client.open.__func__  # type: ignore[attr-defined]

    async def open_short(cls: type[S3Client], location: Any, **kw: Any) -> S3Client:
        kw.setdefault("read_timeout", 2.0)
        kw.setdefault("connect_timeout", 2.0)
        return await original(cls, location, **kw)  # type: ignore[no-any-return]

    monkeypatch.setattr(S3Client, "open", classmethod(open_short))
    return 2.0


def _stalled_store_primary(weed: WeedMini, tmp_path: Path, lease_ttl: float) -> tuple[SlowStore, InProcessPrimary, str]:
    proxy = SlowStore(weed.s3)
    prefix = f"stall-{next(_prefixes)}"
    settings = StoreSettings(f"s3://{BUCKET}/{prefix}", endpoint_url=proxy.url, lease_ttl=lease_ttl)
    with aws_env(weed):
        server = InProcessPrimary(tmp_path / "data", settings)
    return proxy, server, prefix


def test_a_store_stalled_beyond_the_timeout_is_a_503_store_unavailable(
    weed: WeedMini, tmp_path: Path, short_s3_timeout: float
) -> None:
    """The store accepts connections and answers nothing: a push must be refused with 503
    STORE_UNAVAILABLE once the primary's S3 timeout (2 s here, 3 attempts) has passed, well within
    the replica's own 30 s, instead of hanging for as long as the store stalls."""
    proxy, server, prefix = _stalled_store_primary(weed, tmp_path, 60.0)
    try:
        a = turso_sync.connect(tmp_path / "a.db", server.url, timeout=30)
        create_tables(a)
        write_row(a, 1)
        push_acknowledged_and_stored(a, weed, prefix, tmp_path, [1])
        proxy.stall()
        write_row(a, 2)
        with pytest.raises(turso_sync.Error) as refused:
            a.push()
        assert proxy.held >= 1  # the store was reached, and stalled
        assert is_store_unavailable(refused.value), refused.value
        a.close()
    finally:
        proxy.release()
        server.close()
        proxy.close()


@pytest.mark.parametrize("lease_ttl", [60.0, 3.0], ids=["lease-outlives-the-stall", "lease-runs-out-in-the-stall"])
def test_after_a_stalled_store_the_primary_recovers_by_itself_and_loses_nothing(
    weed: WeedMini, tmp_path: Path, short_s3_timeout: float, lease_ttl: float
) -> None:
    """The store stops answering: the push in flight is not acknowledged (the replica gives up after its
    own 8 s, or gets a 503); the store answers again, and what it held lands late: the same replica's
    next pushes are acknowledged with no restart, each only once stored, and every row is there once."""
    proxy, server, prefix = _stalled_store_primary(weed, tmp_path, lease_ttl)
    try:
        a = turso_sync.connect(tmp_path / "a.db", server.url, timeout=8)
        create_tables(a)
        acked: list[int] = []
        for n in (1, 2):
            write_row(a, n)
            acked.append(n)
            push_acknowledged_and_stored(a, weed, prefix, tmp_path, acked)

        proxy.stall()
        write_row(a, 3)
        with pytest.raises(turso_sync.Error) as refused:
            a.push()
        assert is_503(refused.value) or isinstance(refused.value, turso_sync.NetworkError), refused.value
        assert proxy.held >= 1  # the store was reached, and stalled
        ids, _ = stored_rows(weed, prefix, tmp_path)
        assert set(acked) <= set(ids)  # the earlier acknowledgements still hold

        proxy.release()
        refusals = push_until_acknowledged(a, "after the stall", network_errors=True)
        acked.append(3)
        ids, _ = stored_rows(weed, prefix, tmp_path)
        assert set(acked) <= set(ids), "acknowledged after the stall, but not in the store"

        for n in (4, 5, 6):  # and it stays recovered (a lease that ran out is renewed: at most a few 503s)
            write_row(a, n)
            refusals += push_until_acknowledged(a, f"push {n} after the stall")
            acked.append(n)
            ids, _ = stored_rows(weed, prefix, tmp_path)
            assert set(acked) <= set(ids), f"push {n} acknowledged, but not in the store"
        print(f"pushes refused with 503 after the stall ended: {refusals}")
        a.close()
        check_exactly_once(server.url, tmp_path, weed, prefix, acked)
    finally:
        proxy.release()
        server.close()
        proxy.close()


# --- a store answering 412 ------------------------------------------------------------------------


def _precondition_server(weed: WeedMini, tmp_path: Path, proxy: PreconditionStore, prefix: str) -> PrimaryProcess:
    return PrimaryProcess(
        tmp_path / "data",
        "--store",
        f"s3://{BUCKET}/{prefix}",
        "--s3-endpoint",
        proxy.url,
        "--lease-ttl",
        "3",
    )


def test_a_segment_put_refused_with_412_is_503_and_the_retried_push_lands_once(weed: WeedMini, tmp_path: Path) -> None:
    """412 on a segment the store did not store (nothing at that key): not a lost race, not an
    acknowledgement; the push is a 503 and the retried push lands once."""
    proxy = PreconditionStore(weed.endpoint)
    prefix = f"refuse412-{next(_prefixes)}"
    server = _precondition_server(weed, tmp_path, proxy, prefix)
    try:
        url = server.start()
        a = turso_sync.connect(tmp_path / "a.db", url, timeout=60)
        create_tables(a)
        acked = [1]
        write_row(a, 1)
        push_acknowledged_and_stored(a, weed, prefix, tmp_path, acked)
        proxy.mode = "refuse"
        write_row(a, 2)
        with pytest.raises(turso_sync.Error) as refused:
            a.push()
        assert is_store_unavailable(refused.value), refused.value
        assert proxy.answered_412 >= 1
        assert stored_rows(weed, prefix, tmp_path)[0] == [1]
        proxy.mode = ""
        push_until_acknowledged(a, "after the 412s stopped")
        acked.append(2)
        a.close()
        check_exactly_once(url, tmp_path, weed, prefix, acked)
        assert server.stop() == 0
        assert "Traceback" not in server.log()
    finally:
        if server.proc is not None:
            server.stop()
        proxy.close()


def test_a_segment_stored_but_answered_412_is_recognised_as_ours(weed: WeedMini, tmp_path: Path) -> None:
    """The store stores the segment and answers 412 all the same (a retried conditional PUT whose
    first attempt landed looks like this): the primary reads the key back, finds its own epoch and
    acknowledges; the row is stored once."""
    proxy = PreconditionStore(weed.endpoint)
    prefix = f"after412-{next(_prefixes)}"
    server = _precondition_server(weed, tmp_path, proxy, prefix)
    try:
        url = server.start()
        a = turso_sync.connect(tmp_path / "a.db", url, timeout=60)
        create_tables(a)
        proxy.mode = "after"
        acked: list[int] = []
        for n in (1, 2, 3):
            write_row(a, n)
            acked.append(n)
            push_acknowledged_and_stored(a, weed, prefix, tmp_path, acked)
        assert proxy.answered_412 >= 3
        proxy.mode = ""
        a.close()
        check_exactly_once(url, tmp_path, weed, prefix, acked)
        assert server.stop() == 0
    finally:
        if server.proc is not None:
            server.stop()
        proxy.close()


def test_lease_renewals_refused_with_412_are_never_wrong_and_the_primary_recovers(
    weed: WeedMini, tmp_path: Path
) -> None:
    """Every lease write is answered 412 (nothing stored) for three lease lifetimes while a replica
    keeps pushing: each push is acknowledged only once stored, or refused with 503; once the lease
    writes go through, pushes are acknowledged again, and every acknowledged row is there once."""
    proxy = PreconditionStore(weed.endpoint)
    prefix = f"renewals412-{next(_prefixes)}"
    proxy.match = f"/{prefix}/databases/default/lease"  # the lease object only, not the log
    server = _precondition_server(weed, tmp_path, proxy, prefix)
    try:
        url = server.start()
        a = turso_sync.connect(tmp_path / "a.db", url, timeout=60)
        create_tables(a)
        acked: list[int] = []
        proxy.mode = "refuse"
        end = time.monotonic() + 3 * 3.0
        n = 0
        refusals = 0
        while time.monotonic() < end:
            n += 1
            write_row(a, n)
            try:
                a.push()
            except turso_sync.Error as exc:
                assert is_503(exc), exc
                assert "/log/" not in str(exc), exc  # only lease writes are refused here
                refusals += 1
                continue
            acked = list(range(1, n + 1))  # a push sends every row still pending
            ids, _ = stored_rows(weed, prefix, tmp_path)
            assert set(acked) <= set(ids), f"acknowledged but not in the store: {sorted(set(acked) - set(ids))}"
        assert proxy.answered_412 >= 1
        proxy.mode = ""
        push_until_acknowledged(a, "after the lease writes went through again")
        acked = list(range(1, n + 1))
        a.close()
        check_exactly_once(url, tmp_path, weed, prefix, acked)
        print(f"{n} pushes while lease writes got 412: {refusals} refused with 503")
        assert server.stop() == 0
    finally:
        if server.proc is not None:
            server.stop()
        proxy.close()
