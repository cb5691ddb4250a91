"""Local engine benchmark (issues 2 and 14): turso_sync's encrypted engine against stdlib sqlite3, APSW and SQLCipher.

Four workloads, the same SQL for every engine, run in one process:

1. ``insert_bulk``: 100k INSERTs in one transaction (``executemany``, then ``commit``);
2. ``insert_autocommit``: 10k transactions of one INSERT each (``execute``, then ``commit``);
3. ``scan_cold``: a full scan of the 100k rows, iterating the cursor in Python, on a fresh connection;
4. ``read_points``: 10k random primary-key lookups (``execute(...).fetchone()``) on a fresh connection.

``--insert-loop`` adds a fifth, ``insert_loop``: the bulk insert's rows in one transaction again, one
``execute`` per row from a Python loop (what code that builds rows one at a time does), into a new file.

The contenders are turso_sync in Turso's format (with and without its frame log) and in the hardened
format (issue 14: AES-256-GCM-SIV, pages bound to their place), stdlib sqlite3, APSW and SQLCipher;
``--engines`` runs a subset (``--engines turso_sync_nolog,turso_sync_hardened,sqlite3,sqlcipher`` is the
encryption comparison).  stdlib sqlite3 always runs: it is the baseline of every ratio.

Every engine runs with the same settings, set through PRAGMAs and read back before the run starts:
WAL, ``synchronous=FULL``, 4096-byte pages, ``temp_store=MEMORY``, and SQLite's defaults made explicit
(``cache_size=-2000``, ``wal_autocheckpoint=1000``, ``mmap_size=0``) because sqlcipher3 ships a bigger
cache.  "Cold" means an empty SQLite page cache: the OS page cache stays warm, since dropping it needs
root on the host (``/proc/sys/vm/drop_caches``), which this benchmark does not have.

Each (engine, workload) pair runs ``BENCH_RUNS`` times (default 7); engines are interleaved round-robin
within each run, with the order rotated from run to run, so the noise of a shared VM spreads over all
of them.  The table shows medians; the ratio is ``sqlite3 median time / engine median time``, so above
1.0 means faster than stdlib sqlite3.

    python -m bench.bench_local [--runs N] [--engines KEY,...] [--insert-loop] [--no-doc]

Environment: ``BENCH_RUNS``, ``BENCH_ROWS`` (100000), ``BENCH_TXNS`` (10000), ``BENCH_READS`` (10000),
``BENCH_DIR`` (``bench-data/local``).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import inspect
import os
import random
import shutil
import sqlite3
import string
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import apsw
import sqlcipher3
import turso

import turso_sync
from bench.report import REPO, filesystem, machine, markdown_table, median, write_section

# a fixed benchmark key: the figures do not depend on it, and it protects nothing
KEY_HEX = "a3f1" * 16

SCHEMA = "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL, n INTEGER NOT NULL, v TEXT NOT NULL)"
INSERT = "INSERT INTO t (id, name, n, v) VALUES (?, ?, ?, ?)"
SCAN = "SELECT id, name, n, v FROM t"
POINT = "SELECT id, name, n, v FROM t WHERE id = ?"
COUNT = "SELECT count(*) FROM t"

# What every engine must report after opening, as PRAGMA reads it back.
SETTINGS: dict[str, object] = {
    "journal_mode": "wal",
    "synchronous": 2,  # FULL
    "page_size": 4096,
    "temp_store": 2,  # MEMORY
    "cache_size": -2000,  # 2 MiB
    "wal_autocheckpoint": 1000,
    "mmap_size": 0,
}
# Set on every engine after its own open: SQLite's defaults, explicit because sqlcipher3 uses cache_size=-8000.
COMMON_PRAGMAS = ("cache_size=-2000", "wal_autocheckpoint=1000", "mmap_size=0")
# What the plaintext engines and SQLCipher need to match turso_sync.connect's own settings on a new file.
FILE_PRAGMAS = ("page_size=4096", "journal_mode=WAL", "synchronous=FULL", "temp_store=MEMORY")

BASELINE = "sqlite3"
SECTION = "## Local engine (issue 2)"


# --- engines ----------------------------------------------------------------------------------------


class Session(Protocol):
    """The slice of DB-API every engine offers here; ``begin`` is explicit only where the driver's is not."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any: ...
    def begin(self) -> None: ...
    def commit(self) -> None: ...
    def close(self) -> None: ...


