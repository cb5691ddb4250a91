"""Where turso_sync's time goes on the local-engine workloads: the profile behind docs/benchmarks.md.

Three views of the same four workloads as ``bench_local`` (same sizes, same settings):

1. a ladder, measured without a profiler: APSW on its default VFS, then one layer of turso_sync added
   at a time (its Python VFS, its DB-API wrapper, AES-GCM pages, the frame log), median of a few
   interleaved runs, so each step's cost is a difference of medians of CPU time (wall time is shown too,
   but the fsync-bound autocommit workload's wall time is too noisy to subtract);
2. a cProfile of the default turso_sync engine, its time grouped by where it is spent (time in C
   builtins is charged to the category of the Python code that called it), with call counts;
3. unit costs: one page through the codec, one WAL checksum, one 4 KiB fsync on the benchmark's disk.

cProfile charges ~0.1-0.5 µs to every Python call it sees, so it inflates the Python-heavy categories
(the per-row wrapper most); the ladder is the one to trust for sizes, the profile for shares and counts.
Not run by ``run_all`` (its name has no ``bench_`` prefix):

    python -m bench.profile_local [--runs N] [--no-doc]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import turso_sync
from bench import bench_local as bl
from bench.report import REPO, markdown_table, write_section
from turso_sync.crypto.page_codec import CIPHERS, PageCodec
from turso_sync.local import vfs
from turso_sync.local.walformat import CHECKSUM_IMPLEMENTATION, wal_checksum, wal_checksum_numpy

# --- 1. the ladder ----------------------------------------------------------------------------------


class TursoApswSession(bl.ApswSession):
    """The APSW connection inside a turso_sync connection, used directly: its VFS without its wrapper."""

    def __init__(self, conn: turso_sync.Connection) -> None:
        super().__init__(conn.apsw_connection)
        self.conn = conn

    def close(self) -> None:
        self.conn.close()


def _open_vfs_only(path: Path) -> bl.Session:
    session = TursoApswSession(turso_sync.connect(path, record_frames=False))
    bl.apply_pragmas(session, bl.COMMON_PRAGMAS)
    return session


def _open_wrapper_only(path: Path) -> bl.Session:
    session = bl.DbApiSession(turso_sync.connect(path, record_frames=False))
    bl.apply_pragmas(session, bl.COMMON_PRAGMAS)
    return session


def ladder_engines() -> list[bl.Engine]:
    """stdlib sqlite3 (the target), then APSW with one turso_sync layer more per row."""
    base = {e.key: e for e in bl.engines()}
    step = partial(bl.Engine, notes="", encrypted=False)
    return [
        base[bl.BASELINE],
        base["apsw"],
        step("l_vfs", "+ Python VFS (no key, APSW API)", _open_vfs_only),
        step("l_dbapi", "+ DB-API wrapper (no key)", _open_wrapper_only),
        step("l_aes", "+ AES-256-GCM pages, ciphertext WAL checksums", partial(bl.open_turso, record_frames=False)),
        step("l_log", "+ frame log (= turso_sync default)", partial(bl.open_turso, record_frames=True)),
    ]


def ladder_table(fig: bl.Figures) -> str:
    """Median CPU ms per layer and workload with the step from the row above, then the median wall ms."""
    rows = []
    previous: bl.Engine | None = None
    for e in fig.engines:
        cells = [e.label]
        for w in fig.workloads:
            cpu = fig.median_cpu_s(w.name, e.key) * 1000
            step = ""
            if previous is not None and previous.key != bl.BASELINE:
                step = f" ({cpu - fig.median_cpu_s(w.name, previous.key) * 1000:+,.0f})"
            cells.append(f"{cpu:,.0f}{step} / {fig.median_s(w.name, e.key) * 1000:,.0f}")
        rows.append(cells)
        previous = e
    return markdown_table(["layer", *(w.name for w in fig.workloads)], rows, right=range(1, len(fig.workloads) + 1))


# --- 2. the profile ---------------------------------------------------------------------------------

SQLITE = "SQLite in C (APSW calls; includes WAL fsyncs)"
FILE_IO = "file reads/writes under the VFS (APSW's unix file)"
AES = "AES-GCM in OpenSSL (cryptography)"
CATEGORIES = [
    SQLITE,
    "DB-API wrapper (local/connection.py)",
    "VFS Python code (local/vfs.py)",
    "page codec Python (crypto/page_codec.py)",
    AES,
    FILE_IO,
    "WAL checksums and parsing (local/walformat.py, numpy)",
    "frame log (local/framelog.py, its pwrite/fsync)",
    "benchmark loop (bench/)",
    "other",
]
_BY_FILE = {
    "local/connection.py": CATEGORIES[1],
    "local/vfs.py": CATEGORIES[2],
    "crypto/page_codec.py": CATEGORIES[3],
    "local/walformat.py": CATEGORIES[6],
    "local/framelog.py": CATEGORIES[7],
    "bench/": CATEGORIES[8],
}
# (the compiled DB-API path, ``_speedups.CursorBase``/``ConnectionBase``, calls APSW from C, where the
# profiler cannot see it: its ``execute``/``fetchone``/``fetchall`` are SQLite's time plus the wrapper's own C)
_SQLITE_BUILTIN = re.compile(
    r"'(execute|executemany|close)' of 'apsw\.(Cursor|Connection)'|builtins\.next>"
    r"|'(execute|fetchone|fetchall)' of 'turso_sync\._speedups\.(CursorBase|ConnectionBase)'"
)
_FILE_BUILTIN = re.compile(r"\bx(Read|Write|Sync|Truncate|FileSize|FileControl)\b")

Func = tuple[str, int, str]


def _category(func: Func) -> str | None:
    """The category of a profiled function, or None for a builtin that belongs to its caller's."""
    filename, _line, name = func
    if name == _VISIBLE_DECRYPT and "bench/profile_local.py" in filename.replace(os.sep, "/"):
        return CATEGORIES[3]
    if filename == "~":
        if "AESGCM" in name:
            return AES
        if _SQLITE_BUILTIN.search(name):
            return SQLITE
        if _FILE_BUILTIN.search(name):
            return FILE_IO
        return None
    path = filename.replace(os.sep, "/")
    for part, category in _BY_FILE.items():
        if part in path:
            return category
    return "other"


