"""Primary throughput (issue 12): pushes per second from 1, 10 and 100 concurrent replicas, ours against tursodb.

Each replica is a real ``turso_sync`` replica (``turso_sync.connect``, its own file) that, for a fixed
time, inserts one row, commits and ``push()``es, again and again.  The replicas run as threads in a
few worker processes (``python -m bench.bench_load --worker``; at most ``BENCH_LOAD_PROCS``
processes, the replicas dealt out among them), so 100 replicas do not need 100 interpreters on a
small machine.  Every replica is bootstrapped before the clock starts; then all start together and
run for the same time.  The same clients run against our primary (``turso-sync serve``) and
``tursodb --sync-server``, each started fresh per run, server order rotated per run.

Our primary bounds the requests one client has in flight (``--max-requests-per-client``, default
64), and without tokens every replica on this machine is the same client (development mode, one
address); the benchmark starts it with a bound of ``BENCH_LOAD_CLIENT_BOUND`` (default 256, above the
largest level) so that 100 replicas measure throughput, as 100 replicas on 100 addresses would,
not that bound (``0`` keeps the server's default).

Per measurement: pushes completed per second of wall time (first start to last finish), the
latency of each ``push()`` call (p50, p99 over every push of the run), and errors (a ``push()``
that raised; its row stays pending and goes with the replica's next push).  Afterwards the rows on
the server are counted: they must be exactly the rows the successful pushes sent.

    python -m bench.bench_load [--runs N] [--no-doc | --doc]

Environment: ``BENCH_RUNS`` (3), ``BENCH_LOAD_SECONDS`` (15), ``BENCH_LOAD_LEVELS`` (``1,10,100``),
``BENCH_LOAD_PROCS`` (4), ``BENCH_LOAD_CLIENT_BOUND`` (256), ``BENCH_DIR`` (``bench-data/load``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import shutil
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.bench_primary import TURSODB, Server, _tursodb_version, _version, start_tursodb
from bench.bench_primary import start_ours as start_primary
from bench.bench_sync import SERVER_LABELS, WrongCount, payload, reset_table, server_count, source_revision
from bench.report import REPO, filesystem, machine, markdown_table, median, write_section
from bench.worker import JsonWorker

SECTION = "## Primary throughput (issue 12)"
ID_SPAN = 10_000_000  # row ids of replica r are r * ID_SPAN + 1, + 2, ...


@dataclass(frozen=True)
class Sizes:
    """How long each measurement runs, at which numbers of concurrent replicas, over how many processes."""

    seconds: float = 15.0
    levels: tuple[int, ...] = (1, 10, 100)
    procs: int = 4
    client_bound: int = 256  # our primary's --max-requests-per-client (0: its default)

    @classmethod
    def from_env(cls) -> Sizes:
        levels = tuple(int(x) for x in os.environ.get("BENCH_LOAD_LEVELS", "1,10,100").split(","))
        return cls(
            float(os.environ.get("BENCH_LOAD_SECONDS", "15")),
            levels,
            int(os.environ.get("BENCH_LOAD_PROCS", "4")),
            int(os.environ.get("BENCH_LOAD_CLIENT_BOUND", "256")),
        )

    def processes(self, replicas: int) -> int:
        return max(1, min(replicas, self.procs))


# --- inside a worker: replicas as threads ------------------------------------------------------------


class Replicas:
    """Some replicas of one server, each in a thread of its own: opened, then run together on ``go``."""

    def __init__(self, url: str, folder: Path, ids: list[int]) -> None:
        self.url, self.folder, self.ids = url, folder, ids
        self.opened = threading.Semaphore(0)
        self.go_event = threading.Event()
        self.deadline = 0.0
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.pushes = self.errors = self.rows_pushed = 0
        self.open_errors: list[str] = []
        self.error_sample = ""
        self.ends: list[float] = []
        self.threads = [threading.Thread(target=self.replica, args=(i,), daemon=True) for i in ids]

    def open(self) -> None:
        """Start every replica's thread; return once each has bootstrapped (or failed to)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for t in self.threads:
            t.start()
        for _ in self.threads:
            self.opened.acquire()
        if self.open_errors:
            self.go_event.set()
            raise RuntimeError(f"{len(self.open_errors)} replicas failed to open; first:\n{self.open_errors[0]}")

    def replica(self, rid: int) -> None:
        import turso_sync

        try:
            conn = turso_sync.connect(str(self.folder / f"r{rid}.db"), self.url, client_name=f"bench-load-{rid}")
        except Exception:
            with self.lock:
                self.open_errors.append(traceback.format_exc())
            self.opened.release()
            return
        self.opened.release()
        self.go_event.wait()
        latencies: list[float] = []
        pushes = errors = rows_pushed = written = 0
        sample = ""
        try:
            while time.monotonic() < self.deadline:
                written += 1
                row = rid * ID_SPAN + written
                conn.execute("INSERT INTO t(id, payload) VALUES (?, ?)", (row, payload(row)))
                conn.commit()
                start = time.perf_counter()
                try:
                    conn.push()
                except Exception as exc:  # counted; the row stays pending and goes with the next push
                    errors += 1
                    sample = sample or f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                    continue
                latencies.append(time.perf_counter() - start)
                pushes += 1
                rows_pushed = written
        finally:
            end = time.monotonic()
            conn.close()
            with self.lock:
                self.latencies += latencies
                self.pushes += pushes
                self.errors += errors
                self.rows_pushed += rows_pushed
                self.error_sample = self.error_sample or sample
                self.ends.append(end)

    def go(self, seconds: float) -> dict[str, Any]:
        """Run every replica for ``seconds``; what they did."""
        cpu = time.process_time()
        start = time.monotonic()
        self.deadline = start + seconds
        self.go_event.set()
        for t in self.threads:
            t.join()
        return {
            "cpu": time.process_time() - cpu,
            "start": start,
            "end": max(self.ends, default=start),
            "latencies": self.latencies,
            "pushes": self.pushes,
            "errors": self.errors,
            "rows_pushed": self.rows_pushed,
            "error_sample": self.error_sample,
        }


