"""Primary server benchmark (issue 3): our primary against ``tursodb --sync-server``, same client, same data.

The client is pyturso 0.8.3 (``turso.sync``) in a child process, the same for both servers.  Each
server gets the same rows through ``/v2/pipeline`` (tursodb serves pages only from its WAL, so it
must be seeded through its own pipeline), then:

1. ``bootstrap``: ``turso.sync.connect`` on a new file pulls the whole database (about 100 MB);
2. ``incremental``: 5,000 new rows committed on the server, then one ``pull()`` of an existing replica;
3. ``long-poll``: a replica waits in ``pull()``; the benchmark commits one row; the time from
   sending that commit to ``pull()`` returning with it, over 50 rounds (p50, p99).

Runs alternate between the servers (order rotated per run); tables show medians.  Ratio =
tursodb's time / ours: above 1.0x means our primary is faster.

    python -m bench.bench_primary [--runs N] [--no-doc]

Environment: ``BENCH_RUNS`` (5), ``BENCH_PRIMARY_MB`` (100), ``BENCH_PRIMARY_DELTA`` (5000),
``BENCH_PRIMARY_ROUNDS`` (50), ``BENCH_DIR`` (``bench-data/primary``).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import importlib.metadata
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.report import REPO, filesystem, machine, markdown_table, median, write_section

SECTION = "## Primary server (issue 3)"
TURSODB = REPO / ".peers" / "node_modules" / "@tursodatabase" / "cli-linux-x64-gnu" / "tursodb"
ROW_BYTES = 1000  # payload per seed row
DELTA_ROW_BYTES = 100  # payload per incremental row
SEED_BATCH = 2000  # rows per seeding request (about 2.7 MB of JSON)

#: One HTTP client for the benchmark's own requests: building a client costs tens of milliseconds,
#: which would otherwise land inside the long-poll timing.
HTTP = httpx.Client(timeout=600)


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does."""

    seed_mb: int = 100
    delta_rows: int = 5000
    rounds: int = 50

    @classmethod
    def from_env(cls) -> Sizes:
        return cls(
            int(os.environ.get("BENCH_PRIMARY_MB", "100")),
            int(os.environ.get("BENCH_PRIMARY_DELTA", "5000")),
            int(os.environ.get("BENCH_PRIMARY_ROUNDS", "50")),
        )


# --- the client (a child process running pyturso) -------------------------------------------------


def client_main() -> int:
    """Child process: read one JSON command per line, answer one JSON line each."""
    import turso.sync

    conn: Any = None
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "bootstrap":
            start = time.perf_counter()
            fresh = turso.sync.connect(cmd["path"], cmd["url"], client_name="bench")
            seconds = time.perf_counter() - start
            stats = fresh.stats()
            pages = fresh.execute("PRAGMA page_count").fetchone()[0]
            fresh.close()
            answer: dict[str, Any] = {"seconds": seconds, "received": stats.network_received_bytes, "pages": pages}
        elif op == "open":
            conn = turso.sync.connect(
                cmd["path"], cmd["url"], client_name="bench", long_poll_timeout_ms=cmd.get("long_poll_ms")
            )
            answer = {"received": conn.stats().network_received_bytes}
        elif op == "pull":
            before = conn.stats().network_received_bytes
            start = time.perf_counter()
            changed = conn.pull()
            seconds = time.perf_counter() - start
            answer = {"seconds": seconds, "changed": changed, "received": conn.stats().network_received_bytes - before}
        elif op == "until_change":
            calls = 0
            while True:
                calls += 1
                if conn.pull():
                    break
            answer = {"t_end": time.monotonic(), "calls": calls}
        elif op == "count":
            answer = {"rows": conn.execute("SELECT count(*) FROM t").fetchone()[0]}
        else:
            raise ValueError(op)
        print(json.dumps(answer), flush=True)
    return 0


