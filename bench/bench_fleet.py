"""Fleet bytes (issue 12): what a fleet of replicas receives per byte written, under a steady load.

N replicas of one database on our primary (``turso-sync serve``) are kept in sync by one
``turso_sync.sync.daemon.SyncDaemon`` (what ``turso-sync daemon`` runs: per replica a puller that
long-polls the primary and a pusher that pushes local commits), in a worker process of its own
(``python -m bench.bench_fleet --worker``).  The benchmark process is the application beside it: it
opens every replica (``turso_sync.connect(path)``) and, for a fixed time, commits one small
transaction (one row: an id and a 100-character payload) to each replica in turn at a steady rate,
never pushing itself: the daemon's pushers send them, and every replica's puller brings in what
the others wrote.  After the writes stop it waits (with a deadline) until every replica holds
every row, then reads the daemon's counters.

The same load also runs without the daemon, for our client and for pyturso 0.8.3 alike (a *pull loop*:
each replica is a thread of one worker process that commits and ``push()``es its row when its turn
comes and otherwise ``pull()``s, long-polling; the long-poll window is the connection's, at most
half the period so that a turn is not missed), so the fleet's bytes can be compared side by side.

The daemon runs twice: as it is (page deltas from our primary, pulls coalesced for
``BENCH_FLEET_COALESCE`` seconds), and as before both (the primary started with
``--no-page-deltas``, ``coalesce=0``), so their bytes compare in the same run.  For the daemon,
each row's delivery to one other replica (the next in turn) is timed by the writer, which looks
for it there every 10 ms.

Reported: rows written, payload bytes written (100 per row), bytes the whole fleet received and
sent over the measurement (the daemon's ``bytes_received``/``bytes_sent`` per replica, HTTP
bodies), pulls, and the ratio received / written (issue 12 aims under 20x).

    python -m bench.bench_fleet [--runs N] [--no-doc | --doc]

Environment: ``BENCH_RUNS`` (3), ``BENCH_FLEET_REPLICAS`` (20), ``BENCH_FLEET_SECONDS`` (60),
``BENCH_FLEET_PERIOD`` (2.0: seconds between two transactions of one replica),
``BENCH_FLEET_LONG_POLL`` (10: seconds a pull may wait on the primary), ``BENCH_FLEET_COALESCE``
(the daemon's default, 0.1), ``BENCH_FLEET_VARIANTS`` (all: ``daemon,daemon-whole,ours,pyturso``),
``BENCH_FLEET_SERVE_FLAGS`` (more ``turso-sync serve`` options, e.g. ``--log-level debug`` to log
every pull), ``BENCH_DIR`` (``bench-data/fleet``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.bench_load import process_cpu
from bench.bench_primary import Server, _version, start_ours
from bench.bench_sync import (
    OURS,
    PAYLOAD_CHARS,
    PYTURSO,
    WrongCount,
    payload,
    reset_table,
    server_count,
    source_revision,
)
from bench.report import REPO, filesystem, machine, markdown_table, median, write_section
from bench.worker import JsonWorker
from turso_sync.sync.daemon import DEFAULT_COALESCE

SECTION = "## Fleet bytes per byte written (issue 12)"
SETTLE_SECONDS = 120.0  # the longest wait, after the writes, for every replica to hold every row
DAEMON = "daemon"  # turso_sync replicas under SyncDaemon
DAEMON_WHOLE = "daemon-whole"  # the same without page deltas (primary) and coalescing (daemon): as before
DAEMONS = (DAEMON, DAEMON_WHOLE)
VARIANTS = (DAEMON, DAEMON_WHOLE, OURS, PYTURSO)  # OURS and PYTURSO: the pull loop
VARIANT_LABELS = {
    DAEMON: "turso_sync, SyncDaemon",
    DAEMON_WHOLE: "turso_sync, SyncDaemon, whole pages, no coalescing",
    OURS: "turso_sync, pull loop",
    PYTURSO: "pyturso, pull loop",
}


@dataclass(frozen=True)
class Sizes:
    """The fleet and its load."""

    replicas: int = 20
    seconds: float = 60.0
    period: float = 2.0
    long_poll: float = 10.0
    coalesce: float = DEFAULT_COALESCE

    @property
    def rows(self) -> int:
        """Transactions the fleet commits: one every ``period / replicas`` seconds for ``seconds``."""
        return math.ceil(self.seconds / (self.period / self.replicas) - 1e-9)

    @property
    def loop_long_poll_ms(self) -> int:
        """The pull loop's long-poll window: at most half a period, so a replica does not miss its turn."""
        return int(min(self.long_poll, self.period / 2) * 1000)

    @classmethod
    def from_env(cls) -> Sizes:
        return cls(
            int(os.environ.get("BENCH_FLEET_REPLICAS", "20")),
            float(os.environ.get("BENCH_FLEET_SECONDS", "60")),
            float(os.environ.get("BENCH_FLEET_PERIOD", "2.0")),
            float(os.environ.get("BENCH_FLEET_LONG_POLL", "10")),
            float(os.environ.get("BENCH_FLEET_COALESCE", str(DEFAULT_COALESCE))),
        )


