"""Where turso_sync's time goes in the sync benchmark's scenarios: the profile behind docs/benchmarks.md.

Runs ``bench_sync``'s scenarios (same code, same sizes) for our client in this process against our
primary, with a *ledger*: the functions below are wrapped with a timer that records inclusive wall
time per call path (``push() > mark query > HTTP exchange``), only while the scenario's loop is
being timed.  A wrapper costs about a microsecond and there are a few dozen calls per iteration,
so unlike cProfile the ledger leaves the figures nearly as they are.  pyturso runs the same
scenarios in its worker against the same server for the reference line.

    python -m bench.profile_sync [--no-doc] [--cprofile]

``--cprofile`` also runs each scenario once more under cProfile and prints the top functions.
Not run by ``run_all`` (its name has no ``bench_`` prefix).  Sizes: ``BENCH_SYNC_*`` as for
``bench_sync``.
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import os
import pstats
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import bench_sync as bs
from bench.bench_primary import start_ours
from bench.report import REPO, markdown_table, write_section

MAX_DEPTH = 4
MIN_MS = 0.05  # rows under this many ms per iteration in every scenario are left out


class Ledger:
    """Inclusive wall time and call counts per call path of the wrapped functions."""

    def __init__(self) -> None:
        self.active = False
        self.stack: list[str] = []
        self.seconds: dict[tuple[str, ...], float] = defaultdict(float)
        self.calls: dict[tuple[str, ...], int] = defaultdict(int)
        self.wal_frames = 0  # frames read back and checksummed by read_committed
        self.missing: list[str] = []
        self._undo: list[tuple[Any, str, Any, bool]] = []

    def wrap(self, owner: Any, name: str, label: str) -> None:
        """Time every call of ``owner.name`` under ``label`` while the ledger is active.

        A name the code no longer has is skipped (and listed in ``missing``): the client's
        internals move faster than this profile.
        """
        if not hasattr(owner, name):
            self.missing.append(f"{getattr(owner, '__name__', owner)}.{name}")
            return
        own = isinstance(owner, type) and name in owner.__dict__
        original = getattr(owner, name)
        ledger = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            if not ledger.active:
                return original(*args, **kwargs)
            ledger.stack.append(label)
            path = tuple(ledger.stack)
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                ledger.seconds[path] += time.perf_counter() - started
                ledger.calls[path] += 1
                ledger.stack.pop()

        def timed_steps(*args: Any, **kwargs: Any) -> Any:
            # a sans-IO step (a generator the driver runs): timed from its first step to its
            # return, so the requests the driver performs meanwhile count under it
            if not ledger.active:
                return (yield from original(*args, **kwargs))
            ledger.stack.append(label)
            path = tuple(ledger.stack)
            started = time.perf_counter()
            try:
                return (yield from original(*args, **kwargs))
            finally:
                ledger.seconds[path] += time.perf_counter() - started
                ledger.calls[path] += 1
                ledger.stack.pop()

        setattr(owner, name, timed_steps if inspect.isgeneratorfunction(original) else timed)
        self._undo.append((owner, name, original, own or not isinstance(owner, type)))

    def count_frames(self, module: Any) -> None:
        """Count the WAL frames that ``module.read_committed`` reads back."""
        original = getattr(module, "read_committed", None)
        if original is None:
            return
        ledger = self

        def counted(raw: bytes) -> Any:
            result = original(raw)
            if ledger.active:
                ledger.wal_frames += sum(len(txn.frames) for txn in result[1])
            return result

        module.read_committed = counted
        self._undo.append((module, "read_committed", original, True))

    def restore(self) -> None:
        for owner, name, original, own in reversed(self._undo):
            if own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)
        self._undo.clear()

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False


def install(ledger: Ledger) -> None:
    """Wrap the functions that make up a push, a pull and the local commit."""
    from turso_sync.local import connection as local_connection
    from turso_sync.local import engine, framelog
    from turso_sync.local.connection import Connection
    from turso_sync.local.engine import LocalDatabase
    from turso_sync.local.framelog import FrameLog
    from turso_sync.sync import pull, pusher, remote
    from turso_sync.sync import push as push_mod
    from turso_sync.sync.connection import SyncConnection
    from turso_sync.sync.rebase import Rebaser
    from turso_sync.sync.state import SyncState
    from turso_sync.sync.transport import HttpTransport

    # the sync modules import each other's functions by name: each is wrapped where it is called
    for owner, name, label in [
        (Connection, "execute", "execute() (INSERT or SELECT)"),
        (Connection, "commit", "commit() (capture into the outbox, WAL append)"),
        (SyncConnection, "push", "push()"),
        (SyncConnection, "pull", "pull()"),
        (pusher, "read_outbox", "read outbox and pull_gen"),
        (pusher, "remote_mark", "mark query (turso_sync_last_change_id; first push, lost answer, mismatch)"),
        (push_mod, "build_batch", "build the Hrana batch"),
        (push_mod, "pipeline_body", "encode the Hrana batch (JSON)"),
        (pusher, "pipeline_body", "/v2/pipeline request"),
        (pusher, "forget", "delete pushed outbox rows"),
        (pull, "fetch_pages", "/pull-updates request"),
        (remote, "decode_pull", "decode pages (protobuf, zstd)"),
        (HttpTransport, "_once", "HTTP exchange (httpx; includes the server's time)"),
        (pull, "install", "apply the pulled pages"),
        (pull, "synced_base_pages", "rebuild the synced base (frame log, revert file)"),
        (FrameLog, "_wal_txns", "re-read the WAL (parse, checksum every frame)"),
        (Rebaser, "run", "rebase (replay pending changes)"),
        (LocalDatabase, "install_locked", "install changed pages (WAL append)"),
        (pull, "write_revert", "write the revert file"),
        (pull, "inline_revert", "encode the revert kept in the state"),
        (pull, "drop_reverts", "drop old revert files"),
        (LocalDatabase, "prune_history", "prune frame-log history"),
        (pull, "read_revert", "read the revert file"),
        (pull, "read_inline_revert", "read the revert kept in the state"),
        (SyncState, "save", "save sync state (JSON, fsync, rename)"),
        (SyncState, "load", "load sync state (JSON)"),
        (os, "fsync", "os.fsync"),
    ]:
        ledger.wrap(owner, name, label)
    for module in (framelog, engine, local_connection):
        ledger.count_frames(module)
    if ledger.missing:
        print(f"profile_sync: not in the code any more, not timed: {', '.join(ledger.missing)}", file=sys.stderr)


def tree_rows(ledgers: dict[str, Ledger], iterations: dict[str, int]) -> list[list[str]]:
    """One row per call path (depth-first, first seen first), one cell per scenario: ms and calls per iteration."""
    order: list[tuple[str, ...]] = []
    for ledger in ledgers.values():
        for path in ledger.seconds:
            if path not in order and len(path) <= MAX_DEPTH:
                order.append(path)

    def children(parent: tuple[str, ...]) -> list[tuple[str, ...]]:
        return [p for p in order if len(p) == len(parent) + 1 and p[: len(parent)] == parent]

    def visible(path: tuple[str, ...]) -> bool:
        return any(led.seconds.get(path, 0.0) / iterations[k] * 1000 >= MIN_MS for k, led in ledgers.items())

    rows: list[list[str]] = []

    def walk(parent: tuple[str, ...]) -> None:
        for path in children(parent):
            if not visible(path):
                continue
            cells = ["· " * (len(path) - 1) + path[-1]]
            for key, ledger in ledgers.items():
                n = iterations[key]
                seconds, calls = ledger.seconds.get(path, 0.0), ledger.calls.get(path, 0)
                cells.append(f"{seconds / n * 1000:.2f} ({calls / n:.3g})" if calls else "-")
            rows.append(cells)
            walk(path)

    walk(())
    return rows


def profile(
    sizes: bs.Sizes,
    workdir: Path,
    cprofile: bool,
    log: Callable[[str], None],
    scenarios: tuple[str, ...] = bs.SCENARIOS,
) -> str:
    """Run every scenario with the ledger (plaintext and encrypted) and pyturso for reference; the markdown."""
    shutil.rmtree(workdir, ignore_errors=True)
    server = start_ours(workdir / "server")
    pyturso = bs.Worker()
    tables = []
    try:
        reference: dict[str, bs.Sample] = {}
        for scenario in scenarios:
            folder = workdir / f"pyturso-{scenario}"
            reference[scenario] = bs.measure_one(pyturso, bs.PYTURSO, scenario, server, folder, sizes)
            log(f"pyturso {scenario}: {reference[scenario].seconds:.3f} s")
        for client in (bs.OURS, bs.OURS_ENCRYPTED):
            ledgers: dict[str, Ledger] = {}
            samples: dict[str, bs.Sample] = {}
            iterations = {s: sizes.work(s) if s != "pull" else 1 for s in scenarios}
            for scenario in scenarios:
                ledger = Ledger()
                install(ledger)
                try:
                    bs.reset_table(server.url)
                    samples[scenario] = bs.run_scenario(
                        client, scenario, server.url, workdir / f"{client}-{scenario}", sizes, ledger.start, ledger.stop
                    )
                finally:
                    ledger.restore()
                if samples[scenario].rows != sizes.work(scenario):
                    raise bs.WrongCount(f"{client} {scenario}: {samples[scenario].rows} rows")
                ledgers[scenario] = ledger
                log(f"{client} {scenario}: {samples[scenario].seconds:.3f} s")
            rows = tree_rows(ledgers, iterations)
            rows.append(
                [
                    "WAL frames re-read and checksummed",
                    *(f"{ledgers[s].wal_frames / iterations[s]:,.0f}" for s in scenarios),
                ]
            )
            rows.append(
                [
                    f"**timed loop, {bs.CLIENT_LABELS[client]}**",
                    *(f"**{samples[s].seconds / iterations[s] * 1000:.2f}**" for s in scenarios),
                ]
            )
            rows.append(
                [
                    "pyturso, same server (worker process)",
                    *(f"{reference[s].seconds / iterations[s] * 1000:.2f}" for s in scenarios),
                ]
            )
            header = [f"ms per iteration (calls), {bs.CLIENT_LABELS[client]}"]
            header += [f"{s} ({iterations[s]:,})" for s in scenarios]
            tables.append(markdown_table(header, rows, right=range(1, len(header))))
        if cprofile:
            for scenario in scenarios:
                prof = cProfile.Profile()
                bs.reset_table(server.url)
                bs.run_scenario(
                    bs.OURS, scenario, server.url, workdir / f"cprofile-{scenario}", sizes, prof.enable, prof.disable
                )
                print(f"--- cProfile, {scenario}, by own time ---", file=sys.stderr)
                pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    finally:
        pyturso.close()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return f"""