def worker_main() -> int:
    """Worker process: ``open`` (bootstrap this worker's replicas), then ``go`` (run them); JSON lines."""
    replicas: Replicas | None = None
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["op"] == "open":
                replicas = Replicas(cmd["url"], Path(cmd["folder"]), cmd["ids"])
                replicas.open()
                answer: dict[str, Any] = {"ok": True}
            elif cmd["op"] == "go":
                assert replicas is not None, "go before open"
                answer = {"ok": True, **replicas.go(cmd["seconds"])}
                replicas = None
            else:
                raise ValueError(f"unknown op {cmd['op']!r}")
        except Exception:
            answer = {"ok": False, "error": traceback.format_exc()}
        print(json.dumps(answer), flush=True)
    return 0


# --- the benchmark process ---------------------------------------------------------------------------


def start_ours(folder: Path, client_bound: int = 0) -> Server:
    """Our primary (``bench_primary.start_ours``), with ``--max-requests-per-client`` when given."""
    bound = ["--max-requests-per-client", str(client_bound)] if client_bound else []
    return start_primary(folder, *bound)


@dataclass
class Sample:
    """One measurement: N replicas against one server for a fixed time."""

    replicas: int
    processes: int
    seconds: float
    pushes: int
    errors: int
    p50_ms: float
    p99_ms: float
    error_sample: str = ""
    server_cpu: float = 0.0  # CPU seconds the server process used during the run
    client_cpu: float = 0.0  # CPU seconds the worker processes used during the run

    @property
    def rate(self) -> float:
        return self.pushes / self.seconds if self.seconds else 0.0


