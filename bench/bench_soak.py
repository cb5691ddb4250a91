"""Soak (issue 10): a steady write rate from many replicas for a long time; is the primary's cost flat?

``BENCH_SOAK_REPLICAS`` real ``turso_sync`` replicas (``turso_sync.connect``, a file each, threads in
a few worker processes ``python -m bench.bench_soak --worker``) each commit one small row every
``--period`` seconds (their turns staggered evenly, so the primary sees a steady
``replicas / period`` transactions per second), ``push()`` it, then ``pull()`` (no long-poll: what
the others wrote meanwhile).  A replica that falls behind skips the turns it missed instead of
bursting to catch up.  Every ``--interval`` seconds the benchmark collects:

- push and pull latency (p50, p99) of the calls that finished in the interval, and their errors;
- the server process's CPU time (``/proc/PID/stat``) per request (push + pull) in the interval;
- its resident memory (``VmRSS``) and open file descriptors at the end of the interval;
- the bytes of the database's files on disk: the frame log (``db-frames*``) and the rest (``db``,
  its WAL, ...).

Our primary's history is bounded by H2's ``serve`` flags when the server has them
(``--history-seconds``; the benchmark asks ``serve --help``): the run passes a short window
(``--history-seconds``, default 180 s) so the bound is reached well inside the run, and the
report compares the first and last ten minutes (for a shorter run: its first and last thirds).

    python -m bench.bench_soak [--minutes N] [--interval S] [--quick] [--json FILE]

Environment: ``BENCH_SOAK_REPLICAS`` (20), ``BENCH_SOAK_PROCS`` (2), ``BENCH_DIR``
(``bench-data/soak``).  Only our primary: tursodb keeps every WAL frame (its server serves pages
from its WAL and never checkpoints them away), so a soak of it measures a different thing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.bench_load import percentile, process_cpu
from bench.bench_primary import Server, _version, start_ours
from bench.bench_sync import WrongCount, payload, reset_table, server_count, source_revision
from bench.report import REPO, filesystem, machine, markdown_table, median
from bench.worker import JsonWorker

ID_SPAN = 10_000_000  # row ids of replica r are r * ID_SPAN + 1, + 2, ...
HISTORY_FLAGS = ("--history-seconds", "--history-bytes")


@dataclass(frozen=True)
class Sizes:
    """The load and how long it runs."""

    replicas: int = 20
    period: float = 1.0  # seconds between two transactions of one replica
    minutes: float = 30.0
    interval: float = 30.0  # seconds per sample
    procs: int = 2
    history_seconds: int = 180  # passed to serve when it has --history-seconds (0: not passed)

    @property
    def rate(self) -> float:
        """Transactions per second the fleet aims at."""
        return self.replicas / self.period


# --- inside a worker: replicas as threads ------------------------------------------------------------


class Fleet:
    """Some replicas of one server, each a thread that writes, pushes and pulls on its turn."""

    def __init__(self, url: str, folder: Path, ids: list[int], total: int, period: float) -> None:
        self.url, self.folder, self.ids, self.total, self.period = url, folder, ids, total, period
        self.opened = threading.Semaphore(0)
        self.go_event = threading.Event()
        self.stop_event = threading.Event()
        self.start = 0.0
        self.lock = threading.Lock()
        self.samples: list[tuple[str, float, float]] = []  # (kind, finished at, seconds); "push!"/"pull!" = error
        self.rows_pushed: dict[int, int] = {}
        self.open_errors: list[str] = []
        self.error_sample = ""
        self.skipped = 0
        self.threads = [threading.Thread(target=self.replica, args=(i,), daemon=True) for i in ids]

    def open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for t in self.threads:
            t.start()
        for _ in self.threads:
            self.opened.acquire()
        if self.open_errors:
            self.stop_event.set()
            self.go_event.set()
            raise RuntimeError(f"{len(self.open_errors)} replicas failed to open; first:\n{self.open_errors[0]}")

    def _record(self, kind: str, started: float, exc: BaseException | None = None) -> None:
        now = time.monotonic()
        with self.lock:
            self.samples.append((kind if exc is None else kind + "!", now, now - started))
            if exc is not None and not self.error_sample:
                self.error_sample = f"{kind}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"

    def replica(self, rid: int) -> None:
        import turso_sync

        try:
            conn = turso_sync.connect(str(self.folder / f"r{rid}.db"), self.url, client_name=f"bench-soak-{rid}")
        except Exception:
            with self.lock:
                self.open_errors.append(traceback.format_exc())
            self.opened.release()
            return
        self.opened.release()
        self.go_event.wait()
        turn = self.start + self.period * (rid % self.total) / self.total
        written = pushed = 0
        try:
            while not self.stop_event.wait(max(0.0, turn - time.monotonic())):
                now = time.monotonic()
                if now > turn + self.period:  # behind by a whole period: skip, do not burst
                    missed = int((now - turn) // self.period)
                    with self.lock:
                        self.skipped += missed
                    turn += missed * self.period
                turn += self.period
                written += 1
                row = rid * ID_SPAN + written
                conn.execute("INSERT INTO t(id, payload) VALUES (?, ?)", (row, payload(row)))
                conn.commit()
                started = time.monotonic()
                try:
                    conn.push()
                except Exception as exc:  # the row stays pending and goes with the next push
                    self._record("push", started, exc)
                else:
                    self._record("push", started)
                    pushed = written
                started = time.monotonic()
                try:
                    conn.pull()
                except Exception as exc:
                    self._record("pull", started, exc)
                else:
                    self._record("pull", started)
        finally:
            conn.close()
            with self.lock:
                self.rows_pushed[rid] = pushed

    def drain(self) -> list[tuple[str, float, float]]:
        with self.lock:
            out, self.samples = self.samples, []
        return out


def worker_main() -> int:
    """Worker process: ``open``, ``go`` (returns at once), ``drain`` (repeatedly), ``stop``; JSON lines."""
    fleet: Fleet | None = None
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["op"] == "open":
                fleet = Fleet(cmd["url"], Path(cmd["folder"]), cmd["ids"], cmd["total"], cmd["period"])
                fleet.open()
                answer: dict[str, Any] = {"ok": True}
            elif cmd["op"] == "go":
                assert fleet is not None, "go before open"
                fleet.start = cmd["start"]  # CLOCK_MONOTONIC is one clock for every process of the machine
                fleet.go_event.set()
                answer = {"ok": True, "cpu": time.process_time()}
            elif cmd["op"] == "drain":
                assert fleet is not None, "drain before open"
                answer = {"ok": True, "samples": fleet.drain(), "cpu": time.process_time()}
            elif cmd["op"] == "stop":
                assert fleet is not None, "stop before open"
                fleet.stop_event.set()
                for t in fleet.threads:
                    t.join(600)
                answer = {
                    "ok": True,
                    "samples": fleet.drain(),
                    "rows_pushed": sum(fleet.rows_pushed.values()),
                    "skipped": fleet.skipped,
                    "error_sample": fleet.error_sample,
                    "cpu": time.process_time(),
                }
                fleet = None
            else:
                raise ValueError(f"unknown op {cmd['op']!r}")
        except Exception:
            answer = {"ok": False, "error": traceback.format_exc()}
        print(json.dumps(answer), flush=True)
    return 0


# --- the benchmark process ---------------------------------------------------------------------------


def serve_help(repo: Path = REPO) -> str:
    """``turso-sync serve --help`` of the tree measured (to see which history flags it has)."""
    out = subprocess.run(
        [sys.executable, "-m", "turso_sync.cli.main", "serve", "--help"],
        capture_output=True,
        text=True,
        cwd=repo,
        check=False,
    )
    return out.stdout


def history_flags(sizes: Sizes, help_text: str) -> list[str]:
    """The serve flags that bound history, as far as the server has them."""
    if sizes.history_seconds and "--history-seconds" in help_text:
        return ["--history-seconds", str(sizes.history_seconds)]
    return []


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (``VmRSS``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def open_fds(pid: int) -> int:
    """Open file descriptors of process ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def disk_bytes(data_dir: Path) -> tuple[int, int]:
    """(frame log bytes, other bytes) of every database under ``data_dir``."""
    frames = other = 0
    for path in (data_dir / "databases").rglob("*"):
        try:
            if not path.is_file():
                continue
            size = path.stat().st_size
        except FileNotFoundError:  # a file replaced while we walk
            continue
        if "-frames" in path.name:
            frames += size
        else:
            other += size
    return frames, other


