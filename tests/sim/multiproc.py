"""Multi-process mode: real processes, real ``kill -9``, an app and a syncer on one replica file.

The primary is ``turso-sync serve`` in its own process; each replica has a worker process that
writes and syncs (``worker.py``); replica r0 is shared by an app process (writes only) and a
syncing process (``conn.sync()`` in a loop, or ``turso-sync daemon`` with ``daemon=True``) at
the same time.  The seed decides the kill schedule; the processes' own timing is the OS's, so
a run is not repeatable step for step (the one-line reproduction gives the same schedule).

At the end every process is stopped, each replica is reopened here and synced until quiet,
and the checks run: integrity everywhere, every replica equals the primary, every acknowledged
transaction arrived exactly once and whole, nothing nobody attempted appeared, no reader saw
part of a transaction, and no process met a corrupt database on the way.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

import turso_sync
from tests.integration.primary_harness import PrimaryProcess

from .history import SCHEMA
from .primary import hrana_query
from .runner import KEY, _dump

REPO = Path(__file__).resolve().parents[2]
#: Errors that mean a database was damaged or a read saw an impossible state.
CORRUPTION = ("malformed", "2nd reference", "disk image", "database corruption", "integrity")


@dataclass
class Worker:
    """One worker process and how to start it again."""

    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    kills: int = 0


@dataclass
class MultiResult:
    """What a multi-process run saw."""

    findings: list[str] = field(default_factory=list)
    acked: int = 0
    attempted: int = 0
    kills: int = 0
    primary_kills: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    workdir: str = ""  # kept when a check failed (the files, the journal, each process's log)


def _start(worker: Worker, log_dir: Path) -> None:
    with open(log_dir / f"{worker.name}.log", "ab") as log:
        worker.proc = subprocess.Popen(worker.argv, stdout=log, stderr=log, cwd=REPO)


def run_multiproc(
    seed: int,
    seconds: float = 60.0,
    replicas: int = 3,
    kills: bool = True,
    daemon: bool = False,
    workdir: Path | None = None,
    log: Any = print,
) -> MultiResult:
    """One multi-process run; ``result.findings`` is empty when every check passed."""
    rnd = random.Random(seed)
    root = Path(workdir or tempfile.mkdtemp(prefix=f"simmp-{seed}-"))
    root.mkdir(parents=True, exist_ok=True)
    result = MultiResult(workdir=str(root))
    started = time.monotonic()
    primary = PrimaryProcess(root / "primary", "--log-level", "warning")
    url = primary.start()
    journal = str(root / "journal")
    paths = [root / f"r{i}.db" for i in range(replicas)]
    keys = [KEY if rnd.random() < 0.5 else None for _ in range(replicas)]
    workers: list[Worker] = []
    try:
        # bootstrap every replica here, one at a time, before any worker touches a file
        first = turso_sync.connect(paths[0], url, encryption_key=keys[0])
        for sql in SCHEMA:
            first.execute(sql)
        first.commit()
        first.sync()
        first.close()
        for path, key in zip(paths[1:], keys[1:], strict=True):
            turso_sync.connect(path, url, encryption_key=key).close()
        py = [sys.executable, "-m", "tests.sim.worker", "--journal", journal, "--seed", str(seed)]
        for i, (path, key) in enumerate(zip(paths, keys, strict=True)):
            common = [*py, "--path", str(path), "--name", f"r{i}", *(["--key", key] if key else [])]
            if i == 0:  # one replica file, two processes: an app and a syncer
                workers.append(Worker("r0-app", [*common, "--role", "app"]))
                if daemon:
                    cmd = [sys.executable, "-m", "turso_sync.cli.main", "daemon", str(path), "--log-level", "warning"]
                    workers.append(Worker("r0-daemon", cmd + (["--encryption-key", key] if key else [])))
                else:
                    workers.append(Worker("r0-sync", [*common, "--role", "sync"]))
            else:
                workers.append(Worker(f"r{i}", [*common, "--role", "both"]))
        for w in workers:
            _start(w, root)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(rnd.uniform(0.5, 3.0))  # the seeded schedule: time between two kills
            if not kills:
                continue
            if rnd.random() < 0.2:
                log(f"  kill -9 primary (t={time.monotonic() - started:.1f}s)")
                primary.restart(hard=True)
                result.primary_kills += 1
            else:
                w = rnd.choice(workers)
                assert w.proc is not None
                w.proc.kill()  # SIGKILL
                w.proc.wait(30)
                w.kills += 1
                result.kills += 1
                log(f"  kill -9 {w.name} (t={time.monotonic() - started:.1f}s)")
                _start(w, root)
        Path(journal + ".stop").touch()
        for w in workers:
            if w.proc is None:
                continue
            if w.name.endswith("daemon"):
                w.proc.send_signal(signal.SIGTERM)
            try:
                w.proc.wait(60)
            except subprocess.TimeoutExpired:
                result.findings.append(f"{w.name} did not stop within 60 s of the stop file; killed")
                w.proc.kill()
                w.proc.wait(30)
        _final_checks(url, paths, keys, journal, result)
    finally:
        for w in workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait(30)
        primary.close()
    result.seconds = time.monotonic() - started
    if not result.findings and workdir is None:
        shutil.rmtree(root, ignore_errors=True)
    return result


def _read_journal(journal: str, result: MultiResult) -> tuple[set[str], set[str]]:
    attempted: set[str] = set()
    acked: set[str] = set()
    if not os.path.exists(journal):
        return attempted, acked
    with open(journal, encoding="utf-8", errors="replace") as f:
        for line in f:
            kind, _, rest = line.rstrip("\n").partition(" ")
            if kind == "attempt":
                attempted.add(rest)
            elif kind == "acked":
                acked.add(rest)
            elif kind == "torn":
                result.findings.append(f"a reader saw part of a transaction: {rest}")
            elif kind == "error":
                role, _, message = rest.partition(" ")
                result.errors[message.split(":")[0] + (": corrupt" if _corrupt(message) else "")] += 1
                if _corrupt(message):
                    result.findings.append(f"{role} process met a damaged database: {message[:160]}")
    return attempted, acked


def _corrupt(message: str) -> bool:
    low = message.lower()
    return any(word in low for word in CORRUPTION)


def _final_checks(url: str, paths: list[Path], keys: list[str | None], journal: str, result: MultiResult) -> None:
    attempted, acked = _read_journal(journal, result)
    result.attempted, result.acked = len(attempted), len(acked)
    conns = []
    try:
        for path, key in zip(paths, keys, strict=True):
            try:
                conns.append(turso_sync.connect(path, encryption_key=key))
            except turso_sync.Error as exc:
                result.findings.append(f"{path.name} cannot be opened after the run: {type(exc).__name__}: {exc}")
                return
        for _round in range(5):
            for path, conn in zip(paths, conns, strict=True):
                try:
                    conn.sync()
                except turso_sync.Error as exc:
                    result.findings.append(f"{path.name}.sync() after the run: {type(exc).__name__}: {exc}")
                    return
            if not any(c.stats().pending_changes for c in conns):
                break
        for c in conns:  # a last pull, so everyone has the last pushes
            c.pull()
        with httpx.Client(timeout=60) as http:

            def query(sql: str) -> list[list[Any]]:
                return hrana_query(http, url, sql)

            if query("PRAGMA integrity_check") != [["ok"]]:
                result.findings.append(f"primary integrity_check: {query('PRAGMA integrity_check')[:3]}")
            expected = _dump(query)
            rows = query("SELECT txn, count(*) FROM events GROUP BY txn")
            # the log table has no primary key: a change pushed twice shows as two rows
            twice = query("SELECT note, count(*) FROM log GROUP BY note HAVING count(*) > 1 LIMIT 3")
            logged = {r[0] for r in query("SELECT DISTINCT note FROM log WHERE note IS NOT NULL")}
        for path, conn in zip(paths, conns, strict=True):
            ok = conn.execute("PRAGMA integrity_check").fetchall()
            if ok != [("ok",)]:
                result.findings.append(f"{path.name} integrity_check: {ok[:3]}")
            got = _dump(lambda sql, c=conn: [list(r) for r in c.execute(sql).fetchall()])
            if got != expected:
                result.findings.append(f"{path.name} differs from the primary after syncing to quiet")
        groups = {r[0]: r[1] for r in rows}
        seen = set(groups)
        lost = sorted(acked - seen)
        if lost:
            result.findings.append(f"{len(lost)} acknowledged transactions missing on the primary, e.g. {lost[:3]}")
        torn = sorted(t for t, n in groups.items() if n != 2)
        if torn:
            result.findings.append(f"{len(torn)} transactions torn on the primary (not 2 rows), e.g. {torn[:3]}")
        if twice:
            result.findings.append(f"log rows (no primary key) applied twice on the primary: {twice}")
        unlogged = sorted(acked - logged)
        if unlogged:
            result.findings.append(f"{len(unlogged)} acknowledged transactions lost their log row, e.g. {unlogged[:3]}")
        phantom = sorted(seen - attempted)
        if phantom:
            result.findings.append(f"transactions nobody attempted: {phantom[:3]}")
    finally:
        for c in conns:
            c.close()