def categorize(stats: pstats.Stats) -> dict[str, float]:
    """Seconds of exclusive time per category; a builtin's time goes to the category of each caller."""
    table: dict[Func, Any] = stats.stats  # type: ignore[attr-defined]
    out = dict.fromkeys(CATEGORIES, 0.0)
    for func, (_cc, _nc, tottime, _ct, callers) in table.items():
        category = _category(func)
        if category is not None:
            out[category] += tottime
            continue
        for caller, per_caller in callers.items():
            out[_category(caller) or "other"] += per_caller[2]  # tottime spent under that caller
    return out


# The VFS reads most pages of Turso's format through ``PageCodec.page_decrypter``: a functools.partial
# over AESGCM.decrypt_into that cProfile cannot see (it records neither the partial nor the C call
# the partial makes).  ``profile_workloads`` hands the VFS this wrapper instead, so each such page is
# one call of a Python function with this name (its own small cost charged to the page codec) and its
# AES-GCM shows as a builtin call.  Profile runs only: the ladder and bench_local measure the real path.
_VISIBLE_DECRYPT = "bound_page_decrypt"


def _visible_page_decrypter(codec: PageCodec, raw: bytearray, out: bytearray) -> Callable[[], object]:
    bound = _PAGE_DECRYPTER(codec, raw, out)
    if not isinstance(bound, partial):
        raise TypeError(f"page_decrypter returned {type(bound).__name__}, not the partial this profile unwraps")
    func, args = bound.func, bound.args

    def bound_page_decrypt() -> object:
        return func(*args)

    return bound_page_decrypt


_PAGE_DECRYPTER = PageCodec.page_decrypter

