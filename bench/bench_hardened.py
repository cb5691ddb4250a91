"""Hardened encryption benchmark (issue 14): its cost per page against Turso's format, and end to end.

Three measurements, each run ``BENCH_RUNS`` times (default 7) with the contenders interleaved and
their order rotated from run to run; the tables show medians:

1. ``codec``: encrypting then decrypting ``BENCH_PAGES`` (2000) random 4 KiB pages through each page
   codec (Turso's AES-256-GCM, the hardened AES-256-GCM-SIV, the envelope layout's whole-page
   slots), and through the bare AEADs of ``cryptography`` with the same sizes, which separates
   the cipher's cost from the codec's own;
2. ``engine``: through ``turso_sync.connect``, ``BENCH_ROWS`` (100000) inserts in one transaction,
   a checkpoint, then a full scan on a fresh connection: plaintext, Turso's format, hardened,
   envelope;
3. ``open``: opening a passphrase-protected database (Argon2id at the default cost) against
   opening one with a raw key.

Ratios are ``hardened / Turso's format`` (above 1.0: the hardened format is slower).

    python -m bench.bench_hardened [--runs N] [--no-doc]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cryptography
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESGCMSIV

import turso_sync
from bench.report import REPO, machine, markdown_table, median, write_section
from turso_sync.crypto.hardened import HardenedCodec
from turso_sync.crypto.page_codec import HARDENED_CIPHERS, PageCodec, parse_key

P = 4096
KEY_HEX = "5c1e" * 16  # a fixed benchmark key: it protects nothing
PASSPHRASE = "benchmark passphrase"


def _codec_round(codec: PageCodec, pages: list[bytes]) -> Callable[[], None]:
    def run() -> None:
        for i, page in enumerate(pages):
            pgno = i + 2
            codec.decrypt(codec.encrypt(page, pgno), pgno)

    return run


def _aead_round(aead: AESGCM | AESGCMSIV, pages: list[bytes]) -> Callable[[], None]:
    def run() -> None:
        for page in pages:
            nonce = os.urandom(12)
            aead.decrypt(nonce, aead.encrypt(nonce, page[: P - 28], b"x" * 19), b"x" * 19)

    return run


def codec_contenders(n_pages: int) -> dict[str, Callable[[], None]]:
    pages = [os.urandom(P - 28) + bytes(28) for _ in range(n_pages)]
    key = bytes.fromhex(KEY_HEX)
    turso = PageCodec(*parse_key(KEY_HEX, "aes256gcm"))
    hardened = PageCodec(HARDENED_CIPHERS["hardened"], key)
    page1 = bytearray(P)
    page1[:16] = b"SQLite format 3\x00"
    page1[16:24] = bytes([16, 0, 2, 2, 28, 64, 32, 32])
    hardened.encrypt(bytes(page1), 1)  # binds it to a (new) file
    contenders = {
        "Turso's format (AES-256-GCM)": _codec_round(turso, pages),
        "hardened (AES-256-GCM-SIV)": _codec_round(hardened, pages),
    }
    if "envelope" in HARDENED_CIPHERS:
        envelope = PageCodec(HARDENED_CIPHERS["envelope"], key)
        page1[20] = 0  # the envelope layout's pages reserve nothing: the whole 4096 bytes are encrypted
        envelope.encrypt(bytes(page1), 1)
        whole = [os.urandom(P) for _ in range(n_pages)]
        contenders["envelope (AES-256-GCM-SIV, whole page)"] = _codec_round(envelope, whole)
    return {
        **contenders,
        "bare AESGCM": _aead_round(AESGCM(key), pages),
        "bare AESGCMSIV": _aead_round(AESGCMSIV(key), pages),
    }


def engine_contenders(workdir: Path, rows: int) -> dict[str, Callable[[], None]]:
    options: dict[str, dict[str, str]] = {
        "plaintext": {},
        "Turso's format (AES-256-GCM)": {"encryption_key": KEY_HEX, "cipher": "aes256gcm"},
        "hardened (AES-256-GCM-SIV)": {"encryption_key": KEY_HEX, "cipher": "hardened"},
    }
    if "envelope" in HARDENED_CIPHERS:
        options["envelope (AES-256-GCM-SIV slots)"] = {"encryption_key": KEY_HEX, "cipher": "envelope"}
    data = [(i, f"name-{i}", i * 7, "v" * 60) for i in range(rows)]

    def make(name: str, opts: dict[str, str]) -> Callable[[], None]:
        def run() -> None:
            path = workdir / (name.split()[0].strip("'") + ".db")
            for suffix in ("", "-wal", "-shm", "-frames", "-pagemap", "-pagemap.lock"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            key, cipher = opts.get("encryption_key"), opts.get("cipher", "aes256gcm")
            conn = turso_sync.connect(path, encryption_key=key, cipher=cipher)
            conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, n INTEGER, v TEXT)")
            conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", data)
            conn.commit()
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            conn.close()
            conn = turso_sync.connect(path, encryption_key=key, cipher=cipher)
            count = sum(1 for _ in conn.execute("SELECT * FROM t"))
            conn.close()
            assert count == rows

        return run

    return {name: make(name, opts) for name, opts in options.items()}


@contextlib.contextmanager
def _page_map_off() -> Iterator[None]:
    """Hardened files without their page map, for the comparison only: the VFS neither checks nor writes it."""
    kept = HardenedCodec.keeps_page_map
    HardenedCodec.keeps_page_map = property(lambda self: False)  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        HardenedCodec.keeps_page_map = kept  # type: ignore[method-assign]


def checkpoint_contenders(workdir: Path, commits: int) -> dict[str, Callable[[], None]]:
    """Small transactions with a checkpoint every 10 (what a syncing replica does): the page map's cost."""
    options: dict[str, tuple[str, bool]] = {
        "Turso's format (AES-256-GCM)": ("aes256gcm", True),
        "hardened, page map off (for comparison)": ("hardened", False),
        "hardened (AES-256-GCM-SIV, page map)": ("hardened", True),
    }

    def make(name: str, cipher: str, page_map: bool) -> Callable[[], None]:
        def run() -> None:
            path = workdir / f"ckpt-{cipher}-{page_map}.db"
            for suffix in ("", "-wal", "-shm", "-frames", "-pagemap", "-pagemap.lock"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            with contextlib.nullcontext() if page_map else _page_map_off():
                conn = turso_sync.connect(path, encryption_key=KEY_HEX, cipher=cipher)
                conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
                conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, "v" * 60) for i in range(2000)])
                conn.commit()
                for i in range(commits):
                    conn.execute("UPDATE t SET v = ? WHERE id = ?", (f"u{i}" * 20, (i * 37) % 2000))
                    conn.commit()
                    if i % 10 == 9:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    conn.execute("SELECT v FROM t WHERE id = ?", ((i * 53) % 2000,)).fetchone()
                conn.close()

        return run

    return {name: make(name, cipher, page_map) for name, (cipher, page_map) in options.items()}