class DbApiSession:
    """sqlite3, sqlcipher3 and turso_sync: the driver sends BEGIN itself before the first INSERT."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any:
        return self.conn.executemany(sql, rows)

    def begin(self) -> None:
        """Nothing to do: the driver opens the transaction at the first INSERT (isolation_level DEFERRED)."""

    def commit(self) -> None:
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()


class ApswSession:
    """APSW runs in autocommit mode, so the same BEGIN / INSERT / COMMIT is sent explicitly."""

    def __init__(self, db: apsw.Connection) -> None:
        self.db = db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.db.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any:
        return self.db.executemany(sql, rows)

    def begin(self) -> None:
        self.db.execute("BEGIN DEFERRED")

    def commit(self) -> None:
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()


@dataclass(frozen=True)
class Engine:
    """One contender: how to open a file with it, and what the reader should know about it."""

    key: str  # file-name safe
    label: str
    open: Callable[[Path], Session]
    notes: str
    encrypted: bool
    # settings the engine cannot report back (PRAGMA returns no row): the notes say what it does instead
    unreported: tuple[str, ...] = ()


def apply_pragmas(session: Session, statements: Iterable[str]) -> None:
    """Run ``PRAGMA <statement>`` for each one, draining any row it returns."""
    for statement in statements:
        session.execute(f"PRAGMA {statement}").fetchall()


def open_turso(path: Path, cipher: str = "aes256gcm", **options: Any) -> Session:
    """turso_sync.connect with the benchmark key; it sets WAL, FULL, 4096-byte pages and temp_store itself.

    ``options`` go to ``connect`` (``record_frames``, ``encryption_format``).  The hardened format
    has one cipher, AES-256-GCM-SIV, and takes the same key; ``cipher="envelope"`` makes a new file
    in the envelope layout (what a replica of a remote whose pages reserve no bytes gets).
    """
    session = DbApiSession(turso_sync.connect(path, encryption_key=KEY_HEX, cipher=cipher, **options))
    apply_pragmas(session, COMMON_PRAGMAS)
    return session


def open_sqlite3(path: Path) -> Session:
    """Stdlib sqlite3, plaintext, default isolation level (DEFERRED, implicit BEGIN before DML)."""
    session = DbApiSession(sqlite3.connect(path))
    apply_pragmas(session, FILE_PRAGMAS + COMMON_PRAGMAS)
    return session


def open_apsw(path: Path) -> Session:
    """APSW on its default (unix) VFS, plaintext."""
    session = ApswSession(apsw.Connection(str(path)))
    apply_pragmas(session, FILE_PRAGMAS + COMMON_PRAGMAS)
    return session


def open_sqlcipher(path: Path) -> Session:
    """sqlcipher3 with a raw 256-bit key (``x'...'``), so no PBKDF2 key derivation is timed."""
    session = DbApiSession(sqlcipher3.connect(str(path)))
    session.execute(f"PRAGMA key = \"x'{KEY_HEX}'\"").fetchall()
    apply_pragmas(session, ("cipher_page_size=4096", *FILE_PRAGMAS, *COMMON_PRAGMAS))
    return session


def open_pyturso(path: Path) -> Session:
    """pyturso (``turso``, Turso's own engine in Rust) on a file in Turso's encrypted format, aes256gcm.

    It runs in WAL mode with synchronous=FULL and 4096-byte pages by default; ``temp_store`` and
    ``cache_size`` are set like the others'.  It accepts but does not report ``wal_autocheckpoint``
    and ``mmap_size`` (no mmap; its own checkpoint threshold, also 1,000 frames).
    """
    conn = turso.connect(
        str(path),
        experimental_features="encryption",
        encryption=turso.EncryptionOpts(cipher="aes256gcm", hexkey=KEY_HEX),
    )
    session = DbApiSession(conn)
    apply_pragmas(session, ("temp_store=MEMORY", *COMMON_PRAGMAS))
    return session


def _has_envelope() -> bool:
    """True when this turso_sync has the envelope layout (``cipher="envelope"``)."""
    try:
        from turso_sync.crypto.page_codec import HARDENED_CIPHERS
    except ImportError:
        return False
    return "envelope" in HARDENED_CIPHERS


def _checksum_implementation() -> str:
    """Which WAL checksum turso_sync uses here: "c" (the compiled helper) or "numpy"."""
    from turso_sync.local import walformat

    return getattr(walformat, "CHECKSUM_IMPLEMENTATION", "numpy")


def engines() -> list[Engine]:
    """Every contender; turso_sync twice (with and without its frame log) when connect offers the choice."""
    turso_notes = (
        "AES-256-GCM per page in Turso's format (28 reserved bytes: 16-byte tag, 12-byte nonce), "
        "Python VFS over APSW's SQLite, WAL checksums recomputed over the ciphertext "
        f"(in {'C, turso_sync._speedups' if _checksum_implementation() == 'c' else 'numpy'})"
    )
    out = []
    if "record_frames" in inspect.signature(turso_sync.connect).parameters:
        out += [
            Engine(
                "turso_sync",
                "turso_sync aes256gcm, record_frames=True",
                partial(open_turso, record_frames=True),
                turso_notes + "; the frame log `<db>-frames` archives WAL frames at each checkpoint (default)",
                True,
            ),
            Engine(
                "turso_sync_nolog",
                "turso_sync aes256gcm, record_frames=False",
                partial(open_turso, record_frames=False),
                turso_notes + "; no frame log",
                True,
            ),
        ]
    else:
        out.append(Engine("turso_sync", "turso_sync aes256gcm", open_turso, turso_notes, True))
    if "encryption_format" in inspect.signature(turso_sync.connect).parameters:
        out.append(
            Engine(
                "turso_sync_hardened",
                "turso_sync hardened, record_frames=False",
                partial(open_turso, encryption_format="hardened", record_frames=False),
                "the hardened format (issue 14): AES-256-GCM-SIV per page with a per-file key (HKDF), the page's "
                "number, file id, key epoch and place (database or WAL) in the associated data; the same 28 "
                "reserved bytes and Python VFS as Turso's format; no frame log",
                True,
            )
        )
    if _has_envelope():
        out.append(
            Engine(
                "turso_sync_envelope",
                "turso_sync envelope, record_frames=False",
                partial(open_turso, cipher="envelope", record_frames=False),
                "the envelope layout (issue 14, for remotes whose pages reserve no bytes): SQLite's pages whole "
                "(no reserved bytes), each stored as AES-256-GCM-SIV with the hardened format's binding in a "
                "4,128-byte slot (tag, nonce, 4 zero bytes), the VFS mapping page offsets to slots in the "
                "database file and the WAL; no frame log",
                True,
            )
        )
    out += [
        Engine(BASELINE, "sqlite3 (stdlib)", open_sqlite3, "stdlib module, plaintext", False),
        Engine("apsw", "APSW, default VFS", open_apsw, "APSW's bundled SQLite on the unix VFS, plaintext", False),
        Engine(
            "sqlcipher",
            "SQLCipher (sqlcipher3)",
            open_sqlcipher,
            "AES-256-CBC + HMAC-SHA512 per page (SQLCipher 4: 80 reserved bytes, 16-byte IV + 64-byte MAC), "
            "raw key `PRAGMA key = \"x'<64 hex>'\"` so no PBKDF2",
            True,
        ),
        Engine(
            "pyturso",
            f"pyturso {importlib.metadata.version('pyturso')} aes256gcm",
            open_pyturso,
            'Turso\'s own engine (Rust, `turso.connect(..., experimental_features="encryption")`), the same '
            "encrypted format and key as turso_sync aes256gcm; it reports no `wal_autocheckpoint` or `mmap_size`",
            True,
            unreported=("wal_autocheckpoint", "mmap_size"),
        ),
    ]
    return out


# --- workloads --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How much work each workload does."""

    rows: int = 100_000  # inserted by insert_bulk, then scanned
    txns: int = 10_000  # autocommit transactions
    reads: int = 10_000  # point reads

    @classmethod
    def from_env(cls) -> Sizes:
        """The defaults, overridden by BENCH_ROWS, BENCH_TXNS and BENCH_READS."""
        return cls(
            int(os.environ.get("BENCH_ROWS", cls.rows)),
            int(os.environ.get("BENCH_TXNS", cls.txns)),
            int(os.environ.get("BENCH_READS", cls.reads)),
        )


@dataclass(frozen=True)
class Workload:
    """A workload's name, its label for the table, and how many rows one run must touch."""

    name: str
    label: str
    rows: int


def workloads(sizes: Sizes, insert_loop: bool = False) -> list[Workload]:
    """The four workloads (five with ``insert_loop``), in the order they are reported."""
    loop = [Workload("insert_loop", f"{sizes.rows:,} INSERTs, 1 txn, execute loop", sizes.rows)]
    return [
        Workload("insert_bulk", f"{sizes.rows:,} INSERTs, 1 txn", sizes.rows),
        *(loop if insert_loop else []),
        Workload("insert_autocommit", f"{sizes.txns:,} autocommit INSERTs", sizes.txns),
        Workload("scan_cold", f"cold scan of {sizes.rows:,} rows", sizes.rows),
        Workload("read_points", f"{sizes.reads:,} random PK reads", sizes.reads),
    ]


def make_rows(count: int, seed: int = 2) -> list[tuple[int, str, int, str]]:
    """``count`` rows (id, name, n, v) with ids 1..count and a 50-character random ``v``."""
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits
    return [
        (i, f"name-{i}", rng.randrange(1_000_000), "".join(rng.choices(alphabet, k=50))) for i in range(1, count + 1)
    ]


def make_ids(count: int, top: int, seed: int = 3) -> list[int]:
    """``count`` primary keys drawn uniformly from 1..top."""
    rng = random.Random(seed)
    return [rng.randint(1, top) for _ in range(count)]


@dataclass(frozen=True)
class Sample:
    """One timed run: wall-clock and CPU seconds, and the rows written (counted back afterwards) or read."""

    seconds: float
    cpu_seconds: float  # this process's user + system time: the wall time minus waiting (for fsync, mostly)
    rows: int


class Stopwatch:
    """Times the measured part of a workload (a profiler can stand in for it); collects garbage first."""

    def start(self) -> None:
        gc.collect()
        self._wall = time.perf_counter()
        self._cpu = time.process_time()

    def stop(self) -> tuple[float, float]:
        """(wall-clock seconds, CPU seconds) since ``start``."""
        return time.perf_counter() - self._wall, time.process_time() - self._cpu


def _count(session: Session) -> int:
    return int(session.execute(COUNT).fetchone()[0])


def insert_bulk(engine: Engine, path: Path, rows: Sequence[Sequence[Any]], watch: Stopwatch | None = None) -> Sample:
    """Create ``t`` in a new file, then time BEGIN, ``executemany`` of every row, COMMIT."""
    session = engine.open(path)
    try:
        session.execute(SCHEMA)
        watch = watch or Stopwatch()
        watch.start()
        session.begin()
        session.executemany(INSERT, rows)
        session.commit()
        wall, cpu = watch.stop()
        return Sample(wall, cpu, _count(session))
    finally:
        session.close()


def insert_execute_loop(
    engine: Engine, path: Path, rows: Sequence[Sequence[Any]], watch: Stopwatch | None = None
) -> Sample:
    """Create ``t`` in a new file, then time BEGIN, one ``execute`` per row from a Python loop, COMMIT."""
    session = engine.open(path)
    try:
        session.execute(SCHEMA)
        watch = watch or Stopwatch()
        watch.start()
        session.begin()
        for row in rows:
            session.execute(INSERT, row)
        session.commit()
        wall, cpu = watch.stop()
        return Sample(wall, cpu, _count(session))
    finally:
        session.close()


def insert_autocommit(
    engine: Engine, path: Path, rows: Sequence[Sequence[Any]], watch: Stopwatch | None = None
) -> Sample:
    """Create ``t`` in a new file, then time one BEGIN / INSERT / COMMIT per row."""
    session = engine.open(path)
    try:
        session.execute(SCHEMA)
        watch = watch or Stopwatch()
        watch.start()
        for row in rows:
            session.begin()
            session.execute(INSERT, row)
            session.commit()
        wall, cpu = watch.stop()
        return Sample(wall, cpu, _count(session))
    finally:
        session.close()


def scan_cold(engine: Engine, path: Path, watch: Stopwatch | None = None) -> Sample:
    """On a fresh connection (empty page cache), time reading every row of ``t`` into Python."""
    session = engine.open(path)
    try:
        watch = watch or Stopwatch()
        watch.start()
        count = 0
        for _row in session.execute(SCAN):
            count += 1
        return Sample(*watch.stop(), count)
    finally:
        session.close()


def read_points(engine: Engine, path: Path, ids: Sequence[int], watch: Stopwatch | None = None) -> Sample:
    """On a fresh connection, time one ``SELECT ... WHERE id = ?`` and ``fetchone`` per id; count the hits."""
    session = engine.open(path)
    try:
        watch = watch or Stopwatch()
        watch.start()
        found = 0
        for key in ids:
            if session.execute(POINT, (key,)).fetchone() is not None:
                found += 1
        return Sample(*watch.stop(), found)
    finally:
        session.close()


def remove_db(path: Path) -> None:
    """Delete a database and every companion file (``-wal``, ``-shm``, ``-frames``, ...)."""
    for item in path.parent.glob(path.name + "*"):
        if item.is_dir():
            shutil.rmtree(item)
        else:
            item.unlink()


class WrongCount(AssertionError):
    """A workload wrote or read a different number of rows than it should have: its timing means nothing."""


@dataclass
class Data:
    """The inputs every engine gets: the same rows and the same lookup keys."""

    rows: list[tuple[int, str, int, str]]
    ac_rows: list[tuple[int, str, int, str]]
    ids: list[int]

    @classmethod
    def build(cls, sizes: Sizes) -> Data:
        rows = make_rows(max(sizes.rows, sizes.txns))
        return cls(rows[: sizes.rows], rows[: sizes.txns], make_ids(sizes.reads, sizes.rows))


def run_round(
    engine_list: Sequence[Engine], data: Data, workdir: Path, shift: int = 0, insert_loop: bool = False
) -> dict[tuple[str, str], Sample]:
    """Every workload once for every engine, engines interleaved in an order rotated by ``shift``.

    Returns ``{(workload, engine key): Sample}``; raises WrongCount if any run touched the wrong number of rows.
    ``insert_loop`` adds the row-by-row bulk insert (its file is removed again at once).
    """
    k = shift % len(engine_list)
    order = [*engine_list[k:], *engine_list[:k]]
    out: dict[tuple[str, str], Sample] = {}
    bulk = {e.key: workdir / f"{e.key}-bulk.db" for e in order}
    auto = {e.key: workdir / f"{e.key}-autocommit.db" for e in order}
    for e in order:
        remove_db(bulk[e.key])
        out["insert_bulk", e.key] = insert_bulk(e, bulk[e.key], data.rows)
    for e in order:
        out["scan_cold", e.key] = scan_cold(e, bulk[e.key])
    for e in order:
        out["read_points", e.key] = read_points(e, bulk[e.key], data.ids)
    if insert_loop:
        loop = {e.key: workdir / f"{e.key}-loop.db" for e in order}
        for e in order:
            remove_db(loop[e.key])
            out["insert_loop", e.key] = insert_execute_loop(e, loop[e.key], data.rows)
            remove_db(loop[e.key])
    for e in order:
        remove_db(auto[e.key])
        out["insert_autocommit", e.key] = insert_autocommit(e, auto[e.key], data.ac_rows)
        remove_db(auto[e.key])
    expected = {
        "insert_bulk": len(data.rows),
        "insert_loop": len(data.rows),
        "scan_cold": len(data.rows),
        "read_points": len(data.ids),
        "insert_autocommit": len(data.ac_rows),
    }
    for (workload, key), sample in out.items():
        if sample.rows != expected[workload]:
            raise WrongCount(f"{key} {workload}: {sample.rows} rows, expected {expected[workload]}")
    return out


# --- settings and versions --------------------------------------------------------------------------


def read_settings(session: Session) -> dict[str, object]:
    """The settings in SETTINGS as this connection reports them (those it does not report are left out)."""
    out: dict[str, object] = {}
    for name in SETTINGS:
        row = session.execute(f"PRAGMA {name}").fetchone()
        if row is None:
            continue  # not reported by this engine (pyturso: wal_autocheckpoint, mmap_size)
        value = row[0]
        if isinstance(value, str):  # SQLCipher answers some numeric PRAGMAs as text
            value = int(value) if value.lstrip("-").isdigit() else value.lower()
        out[name] = value
    return out


@dataclass
class Probe:
    """What opening a small file with each engine tells us: its settings, and SQLCipher's version and config."""

    settings: dict[str, dict[str, object]] = field(default_factory=dict)
    cipher: dict[str, str] = field(default_factory=dict)


def probe(engine_list: Sequence[Engine], workdir: Path) -> Probe:
    """Open a fresh file with each engine, read its settings back and refuse to run if any differ."""
    result = Probe()
    for e in engine_list:
        path = workdir / f"{e.key}-probe.db"
        remove_db(path)
        session = e.open(path)
        try:
            session.execute(SCHEMA)
            result.settings[e.key] = read_settings(session)
            if isinstance(session, DbApiSession) and isinstance(session.conn, sqlcipher3.Connection):
                for pragma in ("cipher_version", "cipher_provider", "cipher_provider_version"):
                    result.cipher[pragma] = str(session.execute(f"PRAGMA {pragma}").fetchone()[0])
                rows = session.execute("PRAGMA cipher_settings").fetchall()
                result.cipher["cipher_settings"] = ", ".join(r[0].removeprefix("PRAGMA ").rstrip(";") for r in rows)
                result.cipher["sqlite"] = str(session.execute("SELECT sqlite_version()").fetchone()[0])
        finally:
            session.close()
            remove_db(path)
        reported = result.settings[e.key]
        wrong = {k: v for k, v in reported.items() if SETTINGS[k] != v}
        wrong |= {k: "not reported" for k in SETTINGS if k not in reported and k not in e.unreported}
        if wrong:
            raise RuntimeError(f"{e.label} does not run with the benchmark settings: {wrong} (want {SETTINGS})")
    return result


def page_counts(engine_list: Sequence[Engine], workdir: Path) -> dict[str, int]:
    """Pages each engine's bulk-insert file holds (the encrypted ones reserve bytes per page, so need more)."""
    out = {}
    for e in engine_list:
        session = e.open(workdir / f"{e.key}-bulk.db")
        try:
            out[e.key] = int(session.execute("PRAGMA page_count").fetchone()[0])
        finally:
            session.close()
    return out


def versions(cipher: dict[str, str]) -> list[tuple[str, str]]:
    """Every version a reader needs to reproduce the figures."""
    from cryptography.hazmat.backends.openssl import backend

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False).stdout

    commit = git("log", "-1", "--format=%h %cs", "--", "turso_sync").strip() or "unknown"
    if git("status", "--porcelain", "--", "turso_sync").strip():
        commit += ", plus uncommitted changes in the work tree"
    return [
        ("Python", sys.version.split()[0]),
        ("turso_sync", f"{turso_sync.__version__} (last commit touching turso_sync/: {commit})"),
        ("APSW / its SQLite", f"{apsw.apsw_version()} / {apsw.sqlite_lib_version()}"),
        ("stdlib sqlite3's SQLite", sqlite3.sqlite_version),
        (
            "sqlcipher3-binary",
            f"{importlib.metadata.version('sqlcipher3-binary')}: SQLCipher {cipher.get('cipher_version', '?')} "
            f"(`PRAGMA cipher_version`), SQLite {cipher.get('sqlite', '?')}, "
            f"{cipher.get('cipher_provider', '?')} {cipher.get('cipher_provider_version', '')}".rstrip(),
        ),
        ("cryptography / OpenSSL", f"{importlib.metadata.version('cryptography')} / {backend.openssl_version_text()}"),
        ("numpy", importlib.metadata.version("numpy")),
        ("pyturso", importlib.metadata.version("pyturso")),
    ]


