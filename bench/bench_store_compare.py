"""The primary on an object store against its peers (issue 10): push ack latency, and bootstrap from a follower.

1. **Push ack latency.**  The same replica client (``turso_sync.connect``) inserts one ~110-byte row,
   commits and times ``push()``, the same pushes against three servers, each fresh per run:
   ``turso-sync serve`` on local disk, ``turso-sync serve --store`` on a local ``weed mini``
   (SeaweedFS, S3 over loopback; a push is answered once its revision is stored there), and
   Turso's ``tursodb --sync-server``.  The order rotates between runs.
2. **Bootstrap from a follower.**  A ``serve --store`` writer is seeded with a database of
   ``--seed-mb`` MB (the rows of ``bench_primary``); a ``serve --store --follow`` node on the same
   store loads it from the store; then a new replica bootstraps the whole database from the
   follower and from the writer, alternating: seconds and bytes received, with our client
   (``turso_sync.connect``) and with pyturso's (``turso.sync.connect``, a child process).  The follower's first
   open (from the store into its cache) is timed too.

Prints the tables (medians over runs of each run's p50 and p99, or of each run's time) and, with
``--out FILE``, writes them there as markdown.  Never writes docs/benchmarks.md.

    python -m bench.bench_store_compare [--runs N] [--pushes N] [--seed-mb MB] [--out FILE]
    python -m bench.bench_store_compare --quick        # 1 run, 20 pushes, 2 MB: a smoke run

Environment: ``BENCH_RUNS`` (5), ``BENCH_DIR`` (``bench-data/store-compare``, removed after).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import bench_primary as bp
from bench.bench_objectstore import percentile, primary_pushes
from bench.report import REPO, filesystem, machine, markdown_table, median
from tests.s3_harness import BUCKET, WeedMini, aws_env

#: The three servers of the push comparison, in the order the tables show them.
KINDS = {
    "local": "turso-sync serve, local disk",
    "store": "turso-sync serve --store (weed mini)",
    "tursodb": "tursodb --sync-server",
}
LEASE_TTL = "10"
#: The two replica clients of the bootstrap comparison.
CLIENTS = {"turso_sync": "turso_sync.connect", "pyturso": "pyturso 0.8.3 (turso.sync)"}


@dataclass(frozen=True)
class Sizes:
    """How much work one invocation does."""

    runs: int = 5
    pushes: int = 200
    seed_mb: int = 100


QUICK = Sizes(runs=1, pushes=20, seed_mb=2)


@dataclass
class Figures:
    """Everything measured: per kind, each run's (p50, p99) in ms; per node, each bootstrap."""

    sizes: Sizes
    pushes: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    bootstrap: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    follower_open_s: float = 0.0
    seeded_rows: int = 0
    seed_s: float = 0.0
    seconds: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)


def _start(kind: str, folder: Path, weed: WeedMini, prefix: str) -> bp.Server:
    if kind == "tursodb":
        return bp.start_tursodb(folder)
    if kind == "store":
        return bp.start_ours(folder, *_store_flags(weed, prefix))
    return bp.start_ours(folder)


def _store_flags(weed: WeedMini, prefix: str, *more: str) -> list[str]:
    return ["--store", f"s3://{BUCKET}/{prefix}", "--s3-endpoint", weed.endpoint, "--lease-ttl", LEASE_TTL, *more]


def measure_pushes(sizes: Sizes, weed: WeedMini, workdir: Path, fig: Figures, log: Callable[[str], None]) -> None:
    """``sizes.pushes`` sequential replica pushes per server per run, a fresh server and replica each time."""
    kinds = list(KINDS)
    for run in range(sizes.runs):
        order = kinds[run % len(kinds) :] + kinds[: run % len(kinds)]
        for kind in order:
            folder = workdir / f"push-{kind}-{run}"
            server = _start(kind, folder, weed, f"push{run}")
            try:
                latencies = primary_pushes(server.url, workdir, sizes.pushes)
            finally:
                server.stop()
            shutil.rmtree(folder, ignore_errors=True)
            for leftover in workdir.glob("replica-*"):
                leftover.unlink()
            p50, p99 = percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000
            fig.pushes.setdefault(kind, []).append((p50, p99))
            log(f"push run {run + 1}/{sizes.runs} {kind}: p50 {p50:.2f} ms, p99 {p99:.2f} ms")


