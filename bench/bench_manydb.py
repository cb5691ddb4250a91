"""Many databases on one process (issue 10): 10,000 databases on one ``turso-sync serve``.

The benchmark creates ``--databases`` databases by requests (``POST /db/NAME/v2/pipeline``: create
a table, insert a row; a few requests in flight at once), the way clients would, on one server
started with its default bound on open databases (``--max-open-databases`` 64).  At each
checkpoint (1,000, 5,000, 10,000 databases) it reads the server's resident memory (``VmRSS``),
threads, open file descriptors and the data directory's size, then probes databases:

- *cold*: the first request to a database created long before (not among the most recently used,
  so closed by the bound): a read (``/v2/pipeline`` ``SELECT``) and, on other databases, a pull
  (``/pull-updates`` from the revision the database is at, no long-poll: what a replica's
  periodic pull sends);
- *warm*: the same request again right after, the database now open.

At the end the server is stopped (SIGTERM) and started again on the same data directory: the
time to stop, the time until it answers again (it opens every database at start), and its
memory, descriptors and a cold probe after that restart.

Without tokens every request is one client, whose bound on databases created
(``--max-databases-per-token``, default 100) the benchmark raises above ``--databases``;
every other bound stays at its default.  tursodb serves one database per process, so there is
nothing to set beside this.

    python -m bench.bench_manydb [--databases N] [--quick] [--json FILE]

Environment: ``BENCH_DIR`` (``bench-data/manydb``).  Writes nothing to docs/.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.bench_load import percentile
from bench.bench_longpoll import PROTOBUF, header_revision, pull_request
from bench.bench_primary import _free_port, _version
from bench.bench_soak import open_fds, rss_bytes
from bench.bench_sync import source_revision
from bench.report import REPO, filesystem, machine, markdown_table

NAME = "db{:05d}"


@dataclass(frozen=True)
class Sizes:
    databases: int = 10_000
    checkpoints: tuple[int, ...] = (1_000, 5_000, 10_000)
    probes: int = 200  # databases probed cold per kind of request at each checkpoint
    concurrency: int = 8  # creating requests in flight at once
    recent: int = 256  # the most recently created databases are never probed cold (may still be open)


QUICK = Sizes(databases=200, checkpoints=(100, 200), probes=10, concurrency=4, recent=70)


@dataclass
class Probe:
    cold_read_ms: list[float] = field(default_factory=list)
    warm_read_ms: list[float] = field(default_factory=list)
    cold_pull_ms: list[float] = field(default_factory=list)
    warm_pull_ms: list[float] = field(default_factory=list)


@dataclass
class Checkpoint:
    """The server after ``databases`` databases exist."""

    databases: int
    create_seconds: float  # to create the databases since the previous checkpoint
    created: int  # how many that was
    create_p50_ms: float
    create_p99_ms: float
    rss_bytes: int
    threads: int
    fds: int
    open_databases: int
    disk_bytes: int
    probe: Probe
    rss_after_probes: int = 0
    fds_after_probes: int = 0


@dataclass
class Restart:
    stop_seconds: float
    start_seconds: float  # from exec to the first answer
    rss_bytes: int
    threads: int
    fds: int
    open_databases: int
    probe: Probe


@dataclass
class Figures:
    sizes: Sizes
    revision: str
    checkpoints: list[Checkpoint] = field(default_factory=list)
    restart: Restart | None = None
    rss_empty: int = 0
    fds_empty: int = 0
    seconds: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)


# --- the server ---------------------------------------------------------------------------------------


class Primary:
    """``turso-sync serve`` on one data directory, that can be stopped and started again."""

    def __init__(self, folder: Path, *flags: str) -> None:
        self.folder, self.flags = folder, flags
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 3600.0) -> float:
        """Start it; seconds until ``/health`` answered (a server opens every database at start)."""
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "turso_sync.cli.main",
                "serve",
                "--data-dir",
                str(self.folder),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--log-level",
                "warning",
                *self.flags,
            ],
            stdout=subprocess.DEVNULL,
            cwd=REPO,
        )
        deadline = started + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"turso-sync serve on {self.folder} exited at start ({self.proc.returncode})")
            try:
                with urlopen(f"{self.url}/health"):
                    return time.monotonic() - started
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"turso-sync serve on {self.folder} did not answer in {timeout:.0f} s") from None
                time.sleep(0.05)

    def stop(self) -> float:
        """SIGTERM; seconds until it exited."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(600)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(60)
        return time.monotonic() - started

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def urlopen(url: str) -> Any:
    import urllib.request

    return urllib.request.urlopen(url, timeout=5)


def threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def disk_usage(folder: Path) -> int:
    """Bytes the files under ``folder`` take on disk (allocated blocks)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                continue
    return total


# --- requests -----------------------------------------------------------------------------------------


async def pipeline(session: aiohttp.ClientSession, url: str, name: str, sqls: list[str]) -> None:
    body = {
        "baton": None,
        "requests": [{"type": "batch", "batch": {"steps": [{"stmt": {"sql": sql}} for sql in sqls]}}],
    }
    async with session.post(f"{url}/db/{name}/v2/pipeline", json=body) as resp:
        text = await resp.text()
        if resp.status != 200:
            raise RuntimeError(f"database {name}: HTTP {resp.status} {text[:300]}")
        result = json.loads(text)["results"][0]
        if result["type"] != "ok" or any(result["response"]["result"]["step_errors"]):
            raise RuntimeError(f"database {name}: {text[:300]}")


async def read(session: aiohttp.ClientSession, url: str, name: str) -> None:
    await pipeline(session, url, name, ["SELECT count(*) FROM t"])


async def pull(session: aiohttp.ClientSession, url: str, name: str, revision: str) -> str:
    async with session.post(f"{url}/db/{name}/pull-updates", data=pull_request(revision, 0), headers=PROTOBUF) as r:
        body = await r.read()
        if r.status != 200:
            raise RuntimeError(f"database {name}: pull HTTP {r.status} {body[:200]!r}")
    return header_revision(body)


async def create(url: str, first: int, last: int, concurrency: int) -> list[float]:
    """Create databases ``first`` .. ``last - 1``; each creation's latency in seconds."""
    latencies: list[float] = []
    queue = iter(range(first, last))

    async def creator(session: aiohttp.ClientSession) -> None:
        for i in queue:
            started = time.monotonic()
            await pipeline(
                session,
                url,
                NAME.format(i),
                [
                    "BEGIN",
                    "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
                    f"INSERT INTO t(v) VALUES ('database {i}')",
                    "COMMIT",
                ],
            )
            latencies.append(time.monotonic() - started)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        await asyncio.gather(*(creator(session) for _ in range(concurrency)))
    return latencies