# --- results ----------------------------------------------------------------------------------------


@dataclass
class Figures:
    """All runs of one benchmark invocation, and what the report needs beside them."""

    engines: list[Engine]
    workloads: list[Workload]
    runs: int
    samples: dict[tuple[str, str], list[Sample]]  # in run order
    probe: Probe
    pages: dict[str, int]
    seconds: float
    workdir: Path
    load: tuple[float, float]  # 1-minute load average before and after the runs

    def median_s(self, workload: str, key: str) -> float:
        return median([s.seconds for s in self.samples[workload, key]])

    def median_cpu_s(self, workload: str, key: str) -> float:
        return median([s.cpu_seconds for s in self.samples[workload, key]])

    def ratio(self, workload: str, key: str) -> float:
        """sqlite3's median time over this engine's: above 1.0 is faster than stdlib sqlite3."""
        return self.median_s(workload, BASELINE) / self.median_s(workload, key)

    def ratio_to(self, workload: str, other: str, key: str) -> float:
        """``other``'s median time over this engine's: above 1.0 is faster than ``other``."""
        return self.median_s(workload, other) / self.median_s(workload, key)

    def paired_ratio(self, workload: str, key: str) -> float:
        """The median over runs of sqlite3's time / this engine's time in the same run.

        Runs interleave the engines, so pairing them cancels load that drifts from run to run.
        """
        pairs = zip(self.samples[workload, BASELINE], self.samples[workload, key], strict=True)
        return median([base.seconds / mine.seconds for base, mine in pairs])