Written by `python -m bench.profile_sync`: our client's scenarios, the same code and sizes as above, run once
in-process against our primary with a ledger of wall time per call path (a timer around each function
named below, active only inside the timed loop; indented rows are inside the row above them, times
are inclusive, so a row's children need not add up to it).  The cells are milliseconds per loop
iteration (one insert + push, or one cycle, or the one pull), with calls per iteration in brackets.
The HTTP exchange includes the server's work and the loopback.  pyturso's line is one run of its worker
against the same server, for scale.

{tables[0]}

The same with an encrypted replica:

{tables[1]}
"""


def main(argv: list[str] | None = None) -> int:
    """Profile the scenarios, print the tables and write them into docs/benchmarks.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile_sync", description=__doc__.splitlines()[0])
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument("--cprofile", action="store_true", help="also print a cProfile of each scenario")
    parser.add_argument(
        "--scenarios",
        default=",".join(bs.SCENARIOS),
        help=f"comma-separated scenarios (default {','.join(bs.SCENARIOS)}); a subset never writes the doc",
    )
    args = parser.parse_args(argv)
    scenarios = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
    if not scenarios or any(s not in bs.SCENARIOS for s in scenarios):
        parser.error(f"--scenarios: choose from {', '.join(bs.SCENARIOS)}")
    sizes = bs.Sizes.from_env()
    workdir = Path(os.environ.get("BENCH_DIR", REPO / "bench-data" / "sync-profile")).resolve()
    text = profile(
        sizes, workdir, args.cprofile, log=lambda line: print(line, file=sys.stderr, flush=True), scenarios=scenarios
    )
    print(text)
    if not args.no_doc and scenarios == bs.SCENARIOS:
        write_section(bs.SECTION, "sync-profile", text)
        print(f"wrote the profile into the '{bs.SECTION}' section of docs/benchmarks.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