async def probe(url: str, candidates: list[int], n: int, rng: random.Random) -> Probe:
    """Cold then warm reads on ``n`` databases of ``candidates``, cold then warm pulls on ``n`` others."""
    picked = rng.sample(candidates, min(len(candidates), 2 * n))
    reads, pulls = picked[: len(picked) // 2], picked[len(picked) // 2 :]
    out = Probe()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        async with session.get(f"{url}/health") as warmup:  # the connection is open before the first probe
            await warmup.read()
        for i in reads:
            for series in (out.cold_read_ms, out.warm_read_ms):
                started = time.monotonic()
                await read(session, url, NAME.format(i))
                series.append((time.monotonic() - started) * 1000)
        for i in pulls:
            # every database is at revision 1 (its one transaction); a pull from there brings nothing
            started = time.monotonic()
            revision = await pull(session, url, NAME.format(i), "1")
            if revision != "1":
                raise RuntimeError(f"database {NAME.format(i)} is at revision {revision}, not 1")
            out.cold_pull_ms.append((time.monotonic() - started) * 1000)
            started = time.monotonic()
            await pull(session, url, NAME.format(i), revision)
            out.warm_pull_ms.append((time.monotonic() - started) * 1000)
    return out


async def open_databases(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/health") as resp:
        return int((await resp.json())["databases_open"])


# --- the benchmark ------------------------------------------------------------------------------------


def measure(sizes: Sizes, workdir: Path, log: Callable[[str], None] = print) -> Figures:
    started = time.perf_counter()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    fig = Figures(sizes, source_revision(), load=(os.getloadavg()[0], 0.0))
    rng = random.Random(20261202)
    server = Primary(workdir / "server", "--max-databases-per-token", str(sizes.databases + 100))
    server.start(60)
    try:
        fig.rss_empty, fig.fds_empty = rss_bytes(server.pid), open_fds(server.pid)
        done = 0
        for mark in sizes.checkpoints:
            t0 = time.monotonic()
            lat = asyncio.run(create(server.url, done, mark, sizes.concurrency))
            seconds = time.monotonic() - t0
            created, done = mark - done, mark
            pid = server.pid
            cp = Checkpoint(
                mark,
                seconds,
                created,
                percentile(lat, 0.5) * 1000,
                percentile(lat, 0.99) * 1000,
                rss_bytes(pid),
                threads(pid),
                open_fds(pid),
                asyncio.run(open_databases(server.url)),
                disk_usage(server.folder),
                Probe(),
            )
            cp.probe = asyncio.run(probe(server.url, list(range(max(1, mark - sizes.recent))), sizes.probes, rng))
            cp.rss_after_probes, cp.fds_after_probes = rss_bytes(pid), open_fds(pid)
            fig.checkpoints.append(cp)
            log(
                f"{mark:6,} databases: created {created:,} in {seconds:.1f} s (p50 {cp.create_p50_ms:.1f} ms), "
                f"RSS {cp.rss_bytes / 2**20:.1f} MiB, {cp.threads} threads, {cp.fds} fds, {cp.open_databases} open, "
                f"{cp.disk_bytes / 1e6:.1f} MB on disk; cold read p50 {percentile(cp.probe.cold_read_ms, 0.5):.1f} ms, "
                f"warm {percentile(cp.probe.warm_read_ms, 0.5):.1f} ms"
            )
        stop_seconds = server.stop()
        start_seconds = server.start()
        pid = server.pid
        rss, thr, fds = rss_bytes(pid), threads(pid), open_fds(pid)
        fig.restart = Restart(
            stop_seconds,
            start_seconds,
            rss,
            thr,
            fds,
            asyncio.run(open_databases(server.url)),
            asyncio.run(probe(server.url, list(range(done - sizes.recent)), sizes.probes, rng)),
        )
        log(f"restart: stop {stop_seconds:.1f} s, start {start_seconds:.1f} s, RSS {rss / 2**20:.1f} MiB, {fds} fds")
    finally:
        server.stop()
    fig.load = (fig.load[0], os.getloadavg()[0])
    fig.seconds = time.perf_counter() - started
    return fig


# --- the report ---------------------------------------------------------------------------------------


def _pp(values: list[float]) -> str:
    return f"{percentile(values, 0.5):.1f} / {percentile(values, 0.99):.1f}"


def growth_table(fig: Figures) -> str:
    rows = [["0", "", "", f"{fig.rss_empty / 2**20:.1f}", "", f"{fig.fds_empty}", "", ""]]
    for cp in fig.checkpoints:
        rows.append(
            [
                f"{cp.databases:,}",
                f"{cp.created / cp.create_seconds:.0f}",
                f"{cp.create_p50_ms:.1f} / {cp.create_p99_ms:.1f}",
                f"{cp.rss_bytes / 2**20:.1f}",
                f"{cp.threads}",
                f"{cp.fds}",
                f"{cp.open_databases}",
                f"{cp.disk_bytes / 1e6:.1f}",
            ]
        )
    if fig.restart is not None:
        r = fig.restart
        rows.append(
            [
                f"{fig.checkpoints[-1].databases:,}, after a restart",
                "",
                "",
                f"{r.rss_bytes / 2**20:.1f}",
                f"{r.threads}",
                f"{r.fds}",
                f"{r.open_databases}",
                "",
            ]
        )
    header = [
        "databases",
        "created/s",
        "create p50 / p99 ms",
        "RSS MiB",
        "threads",
        "open fds",
        "databases open",
        "data dir MB",
    ]
    return markdown_table(header, rows, right=range(1, len(header)))


def probe_table(fig: Figures) -> str:
    rows = []
    probes = [(f"{cp.databases:,}", cp.probe) for cp in fig.checkpoints]
    if fig.restart is not None:
        probes.append((f"{fig.checkpoints[-1].databases:,}, after a restart", fig.restart.probe))
    for label, p in probes:
        rows.append([label, _pp(p.cold_read_ms), _pp(p.warm_read_ms), _pp(p.cold_pull_ms), _pp(p.warm_pull_ms)])
    header = [
        "databases",
        "cold read p50 / p99 ms",
        "warm read p50 / p99 ms",
        "cold pull p50 / p99 ms",
        "warm pull p50 / p99 ms",
    ]
    return markdown_table(header, rows, right=range(1, len(header)))


def report(fig: Figures) -> str:
    m = machine()
    s = fig.sizes
    lines = [
        f"Measured {datetime.date.today().isoformat()} by `python -m bench.bench_manydb` in {fig.seconds:.0f} s at "
        f"{fig.revision}: {s.databases:,} databases created by requests ({s.concurrency} in flight), "
        f"{s.probes} cold databases probed per kind of request at each checkpoint.",
        "",
        f"**Machine**: {m['cpus']} vCPU ({m['model']}), {m['memory']} RAM, {m['kernel']}; files on "
        f"{filesystem(REPO)}; other work ran beside it (1-minute load average {fig.load[0]:.2f} before, "
        f"{fig.load[1]:.2f} after).",
        "",
        f"**Server**: turso_sync {_version('turso-sync')} `turso-sync serve` (development mode, "
        f"`--max-databases-per-token {s.databases + 100}`, every other bound at its default: at most 64 databases "
        "open). Each database: one table, one row. RSS = `VmRSS`, threads and fds from `/proc/PID`, data dir = "
        "allocated blocks of every file under it. Cold = the first request to a database created long before "
        "(closed by the bound); warm = the same request right after. Read = `/v2/pipeline` `SELECT count(*)`; "
        "pull = `/pull-updates` from the database's revision, no long-poll.",
        "",
        growth_table(fig),
        "",
        probe_table(fig),
    ]
    if fig.restart is not None:
        lines += [
            "",
            f"Restart on the {fig.checkpoints[-1].databases:,} databases: SIGTERM to exit "
            f"{fig.restart.stop_seconds:.1f} s; start to the first answer {fig.restart.start_seconds:.1f} s.",
        ]
    return "\n".join(lines)


def to_json(fig: Figures) -> dict[str, Any]:
    return asdict(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_manydb", description=__doc__.splitlines()[0])
    parser.add_argument("--databases", type=int, default=Sizes.databases, help="databases to create (10000)")
    parser.add_argument("--quick", action="store_true", help="200 databases (the smoke test's sizes)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        sizes = QUICK
    else:
        marks = tuple(sorted({m for m in (1_000, 5_000) if m < args.databases} | {args.databases}))
        sizes = Sizes(databases=args.databases, checkpoints=marks)
    workdir = Path(os.environ.get("BENCH_DIR", REPO / "bench-data" / "manydb")).resolve()
    fig = measure(sizes, workdir, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(report(fig))
    if args.json:
        args.json.write_text(json.dumps(to_json(fig), indent=1))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