def measure(
    sizes: Sizes,
    runs: int,
    workdir: Path,
    log: Callable[[str], None] = print,
    engine_list: Sequence[Engine] | None = None,
    insert_loop: bool = False,
) -> Figures:
    """Probe every engine (all of ``engines()`` by default), warm up, then ``runs`` interleaved rounds.

    ``insert_loop`` adds the row-by-row bulk insert to the workloads.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    engine_list = list(engine_list or engines())
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    found = probe(engine_list, workdir)
    data = Data.build(sizes)
    warm_up = Data.build(Sizes(rows=500, txns=50, reads=200))
    run_round(engine_list, warm_up, workdir, insert_loop=insert_loop)  # not recorded
    samples: dict[tuple[str, str], list[Sample]] = {}
    for i in range(runs):
        t0 = time.perf_counter()
        for pair, sample in run_round(engine_list, data, workdir, shift=i, insert_loop=insert_loop).items():
            samples.setdefault(pair, []).append(sample)
        log(f"run {i + 1}/{runs}: {time.perf_counter() - t0:.1f} s")
    pages = page_counts(engine_list, workdir)
    for e in engine_list:
        remove_db(workdir / f"{e.key}-bulk.db")
    return Figures(
        engine_list,
        workloads(sizes, insert_loop),
        runs,
        samples,
        found,
        pages,
        time.perf_counter() - started,
        workdir,
        (load_before, os.getloadavg()[0]),
    )


def results_table(fig: Figures) -> str:
    """Per workload and engine: median and spread in ms, rows/s, and the ratio to stdlib sqlite3."""
    rows = []
    for w in fig.workloads:
        for e in fig.engines:
            times = [s.seconds for s in fig.samples[w.name, e.key]]
            rows.append(
                [
                    w.label,
                    e.label,
                    f"{fig.median_s(w.name, e.key) * 1000:,.1f}",
                    f"{min(times) * 1000:,.0f}-{max(times) * 1000:,.0f}",
                    f"{fig.median_cpu_s(w.name, e.key) * 1000:,.0f}",
                    f"{w.rows / fig.median_s(w.name, e.key):,.0f}",
                    f"{fig.ratio(w.name, e.key):.2f}x",
                    f"{fig.paired_ratio(w.name, e.key):.2f}x",
                ]
            )
    header = ["workload", "engine", "median ms", "min-max ms", "CPU ms", "rows/s", "vs sqlite3", "paired"]
    return markdown_table(header, rows, right=(2, 3, 4, 5, 6, 7))


def ratio_table(fig: Figures) -> str:
    """Engines by workloads, ratio to stdlib sqlite3 (above 1.0 is faster)."""
    rows = [[e.label, *(f"{fig.ratio(w.name, e.key):.2f}x" for w in fig.workloads)] for e in fig.engines]
    return markdown_table(["engine", *(w.name for w in fig.workloads)], rows, right=range(1, len(fig.workloads) + 1))


PEERS = ("sqlcipher", "pyturso")  # the encrypted engines turso_sync's aims are set against (issue 12)


def peer_table(fig: Figures) -> str:
    """Each turso_sync engine against each encrypted peer in the run: the peer's median time / ours.

    Above 1.0x, ours is faster.
    """
    keys = {e.key for e in fig.engines}
    peers = [e for e in fig.engines if e.key in PEERS]
    ours = [e for e in fig.engines if e.key.startswith("turso_sync")]
    rows = [
        [f"{mine.label} vs {peer.label}", *(f"{fig.ratio_to(w.name, peer.key, mine.key):.2f}x" for w in fig.workloads)]
        for mine in ours
        for peer in peers
        if peer.key in keys
    ]
    return markdown_table(["pair", *(w.name for w in fig.workloads)], rows, right=range(1, len(fig.workloads) + 1))


def report(fig: Figures) -> str:
    """The markdown block for docs/benchmarks.md (also printed)."""
    box = machine()
    settings = ", ".join(f"`{k}={v}`" for k, v in SETTINGS.items())
    first = fig.workloads[0].rows
    engine_lines = "\n".join(
        f"- **{e.label}**: {e.notes}. {fig.pages.get(e.key, 0):,} pages for {first:,} rows." for e in fig.engines
    )
    version_lines = "\n".join(f"- {name}: {value}" for name, value in versions(fig.probe.cipher))
    loop_text = ""
    if any(w.name == "insert_loop" for w in fig.workloads):
        loop_text = (
            "\nexecute loop = the bulk insert's rows again, into a new file in one transaction, one `execute` per row"
            "\nfrom a Python loop instead of `executemany` (the statement and DB-API layers are crossed per row)."
        )
    peer_text = ""
    if any(e.key in PEERS for e in fig.engines) and any(e.key.startswith("turso_sync") for e in fig.engines):
        peer_text = (
            "\nturso_sync against the encrypted peers (the peer's median time / ours; above 1.0x: ours is faster):"
            f"\n\n{peer_table(fig)}\n"
        )
    return f"""
