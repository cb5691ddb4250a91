"""Partial sync benchmark (issue 6): a cold partial replica of a 200 MB database, ours against pyturso.

A 200 MB database on our primary; every measurement is a cold start on a new replica path:

1. ``first``: connect (a 256 KiB prefix bootstrap) and answer one point query by primary key: the
   wall time from calling ``connect`` to having the row;
2. ``points``: 100 more point queries on uniformly random ids;
3. ``scan``: one full-table aggregate, ``SELECT count(*), sum(length(v)) FROM t``.

For each step: the wall time, the HTTP requests the primary answered (its ``/health`` ``pulls``
counter: every bootstrap and every lazy fetch is one ``/pull-updates``), and the response bytes the
client received (our transport's counter, pyturso's ``stats().network_received_bytes``: HTTP bodies
both).  Clients: ours (``turso_sync.PartialSync``) and pyturso 0.8.3 (``partial_sync_experimental``),
each with prefetch on and off, and our full (non-partial) bootstrap as a reference.  Each client runs
in a worker process of its own (pyturso caches databases per process), which times the steps itself.
Every answer is checked against the seeded database.

    python -m bench.bench_partial [--runs N] [--no-doc | --doc] [--profile CONFIG]

Environment: ``BENCH_RUNS`` (3), ``BENCH_PARTIAL_MB`` (200), ``BENCH_PARTIAL_POINTS`` (100),
``BENCH_DIR`` (``bench-data/partial``).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import hashlib
import io
import json
import os
import pstats
import random
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import apsw
import httpx

from bench.bench_primary import Server, _version, start_ours
from bench.report import REPO, filesystem, machine, markdown_table, median, write_section
from bench.worker import JsonWorker

SECTION = "## Partial sync (issue 6)"
PREFIX_BYTES = 256 * 1024
ROW_CHARS = 1000  # v: hex text of 500 random bytes, so a row is about 1 KB
ROWS_PER_MB = 720  # 3 rows of ~1,030 bytes fit a 4 KiB page (28 bytes reserved): about 1 MB (1e6 bytes) per 720 rows
SCAN_SQL = "SELECT count(*), sum(length(v)) FROM t"
POINT_SQL = "SELECT id, k, v FROM t WHERE id = ?"
AIM_FIRST_MS = 200.0

PYTURSO, OURS, OURS_FULL = "pyturso", "ours", "ours_full"
STEPS = ("first", "points", "scan")


@dataclass(frozen=True)
class Config:
    """One contender: a client library, and whether it prefetches (None for a full bootstrap)."""

    client: str
    prefetch: bool | None

    @property
    def key(self) -> str:
        return self.client if self.prefetch is None else f"{self.client}-prefetch-{'on' if self.prefetch else 'off'}"

    @property
    def label(self) -> str:
        if self.client == OURS_FULL:
            return "turso_sync, full bootstrap"
        name = "turso_sync" if self.client == OURS else "pyturso"
        return f"{name}, prefetch {'on' if self.prefetch else 'off'}"


CONFIGS = (
    Config(OURS, True),
    Config(OURS, False),
    Config(PYTURSO, True),
    Config(PYTURSO, False),
    Config(OURS_FULL, None),
)


@dataclass
class Step:
    """One step of one cold start."""

    seconds: float
    requests: int  # /pull-updates the primary answered during the step
    received: int  # HTTP response bytes the client counted
    lazy_requests: int = 0  # ours: the replica's own count of lazy fetches (a cross-check)
    lazy_pages: int = 0


@dataclass
class Sample:
    """A cold start: its steps, and what it answered (a digest, checked against the seeded database)."""

    steps: dict[str, Step]
    digest: str
    pages_present: int | None = None
    pages_total: int | None = None


# --- the database on the primary ----------------------------------------------------------------------


def seed(data_dir: Path, rows: int) -> int:
    """Write the primary's default database before it starts (rows of ~1 KB and an index); its size."""
    path = data_dir / "databases" / "default" / "db"
    path.parent.mkdir(parents=True, exist_ok=True)
    db = apsw.Connection(str(path))
    db.reserve_bytes(reserve=28)  # as the primary creates its databases
    db.execute("PRAGMA page_size=4096")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT NOT NULL, v TEXT NOT NULL)")
    with db:
        db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO t SELECT i, printf('key-%08d', (i * 7919) % ?), hex(randomblob(?)) FROM n",
            (rows, rows, ROW_CHARS // 2),
        )
    db.execute("CREATE INDEX t_k ON t(k)")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return path.stat().st_size