@dataclass
class Interval:
    """What one sampling interval saw."""

    end_s: float  # seconds since the start of the load
    pushes: int
    pulls: int
    errors: int
    push_p50_ms: float
    push_p99_ms: float
    pull_p50_ms: float
    pull_p99_ms: float
    server_cpu_s: float
    client_cpu_s: float
    rss_bytes: int
    fds: int
    frames_bytes: int
    db_bytes: int

    @property
    def cpu_ms_per_request(self) -> float:
        requests = self.pushes + self.pulls
        return self.server_cpu_s * 1000 / requests if requests else 0.0

    @property
    def client_cpu_ms_per_request(self) -> float:
        """The replicas' worker processes' CPU over the same requests (their side of each)."""
        requests = self.pushes + self.pulls
        return self.client_cpu_s * 1000 / requests if requests else 0.0


@dataclass
class Figures:
    """A whole soak."""

    sizes: Sizes
    revision: str
    serve_flags: list[str]
    intervals: list[Interval] = field(default_factory=list)
    rows_pushed: int = 0
    rows_on_server: int = 0
    skipped_turns: int = 0
    error_sample: str = ""
    seconds: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)
    started_utc: str = ""


def server_sample(server: Server) -> tuple[float, int, int, int, int]:
    """(CPU seconds so far, RSS bytes, open fds, frame log bytes, other bytes) of the running server."""
    assert server.proc is not None
    pid = server.proc.pid
    frames, other = disk_bytes(server.folder)
    return process_cpu(pid), rss_bytes(pid), open_fds(pid), frames, other


