"""Sync client benchmark (issue 4): our client against pyturso, same server, same run.

Turso's published sync benchmark (reference anchors §4.A), for our client (``turso_sync.connect``)
and pyturso 0.8.3 (``turso.sync.connect``), against our primary and against ``tursodb
--sync-server``:

1. ``push_each``: 3,000 inserts, each committed and followed by ``push()``;
2. ``ryw_local``: 200 read-your-writes cycles: insert, commit, ``push()``, read the row back locally;
   ``ryw_remote``: the same, but a *second* replica ``pull()``s and reads the row back;
3. ``pull``: another writer commits 5,000 new rows on the server; one ``pull()`` of an existing replica;
4. ``update_each`` (Turso's fourth scenario, issue 12): 2,000 updates of existing rows, each committed and
   followed by ``push()`` (the rows are on the server, and in the replica, before the clock starts);

and, for issue 12, ``backlog``: 1,000 inserts committed while the replica does not push (offline: neither
client touches the network for a local write), then one timed ``push()`` sends them all, with the HTTP
requests it made counted inside the worker (urllib3's ``HTTPConnectionPool.urlopen`` for ours,
``urllib.request.urlopen`` for pyturso, which does its HTTP through urllib).

Each client runs in a worker process of its own (pyturso caches databases per path per process);
the worker times only the scenario's loop, in-process, so the JSON-lines chatter with the
benchmark is not counted.  Bytes on the wire are the difference in the clients' own
``stats()`` counters (``network_sent_bytes`` + ``network_received_bytes``) over the timed loop.
Every measurement starts from a new replica of a freshly re-created table; replicas are
bootstrapped before the clock starts.  Our client also runs every scenario with an encrypted
replica (``encryption_key``) against our primary, which pyturso cannot do.

    python -m bench.bench_sync [--runs N] [--long-runs N] [--no-doc | --doc]

``bench/profile_sync.py`` shows where our client's time goes in the same scenarios.

Environment: ``BENCH_RUNS`` (3), ``BENCH_SYNC_LONG_RUNS`` (1: runs of ``push_each``, ``ryw_remote`` and
``update_each``), ``BENCH_SYNC_INSERTS`` (3000), ``BENCH_SYNC_CYCLES`` (200), ``BENCH_SYNC_PULL_ROWS`` (5000),
``BENCH_SYNC_UPDATES`` (2000), ``BENCH_SYNC_BACKLOG`` (1000), ``BENCH_DIR`` (``bench-data/sync``).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.bench_primary import TURSODB, Server, _tursodb_version, _version, pipeline, start_ours, start_tursodb
from bench.report import REPO, filesystem, machine, markdown_table, median, write_section
from bench.worker import JsonWorker

SECTION = "## Sync client (issue 4)"
TABLE_SQL = "CREATE TABLE t(id INTEGER PRIMARY KEY, payload TEXT NOT NULL)"
PAYLOAD_CHARS = 100  # hex text: half its bytes are entropy, so a compressor gets about 2:1 on it
WRITE_BATCH = 500  # rows per INSERT statement of the pull scenario's writer
ENCRYPTION_KEY = "5a17" * 16  # aes256gcm, 64 hex digits

PYTURSO, OURS, OURS_ENCRYPTED = "pyturso", "ours", "ours_encrypted"
CLIENT_LABELS = {PYTURSO: "pyturso", OURS: "turso_sync", OURS_ENCRYPTED: "turso_sync, encrypted replica"}
SCENARIOS = ("push_each", "ryw_local", "ryw_remote", "pull")  # issue 4's (``profile_sync`` profiles these)
ISSUE12_SCENARIOS = ("update_each", "backlog")
ALL_SCENARIOS = SCENARIOS + ISSUE12_SCENARIOS
LONG = ("push_each", "ryw_remote", "update_each")  # a minute or more per client and server at full size


@dataclass(frozen=True)
class Sizes:
    """How much work each scenario does."""

    inserts: int = 3000
    cycles: int = 200
    pull_rows: int = 5000
    updates: int = 2000
    backlog: int = 1000

    @classmethod
    def from_env(cls) -> Sizes:
        return cls(
            int(os.environ.get("BENCH_SYNC_INSERTS", "3000")),
            int(os.environ.get("BENCH_SYNC_CYCLES", "200")),
            int(os.environ.get("BENCH_SYNC_PULL_ROWS", "5000")),
            int(os.environ.get("BENCH_SYNC_UPDATES", "2000")),
            int(os.environ.get("BENCH_SYNC_BACKLOG", "1000")),
        )

    def work(self, scenario: str) -> int:
        """Rows the scenario writes or updates (and must find again)."""
        return {
            "push_each": self.inserts,
            "ryw_local": self.cycles,
            "ryw_remote": self.cycles,
            "update_each": self.updates,
            "backlog": self.backlog,
        }.get(scenario, self.pull_rows)

    def describe(self, scenario: str) -> str:
        return {
            "push_each": f"{self.inserts:,} inserts, each pushed",
            "ryw_local": f"{self.cycles} read-your-writes cycles (insert, push, read locally)",
            "ryw_remote": f"{self.cycles} cycles: insert, push; a 2nd replica pulls and reads",
            "pull": f"pull {self.pull_rows:,} new remote rows",
            "update_each": f"{self.updates:,} updates of existing rows, each pushed",
            "backlog": f"{self.backlog:,}-write offline backlog, one push",
        }[scenario]


@dataclass
class Sample:
    """One timed scenario run of one client."""

    seconds: float
    sent: int
    received: int
    rows: int  # rows the client found again afterwards (read back, or counted locally)
    op_p50_ms: float = 0.0  # per loop iteration (insert + push [+ pull] + read), within this run
    op_p90_ms: float = 0.0
    requests: int = 0  # HTTP requests the client made in the timed part

    @property
    def wire(self) -> int:
        return self.sent + self.received


def payload(i: int) -> str:
    """The row's text: deterministic, the same for every client and run."""
    return hashlib.blake2b(i.to_bytes(8, "big"), digest_size=PAYLOAD_CHARS // 2).hexdigest()


def updated_payload(i: int) -> str:
    """The row's text after ``update_each``: as long as ``payload``, and the only one starting with ``u``."""
    return "u" + hashlib.blake2b(i.to_bytes(8, "big"), digest_size=PAYLOAD_CHARS // 2, person=b"update").hexdigest()[1:]


#: HTTP requests made by this worker process so far (``count_requests`` installs the counters)
REQUESTS = [0]


def count_requests() -> None:
    """Count every HTTP request either client makes: ours goes through urllib3's
    ``HTTPConnectionPool.urlopen`` (``HttpTransport``), pyturso's Python I/O loop through
    ``urllib.request.urlopen`` (retries count as requests)."""
    import urllib.request

    import urllib3

    send, urlopen = urllib3.HTTPConnectionPool.urlopen, urllib.request.urlopen

    def counted_send(self: urllib3.HTTPConnectionPool, *args: Any, **kwargs: Any) -> Any:
        REQUESTS[0] += 1
        return send(self, *args, **kwargs)

    def counted_urlopen(*args: Any, **kwargs: Any) -> Any:
        REQUESTS[0] += 1
        return urlopen(*args, **kwargs)

    urllib3.HTTPConnectionPool.urlopen = counted_send  # type: ignore[method-assign]
    urllib.request.urlopen = counted_urlopen


# --- inside a worker: the scenarios ----------------------------------------------------------------


def open_replica(client: str, path: Path, url: str) -> Any:
    """A new replica of the server's database, bootstrapped (not timed)."""
    if client == PYTURSO:
        import turso.sync

        return turso.sync.connect(str(path), url, client_name="bench")
    import turso_sync

    key = ENCRYPTION_KEY if client == OURS_ENCRYPTED else None
    return turso_sync.connect(str(path), url, client_name="bench", encryption_key=key)


def _wire(conn: Any) -> tuple[int, int]:
    stats = conn.stats()
    return int(stats.network_sent_bytes), int(stats.network_received_bytes)


def _insert(conn: Any, i: int) -> None:
    conn.execute("INSERT INTO t(id, payload) VALUES (?, ?)", (i, payload(i)))
    conn.commit()


def _read(conn: Any, i: int) -> bool:
    row = conn.execute("SELECT payload FROM t WHERE id = ?", (i,)).fetchone()
    return row is not None and row[0] == payload(i)


def _count(conn: Any) -> int:
    return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])


