"""Object-store ack latency (issue 10 groundwork): how long until a revision is durable.

Against a local ``weed mini`` (SeaweedFS, S3 over loopback, started here) through the
``LogWriter`` the primary will use, once into a bucket as SeaweedFS ships it (an S3 PUT is not
fsynced) and once into a bucket configured to fsync every PUT's data; and against an fsync'd
append of the same bytes to a local file (what a local-disk primary pays at least).  Each
append is one revision of 1 page or 100 pages (4 KiB each, random bytes, so zstd cannot shrink
them), encoded as a segment (zstd included in every column).  Sequential appends: the ack
latency of one push with nothing else in flight.  Then 16 concurrent pushes through
``GroupCommit`` (1 page each): latency per push and how many objects they became.

Prints a table per run and the medians over runs (p50/p99 of each run, then the median of
those).  Client and server share this machine's cores.  Writes nothing to docs/.

    python -m bench.bench_objectstore [--runs N] [--appends N]
    python -m bench.bench_objectstore --primary [--runs N] [--pushes N]
    python -m bench.bench_objectstore --failover [--runs N] [--pushes N] [--ttl S]

``--primary`` measures the whole ack path instead: a real replica's ``push()`` of one small
row to a real ``turso-sync serve`` subprocess on local disk, against ``serve --store`` on
the same ``weed mini`` (both buckets), a fresh server and database per kind per run.
``--failover`` starts two ``serve --store`` on one prefix per run, has the first acknowledge
``--pushes`` inserts, kills it (SIGKILL) and times until the second acknowledges one, then
counts the acknowledged inserts missing there (must be 0).

Environment: ``BENCH_RUNS`` (5), ``BENCH_DIR`` (``bench-data/objectstore``, removed after).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import time
from pathlib import Path

from bench.report import REPO, filesystem, machine, markdown_table
from tests.s3_harness import BUCKET, WeedMini, aws_env
from turso_sync.primary.objectstore import DatabaseKeys, GroupCommit, LogWriter, Revision, RevisionLog, WriterLease
from turso_sync.primary.objectstore.s3 import S3Client
from turso_sync.primary.objectstore.segment import Segment, encode_segment

PAGE = 4096
#: A second bucket whose PUTs fsync their data (SeaweedFS's per-path ``fs.configure -fsync``).
DURABLE = "durable"


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def revision(number: int, pages: int, rng: random.Random) -> Revision:
    return Revision(number, pages, {p: rng.randbytes(PAGE) for p in range(1, pages + 1)})


async def s3_appends(client: S3Client, pages: int, count: int, rng: random.Random) -> list[float]:
    """Ack latencies (s) of ``count`` sequential one-revision appends to the store."""
    keys = DatabaseKeys(f"bench{rng.randrange(1 << 40):x}", "db")
    lease = WriterLease(client, keys.lease, "bench", ttl=60)
    await lease.acquire(timeout=5)
    writer = await LogWriter.take_over(RevisionLog(client, keys), lease, page_size=PAGE)
    out = []
    for _ in range(count):
        rev = revision(writer.head.revision + 1, pages, rng)
        start = time.perf_counter()
        await writer.append([rev])
        out.append(time.perf_counter() - start)
    return out


def local_appends(folder: Path, pages: int, count: int, rng: random.Random) -> list[float]:
    """Ack latencies (s) of ``count`` appends of the same segment bytes to a local file, each fsync'd."""
    path = folder / f"log-{pages}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    out = []
    try:
        for n in range(1, count + 1):
            rev = revision(n, pages, rng)
            start = time.perf_counter()
            os.write(fd, encode_segment(Segment(1, PAGE, [rev])))
            os.fsync(fd)
            out.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()
    return out


async def grouped(client: S3Client, concurrency: int, rounds: int, rng: random.Random) -> tuple[list[float], int]:
    """Latency of each of ``concurrency`` simultaneous 1-page commits, ``rounds`` times; and the objects written."""
    keys = DatabaseKeys(f"bench{rng.randrange(1 << 40):x}", "db")
    lease = WriterLease(client, keys.lease, "bench", ttl=60)
    await lease.acquire(timeout=5)
    writer = await LogWriter.take_over(RevisionLog(client, keys), lease, page_size=PAGE)
    group = GroupCommit(writer)
    latencies: list[float] = []
    next_number = writer.head.revision + 1

    async def one(rev: Revision) -> None:
        start = time.perf_counter()
        await group.commit(rev)
        latencies.append(time.perf_counter() - start)

    for _ in range(rounds):
        revs = [revision(next_number + i, 1, rng) for i in range(concurrency)]
        next_number += concurrency
        await asyncio.gather(*(one(r) for r in revs))
    return latencies, group.uploads