def _count(url: str) -> int | None:
    """Rows in ``t`` as the server at ``url`` answers now (None while it cannot answer)."""
    body = {"baton": None, "requests": [{"type": "execute", "stmt": {"sql": "SELECT count(*) FROM t"}}]}
    try:
        resp = httpx.post(f"{url}/v2/pipeline", json=body, timeout=120)
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    result = resp.json()["results"][0]
    if result["type"] != "ok":
        return None
    return int(result["response"]["result"]["rows"][0][0]["value"])


def bootstrap_once(url: str, path: Path) -> dict[str, float]:
    """A new replica of the whole database at ``url``: seconds, bytes received, pages."""
    import turso_sync

    started = time.perf_counter()
    conn = turso_sync.connect(path, url, timeout=120)
    seconds = time.perf_counter() - started
    try:
        received = conn.stats().network_received_bytes
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        rows = conn.execute("SELECT count(*) FROM t").fetchone()[0]
    finally:
        conn.close()
    for leftover in path.parent.glob(path.name + "*"):
        if leftover.is_file():
            leftover.unlink()
        else:
            shutil.rmtree(leftover, ignore_errors=True)
    return {"seconds": seconds, "received": float(received), "pages": float(pages), "rows": float(rows)}


def measure_bootstrap(sizes: Sizes, weed: WeedMini, workdir: Path, fig: Figures, log: Callable[[str], None]) -> None:
    """Seed a ``--store`` writer, start a follower on the same store, bootstrap from each, alternating."""
    writer = bp.start_ours(workdir / "boot-writer", *_store_flags(weed, "boot"))
    follower: bp.Server | None = None
    try:
        started = time.perf_counter()
        bp.seed(writer, bp.Sizes(seed_mb=sizes.seed_mb))
        fig.seed_s = time.perf_counter() - started
        rows = _count(writer.url)
        assert rows, "the writer holds no rows after seeding"
        fig.seeded_rows = rows
        log(f"seeded the --store writer with {sizes.seed_mb} MB ({rows:,} rows) in {fig.seed_s:.1f} s")
        started = time.perf_counter()
        follower = bp.start_ours(workdir / "boot-follower", *_store_flags(weed, "boot", "--follow"))
        deadline = time.monotonic() + 600
        while _count(follower.url) != rows:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the follower did not reach {rows} rows within 600 s")
            time.sleep(0.1)  # polling a condition, with a deadline
        fig.follower_open_s = time.perf_counter() - started
        log(f"the follower serves all {rows:,} rows {fig.follower_open_s:.1f} s after it was started")
        nodes = {"follower": follower.url, "writer": writer.url}
        names = list(nodes)
        pyturso = bp.Client()
        try:
            for run in range(sizes.runs):
                for name in names[run % 2 :] + names[: run % 2]:
                    answer = bootstrap_once(nodes[name], workdir / f"boot-{name}-{run}.db")
                    assert answer["rows"] == rows, f"bootstrap from the {name} got {answer['rows']} of {rows} rows"
                    fig.bootstrap.setdefault(f"turso_sync:{name}", []).append(answer)
                    path = workdir / f"boot-pyturso-{name}-{run}.db"
                    other = pyturso.call("bootstrap", path=str(path), url=nodes[name])
                    for leftover in workdir.glob(path.name + "*"):
                        leftover.unlink()
                    fig.bootstrap.setdefault(f"pyturso:{name}", []).append(other)
                    log(
                        f"bootstrap run {run + 1}/{sizes.runs} from the {name}: turso_sync {answer['seconds']:.2f} s, "
                        f"pyturso {other['seconds']:.2f} s"
                    )
        finally:
            pyturso.close()
    finally:
        for server in (follower, writer):
            if server is not None:
                server.stop()


def measure(sizes: Sizes, workdir: Path, log: Callable[[str], None] = print) -> Figures:
    """Start ``weed mini``, then run both measurements; everything started is stopped."""
    started = time.perf_counter()
    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "weed").mkdir(parents=True)
    fig = Figures(sizes, load=(os.getloadavg()[0], 0.0))
    try:
        with WeedMini(workdir / "weed") as weed, aws_env(weed):
            measure_pushes(sizes, weed, workdir, fig, log)
            measure_bootstrap(sizes, weed, workdir, fig, log)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    fig.load = (fig.load[0], os.getloadavg()[0])
    fig.seconds = time.perf_counter() - started
    return fig


def _commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO, check=False
    )
    return done.stdout.strip() or "unknown"


def _runs(n: int) -> str:
    return "1 run" if n == 1 else f"{n} runs"