def expected_digest(db_path: Path, first: int, ids: list[int]) -> str:
    """What a correct client answers for one cold start's queries, as a digest."""
    db = apsw.Connection(str(db_path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        answers = [list(db.execute(POINT_SQL, (i,)).fetchall()[0]) for i in [first, *ids]]
        answers.append(list(db.execute(SCAN_SQL).fetchall()[0]))
    finally:
        db.close()
    return _digest(answers)


def _digest(answers: list[list[Any]]) -> str:
    return hashlib.sha256(json.dumps(answers).encode()).hexdigest()[:16]


# --- inside a worker: one cold start ---------------------------------------------------------------


def _pulls(url: str) -> int:
    """The primary's count of answered /pull-updates (every bootstrap and lazy fetch is one)."""
    return int(httpx.get(f"{url}/health", timeout=30).json()["pulls"])


def _open(config: Config, path: Path, url: str) -> Any:
    if config.client == PYTURSO:
        import turso.sync

        opts = turso.sync.PartialSyncOpts(
            bootstrap_strategy=turso.sync.PartialSyncPrefixBootstrap(length=PREFIX_BYTES), prefetch=config.prefetch
        )
        return turso.sync.connect(str(path), url, client_name="bench", partial_sync_experimental=opts)
    import turso_sync

    if config.client == OURS_FULL:
        return turso_sync.connect(path, url, client_name="bench")
    options = turso_sync.PartialSync(bootstrap="prefix", prefix_bytes=PREFIX_BYTES, prefetch=bool(config.prefetch))
    return turso_sync.connect(path, url, client_name="bench", partial=options)


def _received(config: Config, conn: Any) -> int:
    if config.client == PYTURSO or config.client == OURS_FULL:
        return int(conn.stats().network_received_bytes)  # ours: counts the bootstrap, made on a transport of its own
    return int(conn.replica.transport.stats.received)  # counts lazy fetches too, which stats() does not


def _lazy(config: Config, conn: Any) -> tuple[int, int]:
    if config.client == PYTURSO:
        return 0, 0
    stats = conn.stats()
    return int(stats.lazy_requests), int(stats.lazy_pages_fetched)


def cold_start(
    config: Config,
    path: Path,
    url: str,
    first: int,
    ids: list[int],
    on_start: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> Sample:
    """A new replica at ``path``: the first point query from connect on, then ``ids``, then the scan.

    ``on_start`` and ``on_stop`` run just inside the timed part (a profiler's switch).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    steps: dict[str, Step] = {}
    answers: list[list[Any]] = []
    pulls = _pulls(url)
    if on_start is not None:
        on_start()
    start = time.perf_counter()
    conn = _open(config, path, url)
    answers.append(list(conn.execute(POINT_SQL, (first,)).fetchone()))
    seconds = time.perf_counter() - start
    if on_stop is not None:
        on_stop()
    try:
        received, lazy = _received(config, conn), _lazy(config, conn)
        now = _pulls(url)
        steps["first"] = Step(seconds, now - pulls, received, *lazy)
        pulls = now

        def measure(name: str, work: Callable[[], None]) -> None:
            nonlocal pulls, received, lazy
            if on_start is not None:
                on_start()
            begin = time.perf_counter()
            work()
            took = time.perf_counter() - begin
            if on_stop is not None:
                on_stop()
            now_pulls, now_received, now_lazy = _pulls(url), _received(config, conn), _lazy(config, conn)
            steps[name] = Step(
                took,
                now_pulls - pulls,
                now_received - received,
                now_lazy[0] - lazy[0],
                now_lazy[1] - lazy[1],
            )
            pulls, received, lazy = now_pulls, now_received, now_lazy

        def points() -> None:
            for i in ids:
                answers.append(list(conn.execute(POINT_SQL, (i,)).fetchone()))

        def scan() -> None:
            answers.append(list(conn.execute(SCAN_SQL).fetchone()))

        measure("points", points)
        measure("scan", scan)
        present = total = None
        if config.client == OURS:
            stats = conn.stats()
            present, total = stats.pages_present, stats.pages_total
    finally:
        conn.close()
    return Sample(steps, _digest(answers), present, total)


def worker_main() -> int:
    """Worker process: one JSON command per stdin line, one JSON answer per stdout line."""
    import turso.sync  # imported before the first cold start, so no import is timed

    import turso_sync

    del turso, turso_sync
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            sample = cold_start(Config(**cmd["config"]), Path(cmd["path"]), cmd["url"], cmd["first"], cmd["ids"])
            answer: dict[str, Any] = {"ok": True, **asdict(sample)}
        except Exception:
            answer = {"ok": False, "error": traceback.format_exc()}
        print(json.dumps(answer), flush=True)
    return 0


class Worker(JsonWorker):
    """A child process that runs cold starts for one client library."""

    def __init__(self) -> None:
        super().__init__("bench.bench_partial")

    def run(self, config: Config, path: Path, url: str, first: int, ids: list[int], timeout: float = 600) -> Sample:
        cmd = {"config": asdict(config), "path": str(path), "url": url, "first": first, "ids": ids}
        answer = self.ask(cmd, config.label, "a cold start", timeout)
        answer["steps"] = {name: Step(**step) for name, step in answer["steps"].items()}
        return Sample(**answer)


# --- the benchmark process ----------------------------------------------------------------------------


class WrongAnswer(AssertionError):
    """A client answered differently from the seeded database: its figures would mean nothing."""


@dataclass
class Figures:
    """Everything measured: samples per config key."""

    megabytes: int
    points: int
    runs: int
    db_bytes: int = 0
    rows: int = 0
    configs: tuple[Config, ...] = CONFIGS
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    seconds: float = 0.0
    seed_seconds: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)

    def med(self, config: Config, step: str, what: str) -> float:
        return median([float(getattr(s.steps[step], what)) for s in self.samples[config.key]])


def measure(
    megabytes: int,
    points: int,
    runs: int,
    workdir: Path,
    configs: tuple[Config, ...] = CONFIGS,
    log: Callable[[str], None] = print,
) -> Figures:
    """Seed the primary once; per run, a cold start of every config (order rotated), the same ids for all."""
    started = time.perf_counter()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    rows = megabytes * ROWS_PER_MB
    fig = Figures(megabytes, points, runs, rows=rows, configs=configs, load=(os.getloadavg()[0], 0.0))
    fig.db_bytes = seed(workdir / "server", rows)
    fig.seed_seconds = time.perf_counter() - started
    log(f"seeded {fig.db_bytes / 1e6:.0f} MB ({rows:,} rows) in {fig.seed_seconds:.0f} s")
    db_path = workdir / "server" / "databases" / "default" / "db"
    rng = random.Random(20261124)
    plans = []
    for _ in range(runs):
        first, ids = rng.randint(1, rows), [rng.randint(1, rows) for _ in range(points)]
        plans.append((first, ids, expected_digest(db_path, first, ids)))
    server: Server | None = None
    workers: dict[str, Worker] = {}
    try:
        server = start_ours(workdir / "server")
        for run, (first, ids, expected) in enumerate(plans):
            shift = run % len(configs)
            for config in configs[shift:] + configs[:shift]:
                kind = PYTURSO if config.client == PYTURSO else OURS
                worker = workers.get(kind) or workers.setdefault(kind, Worker())
                path = workdir / "replicas" / f"run{run}-{config.key}" / "r.db"
                sample = worker.run(config, path, server.url, first, ids)
                if sample.digest != expected:
                    raise WrongAnswer(f"{config.label}, run {run}: answers differ from the seeded database")
                fig.samples.setdefault(config.key, []).append(sample)
                s = sample.steps
                log(
                    f"run {run} {config.key:22} first {s['first'].seconds * 1000:7.1f} ms "
                    f"({s['first'].requests} req, {s['first'].received:>9,} B)  "
                    f"points {s['points'].seconds * 1000:7.1f} ms ({s['points'].requests} req, "
                    f"{s['points'].received:>10,} B)  scan {s['scan'].seconds:6.2f} s "
                    f"({s['scan'].requests} req, {s['scan'].received:>11,} B)"
                )
                shutil.rmtree(path.parent, ignore_errors=True)
    finally:
        for worker in workers.values():
            worker.close()
        if server is not None:
            server.stop()
    fig.load = (fig.load[0], os.getloadavg()[0])
    fig.seconds = time.perf_counter() - started
    return fig


# --- the report ---------------------------------------------------------------------------------------


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def _time(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _bytes(n: float) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.2f} MB"
    return f"{n / 1e3:.1f} kB" if n >= 1e3 else f"{n:.0f} B"


def _step_label(fig: Figures, step: str) -> str:
    return {
        "first": "connect + first point query",
        "points": f"{fig.points} random point queries",
        "scan": "full scan (count, sum)",
    }[step]


def main_table(fig: Figures) -> str:
    """Median time, requests and bytes per step and config."""
    rows = []
    for step in STEPS:
        for config in fig.configs:
            rows.append(
                [
                    _step_label(fig, step),
                    config.label,
                    _time(fig.med(config, step, "seconds")),
                    f"{fig.med(config, step, 'requests'):,.0f}",
                    _bytes(fig.med(config, step, "received")),
                ]
            )
    return markdown_table(["step", "client", "median time", "requests", "bytes received"], rows, right=(2, 3, 4))


def ratio_table(fig: Figures) -> str:
    """Ours / pyturso with the same prefetch setting, per step: below 1.00x is faster or fewer."""
    rows = []
    for prefetch in (True, False):
        ours, peer = Config(OURS, prefetch), Config(PYTURSO, prefetch)
        if ours not in fig.configs or peer not in fig.configs:
            continue
        for step in STEPS:
            rows.append(
                [
                    _step_label(fig, step),
                    "on" if prefetch else "off",
                    *(
                        _ratio(fig.med(ours, step, w), fig.med(peer, step, w))
                        for w in ("seconds", "requests", "received")
                    ),
                ]
            )
    return markdown_table(["step", "prefetch", "time", "requests", "bytes"], rows, right=(2, 3, 4))


def aims(fig: Figures) -> str:
    """The issue's aims: fewer bytes and requests than pyturso on the point queries; first answer < 200 ms."""
    lines = []
    for prefetch in (True, False):
        ours, peer = Config(OURS, prefetch), Config(PYTURSO, prefetch)
        if ours not in fig.configs or peer not in fig.configs:
            continue
        fewer_bytes = fig.med(ours, "points", "received") < fig.med(peer, "points", "received")
        fewer_requests = fig.med(ours, "points", "requests") < fig.med(peer, "points", "requests")
        first_ms = fig.med(ours, "first", "seconds") * 1000
        lines.append(
            f"- prefetch {'on' if prefetch else 'off'}: fewer bytes on the point queries "
            f"{'**met**' if fewer_bytes else '**not met**'}, fewer requests "
            f"{'**met**' if fewer_requests else '**not met**'}; first query answered in {first_ms:.0f} ms "
            f"(median; slowest run {max(s.steps['first'].seconds for s in fig.samples[ours.key]) * 1000:.0f} ms), "
            f"{'**under**' if first_ms < AIM_FIRST_MS else '**not under**'} {AIM_FIRST_MS:.0f} ms"
        )
    return "**Against the issue's aims** (medians):\n\n" + "\n".join(lines)


def report(fig: Figures) -> str:
    """The markdown block for docs/benchmarks.md."""
    m = machine()
    spread = []
    for config in fig.configs:
        firsts = [s.steps["first"].seconds for s in fig.samples[config.key]]
        scans = [s.steps["scan"].seconds for s in fig.samples[config.key]]
        spread.append(
            f"- {config.label}: first query {_time(min(firsts))}-{_time(max(firsts))}, "
            f"scan {_time(min(scans))}-{_time(max(scans))}"
        )
    ours = [c for c in fig.configs if c.client == OURS]
    present = ""
    if ours:
        s = fig.samples[ours[0].key][0]
        if s.pages_total:
            present = f" The database has {s.pages_total:,} pages."
    lines = [
        f"Measured {datetime.date.today().isoformat()} by `python -m bench.bench_partial` in {fig.seconds:.0f} s "
        f"(seeding {fig.seed_seconds:.0f} s of it): {fig.runs} runs; in each, a cold start of every client "
        "(order rotated per run) on a new replica path; medians over runs.",
        "",
        f"**Machine**: {m['cpus']} vCPU ({m['model']}), {m['memory']} RAM, {m['kernel']}; files on "
        f"{filesystem(REPO)}. Server, clients and benchmark share the machine over loopback (1-minute load "
        f"average {fig.load[0]:.2f} before, {fig.load[1]:.2f} after).",
        "",
        f"**Data**: our primary (`turso-sync serve`, development mode, started once) serving a "
        f"{fig.db_bytes / 1e6:.0f} MB database: `t(id INTEGER PRIMARY KEY, k TEXT, v TEXT)`, {fig.rows:,} rows "
        f"with a {ROW_CHARS}-character hex `v` (random bytes: incompressible beyond hex's 2:1), and an index on "
        f"`k`.{present}",
        "",
        f"**Clients**: turso_sync {_version('turso-sync')} (`turso_sync.connect(..., partial=PartialSync("
        f"bootstrap='prefix', prefix_bytes={PREFIX_BYTES}, prefetch=...))`, default 128 KiB segments, zstd pages) "
        f"and pyturso {_version('pyturso')} (`partial_sync_experimental=PartialSyncOpts(bootstrap_strategy="
        f"PartialSyncPrefixBootstrap(length={PREFIX_BYTES}), prefetch=...)`, its default segment size, raw "
        "pages), each in a worker process; our full bootstrap is the reference. Each cold start: connect and "
        f"`{POINT_SQL}` for one random id, timed together from calling `connect`; then {fig.points} point queries "
        f"on uniformly random ids (the same ids for every client within a run); then `{SCAN_SQL}`. Every answer "
        "is checked against the seeded database. **Requests** are the `/pull-updates` the primary answered "
        "during the step (its `/health` counter; the bootstrap is one); **bytes** are HTTP response bodies as "
        "the client counts them (our transport's counter; pyturso's `stats().network_received_bytes`).",
        "",
        main_table(fig),
        "",
        "**Ratios** ours / pyturso with the same prefetch setting (below 1.00x: faster, fewer requests, fewer bytes):",
        "",
        ratio_table(fig),
        "",
        aims(fig),
        "",
        "Spread (min-max over runs):",
        "",
        *spread,
    ]
    return "\n".join(lines)


def profile(config_key: str, megabytes: int, points: int, workdir: Path) -> str:
    """One cold start of one of our configs in-process under cProfile (timed parts only); the top of it."""
    config = next(c for c in CONFIGS if c.key == config_key)
    shutil.rmtree(workdir, ignore_errors=True)
    rows = megabytes * ROWS_PER_MB
    seed(workdir / "server", rows)
    rng = random.Random(20261124)
    first, ids = rng.randint(1, rows), [rng.randint(1, rows) for _ in range(points)]
    server = start_ours(workdir / "server")
    prof = cProfile.Profile()
    try:
        sample = cold_start(config, workdir / "replica" / "r.db", server.url, first, ids, prof.enable, prof.disable)
    finally:
        server.stop()
    out = io.StringIO()
    out.write(json.dumps({k: asdict(v) for k, v in sample.steps.items()}, indent=1) + "\n")
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(40)
    shutil.rmtree(workdir, ignore_errors=True)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the tables, and (for a full run) write them into docs/benchmarks.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_partial", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "3")), help="cold starts each")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--profile",
        choices=[c.key for c in CONFIGS if c.client != PYTURSO],
        help="instead: one cold start of ours under cProfile, printed",
    )
    doc = parser.add_mutually_exclusive_group()
    doc.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    doc.add_argument("--doc", action="store_true", help="write docs/benchmarks.md even for a short or small run")
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main()
    megabytes = int(os.environ.get("BENCH_PARTIAL_MB", "200"))
    points = int(os.environ.get("BENCH_PARTIAL_POINTS", "100"))
    workdir = Path(os.environ.get("BENCH_DIR", REPO / "bench-data" / "partial")).resolve()
    if args.profile:
        print(profile(args.profile, megabytes, points, workdir))
        return 0
    fig = measure(megabytes, points, args.runs, workdir, log=lambda line: print(line, file=sys.stderr, flush=True))
    text = report(fig)
    print(text)
    full = args.runs >= 3 and megabytes == 200 and points == 100
    if args.doc or (full and not args.no_doc):
        write_section(SECTION, "partial", text)
        print(f"wrote the '{SECTION}' figures into docs/benchmarks.md", file=sys.stderr)
    elif not args.no_doc:
        print("docs/benchmarks.md left as it is: fewer than 3 runs or smaller sizes (--doc to force)", file=sys.stderr)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