# --- the workers ---------------------------------------------------------------------------------------


def _open(client: str, path: str, url: str, long_poll_ms: int) -> Any:
    if client == PYTURSO:
        import turso.sync

        return turso.sync.connect(path, url, client_name="bench-fleet", long_poll_timeout_ms=long_poll_ms)
    import turso_sync

    return turso_sync.connect(path, url, client_name="bench-fleet", long_poll_timeout_ms=long_poll_ms)


def _wire(conn: Any) -> tuple[int, int]:
    stats = conn.stats()
    return int(stats.network_sent_bytes), int(stats.network_received_bytes)


def pull_loop(client: str, url: str, paths: list[str], sizes: Sizes) -> dict[str, Any]:
    """Every replica a thread: commit and push its row on its turn, pull (long-poll) otherwise; then
    pull until it holds every row.  Bytes from each client's own ``stats()``."""
    n = len(paths)
    step = sizes.period / n
    total = sizes.rows
    ready = threading.Barrier(n + 1, timeout=600)
    start_box = [0.0]
    results: list[dict[str, Any] | None] = [None] * n
    failures: list[str] = []

    def replica(r: int) -> None:
        try:
            conn = _open(client, paths[r], url, sizes.loop_long_poll_ms)
        except Exception:
            failures.append(traceback.format_exc())
            ready.abort()
            return
        try:
            before = _wire(conn)
            ready.wait()
            start = start_box[0]
            pulls = pushes = rows = 0
            k = 0
            while (k * n + r) * step < sizes.seconds:
                due = start + (k * n + r) * step
                if time.monotonic() >= due:
                    row = k * n + r + 1
                    conn.execute("INSERT INTO t(id, payload) VALUES (?, ?)", (row, payload(row)))
                    conn.commit()
                    conn.push()
                    pushes += 1
                    rows += 1
                    k += 1
                else:
                    conn.pull()
                    pulls += 1
            wrote = time.monotonic()
            deadline = wrote + SETTLE_SECONDS
            while int(conn.execute("SELECT count(*) FROM t").fetchone()[0]) < total:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"replica {r}: not every row within {SETTLE_SECONDS:.0f} s")
                conn.pull()
                pulls += 1
            after = _wire(conn)
            results[r] = {
                "sent": after[0] - before[0],
                "received": after[1] - before[1],
                "pulls": pulls,
                "pushes": pushes,
                "rows": rows,
                "wrote": wrote,
                "settled": time.monotonic(),
            }
        except Exception:
            failures.append(traceback.format_exc())
        finally:
            conn.close()

    threads = [threading.Thread(target=replica, args=(r,), daemon=True) for r in range(n)]
    for t in threads:
        t.start()
    cpu = time.process_time()
    start_box[0] = time.monotonic() + 0.1
    ready.wait()
    for t in threads:
        t.join()
    if failures:
        raise RuntimeError(f"{len(failures)} replicas failed; first:\n{failures[0]}")
    done = [x for x in results if x is not None]
    wrote = max(x["wrote"] for x in done)
    return {
        "received": [x["received"] for x in done],
        "sent": sum(x["sent"] for x in done),
        "pulls": sum(x["pulls"] for x in done),
        "pushes": sum(x["pushes"] for x in done),
        "rows": sum(x["rows"] for x in done),
        "write_seconds": wrote - start_box[0],
        "settle_seconds": max(x["settled"] for x in done) - wrote,
        "cpu": time.process_time() - cpu,
    }