Measured {datetime.date.today().isoformat()} by `python -m bench.bench_local` in {fig.seconds:.0f} s: {fig.runs} runs
of every workload per engine, median shown; engines interleaved round-robin within a run, their order rotated
from run to run.

**Machine**: {box["cpus"]} vCPU ({box["model"]}), {box["memory"]} RAM, {box["kernel"]}; database files on
{filesystem(fig.workdir)} (`{fig.workdir.relative_to(REPO) if fig.workdir.is_relative_to(REPO) else fig.workdir}`).
The VM is shared and noisy (1-minute load average {fig.load[0]:.2f} before the runs, {fig.load[1]:.2f} after):
differences under ~15% are within run-to-run spread (see the min-max column).

**Versions**

{version_lines}

**Settings, identical for every engine** (set by PRAGMA after opening, then read back and checked before the
run): {settings}, i.e. WAL, synchronous=FULL, 4096-byte pages, temp_store=MEMORY, 2 MiB page cache.
SQLCipher's settings (`PRAGMA cipher_settings`): `{fig.probe.cipher.get("cipher_settings", "?")}`; its
`kdf_iter` is not used because the key is given raw, and its cipher is AES-256-CBC (fixed in SQLCipher 4).

**Engines**

{engine_lines}

**Workloads** (table `t(id INTEGER PRIMARY KEY, name TEXT, n INTEGER, v TEXT)`, rows of ~70 bytes, the same
rows and keys for every engine): bulk = BEGIN, `executemany` of every row, COMMIT (the auto-checkpoint that
commit triggers is inside the timing); autocommit = one BEGIN / INSERT / COMMIT per row into a new file, one
WAL fsync each; cold scan = a fresh connection (empty SQLite page cache) iterates `SELECT *` in Python;
point reads = a fresh connection runs `SELECT ... WHERE id = ?` + `fetchone()` for uniformly random ids.{loop_text}
"Cold" is cold for SQLite only: the OS page cache keeps the files warm, because dropping it
(`/proc/sys/vm/drop_caches`) needs root on the host. Opening a connection is never inside the timing.