def _interval(samples: list[list[Any]], end_s: float, cpu: float, client_cpu: float, seen: tuple[Any, ...]) -> Interval:
    push = [s[2] for s in samples if s[0] == "push"]
    pull = [s[2] for s in samples if s[0] == "pull"]
    _, rss, fds, frames, other = seen
    return Interval(
        end_s,
        len(push),
        len(pull),
        sum(1 for s in samples if s[0].endswith("!")),
        percentile(push, 0.50) * 1000,
        percentile(push, 0.99) * 1000,
        percentile(pull, 0.50) * 1000,
        percentile(pull, 0.99) * 1000,
        cpu,
        client_cpu,
        rss,
        fds,
        frames,
        other,
    )


def measure(sizes: Sizes, workdir: Path, log: Any = print) -> Figures:
    """Start our primary, open the fleet, run the load for ``sizes.minutes`` and sample it."""
    started = time.perf_counter()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    flags = history_flags(sizes, serve_help())
    fig = Figures(sizes, source_revision(), flags, load=(os.getloadavg()[0], 0.0))
    fig.started_utc = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    server = start_ours(workdir / "server", "--max-requests-per-client", "256", *flags)
    assert server.proc is not None
    pid = server.proc.pid
    procs = max(1, min(sizes.replicas, sizes.procs))
    ids = list(range(sizes.replicas))
    workers = [JsonWorker("bench.bench_soak") for _ in range(procs)]
    try:
        reset_table(server.url)
        for p, w in enumerate(workers):  # one at a time: bootstraps are not what is measured
            cmd = {
                "op": "open",
                "url": server.url,
                "folder": str(workdir / "replicas"),
                "ids": ids[p::procs],
                "total": sizes.replicas,
                "period": sizes.period,
            }
            w.ask(cmd, "bench_soak", "open", timeout=600)
        start = time.monotonic() + 0.5
        client_cpu = [w.ask({"op": "go", "start": start}, "bench_soak", "go", timeout=60)["cpu"] for w in workers]
        cpu = process_cpu(pid)
        end = start + sizes.minutes * 60
        tick = start + sizes.interval
        while True:
            last = tick >= end - 1e-6
            time.sleep(max(0.0, min(tick, end) - time.monotonic()))  # a clock, not a wait for a condition
            seen = server_sample(server)  # before the replicas stop: the server as the load leaves it
            op = "stop" if last else "drain"
            answers = [w.ask({"op": op}, "bench_soak", op, timeout=900) for w in workers]
            samples = [s for a in answers for s in a["samples"]]
            spent = sum(a["cpu"] - c for a, c in zip(answers, client_cpu, strict=True))
            client_cpu = [a["cpu"] for a in answers]
            iv = _interval(samples, min(tick, end) - start, seen[0] - cpu, spent, seen)
            cpu = seen[0]
            fig.intervals.append(iv)
            log(
                f"{iv.end_s / 60:6.1f} min: {iv.pushes:5} pushes p50 {iv.push_p50_ms:6.1f} "
                f"p99 {iv.push_p99_ms:7.1f} ms, "
                f"{iv.pulls:5} pulls p50 {iv.pull_p50_ms:6.1f} p99 {iv.pull_p99_ms:7.1f} ms, {iv.errors} errors, "
                f"server {iv.cpu_ms_per_request:5.2f} CPU ms/req, RSS {iv.rss_bytes / 2**20:6.1f} MiB, "
                f"{iv.fds} fds, frames {iv.frames_bytes / 1e6:7.1f} MB, db {iv.db_bytes / 1e6:6.1f} MB"
            )
            if last:
                fig.rows_pushed = sum(a["rows_pushed"] for a in answers)
                fig.skipped_turns = sum(a["skipped"] for a in answers)
                fig.error_sample = next((a["error_sample"] for a in answers if a["error_sample"]), "")
                break
            tick += sizes.interval
        fig.rows_on_server = server_count(server.url)
        if fig.rows_on_server != fig.rows_pushed:
            raise WrongCount(f"soak: {fig.rows_on_server} rows on the server, successful pushes sent {fig.rows_pushed}")
    finally:
        for w in workers:
            w.close()
        server.stop()
    fig.load = (fig.load[0], os.getloadavg()[0])
    fig.seconds = time.perf_counter() - started
    return fig