def worker_main() -> int:
    """Worker process: ``start`` (bootstrap the replicas, start the daemon), ``status``, ``stop``; or ``loop``."""
    import turso_sync
    from turso_sync.sync.daemon import SyncDaemon

    daemon: SyncDaemon | None = None
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["op"] == "start":
                for path in cmd["paths"]:
                    turso_sync.connect(path, cmd["url"], client_name="bench-fleet").close()
                daemon = SyncDaemon(
                    cmd["paths"], long_poll=cmd["long_poll"], coalesce=cmd["coalesce"], watch_interval=0.1
                )
                daemon.start()
                answer: dict[str, Any] = {"ok": True}
            elif cmd["op"] == "loop":
                answer = {"ok": True, **pull_loop(cmd["client"], cmd["url"], cmd["paths"], Sizes(**cmd["sizes"]))}
            elif cmd["op"] == "status":
                assert daemon is not None, "status before start"
                answer = {"ok": True, "replicas": [asdict(s) for s in daemon.status()], "cpu": time.process_time()}
            elif cmd["op"] == "stop":
                assert daemon is not None, "stop before start"
                daemon.stop(grace=0.5)
                daemon.close()
                daemon = None
                answer = {"ok": True}
            else:
                raise ValueError(f"unknown op {cmd['op']!r}")
        except Exception:
            answer = {"ok": False, "error": traceback.format_exc()}
        print(json.dumps(answer), flush=True)
    return 0


# --- the benchmark process ----------------------------------------------------------------------------


@dataclass
class Sample:
    """One fleet run."""

    variant: str
    replicas: int
    rows: int
    write_seconds: float  # from the first write to the last
    settle_seconds: float  # from the last write until every replica held every row
    received: int  # bytes, summed over every replica
    sent: int
    pulls: int
    pushes: int
    errors: int
    received_min: int  # the least and most one replica received
    received_max: int
    server_cpu: float
    daemon_cpu: float  # the worker process running the replicas (daemon or pull loop)
    delivery: list[float] = field(default_factory=list)  # seconds from a row's commit to one other replica

    @property
    def written(self) -> int:
        return self.rows * PAYLOAD_CHARS


def _totals(status: dict[str, Any]) -> dict[str, Any]:
    reps = status["replicas"]
    return {
        "received": [r["bytes_received"] for r in reps],
        "sent": sum(r["bytes_sent"] for r in reps),
        "pulls": sum(r["pulls"] for r in reps),
        "pushes": sum(r["pushes"] for r in reps),
        "errors": sum(r["errors"] for r in reps),
        "cpu": status["cpu"],
    }


def _wait(condition: Any, seconds: float, what: str) -> float:
    """Poll ``condition`` until true; the seconds it took (raises after ``seconds``)."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > seconds:
            raise TimeoutError(f"{what}: not within {seconds:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - start


def measure_loop(server: Server, client: str, sizes: Sizes, folder: Path) -> Sample:
    """The same load as a pull loop per replica, for ``client``."""
    reset_table(server.url)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [str(folder / f"r{i}.db") for i in range(sizes.replicas)]
    worker = JsonWorker("bench.bench_fleet")
    assert server.proc is not None
    cpu0 = process_cpu(server.proc.pid)
    try:
        cmd = {"op": "loop", "client": client, "url": server.url, "paths": paths, "sizes": asdict(sizes)}
        a = worker.ask(cmd, client, "the pull loop", 600 + sizes.seconds + SETTLE_SECONDS)
    finally:
        worker.close()
    server_cpu = process_cpu(server.proc.pid) - cpu0  # includes the bootstraps
    remote = server_count(server.url)
    if remote != sizes.rows or a["rows"] != sizes.rows:
        raise WrongCount(f"fleet, {client} pull loop: {remote} rows on the server, {a['rows']} written")
    shutil.rmtree(folder, ignore_errors=True)
    return Sample(
        client,
        sizes.replicas,
        a["rows"],
        a["write_seconds"],
        a["settle_seconds"],
        sum(a["received"]),
        a["sent"],
        a["pulls"],
        a["pushes"],
        0,
        min(a["received"]),
        max(a["received"]),
        server_cpu,
        a["cpu"],
    )


class Deliveries:
    """Each row's delivery to one other replica: looked for there by the writer between its writes."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, Any, float]] = []  # row id, connection, commit time
        self.seconds: list[float] = []

    def expect(self, row: int, conn: Any) -> None:
        self.pending.append((row, conn, time.monotonic()))

    def look(self) -> None:
        now = time.monotonic()
        left = []
        for row, conn, t0 in self.pending:
            if conn.execute("SELECT 1 FROM t WHERE id = ?", (row,)).fetchone() is not None:
                self.seconds.append(now - t0)
            else:
                left.append((row, conn, t0))
        self.pending = left

    def sleep_until(self, due: float) -> None:
        while True:
            self.look()
            delay = due - time.monotonic()
            if delay <= 0:
                return
            time.sleep(min(0.01, delay))