"CPU ms" is the median of this process's CPU time (user + system) in the same runs: the wall time without
the waiting, which for the autocommit workload is mostly waiting for fsync.

**Ratio** ("vs sqlite3") = stdlib sqlite3's median time / the engine's median time: above 1.0x is faster than
sqlite3. "paired" = the median over runs of (sqlite3's time / the engine's time in the same run), which
cancels load that drifts between runs; where the two disagree by more than a few percent, the machine was
busy and the figure is soft.

{results_table(fig)}

Ratios to stdlib sqlite3 (above 1.0x is faster):

{ratio_table(fig)}
{peer_text}"""


def select_engines(keys: str | None) -> list[Engine]:
    """The engines named in ``keys`` (comma-separated, in ``engines()`` order), with the baseline; all for None.

    Raises ValueError naming a key that is no engine.
    """
    every = engines()
    if keys is None:
        return every
    wanted = {k.strip() for k in keys.split(",") if k.strip()} | {BASELINE}
    unknown = wanted - {e.key for e in every}
    if unknown:
        raise ValueError(f"no engine {', '.join(sorted(unknown))}; the engines are {', '.join(e.key for e in every)}")
    return [e for e in every if e.key in wanted]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the tables, and (for a full run) write them into docs/benchmarks.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_local", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "7")), help="runs per engine")
    doc = parser.add_mutually_exclusive_group()
    doc.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    doc.add_argument("--doc", action="store_true", help="write docs/benchmarks.md even for a short or small run")
    parser.add_argument(
        "--engines",
        metavar="KEY,...",
        help=f"run these engines only (and {BASELINE}, the baseline): {', '.join(e.key for e in engines())}",
    )
    parser.add_argument(
        "--insert-loop", action="store_true", help="add the bulk insert as a row-by-row execute loop (insert_loop)"
    )
    args = parser.parse_args(argv)
    try:
        chosen = select_engines(args.engines)
    except ValueError as exc:
        parser.error(str(exc))
    sizes = Sizes.from_env()
    workdir = Path(os.environ.get("BENCH_DIR", REPO / "bench-data" / "local")).resolve()
    fig = measure(
        sizes,
        args.runs,
        workdir,
        log=lambda line: print(line, file=sys.stderr, flush=True),
        engine_list=chosen,
        insert_loop=args.insert_loop,
    )
    text = report(fig)
    print(text)
    full = args.runs >= 5 and sizes == Sizes() and args.engines is None
    if args.doc or (full and not args.no_doc):
        write_section(SECTION, "local", text)
        print(f"wrote the '{SECTION}' figures into docs/benchmarks.md", file=sys.stderr)
    elif not args.no_doc:
        print(
            "docs/benchmarks.md left as it is: fewer than 5 runs, non-default sizes or a subset of the engines "
            "(--doc to force)",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