def _count_updated(conn: Any) -> int:
    return int(conn.execute("SELECT count(*) FROM t WHERE payload LIKE 'u%'").fetchone()[0])


def write_rows(url: str, first: int, count: int) -> None:
    """The pull scenario's writer: one remote transaction of plain Hrana statements (not timed)."""
    steps: list[tuple[str, list[dict[str, Any]]]] = [("BEGIN", [])]
    for start in range(first, first + count, WRITE_BATCH):
        ids = range(start, min(start + WRITE_BATCH, first + count))
        args: list[dict[str, Any]] = []
        for i in ids:
            args += [{"type": "integer", "value": str(i)}, {"type": "text", "value": payload(i)}]
        steps.append((f"INSERT INTO t(id, payload) VALUES {','.join('(?, ?)' for _ in ids)}", args))
    steps.append(("COMMIT", []))
    pipeline(url, steps)


def run_scenario(
    client: str,
    scenario: str,
    url: str,
    folder: Path,
    sizes: Sizes,
    on_start: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> Sample:
    """Bootstrap what the scenario needs, then time its loop; every row is checked afterwards.

    ``on_start`` and ``on_stop`` run just inside the timed part (a profiler's switch).
    """
    folder.mkdir(parents=True, exist_ok=True)
    n = sizes.work(scenario)
    if scenario == "update_each":
        write_rows(url, 1, n)  # the rows to update, in the replica from its bootstrap on
    conns = [open_replica(client, folder / "a.db", url)]
    if scenario == "ryw_remote":
        conns.append(open_replica(client, folder / "b.db", url))
    if scenario == "pull":
        write_rows(url, 1, n)
    if scenario == "backlog":
        for i in range(1, n + 1):  # offline: committed, never pushed (neither client uses the network here)
            _insert(conns[0], i)
    before = [_wire(c) for c in conns]
    requests_before = REQUESTS[0]
    found = 0
    ticks = [0.0] * (n + 1)  # perf_counter after each iteration; reading it costs well under a microsecond
    if on_start is not None:
        on_start()
    start = ticks[0] = time.perf_counter()
    if scenario == "push_each":
        conn = conns[0]
        for i in range(1, n + 1):
            _insert(conn, i)
            conn.push()
            ticks[i] = time.perf_counter()
    elif scenario == "ryw_local":
        conn = conns[0]
        for i in range(1, n + 1):
            _insert(conn, i)
            conn.push()
            found += _read(conn, i)
            ticks[i] = time.perf_counter()
    elif scenario == "ryw_remote":
        writer, reader = conns
        for i in range(1, n + 1):
            _insert(writer, i)
            writer.push()
            reader.pull()
            found += _read(reader, i)
            ticks[i] = time.perf_counter()
    elif scenario == "pull":
        conns[0].pull()
        ticks = [start, time.perf_counter()]
    elif scenario == "update_each":
        conn = conns[0]
        for i in range(1, n + 1):
            conn.execute("UPDATE t SET payload = ? WHERE id = ?", (updated_payload(i), i))
            conn.commit()
            conn.push()
            ticks[i] = time.perf_counter()
    elif scenario == "backlog":
        conns[0].push()
        ticks = [start, time.perf_counter()]
    else:
        raise ValueError(f"unknown scenario {scenario!r}")
    seconds = time.perf_counter() - start
    requests = REQUESTS[0] - requests_before
    if on_stop is not None:
        on_stop()
    ops = sorted(b - a for a, b in itertools.pairwise(ticks))
    after = [_wire(c) for c in conns]
    if scenario in ("push_each", "pull", "backlog"):
        found = _count(conns[0])
    elif scenario == "update_each":
        found = _count_updated(conns[0])
    for conn in conns:
        conn.close()
    sent = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
    received = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    p50, p90 = ops[len(ops) // 2] * 1000, ops[int(len(ops) * 0.9)] * 1000
    return Sample(seconds, sent, received, found, p50, p90, requests)


def worker_main() -> int:
    """Worker process: one JSON command per stdin line, one JSON answer per stdout line."""
    count_requests()
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            sample = run_scenario(
                cmd["client"], cmd["scenario"], cmd["url"], Path(cmd["folder"]), Sizes(**cmd["sizes"])
            )
            answer: dict[str, Any] = {"ok": True, **asdict(sample)}
        except Exception:
            answer = {"ok": False, "error": traceback.format_exc()}
        print(json.dumps(answer), flush=True)
    return 0


class Worker(JsonWorker):
    """A child process that runs scenarios for one client library."""

    def __init__(self) -> None:
        super().__init__("bench.bench_sync")

    def run(self, client: str, scenario: str, url: str, folder: Path, sizes: Sizes, timeout: float = 600) -> Sample:
        cmd = {"client": client, "scenario": scenario, "url": url, "folder": str(folder), "sizes": asdict(sizes)}
        return Sample(**self.ask(cmd, client, scenario, timeout))


# --- the benchmark process ----------------------------------------------------------------------------


class WrongCount(AssertionError):
    """A scenario did not find the rows it wrote: its figures would mean nothing."""


def server_count(url: str, where: str = "") -> int:
    """``count(*)`` of the benchmark table on the server (of the rows matching ``where``)."""
    sql = f"SELECT count(*) FROM t {where}".strip()
    body = {
        "baton": None,
        "requests": [{"type": "execute", "stmt": {"sql": sql, "want_rows": True}}],
    }
    resp = httpx.post(f"{url}/v2/pipeline", json=body, timeout=60)
    resp.raise_for_status()
    result = resp.json()["results"][0]
    if result["type"] != "ok":
        raise RuntimeError(f"count failed on {url}: {json.dumps(result)[:300]}")
    return int(result["response"]["result"]["rows"][0][0]["value"])


def reset_table(url: str) -> None:
    """A new, empty benchmark table (the old one's pages go to the free list and are reused)."""
    pipeline(url, [("DROP TABLE IF EXISTS t", []), (TABLE_SQL, [])])


def clients_for(server_key: str) -> list[str]:
    """pyturso and ours against both servers; the encrypted replica needs our primary's reserved bytes."""
    return [PYTURSO, OURS, OURS_ENCRYPTED] if server_key == "ours" else [PYTURSO, OURS]


def measure_one(worker: Worker, client: str, scenario: str, server: Server, folder: Path, sizes: Sizes) -> Sample:
    """One scenario for one client on a new table, every row checked on both sides."""
    reset_table(server.url)
    sample = worker.run(client, scenario, server.url, folder, sizes)
    expected = sizes.work(scenario)
    remote = server_count(server.url)
    if scenario == "update_each" and remote == expected:
        remote = server_count(server.url, "WHERE payload LIKE 'u%'")  # every row updated on the server too
    if sample.rows != expected or remote != expected:
        raise WrongCount(
            f"{client} on {server.key}, {scenario}: found {sample.rows} rows in the replica and {remote} on "
            f"the server, expected {expected}"
        )
    shutil.rmtree(folder, ignore_errors=True)
    return sample


@dataclass
class Figures:
    """Everything measured: samples per (server key, client, scenario)."""

    sizes: Sizes
    runs: int
    long_runs: int
    server_keys: tuple[str, ...]
    revision: str = ""
    samples: dict[tuple[str, str, str], list[Sample]] = field(default_factory=dict)
    seconds: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)
    scenarios: tuple[str, ...] = ALL_SCENARIOS  # the ones measured (``--scenarios``)

    def med(self, server: str, client: str, scenario: str, what: Callable[[Sample], float]) -> float:
        return median([what(s) for s in self.samples[(server, client, scenario)]])


def measure(
    sizes: Sizes,
    runs: int,
    workdir: Path,
    long_runs: int | None = None,
    log: Callable[[str], None] = print,
    server_keys: tuple[str, ...] = ("ours", "tursodb"),
    scenarios: tuple[str, ...] = ALL_SCENARIOS,
) -> Figures:
    """Per run: start the servers fresh; every client runs every scenario against each (orders rotated).

    The long scenarios (``LONG``: up to minutes per client at full size) run only in the first
    ``long_runs`` runs.
    """
    starters = {"ours": start_ours, "tursodb": start_tursodb}
    long_runs = runs if long_runs is None else min(long_runs, runs)
    started = time.perf_counter()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    fig = Figures(
        sizes, runs, long_runs, server_keys, source_revision(), load=(os.getloadavg()[0], 0.0), scenarios=scenarios
    )
    workers = {PYTURSO: Worker(), OURS: Worker()}
    try:
        for run in range(runs):
            servers: list[Server] = []
            try:
                for key in server_keys:
                    servers.append(starters[key](workdir / f"run{run}-{key}"))
                for server in servers[run % len(servers) :] + servers[: run % len(servers)]:
                    for scenario in scenarios:
                        if scenario in LONG and run >= long_runs:
                            continue
                        clients = clients_for(server.key)
                        shift = run % len(clients)
                        for client in clients[shift:] + clients[:shift]:
                            worker = workers[PYTURSO if client == PYTURSO else OURS]
                            folder = workdir / f"run{run}-{server.key}-{scenario}-{client}"
                            sample = measure_one(worker, client, scenario, server, folder, sizes)
                            fig.samples.setdefault((server.key, client, scenario), []).append(sample)
                            log(
                                f"run {run} {server.key:7} {scenario:10} {client:14} {sample.seconds:8.3f} s "
                                f"(p50 {sample.op_p50_ms:6.2f} ms)  sent {sample.sent:>9,} B  "
                                f"received {sample.received:>9,} B  {sample.requests} requests"
                            )
            finally:
                for server in servers:
                    server.stop()
    finally:
        for worker in workers.values():
            worker.close()
    fig.load = (fig.load[0], os.getloadavg()[0])
    fig.seconds = time.perf_counter() - started
    return fig


# --- the report ---------------------------------------------------------------------------------------

SERVER_LABELS = {"ours": "turso-sync primary", "tursodb": "tursodb --sync-server"}
LOOPS = ("push_each", "ryw_local", "ryw_remote", "update_each")


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def _time(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _bytes(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _seconds(s: Sample) -> float:
    return s.seconds


def _wire_bytes(s: Sample) -> float:
    return s.wire


def _sent(s: Sample) -> float:
    return s.sent


def main_table(fig: Figures) -> str:
    """Median wall time and bytes per scenario, server and client, with the ratios ours / pyturso."""
    rows = []
    for server in fig.server_keys:
        for scenario in fig.scenarios:
            pt, ot = fig.med(server, PYTURSO, scenario, _seconds), fig.med(server, OURS, scenario, _seconds)
            pb, ob = fig.med(server, PYTURSO, scenario, _wire_bytes), fig.med(server, OURS, scenario, _wire_bytes)
            ps, os_ = fig.med(server, PYTURSO, scenario, _sent), fig.med(server, OURS, scenario, _sent)
            runs = len(fig.samples[(server, OURS, scenario)])
            rows.append(
                [
                    fig.sizes.describe(scenario),
                    SERVER_LABELS[server],
                    str(runs),
                    _time(pt),
                    _time(ot),
                    _ratio(ot, pt),
                    f"{_bytes(pb)} ({_bytes(ps)} sent)",
                    f"{_bytes(ob)} ({_bytes(os_)} sent)",
                    _ratio(ob, pb),
                ]
            )
    header = [
        "scenario",
        "server",
        "runs",
        "pyturso time",
        "turso_sync time",
        "time ours/pyturso",
        "pyturso bytes",
        "turso_sync bytes",
        "bytes ours/pyturso",
    ]
    return markdown_table(header, rows, right=range(2, len(header)))


def aims(fig: Figures) -> str:
    """Issue 12's aims checked row by row: time at most 1.0x pyturso's, bytes at most 0.8x, encrypted included."""
    more_bytes, slower = [], []
    rows = [
        (server, client, scenario)
        for server in fig.server_keys
        for client in clients_for(server)
        if client != PYTURSO
        for scenario in fig.scenarios
    ]
    for server, client, scenario in rows:
        name = f"{scenario} on {server}" + (", encrypted" if client == OURS_ENCRYPTED else "")
        if fig.med(server, client, scenario, _wire_bytes) > 0.8 * fig.med(server, PYTURSO, scenario, _wire_bytes):
            more_bytes.append(name)
        if fig.med(server, client, scenario, _seconds) > fig.med(server, PYTURSO, scenario, _seconds):
            slower.append(name)

    def exceptions(names: list[str]) -> str:
        return f" (not in: {', '.join(names)})" if names else ""

    return (
        f"**Against issue 12's aims** (every scenario, both servers, the encrypted replica included): time at "
        f"most 1.00x pyturso's in {len(rows) - len(slower)} of {len(rows)} rows{exceptions(slower)}; bytes at "
        f"most 0.80x pyturso's in {len(rows) - len(more_bytes)} of {len(rows)}{exceptions(more_bytes)}."
    )


def backlog_table(fig: Figures) -> str:
    """The offline backlog pushed on reconnect: HTTP requests, bytes and time of the one ``push()``."""
    rows = []
    for server in fig.server_keys:
        for client in clients_for(server):
            if (server, client, "backlog") not in fig.samples:
                continue
            reqs = fig.med(server, client, "backlog", lambda s: s.requests)
            rows.append(
                [
                    CLIENT_LABELS[client],
                    SERVER_LABELS[server],
                    f"{reqs:,.0f}",
                    _bytes(fig.med(server, client, "backlog", _wire_bytes)),
                    _bytes(fig.med(server, client, "backlog", _sent)),
                    _time(fig.med(server, client, "backlog", _seconds)),
                    _ratio(fig.med(server, client, "backlog", _seconds), fig.med(server, PYTURSO, "backlog", _seconds)),
                ]
            )
    header = ["client", "server", "HTTP requests", "bytes", "of which sent", "time", "time / pyturso"]
    return markdown_table(header, rows, right=range(2, len(header)))


def iteration_table(fig: Figures) -> str:
    """Per loop iteration, p50 / p90 within a run (medians of those over runs)."""
    rows = []
    for server in fig.server_keys:
        for scenario in [s for s in LOOPS if s in fig.scenarios]:
            cells = [fig.sizes.describe(scenario), SERVER_LABELS[server]]
            for client in (PYTURSO, OURS):
                p50 = fig.med(server, client, scenario, lambda s: s.op_p50_ms)
                p90 = fig.med(server, client, scenario, lambda s: s.op_p90_ms)
                cells.append(f"{p50:.1f} / {p90:.1f}")
            n = fig.sizes.work(scenario)
            pyb = fig.med(server, PYTURSO, scenario, _wire_bytes) / n
            ob = fig.med(server, OURS, scenario, _wire_bytes) / n
            pyr = fig.med(server, PYTURSO, scenario, lambda s: s.requests) / n
            orq = fig.med(server, OURS, scenario, lambda s: s.requests) / n
            cells += [f"{pyb:,.0f}", f"{ob:,.0f}", f"{pyr:.2f}", f"{orq:.2f}"]
            rows.append(cells)
    header = [
        "loop",
        "server",
        "pyturso ms p50 / p90",
        "turso_sync ms p50 / p90",
        "pyturso B/iter",
        "turso_sync B/iter",
        "pyturso requests/iter",
        "turso_sync requests/iter",
    ]
    return markdown_table(header, rows, right=range(2, len(header)))


def encrypted_table(fig: Figures) -> str:
    """Our client with an encrypted replica against the same client in plaintext (our primary)."""
    rows = []
    for scenario in fig.scenarios:
        plain = fig.med("ours", OURS, scenario, _seconds)
        enc = fig.med("ours", OURS_ENCRYPTED, scenario, _seconds)
        rows.append(
            [
                fig.sizes.describe(scenario),
                _time(plain),
                _time(enc),
                _ratio(enc, plain),
                _ratio(enc, fig.med("ours", PYTURSO, scenario, _seconds)),
                _bytes(fig.med("ours", OURS_ENCRYPTED, scenario, _wire_bytes)),
            ]
        )
    header = [
        "scenario",
        "turso_sync plaintext",
        "turso_sync encrypted",
        "encrypted / plaintext",
        "encrypted / pyturso",
        "encrypted bytes",
    ]
    return markdown_table(header, rows, right=range(1, len(header)))


def source_revision() -> str:
    """The commit measured, and whether the working tree had changes on top (the primary runs from it)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    if head.returncode != 0:
        return "unknown commit"
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", "turso_sync"],
        capture_output=True,
        text=True,
        cwd=REPO,
    ).stdout.strip()
    return f"commit {head.stdout.strip()}" + (" with uncommitted changes to turso_sync/" if dirty else "")


def report(fig: Figures) -> str:
    """The markdown block for docs/benchmarks.md."""
    spread = []
    for server in fig.server_keys:
        for client in clients_for(server):
            parts = []
            for scenario in fig.scenarios:
                times = [s.seconds for s in fig.samples[(server, client, scenario)]]
                if len(times) > 1:
                    parts.append(f"{scenario} {_time(min(times))}-{_time(max(times))}")
            spread.append(f"- {CLIENT_LABELS[client]} on {SERVER_LABELS[server]}: {', '.join(parts)}")
    encrypted = []
    if "ours" in fig.server_keys:
        encrypted = [
            "**Encrypted replica**: our client with `encryption_key` (a raw 256-bit AES-GCM key, so no key "
            "derivation) against our primary, in the same runs; pyturso cannot encrypt a synced replica. The "
            "replica's pages, WAL, frame log and outbox are encrypted locally; what goes over the wire is the "
            "same protocol as in plaintext.",
            "",
            encrypted_table(fig),
            "",
        ]
    m = machine()
    today = datetime.date.today().isoformat()
    push_note = (
        "the long scenarios (`push_each`, `ryw_remote`, `update_each`: up to a minute and a half per client and "
        f"server) ran "
        f"in the first {fig.long_runs} only, to keep the whole benchmark short; their per-iteration "
        "p50 and p90 below come from thousands (hundreds) of iterations within that run"
        if fig.long_runs < fig.runs
        else "every scenario ran in every run"
    )
    lines = [
        f"Measured {today} by `python -m bench.bench_sync` in {fig.seconds:.0f} s: {fig.runs} runs; "
        f"{push_note}. In each run the servers are started fresh and every client runs every scenario "
        "against each (server order and client order rotated per run); figures are medians over runs.",
        "",
        f"**Machine**: {m['cpus']} vCPU ({m['model']}), {m['memory']} RAM, {m['kernel']}; files on "
        f"{filesystem(REPO)}. Servers, clients and benchmark share the machine over loopback, and other work "
        f"ran beside them (1-minute load average {fig.load[0]:.2f} before, {fig.load[1]:.2f} after).",
        "",
        f"**Clients**: pyturso {_version('pyturso')} (`turso.sync.connect`) and turso_sync "
        f"{_version('turso-sync')} at {fig.revision} (`turso_sync.connect`; our primary runs the same code), "
        "each in a worker process of its own, running the same scenario code (`bench/bench_sync.py`). Time "
        "is measured inside the worker around the scenario's loop only: bootstraps, and the JSON-lines "
        "exchange between the benchmark and its workers, are not counted. Bytes are the change in each "
        "client's own `stats()` counters (`network_sent_bytes` + `network_received_bytes`, HTTP bodies) over "
        "that loop, summed over both replicas in the two-replica scenario.",
        "",
        f"**Servers**: our primary (`turso-sync serve`, development mode) "
        f"and Turso's reference server ({_tursodb_version()}, `tursodb -q --sync-server`). Our client asks "
        "for zstd-compressed pages; only our primary offers them, so against tursodb both clients receive "
        "raw 4 KiB pages.",
        "",
        f"**Data**: `{TABLE_SQL}`, dropped and created again before every measurement; row `i` has id `i` and "
        f"a {PAYLOAD_CHARS}-character hex payload (blake2b of `i`: half of each byte is entropy). Each insert "
        "is its own transaction (DB-API `commit()`), followed by `push()`. In the pull scenario the "
        f"{fig.sizes.pull_rows:,} rows are written by a plain Hrana client (`/v2/pipeline`, one transaction, "
        f"{WRITE_BATCH} rows per INSERT) after the replica is bootstrapped; one `pull()` is timed. Every row "
        "is checked: on the server after each measurement, read back in each read-your-writes cycle, "
        "counted in the pulled replica.",
        "",
        f"**Issue 12's scenarios**: `update_each` (Turso's fourth published scenario) writes "
        f"{fig.sizes.updates:,} rows on the server first (as in the pull scenario), bootstraps the replica with "
        "them, then times one `UPDATE ... WHERE id = ?`, `commit()` and `push()` per row; every row is then checked "
        f"updated on the server and in the replica. `backlog` commits {fig.sizes.backlog:,} single-row inserts "
        "while the replica does not push (offline: a local write touches the network in neither client), then "
        "times the one `push()` that sends them all. HTTP requests are counted inside each worker "
        "(urllib3's `HTTPConnectionPool.urlopen` for turso_sync, `urllib.request.urlopen` for pyturso, whose "
        "HTTP goes through urllib), so retries would count too.",
        "",
        "**Ratios** are ours / pyturso: below 1.00x means turso_sync is faster or moves fewer bytes.",
        "",
        main_table(fig),
        "",
        aims(fig),
        "",
        "Per loop iteration (insert + push, plus the read, plus the second replica's pull where the "
        "scenario has them): p50 / p90 milliseconds within a run, bytes on the wire and HTTP requests per "
        "iteration (a push is one request: the mark's check rides in the batch; ryw_remote adds the pull):",
        "",
        iteration_table(fig),
        "",
        f"**Offline backlog**: {fig.sizes.backlog:,} local transactions pushed by one `push()` on reconnect (medians):",
        "",
        backlog_table(fig),
        "",
        *encrypted,
        "Spread (min-max over runs):",
        "",
        *spread,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the tables, and (for a full run) write them into docs/benchmarks.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_sync", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "3")), help="runs per server")
    parser.add_argument(
        "--long-runs",
        type=int,
        default=int(os.environ.get("BENCH_SYNC_LONG_RUNS", "1")),
        help="runs of the long scenarios, push_each, ryw_remote and update_each (at most --runs)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--scenarios",
        default=",".join(ALL_SCENARIOS),
        help=f"comma-separated scenarios (default: all, {','.join(ALL_SCENARIOS)}); a subset never writes the doc",
    )
    doc = parser.add_mutually_exclusive_group()
    doc.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    doc.add_argument("--doc", action="store_true", help="write docs/benchmarks.md even for a short or small run")
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main()
    if not TURSODB.exists():
        print(f"{TURSODB} is missing: run `make peers` first", file=sys.stderr)
        return 2
    scenarios = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
    unknown = [s for s in scenarios if s not in ALL_SCENARIOS]
    if unknown or not scenarios:
        parser.error(f"unknown scenario(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(ALL_SCENARIOS)}")
    sizes = Sizes.from_env()
    workdir = Path(os.environ.get("BENCH_DIR", REPO / "bench-data" / "sync")).resolve()
    fig = measure(
        sizes,
        args.runs,
        workdir,
        args.long_runs,
        log=lambda line: print(line, file=sys.stderr, flush=True),
        scenarios=scenarios,
    )
    text = report(fig)
    print(text)
    full = args.runs >= 3 and sizes == Sizes() and scenarios == ALL_SCENARIOS
    if args.doc and scenarios != ALL_SCENARIOS:
        print("docs/benchmarks.md left as it is: only some scenarios were run", file=sys.stderr)
    elif args.doc or (full and not args.no_doc):
        write_section(SECTION, "sync", text)
        print(f"wrote the '{SECTION}' figures into docs/benchmarks.md", file=sys.stderr)
    elif not args.no_doc:
        print("docs/benchmarks.md left as it is: fewer than 3 runs or smaller sizes (--doc to force)", file=sys.stderr)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