def measure_one(server: Server, sizes: Sizes, folder: Path, log: Any, variant: str = DAEMON) -> Sample:
    """One fleet: bootstrap, run the daemon, write at a steady rate, settle, count."""
    import turso_sync

    reset_table(server.url)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [str(folder / f"r{i}.db") for i in range(sizes.replicas)]
    worker = JsonWorker("bench.bench_fleet")
    conns: list[Any] = []
    try:
        coalesce = sizes.coalesce if variant == DAEMON else 0.0
        start_cmd = {"op": "start", "url": server.url, "paths": paths, "long_poll": sizes.long_poll}
        worker.ask({**start_cmd, "coalesce": coalesce}, "fleet", "start", 600)

        def status() -> dict[str, Any]:
            return worker.ask({"op": "status"}, "fleet", "status", 60)

        conns = [turso_sync.connect(p) for p in paths]
        assert server.proc is not None
        cpu0 = process_cpu(server.proc.pid)
        before = _totals(status())
        # one transaction per replica per period, the replicas' turns spread evenly over the period
        step = sizes.period / sizes.replicas
        rows = 0
        deliveries = Deliveries()
        start = time.monotonic()
        while True:
            due = start + rows * step
            if due - start >= sizes.seconds:
                break
            deliveries.sleep_until(due)
            rows += 1
            conn = conns[(rows - 1) % sizes.replicas]
            conn.execute("INSERT INTO t(id, payload) VALUES (?, ?)", (rows, payload(rows)))
            conn.commit()
            deliveries.expect(rows, conns[rows % sizes.replicas])
        wrote = time.monotonic() - start

        def settled() -> bool:
            deliveries.look()
            if server_count(server.url) != rows:
                return False
            return all(int(c.execute("SELECT count(*) FROM t").fetchone()[0]) == rows for c in conns)

        settle = _wait(settled, SETTLE_SECONDS, f"{rows} rows in every replica")
        deliveries.look()  # the rows that arrived since the last look: every row is in every replica now
        after = _totals(status())
        server_cpu = process_cpu(server.proc.pid) - cpu0
        worker.ask({"op": "stop"}, "fleet", "stop", 120)
    finally:
        for c in conns:
            c.close()
        worker.close()
    received = [a - b for a, b in zip(after["received"], before["received"], strict=True)]
    if server_count(server.url) != rows:
        raise WrongCount(f"fleet: {server_count(server.url)} rows on the server, {rows} written")
    shutil.rmtree(folder, ignore_errors=True)
    return Sample(
        variant,
        sizes.replicas,
        rows,
        wrote,
        settle,
        sum(received),
        after["sent"] - before["sent"],
        after["pulls"] - before["pulls"],
        after["pushes"] - before["pushes"],
        after["errors"] - before["errors"],
        min(received),
        max(received),
        server_cpu,
        after["cpu"] - before["cpu"],
        deliveries.seconds,
    )


@dataclass
class Figures:
    sizes: Sizes
    runs: int
    variants: tuple[str, ...] = VARIANTS
    revision: str = ""
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    seconds: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)