# --- the report ---------------------------------------------------------------------------------------


def windows(fig: Figures) -> tuple[list[Interval], list[Interval], str]:
    """The first and last ten minutes (a shorter run: its first and last thirds), and what they are called."""
    ivs = fig.intervals
    if fig.sizes.minutes >= 20:
        n = max(1, round(600 / fig.sizes.interval))
        return ivs[:n], ivs[-n:], "first 10 min / last 10 min"
    n = max(1, len(ivs) // 3)
    return ivs[:n], ivs[-n:], "first third / last third"


def interval_table(fig: Figures) -> str:
    rows = [
        [
            f"{iv.end_s / 60:.2f}".rstrip("0").rstrip("."),
            f"{iv.pushes:,}",
            f"{iv.push_p50_ms:.1f}",
            f"{iv.push_p99_ms:.1f}",
            f"{iv.pulls:,}",
            f"{iv.pull_p50_ms:.1f}",
            f"{iv.pull_p99_ms:.1f}",
            f"{iv.errors}",
            f"{iv.cpu_ms_per_request:.2f}",
            f"{iv.client_cpu_ms_per_request:.2f}",
            f"{iv.rss_bytes / 2**20:.1f}",
            f"{iv.fds}",
            f"{iv.frames_bytes / 1e6:.1f}",
            f"{iv.db_bytes / 1e6:.1f}",
        ]
        for iv in fig.intervals
    ]
    header = [
        "minute",
        "pushes",
        "push p50 ms",
        "push p99 ms",
        "pulls",
        "pull p50 ms",
        "pull p99 ms",
        "errors",
        "server CPU ms/request",
        "replicas CPU ms/request",
        "RSS MiB",
        "fds",
        "frame log MB",
        "db + WAL MB",
    ]
    return markdown_table(header, rows, right=range(len(header)))


def summary_table(fig: Figures) -> str:
    first, last, names = windows(fig)
    measures: list[tuple[str, Any, str]] = [
        ("push p50 ms", lambda i: i.push_p50_ms, "{:.1f}"),
        ("push p99 ms", lambda i: i.push_p99_ms, "{:.1f}"),
        ("pull p50 ms", lambda i: i.pull_p50_ms, "{:.1f}"),
        ("pull p99 ms", lambda i: i.pull_p99_ms, "{:.1f}"),
        ("server CPU ms/request", lambda i: i.cpu_ms_per_request, "{:.2f}"),
        ("replicas CPU ms/request", lambda i: i.client_cpu_ms_per_request, "{:.2f}"),
        ("requests/s", lambda i: (i.pushes + i.pulls) / fig.sizes.interval, "{:.1f}"),
        ("RSS MiB", lambda i: i.rss_bytes / 2**20, "{:.1f}"),
        ("open fds", lambda i: i.fds, "{:.0f}"),
        ("frame log MB", lambda i: i.frames_bytes / 1e6, "{:.1f}"),
        ("db + WAL MB", lambda i: i.db_bytes / 1e6, "{:.1f}"),
    ]
    rows = []
    for name, what, fmt in measures:
        a, b = median([what(i) for i in first]), median([what(i) for i in last])
        rows.append([name, fmt.format(a), fmt.format(b), f"{b / a:.2f}x" if a else "n/a"])
    # a pruned frame log is a saw-tooth: its highest point per window says whether it is bounded
    for name, what, fmt in (
        ("frame log MB, highest sample", lambda i: i.frames_bytes / 1e6, "{:.1f}"),
        ("RSS MiB, highest sample", lambda i: i.rss_bytes / 2**20, "{:.1f}"),
    ):
        a, b = max(what(i) for i in first), max(what(i) for i in last)
        rows.append([name, fmt.format(a), fmt.format(b), f"{b / a:.2f}x" if a else "n/a"])
    header = ["measure (median of the intervals)", names.split(" / ")[0], names.split(" / ")[1], "last / first"]
    return markdown_table(header, rows, right=(1, 2, 3))


def report(fig: Figures) -> str:
    """The markdown text: setup, summary (first vs last), every interval."""
    m = machine()
    s = fig.sizes
    bound = (
        f"`{' '.join(fig.serve_flags)}` (the server's history bound: reached after {s.history_seconds / 60:g} min)"
        if fig.serve_flags
        else "no history bound (this server's `serve --help` has no `--history-seconds`)"
    )
    lines = [
        f"Measured {fig.started_utc or '(date not recorded)'} by `python -m bench.bench_soak --minutes {s.minutes:g}` "
        f"in {fig.seconds:.0f} s, "
        f"at {fig.revision}.",
        "",
        f"**Machine**: {m['cpus']} vCPU ({m['model']}), {m['memory']} RAM, {m['kernel']}; files on "
        f"{filesystem(REPO)}. Server, replicas and the benchmark share the machine with other work"
        + (f" (1-minute load average {fig.load[0]:.2f} before, {fig.load[1]:.2f} after)" if any(fig.load) else "")
        + "; figures per interval are single samples, the summary takes medians over intervals.",
        "",
        f"**Load**: {s.replicas} turso_sync {_version('turso-sync')} replicas (threads in {min(s.procs, s.replicas)} "
        f"worker process{'es' if min(s.procs, s.replicas) > 1 else ''}), each committing one row "
        f"(100-character payload) every {s.period:g} s, turns "
        f"staggered: {s.rate:g} transactions/s in all; after each commit the replica `push()`es it and then "
        f"`pull()`s (no long-poll). {fig.rows_pushed:,} rows pushed, {fig.rows_on_server:,} on the server at the "
        f"end (must be equal), {fig.skipped_turns:,} turns skipped by replicas running behind, "
        f"{sum(i.errors for i in fig.intervals):,} errors"
        + (f" (first: `{fig.error_sample}`)" if fig.error_sample else "")
        + ".",
        "",
        f"**Server**: our primary (`turso-sync serve`, development mode, `--max-requests-per-client 256`), {bound}. "
        f"Sampled every {s.interval:g} s: CPU = the server process's user + system time in the interval over "
        "the pushes + pulls that finished in it; RSS = `VmRSS`; fds = entries of `/proc/PID/fd`; disk = sizes of "
        "the database's files (`db-frames*` = frame log; `db`, `db-wal` and the rest).",
        "",
        summary_table(fig),
        "",
        "Every interval:",
        "",
        interval_table(fig),
    ]
    return "\n".join(lines)


def to_json(fig: Figures) -> dict[str, Any]:
    """The figures as plain data (``--json``)."""
    return {
        "sizes": asdict(fig.sizes),
        "revision": fig.revision,
        "serve_flags": fig.serve_flags,
        "rows_pushed": fig.rows_pushed,
        "rows_on_server": fig.rows_on_server,
        "skipped_turns": fig.skipped_turns,
        "error_sample": fig.error_sample,
        "seconds": fig.seconds,
        "load": list(fig.load),
        "started_utc": fig.started_utc,
        "intervals": [asdict(i) | {"cpu_ms_per_request": i.cpu_ms_per_request} for i in fig.intervals],
    }


def from_json(data: dict[str, Any]) -> Figures:
    """The figures ``to_json`` wrote (``--report``: print a saved run's report again)."""
    fields = set(Interval.__dataclass_fields__)
    fig = Figures(Sizes(**data["sizes"]), data["revision"], data["serve_flags"])
    fig.intervals = [Interval(**{k: v for k, v in i.items() if k in fields}) for i in data["intervals"]]
    fig.rows_pushed, fig.rows_on_server = data["rows_pushed"], data["rows_on_server"]
    fig.skipped_turns, fig.error_sample, fig.seconds = data["skipped_turns"], data["error_sample"], data["seconds"]
    fig.load = tuple(data.get("load", (0.0, 0.0)))  # type: ignore[assignment]
    fig.started_utc = data.get("started_utc", "")
    return fig


QUICK = Sizes(replicas=3, period=0.5, minutes=0.15, interval=3.0, procs=1, history_seconds=5)


def main(argv: list[str] | None = None) -> int:
    """Run the soak and print its tables (never written into docs/benchmarks.md by itself)."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long the load runs (default 30)")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds per sample (default 30)")
    parser.add_argument("--period", type=float, default=1.0, help="seconds between two rows of one replica")
    parser.add_argument(
        "--history-seconds", type=int, default=180, help="serve --history-seconds, if the server has it (0: not passed)"
    )
    parser.add_argument("--quick", action="store_true", help="a 9-second run of 3 replicas (the smoke test's)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--report", type=Path, help="print the report of figures saved by --json, run nothing")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main()
    if args.report:
        print(report(from_json(json.loads(args.report.read_text()))))
        return 0
    if args.quick:
        sizes = QUICK
    else:
        sizes = Sizes(
            int(os.environ.get("BENCH_SOAK_REPLICAS", "20")),
            args.period,
            args.minutes,
            args.interval,
            int(os.environ.get("BENCH_SOAK_PROCS", "2")),
            args.history_seconds,
        )
    workdir = Path(os.environ.get("BENCH_DIR", REPO / "bench-data" / "soak")).resolve()
    fig = measure(sizes, workdir, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(report(fig))
    if args.json:
        args.json.write_text(json.dumps(to_json(fig), indent=1))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