def percentile(values: list[float], q: float) -> float:
    """The value below which a fraction ``q`` of ``values`` lie (nearest rank)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc/PID/stat``; all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_one(server: Server, replicas: int, sizes: Sizes, folder: Path) -> Sample:
    """``replicas`` replicas push against ``server`` for ``sizes.seconds``, on a new table."""
    reset_table(server.url)
    procs = sizes.processes(replicas)
    ids = list(range(1, replicas + 1))
    shares = [ids[p::procs] for p in range(procs)]
    workers = [JsonWorker("bench.bench_load") for _ in range(procs)]
    try:
        with concurrent.futures.ThreadPoolExecutor(procs) as pool:

            def ask(worker: JsonWorker, cmd: dict[str, Any], what: str) -> dict[str, Any]:
                return worker.ask(cmd, "bench_load", what, timeout=600)

            opens = [
                pool.submit(ask, w, {"op": "open", "url": server.url, "folder": str(folder), "ids": share}, "open")
                for w, share in zip(workers, shares, strict=True)
            ]
            for f in opens:
                f.result()
            assert server.proc is not None
            server_cpu = process_cpu(server.proc.pid)
            runs = [pool.submit(ask, w, {"op": "go", "seconds": sizes.seconds}, "go") for w in workers]
            answers = [f.result() for f in runs]
            server_cpu = process_cpu(server.proc.pid) - server_cpu
    finally:
        for w in workers:
            w.close()
    latencies = [x for a in answers for x in a["latencies"]]
    pushes = sum(a["pushes"] for a in answers)
    rows = sum(a["rows_pushed"] for a in answers)
    remote = server_count(server.url)
    if remote != rows:
        raise WrongCount(f"{replicas} replicas on {server.key}: {remote} rows on the server, pushes sent {rows}")
    shutil.rmtree(folder, ignore_errors=True)
    return Sample(
        replicas,
        procs,
        max(a["end"] for a in answers) - min(a["start"] for a in answers),
        pushes,
        sum(a["errors"] for a in answers),
        percentile(latencies, 0.50) * 1000,
        percentile(latencies, 0.99) * 1000,
        next((a["error_sample"] for a in answers if a["error_sample"]), ""),
        server_cpu,
        sum(a["cpu"] for a in answers),
    )


@dataclass
class Figures:
    """Samples per (server key, replicas)."""

    sizes: Sizes
    runs: int
    server_keys: tuple[str, ...]
    revision: str = ""
    samples: dict[tuple[str, int], list[Sample]] = field(default_factory=dict)
    seconds: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)


def measure(
    sizes: Sizes,
    runs: int,
    workdir: Path,
    log: Any = print,
    server_keys: tuple[str, ...] = ("ours", "tursodb"),
) -> Figures:
    """Per run: both servers started fresh; every level of concurrency against each (orders rotated)."""
    starters = {"ours": lambda folder: start_ours(folder, sizes.client_bound), "tursodb": start_tursodb}
    started = time.perf_counter()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    fig = Figures(sizes, runs, server_keys, source_revision(), load=(os.getloadavg()[0], 0.0))
    for run in range(runs):
        servers: list[Server] = []
        try:
            for key in server_keys:
                servers.append(starters[key](workdir / f"run{run}-{key}"))
            for server in servers[run % len(servers) :] + servers[: run % len(servers)]:
                for n in sizes.levels:
                    sample = measure_one(server, n, sizes, workdir / f"run{run}-{server.key}-{n}")
                    fig.samples.setdefault((server.key, n), []).append(sample)
                    log(
                        f"run {run} {server.key:7} {n:4} replicas ({sample.processes} procs): "
                        f"{sample.pushes:6} pushes in {sample.seconds:5.1f} s = {sample.rate:7.1f}/s, "
                        f"p50 {sample.p50_ms:7.1f} ms, p99 {sample.p99_ms:7.1f} ms, {sample.errors} errors "
                        f"{sample.error_sample[:120]}"
                    )
        finally:
            for server in servers:
                server.stop()
    fig.load = (fig.load[0], os.getloadavg()[0])
    fig.seconds = time.perf_counter() - started
    return fig


# --- the report ---------------------------------------------------------------------------------------


def _med(fig: Figures, key: tuple[str, int], what: Any) -> float:
    return median([what(s) for s in fig.samples[key]])


def main_table(fig: Figures) -> str:
    rows = []
    for n in fig.sizes.levels:
        for server in fig.server_keys:
            key = (server, n)
            procs = fig.samples[key][0].processes
            rate = _med(fig, key, lambda s: s.rate)
            cells = [
                str(n),
                SERVER_LABELS[server],
                f"{procs} x {n // procs}" + (f"-{n // procs + 1}" if n % procs else ""),
                f"{_med(fig, key, lambda s: s.pushes):,.0f}",
                f"{rate:,.1f}",
                f"{_med(fig, key, lambda s: s.p50_ms):,.1f}",
                f"{_med(fig, key, lambda s: s.p99_ms):,.1f}",
                f"{sum(s.errors for s in fig.samples[key]):,}",
                f"{_med(fig, key, lambda s: s.server_cpu / s.pushes * 1000 if s.pushes else 0):.1f}",
                f"{_med(fig, key, lambda s: s.client_cpu / s.pushes * 1000 if s.pushes else 0):.1f}",
                f"{_med(fig, key, lambda s: (s.server_cpu + s.client_cpu) / s.seconds):.2f}",
            ]
            if server == "ours" and ("tursodb", n) in fig.samples:
                cells.append(f"{rate / _med(fig, ('tursodb', n), lambda s: s.rate):.2f}x")
            else:
                cells.append("")
            rows.append(cells)
    header = [
        "replicas",
        "server",
        "processes x threads",
        "pushes (median run)",
        "pushes/s",
        "push p50 ms",
        "push p99 ms",
        "errors (all runs)",
        "server CPU ms/push",
        "clients CPU ms/push",
        "cores busy",
        "pushes/s ours / tursodb",
    ]
    return markdown_table(header, rows, right=range(3, len(header)))


def report(fig: Figures) -> str:
    """The markdown block for docs/benchmarks.md."""
    m = machine()
    spread = []
    for server in fig.server_keys:
        parts = []
        for n in fig.sizes.levels:
            rates = [s.rate for s in fig.samples[(server, n)]]
            parts.append(f"{n} replicas {min(rates):,.1f}-{max(rates):,.1f}/s")
        spread.append(f"- {SERVER_LABELS[server]}: {', '.join(parts)}")
    errors = [
        f"- {SERVER_LABELS[server]}, {n} replicas: `{s.error_sample}`"
        for (server, n), samples in fig.samples.items()
        for s in samples[:1]
        if any(x.errors for x in samples) and s.error_sample
    ]
    lines = [
        f"Measured {datetime.date.today().isoformat()} by `python -m bench.bench_load` in {fig.seconds:.0f} s: "
        f"{fig.runs} runs; in each, both servers started fresh and every level of concurrency ran "
        f"{fig.sizes.seconds:g} s against each (server order rotated per run); figures are medians over runs.",
        "",
        f"**Machine**: {m['cpus']} vCPU ({m['model']}), {m['memory']} RAM, {m['kernel']}; files on "
        f"{filesystem(REPO)}. The server, every replica and the benchmark share these cores over loopback, and "
        f"other work ran beside them (1-minute load average {fig.load[0]:.2f} before, {fig.load[1]:.2f} after): "
        "with 2 cores the clients' own work competes with the server's, so these are the pushes per second of "
        "this whole machine, not of a server with cores to itself.",
        "",
        f"**Clients**: real turso_sync {_version('turso-sync')} replicas at {fig.revision} "
        "(`turso_sync.connect`, one file each, bootstrapped before the clock starts), as threads in at most "
        f"{fig.sizes.procs} worker processes (`python -m bench.bench_load --worker`; the replicas dealt out among "
        "them). Each replica loops for the fixed time: insert one row (id, 100-character hex payload), `commit()`, "
        "`push()`. Latency is that of the `push()` call alone; pushes/s counts completed pushes over the wall time "
        "from the common start to the last replica's end. An error is a `push()` that raised (its row stays "
        "pending and goes with that replica's next push). Afterwards the server's rows are counted: exactly the "
        "rows the successful pushes sent, in every measurement.",
        "",
        "**Servers**: our primary (`turso-sync serve`, development mode"
        + (
            f", `--max-requests-per-client {fig.sizes.client_bound}`: without tokens every replica here is one "
            "client, one address, and the default bound of 64 requests in flight per client would refuse the "
            "100-replica level with 429 instead of measuring it"
            if fig.sizes.client_bound
            else ", default bounds"
        )
        + f") and {_tursodb_version()} (`tursodb -q --sync-server`), the same clients against both.",
        "",
        "**CPU**: the server process's user + system time over the run (`/proc/PID/stat`, all its threads) and "
        "the worker processes' (`time.process_time`), per completed push; *cores busy* is both together over the "
        "wall time (2.00 would be every core of this machine on this benchmark alone).",
        "",
        main_table(fig),
        "",
        "Spread of pushes/s (min-max over runs):",
        "",
        *spread,
    ]
    if errors:
        lines += ["", "A sample error per measurement that had any:", "", *errors]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, and (for a full run) write it into docs/benchmarks.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_load", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "3")), help="runs per server")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    doc = parser.add_mutually_exclusive_group()
    doc.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    doc.add_argument("--doc", action="store_true", help="write docs/benchmarks.md even for a short or small run")
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main()
    if not TURSODB.exists():
        print(f"{TURSODB} is missing: run `make peers` first", file=sys.stderr)
        return 2
    sizes = Sizes.from_env()
    workdir = Path(os.environ.get("BENCH_DIR", REPO / "bench-data" / "load")).resolve()
    fig = measure(sizes, args.runs, workdir, log=lambda line: print(line, file=sys.stderr, flush=True))
    text = report(fig)
    print(text)
    full = args.runs >= 3 and sizes == Sizes()
    if args.doc or (full and not args.no_doc):
        write_section(SECTION, "load", text)
        print(f"wrote the '{SECTION}' figures into docs/benchmarks.md", file=sys.stderr)
    elif not args.no_doc:
        print("docs/benchmarks.md left as it is: fewer than 3 runs or smaller sizes (--doc to force)", file=sys.stderr)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