# label -> (part of the file name, function names) pairs
COUNTED: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "pages decrypted": (
        ("crypto/page_codec.py", ("decrypt", "decrypt_into")),
        ("bench/profile_local.py", (_VISIBLE_DECRYPT,)),
    ),
    "pages encrypted": (("crypto/page_codec.py", ("encrypt",)),),
    "WAL checksums": (("local/walformat.py", ("wal_checksum",)),),
    "Python xFileControl calls": (("local/vfs.py", ("xFileControl",)),),
    "frame-log archives (checkpoints)": (("local/framelog.py", ("archive",)),),
    "frame-log os.fsync": (("~", ("<built-in method posix.fsync>",)),),
}


def call_counts(stats: pstats.Stats) -> dict[str, int]:
    """How often the functions in COUNTED ran."""
    table: dict[Func, Any] = stats.stats  # type: ignore[attr-defined]
    out = dict.fromkeys(COUNTED, 0)
    for (filename, _line, name), (_cc, ncalls, *_rest) in table.items():
        for label, places in COUNTED.items():
            if any(part in filename.replace(os.sep, "/") and name in names for part, names in places):
                out[label] += ncalls
    return out


class ProfilingStopwatch(bl.Stopwatch):
    """Profiles exactly the timed part of a workload."""

    def __init__(self) -> None:
        self.profile = cProfile.Profile()

    def start(self) -> None:
        super().start()
        self.profile.enable()

    def stop(self) -> tuple[float, float]:
        self.profile.disable()
        return super().stop()


def profile_workloads(engine: bl.Engine, data: bl.Data, workdir: Path) -> dict[str, tuple[float, pstats.Stats]]:
    """Each workload once under cProfile: {workload: (seconds under the profiler, stats)}."""
    bulk = workdir / "profile-bulk.db"
    auto = workdir / "profile-autocommit.db"
    runs: dict[str, Callable[[bl.Stopwatch], bl.Sample]] = {
        "insert_bulk": lambda watch: bl.insert_bulk(engine, bulk, data.rows, watch),
        "insert_autocommit": lambda watch: bl.insert_autocommit(engine, auto, data.ac_rows, watch),
        "scan_cold": lambda watch: bl.scan_cold(engine, bulk, watch),
        "read_points": lambda watch: bl.read_points(engine, bulk, data.ids, watch),
    }
    bl.remove_db(bulk)
    bl.remove_db(auto)
    out = {}
    PageCodec.page_decrypter = _visible_page_decrypter  # type: ignore[method-assign,assignment]
    # the compiled VFS shim reads pages in C, where cProfile sees nothing: files opened here are not
    # handed to it (``vfs._fastvfs``), so every page read is the Python file's, as before the shim
    shim = vfs._fastvfs
    vfs._fastvfs = None
    try:
        for name, run in runs.items():
            watch = ProfilingStopwatch()
            sample = run(watch)
            out[name] = (sample.seconds, pstats.Stats(watch.profile))
    finally:
        PageCodec.page_decrypter = _PAGE_DECRYPTER  # type: ignore[method-assign]
        vfs._fastvfs = shim
    bl.remove_db(bulk)
    bl.remove_db(auto)
    return out


def profile_tables(profiles: dict[str, tuple[float, pstats.Stats]]) -> tuple[str, str]:
    """(time per category and workload, call counts per workload) as markdown."""
    shares = {name: categorize(stats) for name, (_s, stats) in profiles.items()}
    rows = []
    for category in CATEGORIES:
        cells = [category]
        for name in profiles:
            total = sum(shares[name].values())
            seconds = shares[name][category]
            cells.append(f"{seconds * 1000:,.0f} ({seconds / total:.0%})" if seconds >= 0.0005 else "-")
        rows.append(cells)
    rows.append(["total under cProfile", *(f"{s * 1000:,.0f}" for s, _st in profiles.values())])
    right = range(1, len(profiles) + 1)
    time_table = markdown_table(["ms (share)", *profiles], rows, right=right)
    counts = {name: call_counts(stats) for name, (_s, stats) in profiles.items()}
    count_rows = [[label, *(f"{counts[name][label]:,}" for name in profiles)] for label in COUNTED]
    return time_table, markdown_table(["calls", *profiles], count_rows, right=right)