def primary_pushes(url: str, folder: Path, count: int) -> list[float]:
    """Latencies (s) of ``count`` sequential ``push()`` calls of a real replica, one small row each."""
    import turso_sync

    replica = turso_sync.connect(folder / f"replica-{time.monotonic_ns()}.db", url)
    try:
        replica.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT)")
        replica.commit()
        replica.push()
        out = []
        for i in range(count):
            replica.execute("INSERT INTO notes (body) VALUES (?)", (f"row {i} " + "x" * 100,))
            replica.commit()
            started = time.perf_counter()
            replica.push()
            out.append(time.perf_counter() - started)
        return out
    finally:
        replica.close()


def primary_main(args: argparse.Namespace) -> None:
    """Push latency of ``turso-sync serve`` on local disk against ``serve --store`` on weed mini."""
    from tests.integration.primary_harness import PrimaryProcess

    folder = Path(os.environ.get("BENCH_DIR", str(REPO / "bench-data" / "objectstore")))
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "weed").mkdir(parents=True)
    rows: dict[str, list[tuple[float, float]]] = {}
    try:
        with WeedMini(folder / "weed", buckets=(BUCKET, DURABLE)) as weed, aws_env(weed):
            weed.enable_fsync(DURABLE)
            kinds = {
                "local disk (no --store)": [],
                "--store on weed mini (no fsync)": ["--store", f"s3://{BUCKET}/bench"],
                "--store on weed mini (fsync per PUT)": ["--store", f"s3://{DURABLE}/bench"],
            }
            for run in range(args.runs):
                order = list(kinds.items())
                if run % 2:
                    order.reverse()  # neither kind always runs first
                for name, extra in order:
                    data = folder / f"data-{run}-{len(rows.get(name, []))}-{name.split()[0].strip('-')}"
                    store_args = [*extra, "--s3-endpoint", weed.endpoint] if extra else []
                    server = PrimaryProcess(data, "--log-level", "warning", *store_args)
                    url = server.start()
                    try:
                        lat = primary_pushes(f"{url}/db/run{run}", folder, args.pushes)
                    finally:
                        server.stop()
                    rows.setdefault(name, []).append(_p(lat))
                print(f"run {run + 1}/{args.runs}:")
                print(_primary_table({k: [v[-1]] for k, v in rows.items()}))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    host = machine()
    print(f"\nmedian over {args.runs} runs of {args.pushes} pushes; {host['cpus']} CPUs ({host['model']}), ")
    print(f"{filesystem(REPO)}; server, weed mini and the replica share the machine:")
    print(_primary_table(rows))


def _primary_table(rows: dict[str, list[tuple[float, float]]]) -> str:
    body = [
        [name, f"{statistics.median(p50 for p50, _ in v):.2f}", f"{statistics.median(p99 for _, p99 in v):.2f}"]
        for name, v in rows.items()
    ]
    return markdown_table(["replica push() of one row, primary", "p50 ms", "p99 ms"], body, right=[1, 2])