def measure(sizes: Sizes, runs: int, workdir: Path, log: Any = print, variants: tuple[str, ...] = VARIANTS) -> Figures:
    """Each run and variant on a freshly started primary (variant order rotated per run)."""
    started = time.perf_counter()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    fig = Figures(sizes, runs, variants, source_revision(), load=(os.getloadavg()[0], 0.0))
    for run in range(runs):
        for variant in variants[run % len(variants) :] + variants[: run % len(variants)]:
            flags = ("--no-page-deltas",) if variant == DAEMON_WHOLE else ()
            flags += tuple(os.environ.get("BENCH_FLEET_SERVE_FLAGS", "").split())
            server = start_ours(workdir / f"run{run}-{variant}-server", *flags)
            try:
                folder = workdir / f"run{run}-{variant}-replicas"
                if variant in DAEMONS:
                    s = measure_one(server, sizes, folder, log, variant)
                else:
                    s = measure_loop(server, variant, sizes, folder)
            finally:
                server.stop()
            fig.samples.setdefault(variant, []).append(s)
            log(
                f"run {run} {variant:8}: {s.rows} rows ({s.written:,} B) by {s.replicas} replicas in "
                f"{s.write_seconds:.1f} s, "
                f"settled in {s.settle_seconds:.1f} s; received {s.received:,} B ({s.received / s.written:.1f}x), "
                f"sent {s.sent:,} B, {s.pulls} pulls, {s.pushes} pushes, {s.errors} errors"
                + (
                    f"; delivery median {_quantile(s.delivery, 0.5):.3f} s, max {max(s.delivery):.3f} s"
                    if s.delivery
                    else ""
                )
            )
    fig.load = (fig.load[0], os.getloadavg()[0])
    fig.seconds = time.perf_counter() - started
    return fig


# --- the report -----------------------------------------------------------------------------------------