def report(fig: Figures) -> str:
    """The markdown tables and how they were measured."""
    s = fig.sizes
    local_p50 = median([p50 for p50, _ in fig.pushes["local"]])
    local_p99 = median([p99 for _, p99 in fig.pushes["local"]])
    push_rows = []
    for kind, label in KINDS.items():
        runs = fig.pushes[kind]
        p50, p99 = median([a for a, _ in runs]), median([b for _, b in runs])
        spread = f"{min(a for a, _ in runs):.1f}-{max(a for a, _ in runs):.1f}"
        push_rows.append(
            [label, f"{p50:.2f}", f"{p99:.2f}", spread, f"{p50 / local_p50:.2f}x / {p99 / local_p99:.2f}x"]
        )
    pushes = markdown_table(
        ["replica push() of one row to", "p50 ms", "p99 ms", "p50 per run, ms", "vs local disk (p50 / p99)"],
        push_rows,
        right=(1, 2, 3, 4),
    )
    boot_rows = []
    mb = max(a["pages"] for runs in fig.bootstrap.values() for a in runs) * 4096 / 1e6
    for key in (f"{c}:{n}" for c in ("turso_sync", "pyturso") for n in ("follower", "writer")):
        client, name = key.split(":")
        runs = fig.bootstrap[key]
        secs = [a["seconds"] for a in runs]
        received = median([a["received"] for a in runs])
        boot_rows.append(
            [
                f"{CLIENTS[client]}, from `serve --store{' --follow' if name == 'follower' else ''}` ({name})",
                f"{median(secs):.2f}",
                f"{min(secs):.2f}-{max(secs):.2f}",
                f"{received / 1e6:.1f}",
                f"{mb / median(secs):.0f}",
            ]
        )
    boots = markdown_table(
        ["bootstrap of the whole database: client, node", "seconds", "per run", "MB received", "MB/s"],
        boot_rows,
        right=(1, 2, 3, 4),
    )
    host = machine()
    return "\n".join(
        [
            f"Measured {datetime.date.today().isoformat()} at commit {_commit()} by `python -m "
            f"bench.bench_store_compare --runs {s.runs} --pushes {s.pushes} --seed-mb {s.seed_mb}` in "
            f"{fig.seconds:.0f} s. {host['cpus']} vCPU ({host['model']}), {host['memory']} RAM, files on "
            f"{filesystem(REPO)}; the client, the servers and `weed mini` share the machine (load average "
            f"{fig.load[0]:.2f} before, {fig.load[1]:.2f} after).",
            "",
            f"**Push ack latency**: the same replica client (`turso_sync.connect`, one ~110-byte row, `commit()`, "
            f"timed `push()`), {s.pushes} sequential pushes per server per run, a fresh server and replica "
            f"each, order rotated between runs; medians over {_runs(s.runs)} of each run's p50 and p99. "
            "`--store` is a bucket of `weed mini` as SeaweedFS ships it (a PUT is not fsynced); the "
            "local-disk primary fsyncs each commit.",
            "",
            pushes,
            "",
            f"**Bootstrap from a follower**: a `serve --store` writer seeded with {fig.seeded_rows:,} rows of "
            f"{bp.ROW_BYTES} pseudo-random bytes ({mb:.0f} MB database) through `/v2/pipeline` in "
            f"{fig.seed_s:.0f} s; a `serve --store --follow` node on the same store served all of it "
            f"{fig.follower_open_s:.1f} s after it was started (its first open reads the store into its "
            f"cache). Then a new replica bootstraps the whole database from each node, alternating, "
            f"{_runs(s.runs)} each; medians. Two clients: ours (`turso_sync.connect`, in the benchmark's "
            "process) and Turso's pyturso (`turso.sync.connect`, in a child process, as in bench_primary).",
            "",
            boots,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Run both measurements, print the tables, and write them to ``--out`` if given."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_store_compare", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "5")))
    parser.add_argument("--pushes", type=int, default=Sizes.pushes, help="sequential pushes per server per run")
    parser.add_argument("--seed-mb", type=int, default=Sizes.seed_mb, help="size of the bootstrapped database")
    parser.add_argument("--quick", action="store_true", help="1 run, 20 pushes, a 2 MB database")
    parser.add_argument("--out", type=Path, help="also write the markdown here (never docs/benchmarks.md)")
    args = parser.parse_args(argv)
    if not bp.TURSODB.exists():
        print(f"{bp.TURSODB} is missing: run `make peers` first", file=sys.stderr)
        return 2
    sizes = QUICK if args.quick else Sizes(args.runs, args.pushes, args.seed_mb)
    workdir = Path(os.environ.get("BENCH_DIR", REPO / "bench-data" / "store-compare")).resolve()
    fig = measure(sizes, workdir, log=lambda line: print(line, file=sys.stderr, flush=True))
    text = report(fig)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