def open_contenders(workdir: Path) -> dict[str, Callable[[], None]]:
    raw = workdir / "open-raw.db"
    pw = workdir / "open-pw.db"
    for path, key, cipher in ((raw, KEY_HEX, "hardened"), (pw, PASSPHRASE, "hardened-passphrase")):
        conn = turso_sync.connect(path, encryption_key=key, cipher=cipher)
        conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
        conn.commit()
        conn.close()

    def opener(path: Path, key: str, cipher: str) -> Callable[[], None]:
        def run() -> None:
            turso_sync.connect(path, encryption_key=key, cipher=cipher).close()

        return run

    return {
        "hardened, raw key": opener(raw, KEY_HEX, "hardened"),
        "hardened, passphrase (Argon2id 64 MiB, 3 passes, 4 lanes)": opener(pw, PASSPHRASE, "hardened-passphrase"),
    }


def measure(contenders: dict[str, Callable[[], None]], runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for name in names:
        contenders[name]()  # warm-up: first-call costs (imports, caches) are not what is measured
    for run in range(runs):
        order = names[run % len(names) :] + names[: run % len(names)]
        for name in order:
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
    return times


def table(times: dict[str, list[float]], base: str, per: int, unit: str, scale: float) -> str:
    rows = []
    for name, values in times.items():
        med = median(values)
        rows.append(
            [
                name,
                f"{med / per * scale:.1f} {unit}",
                f"{min(values) / per * scale:.1f}-{max(values) / per * scale:.1f}",
                f"{med / median(times[base]):.2f}",
            ]
        )
    return markdown_table(["", f"median per {'page' if per > 1 else 'run'}", "min-max", f"/ {base}"], rows, (1, 2, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "7")))
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    n_pages = int(os.environ.get("BENCH_PAGES", "2000"))
    rows = int(os.environ.get("BENCH_ROWS", "100000"))
    workdir = Path(os.environ.get("BENCH_DIR", REPO / "bench-data" / "hardened"))
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    started = time.perf_counter()

    codec_times = measure(codec_contenders(n_pages), args.runs)
    engine_times = measure(engine_contenders(workdir, rows), args.runs)
    commits = int(os.environ.get("BENCH_COMMITS", "300"))
    checkpoint_times = measure(checkpoint_contenders(workdir, commits), args.runs)
    open_times = measure(open_contenders(workdir), max(3, args.runs // 2))
    elapsed = time.perf_counter() - started

    turso = "Turso's format (AES-256-GCM)"
    codec_table = table(codec_times, turso, n_pages, "µs", 1e6)
    engine_table = table(engine_times, turso, 1, "ms", 1e3)
    checkpoint_table = table(checkpoint_times, turso, 1, "ms", 1e3)
    open_table = table(open_times, "hardened, raw key", 1, "ms", 1e3)
    info = machine()
    today = datetime.date.today().isoformat()
    body = f"""Measured {today} by `python -m bench.bench_hardened` in {elapsed:.0f} s: {args.runs} runs of
each, median shown, contenders interleaved with their order rotated from run to run (after one warm-up call).
**Machine**: {info["cpus"]} vCPU ({info["model"]}), {info["memory"]} RAM, {info["kernel"]};
cryptography {cryptography.__version__}.

Encrypt + decrypt of one 4 KiB page ({n_pages} pages per run; the bare AEADs are `cryptography`'s own
calls on the same 4068 bytes, for scale):

{codec_table}

End to end through `turso_sync.connect`: {rows} inserts in one transaction, checkpoint, full scan
on a fresh connection:

{engine_table}

The page map's cost (docs/encryption.md): 2000 rows, then {commits} small transactions (one UPDATE,
`commit()`, one point read), a passive checkpoint after every 10; the same hardened file with its page
map switched off in this process, for comparison only:

{checkpoint_table}

Opening a database (Argon2id runs once per open for a passphrase):

{open_table}
"""
    print(body)
    if not args.no_doc:
        write_section("## Hardened encryption (issue 14)", "hardened", body)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
