"""One replica shared by an app process and a syncing process, against a real primary on 127.0.0.1.

The app commits two-row transactions as fast as it can (opening the replica again every 25, so
the file checks on open run while the syncer works); beside it, on the same replica file, a
second process runs ``conn.sync()`` in a loop (or ``turso-sync daemon`` runs), while a peer
replica elsewhere writes and syncs too, so pulls install real remote pages.  Nobody is killed.
Afterwards: the shared replica passes ``integrity_check`` and still pulls; every transaction the
app saw committed is there whole, on the shared replica, on the peer and on a fresh clone of the
primary; no transaction is torn (one row of two) anywhere; the peer's rows arrived.  Each
process runs for a fixed wall-clock window (``SHARED_SECONDS``, default 8) and stops by itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import turso_sync
from tests.childlines import ChildLines
from tests.conftest import KEY256, wait_for
from tests.servers import primary
from turso_sync.sync.files import ReplicaFiles

SECONDS = float(os.environ.get("SHARED_SECONDS", "8"))
REPO = Path(__file__).resolve().parents[2]

_APP = textwrap.dedent(
    """
    import sys, time
    import turso_sync
    path, tag, until, key = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] or None
    conn = turso_sync.connect(path, encryption_key=key)
    n = 0
    print("ready", flush=True)
    while time.time() < until:
        n += 1
        try:
            conn.execute("INSERT INTO tx(id, tag, txn, part) VALUES (?, ?, ?, 0)", (2 * n, tag, n))
            conn.execute("INSERT INTO tx(id, tag, txn, part) VALUES (?, ?, ?, 1)", (2 * n + 1, tag, n))
            conn.commit()
        except turso_sync.Error as exc:
            conn.rollback()
            print("error", type(exc).__name__, " ".join(str(exc).split()), flush=True)
            continue
        print("committed", n, flush=True)
        if n % 25 == 0:  # opening again checks the replica's files while the syncer works on them
            conn.close()
            try:
                conn = turso_sync.connect(path, encryption_key=key)
            except turso_sync.Error as exc:
                print("error", type(exc).__name__, " ".join(str(exc).split()), flush=True)
                break
    conn.close()
    print("done", flush=True)
    """
)

_SYNCER = textwrap.dedent(
    """
    import sys, time
    import turso_sync
    path, until, do_writes, key = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1", sys.argv[4] or None
    conn = turso_sync.connect(path, encryption_key=key)
    print("ready", flush=True)
    n = 0
    while time.time() < until:
        try:
            if do_writes:
                n += 1
                # keys of its own: the app's and the peer's rows never clash (no conflict to settle)
                conn.execute("INSERT INTO tx(id, tag, txn, part) VALUES (?, 'peer', ?, 0)", (10**9 + 2 * n, n))
                conn.execute("INSERT INTO tx(id, tag, txn, part) VALUES (?, 'peer', ?, 1)", (10**9 + 2 * n + 1, n))
                conn.commit()
                print("committed", n, flush=True)
            conn.sync()
            print("synced", flush=True)
        except turso_sync.Error as exc:
            print("error", type(exc).__name__, " ".join(str(exc).split()), flush=True)
    conn.close()
    print("done", flush=True)
    """
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    with primary(tmp_path / "server") as url:
        yield url


def _start(script: str, *args: str) -> tuple[subprocess.Popen[bytes], ChildLines]:
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    return proc, ChildLines(proc)


def _collect(lines: ChildLines, deadline: float) -> list[str]:
    out = lines.lines_until(deadline)
    assert out and out[-1] == "done", "the child did not finish in time:\n" + "\n".join(out[-40:])
    return out


def _committed(lines: list[str]) -> set[int]:
    return {int(line.split()[1]) for line in lines if line.startswith("committed ")}


def _errors(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("error ") or "Traceback" in line]


def _torn_or_missing(conn: turso_sync.Connection, tag: str, committed: set[int]) -> tuple[list[int], list[int]]:
    parts = Counter(txn for (txn,) in conn.execute("SELECT txn FROM tx WHERE tag = ?", (tag,)))
    torn = sorted(txn for txn, count in parts.items() if count != 2)
    missing = sorted(committed - set(parts))
    return torn, missing


@pytest.mark.parametrize(
    ("syncer", "key"), [("sync-loop", KEY256), ("daemon", None)], ids=["sync-loop-encrypted", "daemon-plaintext"]
)
def test_app_and_syncer_share_one_replica(tmp_path: Path, server: str, syncer: str, key: str | None) -> None:
    shared, peer = tmp_path / "shared.db", tmp_path / "peer.db"
    setup = turso_sync.connect(shared, server, encryption_key=key)
    setup.execute("CREATE TABLE tx (id INTEGER PRIMARY KEY, tag TEXT NOT NULL, txn INTEGER NOT NULL, part INTEGER)")
    setup.commit()
    setup.sync()
    setup.close()
    turso_sync.connect(peer, server, encryption_key=key).close()

    daemon_log = tmp_path / "daemon.log"
    if syncer == "daemon":
        with open(daemon_log, "wb") as log:  # the child keeps its own descriptor
            sync_proc = subprocess.Popen(
                [sys.executable, "-m", "turso_sync.cli.main", "daemon", str(shared)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
        # the writers start once it syncs: on a loaded machine its start-up could otherwise outlast
        # their whole window, and its SIGTERM land before it has a handler
        try:
            wait_for(lambda: "syncing 1 replica" in daemon_log.read_text(errors="replace"), 60, "the daemon to start")
        except AssertionError:
            sync_proc.kill()
            sync_proc.wait()
            raise
    until = time.time() + 2 + SECONDS
    app, app_lines = _start(_APP, str(shared), "app", str(until), key or "")
    peer_proc, peer_lines = _start(_SYNCER, str(peer), str(until), "1", key or "")
    if syncer == "sync-loop":
        sync_proc, sync_lines = _start(_SYNCER, str(shared), str(until), "0", key or "")
    procs = [app, peer_proc, sync_proc]
    try:
        finish = time.monotonic() + SECONDS + 60
        app_out = _collect(app_lines, finish)
        peer_out = _collect(peer_lines, finish)
        if syncer == "sync-loop":
            sync_out = _collect(sync_lines, finish)
        else:
            sync_proc.send_signal(signal.SIGTERM)  # the writers are done: stop it as systemd would
            try:
                code = sync_proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                code = None
            log_lines = daemon_log.read_text(errors="replace").splitlines()
            assert code == 0, f"daemon exit status {code} after SIGTERM:\n" + "\n".join(log_lines[-40:])
            sync_out = [f"error daemon: {line}" for line in log_lines if "rror" in line or "malformed" in line]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    committed = _committed(app_out)
    assert len(committed) > 10, app_out[-5:]
    problems = _errors(app_out) + _errors(sync_out) + _errors(peer_out)

    assert ReplicaFiles(shared).check(key, deep=True) == []
    conn = turso_sync.connect(shared, encryption_key=key)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        for _ in range(3):
            conn.sync()  # every pending change out, every remote one in
        assert conn.stats().pending_changes == 0
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert _torn_or_missing(conn, "app", committed) == ([], []), "shared replica"
        assert _torn_or_missing(conn, "peer", _committed(peer_out)) == ([], []), "peer rows on the shared replica"
    finally:
        conn.close()
    for path in (peer, tmp_path / "fresh.db"):
        other = turso_sync.connect(path, server, encryption_key=key)
        try:
            other.sync()
            assert _torn_or_missing(other, "app", committed) == ([], []), path.name
            assert other.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            other.close()
    assert problems == [], problems[:10]