def failover_main(args: argparse.Namespace) -> None:
    """Time from ``kill -9`` of a ``serve --store`` writer to the first push its standby acknowledges."""
    import httpx

    from tests.integration.primary_harness import PrimaryProcess

    def insert(url: str, n: int) -> bool:
        body = {"baton": None, "requests": [{"type": "execute", "stmt": {"sql": f"INSERT INTO t VALUES ({n})"}}]}
        try:
            resp = httpx.post(f"{url}/v2/pipeline", json=body, timeout=30)
        except httpx.HTTPError:
            return False
        return resp.status_code == 200 and resp.json()["results"][0]["type"] == "ok"

    folder = Path(os.environ.get("BENCH_DIR", str(REPO / "bench-data" / "objectstore")))
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "weed").mkdir(parents=True)
    times: list[float] = []
    lost_total = 0
    try:
        with WeedMini(folder / "weed") as weed, aws_env(weed):
            for run in range(args.runs):
                store = ["--store", f"s3://{BUCKET}/failover{run}", "--s3-endpoint", weed.endpoint]
                ttl = ["--lease-ttl", str(args.ttl), "--log-level", "warning"]
                first = PrimaryProcess(folder / f"a{run}", *store, *ttl)
                second = PrimaryProcess(folder / f"b{run}", *store, *ttl)
                first.start()
                second.start()
                try:
                    body = {"baton": None, "requests": [{"type": "execute", "stmt": {"sql": "CREATE TABLE t (n)"}}]}
                    assert httpx.post(f"{first.url}/v2/pipeline", json=body, timeout=30).status_code == 200
                    assert not insert(second.url, -1)  # the standby now watches the lease
                    acked = [n for n in range(args.pushes) if insert(first.url, n)]
                    first.kill()
                    killed = time.monotonic()
                    while not insert(second.url, 1_000_000):
                        if time.monotonic() - killed > 20 * args.ttl + 60:
                            raise AssertionError(f"run {run}: no takeover")
                    times.append(time.monotonic() - killed)
                    answer = httpx.post(
                        f"{second.url}/v2/pipeline",
                        json={"baton": None, "requests": [{"type": "execute", "stmt": {"sql": "SELECT n FROM t"}}]},
                        timeout=30,
                    ).json()
                    rows = answer["results"][0]["response"]["result"]["rows"]
                    present = {int(r[0]["value"]) for r in rows}
                    lost = len(set(acked) - present)
                    lost_total += lost
                    print(f"run {run + 1}/{args.runs}: takeover {times[-1]:.2f} s, {len(acked)} acked, {lost} lost")
                finally:
                    for server in (first, second):
                        if server.proc is not None:
                            server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    host = machine()
    print(f"\n{args.runs} runs, --lease-ttl {args.ttl:g}; {host['cpus']} CPUs ({host['model']}):")
    print(
        f"takeover after kill -9: median {statistics.median(times):.2f} s, "
        f"min {min(times):.2f} s, max {max(times):.2f} s; acknowledged pushes lost: {lost_total}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "5")))
    parser.add_argument("--appends", type=int, default=200, help="sequential appends per size per run")
    parser.add_argument(
        "--primary", action="store_true", help="measure replica pushes to turso-sync serve, with and without --store"
    )
    parser.add_argument("--pushes", type=int, default=200, help="with --primary: sequential pushes per server per run")
    parser.add_argument("--failover", action="store_true", help="time the standby's takeover after kill -9")
    parser.add_argument("--ttl", type=float, default=2.0, help="with --failover: the servers' --lease-ttl")
    args = parser.parse_args()
    if args.failover:
        failover_main(args)
        return
    if args.primary:
        primary_main(args)
        return
    rng = random.Random(1)
    rows: dict[str, list[tuple[float, float]]] = {}
    group_objects: list[float] = []
    folder = Path(os.environ.get("BENCH_DIR", str(REPO / "bench-data" / "objectstore")))
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "weed").mkdir(parents=True)
    try:
        with WeedMini(folder / "weed", buckets=(BUCKET, DURABLE)) as weed, aws_env(weed):
            weed.enable_fsync(DURABLE)

            async def one_run() -> None:
                client = await S3Client.open(weed.location())
                durable = await S3Client.open(weed.location(bucket=DURABLE))
                try:
                    for pages in (1, 100):
                        s3 = await s3_appends(client, pages, args.appends, rng)
                        synced = await s3_appends(durable, pages, args.appends, rng)
                        local = local_appends(folder, pages, args.appends, rng)
                        rows.setdefault(f"S3 (weed mini, no fsync), {pages} page(s)", []).append(_p(s3))
                        rows.setdefault(f"S3 (weed mini, fsync per PUT), {pages} page(s)", []).append(_p(synced))
                        rows.setdefault(f"local file + fsync, {pages} page(s)", []).append(_p(local))
                    lat, uploads = await grouped(client, 16, 20, rng)
                    rows.setdefault("S3 (no fsync), 16 concurrent 1-page commits (group commit)", []).append(_p(lat))
                    group_objects.append(uploads)
                finally:
                    await client.close()
                    await durable.close()

            for run in range(args.runs):
                asyncio.run(one_run())
                print(f"run {run + 1}/{args.runs}:")
                print(_table({k: [v[-1]] for k, v in rows.items()}))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    host = machine()
    print(f"\nmedian over {args.runs} runs; {host['cpus']} CPUs ({host['model']}), {filesystem(REPO)};")
    print("weed mini and this client share the machine; the local file and weed's data are on the same disk:")
    print(_table(rows))
    print(f"group commit: 320 commits became a median of {statistics.median(group_objects):.0f} objects per run")


def _p(values: list[float]) -> tuple[float, float]:
    return percentile(values, 0.5) * 1000, percentile(values, 0.99) * 1000


def _table(rows: dict[str, list[tuple[float, float]]]) -> str:
    body = [
        [name, f"{statistics.median(p50 for p50, _ in v):.2f}", f"{statistics.median(p99 for _, p99 in v):.2f}"]
        for name, v in rows.items()
    ]
    return markdown_table(["append, ack when durable", "p50 ms", "p99 ms"], body, right=[1, 2])


if __name__ == "__main__":
    main()