def _bytes(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _med(fig: Figures, variant: str, what: Any) -> float:
    return median([what(s) for s in fig.samples[variant]])


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _delivery(fig: Figures, variant: str) -> str:
    if variant not in DAEMONS or not all(s.delivery for s in fig.samples[variant]):
        return "-"
    p50, p95, top = (_med(fig, variant, lambda s, q=q: _quantile(s.delivery, q)) for q in (0.5, 0.95, 1.0))
    return f"{p50 * 1000:,.0f} / {p95 * 1000:,.0f} / {top * 1000:,.0f} ms"


def main_table(fig: Figures) -> str:
    """One column per variant, one row per figure (medians over runs)."""
    lines: list[tuple[str, Any]] = [
        ("rows written (one per transaction)", lambda v: f"{_med(fig, v, lambda s: s.rows):,.0f}"),
        ("payload bytes written", lambda v: _bytes(_med(fig, v, lambda s: s.written))),
        ("bytes received, whole fleet", lambda v: _bytes(_med(fig, v, lambda s: s.received))),
        ("**received / written**", lambda v: f"**{_med(fig, v, lambda s: s.received / s.written):,.1f}x**"),
        ("received per row written, whole fleet", lambda v: f"{_med(fig, v, lambda s: s.received / s.rows):,.0f} B"),
        (
            "received per row written, per other replica",
            lambda v: f"{_med(fig, v, lambda s: s.received / s.rows / max(1, s.replicas - 1)):,.0f} B",
        ),
        ("bytes sent, whole fleet (pushes, pull requests)", lambda v: _bytes(_med(fig, v, lambda s: s.sent))),
        ("sent / written", lambda v: f"{_med(fig, v, lambda s: s.sent / s.written):,.1f}x"),
        ("pulls, whole fleet", lambda v: f"{_med(fig, v, lambda s: s.pulls):,.0f}"),
        (
            "pulls per row written, per replica",
            lambda v: f"{_med(fig, v, lambda s: s.pulls / s.rows / s.replicas):.2f}",
        ),
        ("received per pull", lambda v: f"{_med(fig, v, lambda s: s.received / s.pulls if s.pulls else 0):,.0f} B"),
        ("pushes, whole fleet", lambda v: f"{_med(fig, v, lambda s: s.pushes):,.0f}"),
        (
            "least / most one replica received",
            lambda v: (
                f"{_bytes(_med(fig, v, lambda s: s.received_min))} / {_bytes(_med(fig, v, lambda s: s.received_max))}"
            ),
        ),
        (
            "errors (the daemon's count)",
            lambda v: f"{_med(fig, v, lambda s: s.errors):,.0f}" if v in DAEMONS else "-",
        ),
        ("a row reached another replica after: median / p95 / max", lambda v: _delivery(fig, v)),
        ("writing took", lambda v: f"{_med(fig, v, lambda s: s.write_seconds):.1f} s"),
        ("then every replica held every row after", lambda v: f"{_med(fig, v, lambda s: s.settle_seconds):.1f} s"),
        (
            "CPU: primary / replicas' process",
            lambda v: f"{_med(fig, v, lambda s: s.server_cpu):.1f} s / {_med(fig, v, lambda s: s.daemon_cpu):.1f} s",
        ),
    ]
    variants = [v for v in fig.variants if v in fig.samples]
    rows = [[name, *(cell(v) for v in variants)] for name, cell in lines]
    header = [f"{fig.sizes.replicas} replicas on our primary", *(VARIANT_LABELS[v] for v in variants)]
    return markdown_table(header, rows, right=range(1, len(header)))


def report(fig: Figures) -> str:
    """The markdown block for docs/benchmarks.md."""
    m = machine()
    z = fig.sizes
    ratios = "; ".join(
        f"{VARIANT_LABELS[v]} " + ", ".join(f"{s.received / s.written:.1f}x" for s in fig.samples[v])
        for v in fig.variants
        if v in fig.samples
    )
    return "\n".join(
        [
            f"Measured {datetime.date.today().isoformat()} by `python -m bench.bench_fleet` in {fig.seconds:.0f} s: "
            f"{fig.runs} runs; in each, every variant on a freshly started primary (order rotated per run); "
            "figures are medians over runs.",
            "",
            f"**Machine**: {m['cpus']} vCPU ({m['model']}), {m['memory']} RAM, {m['kernel']}; files on "
            f"{filesystem(REPO)}. Primary, replicas and writer share these cores over loopback, and other work ran "
            f"beside them (1-minute load average {fig.load[0]:.2f} before, {fig.load[1]:.2f} after).",
            "",
            f"**Load**: {z.replicas} replicas of one database on our primary (`turso-sync serve`, development "
            f"mode); each commits one row (an integer id and a {PAYLOAD_CHARS}-character text payload) per "
            f"transaction, every {z.period:g} s, the replicas' turns spread evenly ({z.replicas / z.period:g} "
            f"transactions per second for the fleet), for {z.seconds:g} s; then the benchmark waits until the "
            "server and every replica hold every row. *Written* is the payload text (100 B per row).",
            "",
            f"**Variants**: *{VARIANT_LABELS[DAEMON]}*: turso_sync {_version('turso-sync')} at {fig.revision}, every "
            "replica kept in sync by one `SyncDaemon` (`turso_sync.sync.daemon`, what `turso-sync daemon` runs: "
            f"per replica a puller long-polling with a {z.long_poll:g} s window, waiting {z.coalesce:g} s after a "
            "pull that brought changes before the next, and a pusher looking for local "
            "commits every 0.1 s) in a worker process, while the benchmark process, as the application, commits "
            "the rows through its own connection to each replica and never pushes; it also times each row's "
            "arrival in one other replica (looked for every 10 ms). "
            f"*{VARIANT_LABELS[DAEMON_WHOLE]}*: the same, with the primary started with `--no-page-deltas` and "
            "the daemon with `coalesce=0` (how it ran before both). "
            f"*{VARIANT_LABELS[OURS]}* and *{VARIANT_LABELS[PYTURSO]}* (pyturso {_version('pyturso')}): each "
            "replica a thread of one worker process that commits and `push()`es its row when its turn comes "
            f"and otherwise `pull()`s, long-polling with a {z.loop_long_poll_ms / 1000:g} s window (half the "
            "period, so no turn is missed). Bytes are each client's own counters (`stats()`, HTTP bodies; "
            "received includes the answers to pushes) from after the bootstraps to the end.",
            "",
            main_table(fig),
            "",
            f"Received / written per run: {ratios}.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, and (for a full run) write it into docs/benchmarks.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_fleet", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "3")), help="runs")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    doc = parser.add_mutually_exclusive_group()
    doc.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    doc.add_argument("--doc", action="store_true", help="write docs/benchmarks.md even for a short or small run")
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main()
    sizes = Sizes.from_env()
    variants = tuple(v for v in os.environ.get("BENCH_FLEET_VARIANTS", ",".join(VARIANTS)).split(",") if v)
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"BENCH_FLEET_VARIANTS: unknown {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    workdir = Path(os.environ.get("BENCH_DIR", REPO / "bench-data" / "fleet")).resolve()
    fig = measure(
        sizes, args.runs, workdir, log=lambda line: print(line, file=sys.stderr, flush=True), variants=variants
    )
    text = report(fig)
    print(text)
    full = args.runs >= 3 and sizes == Sizes()
    if args.doc or (full and not args.no_doc):
        write_section(SECTION, "fleet", text)
        print(f"wrote the '{SECTION}' figures into docs/benchmarks.md", file=sys.stderr)
    elif not args.no_doc:
        print("docs/benchmarks.md left as it is: fewer than 3 runs or smaller sizes (--doc to force)", file=sys.stderr)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