# --- 3. unit costs ----------------------------------------------------------------------------------


def _per_call_us(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def unit_costs(workdir: Path) -> list[tuple[str, str]]:
    """Microseconds per page for the codec, the checksum and AES alone, and one fsync on this disk."""
    spec = CIPHERS["aes256gcm"]
    key = bytes.fromhex(bl.KEY_HEX)
    codec = PageCodec(spec, key)
    page = os.urandom(4096 - codec.reserved) + bytes(codec.reserved)
    sealed = codec.encrypt(page, 2)
    aead = AESGCM(key)
    nonce = os.urandom(12)
    body = page[: 4096 - codec.reserved]
    raw = aead.encrypt(nonce, body, None)
    frame = os.urandom(8) + sealed
    path = workdir / "fsync-probe"
    fsyncs = []
    with open(path, "wb") as f:
        for _ in range(200):
            f.write(page)
            f.flush()
            started = time.perf_counter()
            os.fsync(f.fileno())
            fsyncs.append(time.perf_counter() - started)
    path.unlink()
    n = 20_000
    return [
        ("PageCodec.encrypt, one 4 KiB page", f"{_per_call_us(lambda: codec.encrypt(page, 2), n):.2f} µs"),
        ("PageCodec.decrypt, one 4 KiB page", f"{_per_call_us(lambda: codec.decrypt(sealed, 2), n):.2f} µs"),
        ("of which AESGCM.encrypt alone", f"{_per_call_us(lambda: aead.encrypt(nonce, body, None), n):.2f} µs"),
        ("of which AESGCM.decrypt alone", f"{_per_call_us(lambda: aead.decrypt(nonce, raw, None), n):.2f} µs"),
        (
            f"wal_checksum over one frame (8 + 4096 bytes), in use: {CHECKSUM_IMPLEMENTATION}",
            f"{_per_call_us(lambda: wal_checksum(frame), n):.2f} µs",
        ),
        (
            "the same with numpy's version (the fallback without turso_sync._speedups)",
            f"{_per_call_us(lambda: wal_checksum_numpy(frame), n):.2f} µs",
        ),
        (
            "os.fsync after a 4 KiB append (median of 200)",
            f"{statistics.median(fsyncs) * 1e6:,.0f} µs",
        ),
    ]


# --- report -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Measure the ladder, profile the default engine, print everything and write it into the doc."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile_local", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "3")), help="ladder runs")
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args(argv)
    sizes = bl.Sizes.from_env()
    workdir = Path(os.environ.get("BENCH_DIR", REPO / "bench-data" / "local")).resolve()

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    fig = bl.measure(sizes, args.runs, workdir, log=log, engine_list=ladder_engines())
    log("ladder done; profiling")
    default = next(e for e in bl.engines() if e.key == "turso_sync")
    profiles = profile_workloads(default, bl.Data.build(sizes), workdir)
    time_table, count_table = profile_tables(profiles)
    units = markdown_table(["unit cost", "time"], unit_costs(workdir), right=(1,))
    text = f"""
Written by `python -m bench.profile_local` ({args.runs} runs for the ladder, the same sizes and settings
as the table above; workload columns are in the order of that table).

**Ladder**, without a profiler: `CPU ms (+step from the row above) / wall ms`, medians. The first two rows
are the sqlite3 target and plain APSW; each later row adds one turso_sync layer. Steps are taken on CPU
time because the wall time of the fsync-bound autocommit workload swings by seconds with the disk's mood,
which would drown the layers' costs:

{ladder_table(fig)}

**cProfile of turso_sync (aes256gcm, record_frames=True)**, timed part only, exclusive time by category
(time inside a C builtin is charged to the category of the Python code that called it):

{time_table}

Call counts in the same profiles:

{count_table}

{units}
"""
    print(text)
    if not args.no_doc:
        write_section(bl.SECTION, "local-profile", text)
        log(f"wrote the profile into the '{bl.SECTION}' section of docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