class Client:
    """The pyturso child process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.bench_primary", "--client"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )

    def send(self, op: str, **kw: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()

    def receive(self, timeout: float = 600) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError("the pyturso client did not answer")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the pyturso client exited")
        return dict(json.loads(line))

    def call(self, op: str, **kw: Any) -> dict[str, Any]:
        self.send(op, **kw)
        return self.receive()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(60)


# --- the servers -------------------------------------------------------------------------------------


@dataclass
class Server:
    """One contender: how to start it, and its state during the run."""

    key: str
    label: str
    folder: Path
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    can_report_parked: bool = False
    notes: str = ""
    db_bytes: int = 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.proc = None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    body = {"baton": None, "requests": []}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server at {url} exited at start")
        try:
            httpx.post(f"{url}/v2/pipeline", json=body, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise TimeoutError(f"server at {url} did not start")


def start_ours(folder: Path, *serve_flags: str) -> Server:
    """Our primary on a free loopback port (``serve_flags``: more ``turso-sync serve`` options)."""
    server = Server(
        "ours",
        "turso-sync primary",
        folder,
        can_report_parked=True,
        notes="`turso-sync serve` (aiohttp, development mode), database stored by the local engine "
        "(plaintext, 28 reserved bytes per page), revisions from its frame log",
    )
    port = _free_port()
    server.proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "turso_sync.cli.main",
            "serve",
            "--data-dir",
            str(folder),
            "--listen",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            *serve_flags,
        ],
        stdout=subprocess.DEVNULL,
        cwd=REPO,
    )
    server.url = f"http://127.0.0.1:{port}"
    _wait_listening(server.url, server.proc)
    return server


def start_tursodb(folder: Path) -> Server:
    server = Server(
        "tursodb",
        "tursodb --sync-server",
        folder,
        notes="Turso's reference server (`tursodb -q --sync-server`, npm @tursodatabase/cli-linux-x64-gnu "
        "0.7.0): single-threaded, serves pages from its WAL; it answers long-polls at once (no waiting), "
        "so its client re-polls in a loop",
    )
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    server.proc = subprocess.Popen(
        [str(TURSODB), "-q", "--sync-server", f"127.0.0.1:{port}", str(folder / "server.db")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server.url = f"http://127.0.0.1:{port}"
    _wait_listening(server.url, server.proc)
    return server


def pipeline(url: str, steps: list[tuple[str, list[dict[str, Any]]]]) -> None:
    """One batch; raises if any step failed."""
    body = {
        "baton": None,
        "requests": [
            {"type": "batch", "batch": {"steps": [{"stmt": {"sql": sql, "args": args}} for sql, args in steps]}}
        ],
    }
    resp = HTTP.post(f"{url}/v2/pipeline", json=body)
    resp.raise_for_status()
    result = resp.json()["results"][0]
    if result["type"] != "ok" or any(result["response"]["result"]["step_errors"]):
        raise RuntimeError(f"pipeline failed on {url}: {json.dumps(result)[:500]}")


def _blob(data: bytes) -> dict[str, Any]:
    return {"type": "blob", "base64": base64.b64encode(data).decode()}


def seed(server: Server, sizes: Sizes) -> None:
    """The same rows for every server: deterministic pseudo-random payloads, inserted in batches."""
    pipeline(server.url, [("CREATE TABLE t(id INTEGER PRIMARY KEY, payload BLOB NOT NULL)", [])])
    rng = random.Random(20261123)
    rows = sizes.seed_mb * 1_000_000 // ROW_BYTES
    for start in range(0, rows, SEED_BATCH):
        n = min(SEED_BATCH, rows - start)
        values = ",".join("(?)" for _ in range(n))
        args = [_blob(rng.randbytes(ROW_BYTES)) for _ in range(n)]
        pipeline(server.url, [("BEGIN", []), (f"INSERT INTO t(payload) VALUES {values}", args), ("COMMIT", [])])


def insert_delta(server: Server, rows: int, rng: random.Random) -> None:
    """``rows`` new small rows in one transaction (one request: BEGIN, INSERTs of 1000 rows, COMMIT)."""
    steps: list[tuple[str, list[dict[str, Any]]]] = [("BEGIN", [])]
    for start in range(0, rows, 1000):
        n = min(1000, rows - start)
        values = ",".join("(?)" for _ in range(n))
        steps.append(
            (f"INSERT INTO t(payload) VALUES {values}", [_blob(rng.randbytes(DELTA_ROW_BYTES)) for _ in range(n)])
        )
    steps.append(("COMMIT", []))
    pipeline(server.url, steps)


def parked(server: Server) -> bool:
    """True once our server holds the long-poll (tursodb cannot hold one)."""
    if not server.can_report_parked:
        return True
    return bool(HTTP.get(f"{server.url}/health").json()["long_polls_waiting"] >= 1)


# --- measuring -----------------------------------------------------------------------------------


@dataclass
class Figures:
    """Everything measured, per server key."""

    servers: list[Server]
    sizes: Sizes
    runs: int
    bootstrap: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    incremental: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    wake_ms: dict[str, list[float]] = field(default_factory=dict)
    poll_calls: dict[str, list[int]] = field(default_factory=dict)
    seconds: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)


def measure(sizes: Sizes, runs: int, workdir: Path, log: Any = print) -> Figures:
    """Start both servers, seed them, and run every measurement."""
    started = time.perf_counter()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    servers = [start_ours(workdir / "ours-data"), start_tursodb(workdir / "tursodb-data")]
    fig = Figures(servers, sizes, runs, load=(os.getloadavg()[0], 0.0))
    client = Client()
    try:
        for server in servers:
            t = time.perf_counter()
            seed(server, sizes)
            log(f"seeded {server.key} with {sizes.seed_mb} MB in {time.perf_counter() - t:.1f} s")
            fig.bootstrap[server.key] = []
            fig.incremental[server.key] = []
            fig.wake_ms[server.key] = []
            fig.poll_calls[server.key] = []

        for run in range(runs):
            order = servers[run % 2 :] + servers[: run % 2]
            for server in order:
                path = workdir / f"boot-{server.key}-{run}.db"
                answer = client.call("bootstrap", path=str(path), url=server.url)
                fig.bootstrap[server.key].append(answer)
                server.db_bytes = answer["pages"] * 4096
                for leftover in workdir.glob(f"boot-{server.key}-{run}.db*"):
                    leftover.unlink()
                log(f"bootstrap {server.key} run {run}: {answer['seconds']:.2f} s")

        rng = random.Random(5000)
        replicas = {}
        for server in servers:
            replicas[server.key] = Client()
            replicas[server.key].call("open", path=str(workdir / f"inc-{server.key}.db"), url=server.url)
        for run in range(runs):
            order = servers[run % 2 :] + servers[: run % 2]
            for server in order:
                insert_delta(server, sizes.delta_rows, rng)
                answer = replicas[server.key].call("pull")
                assert answer["changed"], f"{server.key}: the pull brought nothing"
                fig.incremental[server.key].append(answer)
                log(f"incremental {server.key} run {run}: {answer['seconds'] * 1000:.1f} ms")
        for replica in replicas.values():
            replica.close()

        for server in servers:
            watcher = Client()
            watcher.call("open", path=str(workdir / f"poll-{server.key}.db"), url=server.url, long_poll_ms=30_000)
            for i in range(sizes.rounds):
                watcher.send("until_change")
                deadline = time.monotonic() + 30
                while not parked(server):
                    if time.monotonic() > deadline:
                        raise TimeoutError("the long-poll did not park")
                    time.sleep(0.005)
                time.sleep(0.05)  # the same settle time for both servers
                sent = time.monotonic()
                pipeline(server.url, [("INSERT INTO t(payload) VALUES (?)", [_blob(i.to_bytes(4, "big"))])])
                answer = watcher.receive(timeout=60)
                fig.wake_ms[server.key].append((answer["t_end"] - sent) * 1000)
                fig.poll_calls[server.key].append(answer["calls"])
            watcher.close()
            log(f"long-poll {server.key}: p50 {median(fig.wake_ms[server.key]):.1f} ms")
    finally:
        client.close()
        for server in servers:
            server.stop()
    fig.load = (fig.load[0], os.getloadavg()[0])
    fig.seconds = time.perf_counter() - started
    return fig


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _tursodb_version() -> str:
    out = subprocess.run([str(TURSODB), "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


def report(fig: Figures) -> str:
    """The markdown block for docs/benchmarks.md."""
    ours, ref = "ours", "tursodb"
    labels = {s.key: s.label for s in fig.servers}
    mb = max(s.db_bytes for s in fig.servers) / 1e6

    def boot(key: str) -> float:
        return median([a["seconds"] for a in fig.bootstrap[key]])

    def inc(key: str) -> float:
        return median([a["seconds"] for a in fig.incremental[key]])

    def inc_bytes(key: str) -> float:
        return median([a["received"] for a in fig.incremental[key]])

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else "n/a"

    rows = [
        [
            f"bootstrap, {mb:.0f} MB database: seconds (MB/s)",
            f"{boot(ref):.2f} s ({mb / boot(ref):.0f} MB/s)",
            f"{boot(ours):.2f} s ({mb / boot(ours):.0f} MB/s)",
            ratio(boot(ref), boot(ours)),
        ],
        [
            f"incremental pull, {fig.sizes.delta_rows:,} new rows: ms (bytes received)",
            f"{inc(ref) * 1000:.1f} ms ({inc_bytes(ref) / 1e6:.2f} MB)",
            f"{inc(ours) * 1000:.1f} ms ({inc_bytes(ours) / 1e6:.2f} MB)",
            ratio(inc(ref), inc(ours)),
        ],
    ]
    for p in (50, 99):
        r, o = percentile(fig.wake_ms[ref], p), percentile(fig.wake_ms[ours], p)
        rows.append(
            [f"long-poll wake-up, commit sent to pull() returning: p{p} ms", f"{r:.1f} ms", f"{o:.1f} ms", ratio(r, o)]
        )
    table = markdown_table(["measurement", labels[ref], labels[ours], "ratio"], rows, right=(1, 2, 3))
    spread = []
    for key in (ref, ours):
        b = [a["seconds"] for a in fig.bootstrap[key]]
        i = [a["seconds"] * 1000 for a in fig.incremental[key]]
        spread.append(
            f"- {labels[key]}: bootstrap {min(b):.2f}-{max(b):.2f} s, incremental {min(i):.1f}-{max(i):.1f} ms, "
            f"long-poll {min(fig.wake_ms[key]):.1f}-{max(fig.wake_ms[key]):.1f} ms, "
            f"pull() calls per wake-up: median {median(fig.poll_calls[key]):.0f}"
        )
    m = machine()
    today = datetime.date.today().isoformat()
    lines = [
        f"Measured {today} by `python -m bench.bench_primary` in {fig.seconds:.0f} s: {fig.runs} runs of the "
        f"bootstrap and incremental pulls per server (alternating, medians shown), {fig.sizes.rounds} long-poll "
        "rounds per server.",
        "",
        f"**Machine**: {m['cpus']} vCPU ({m['model']}), {m['memory']} RAM, {m['kernel']}; files on "
        f"{filesystem(REPO)}. Servers, client and benchmark share the machine (1-minute load average "
        f"{fig.load[0]:.2f} before, {fig.load[1]:.2f} after).",
        "",
        f"**Client**: pyturso {_version('pyturso')} (`turso.sync.connect`, `pull()`), one child process, the same "
        f"for both servers. **Servers**: {_tursodb_version()} and turso_sync {_version('turso-sync')}.",
        "",
        *(f"- **{s.label}**: {s.notes}." for s in fig.servers),
        "",
        f"**Data**: table `t(id INTEGER PRIMARY KEY, payload BLOB)`, {fig.sizes.seed_mb * 1000:,} rows of "
        f"{ROW_BYTES} pseudo-random bytes (seeded, identical for both servers) sent through `/v2/pipeline` in "
        f"transactions of {SEED_BATCH} rows; the incremental step commits {fig.sizes.delta_rows:,} rows of "
        f"{DELTA_ROW_BYTES} bytes in one transaction before each pull (not timed). Long-poll: the replica sits "
        "in `pull()` with `long_poll_timeout_ms=30000`; once our server reports the poll parked "
        "(`/health`), and after the same 50 ms pause for both, the benchmark sends a one-row commit; the "
        "time runs from sending it to `pull()` returning with it (one clock, `CLOCK_MONOTONIC`).",
        "",
        "**Ratio** = tursodb's figure / ours: above 1.0x means our primary is faster.",
        "",
        table,
        "",
        "Spread (min-max over runs):",
        "",
        *spread,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, and (for a full run) write it into docs/benchmarks.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_primary", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "5")), help="runs per server")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    doc = parser.add_mutually_exclusive_group()
    doc.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    doc.add_argument("--doc", action="store_true", help="write docs/benchmarks.md even for a short or small run")
    args = parser.parse_args(argv)
    if args.client:
        return client_main()
    if not TURSODB.exists():
        print(f"{TURSODB} is missing: run `make peers` first", file=sys.stderr)
        return 2
    sizes = Sizes.from_env()
    workdir = Path(os.environ.get("BENCH_DIR", REPO / "bench-data" / "primary")).resolve()
    fig = measure(sizes, args.runs, workdir, log=lambda line: print(line, file=sys.stderr, flush=True))
    text = report(fig)
    print(text)
    full = args.runs >= 5 and sizes == Sizes()
    if args.doc or (full and not args.no_doc):
        write_section(SECTION, "primary", text)
        print(f"wrote the '{SECTION}' figures into docs/benchmarks.md", file=sys.stderr)
    elif not args.no_doc:
        print("docs/benchmarks.md left as it is: fewer than 5 runs or smaller sizes (--doc to force)", file=sys.stderr)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
