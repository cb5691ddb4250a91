"""`turso-sync daemon`: propagation between replicas, a primary killed and restarted, SIGTERM mid-pull.

The daemon runs as a child process exactly as a user starts it; the test writes and reads the
replicas through the library from its own process (the daemon pushes commits of any process).
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import turso_sync
from tests.childlines import ChildLines
from tests.conftest import KEY256, wait_for
from tests.integration.cli_harness import TURSO_SYNC, cli, fresh_url, key_env, running_primary
from tests.servers import free_port


class Daemon:
    """``turso-sync daemon PATH...`` as a child process: ready when it says so, stopped by SIGTERM."""

    def __init__(self, cwd: Path, *paths: str, metrics: bool = True, extra: tuple[str, ...] = ()) -> None:
        self.metrics_url = f"http://127.0.0.1:{free_port()}" if metrics else None
        args = [*TURSO_SYNC, "daemon", *paths, "--max-backoff", "1", *extra]
        if self.metrics_url:
            args += ["--metrics", self.metrics_url.removeprefix("http://")]
        self.log_path = cwd / f"daemon-{time.monotonic_ns()}.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(args, cwd=cwd, env=key_env(), stdout=subprocess.PIPE, stderr=log)
        self.lines = ChildLines(self.proc)
        self.tail: list[str] = []

    def ready(self) -> Daemon:
        line = self.lines.readline(60)
        assert line.startswith("turso-sync daemon: syncing"), line + self.log()
        return self

    def log(self) -> str:
        return self.log_path.read_text()

    def metrics(self) -> dict[str, float]:
        text = httpx.get(f"{self.metrics_url}/metrics", timeout=10).text
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def health(self) -> tuple[int, dict]:
        response = httpx.get(f"{self.metrics_url}/health", timeout=10)
        return response.status_code, response.json()

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM; the exit status (what it printed last is in ``self.tail``)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.tail = self.lines.rest()
            return self.proc.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.lines.close()
        if self.proc.stdout:
            self.proc.stdout.close()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.close()


def clone(cwd: Path, url: str, *names: str) -> None:
    for name in names:
        result = cli("clone", url, name, "-q", cwd=cwd, env=key_env())
        assert result.code == 0, result.err


def connect(path: Path):
    return turso_sync.connect(path, encryption_key=KEY256)


def ids(conn) -> set[int]:
    return {r[0] for r in conn.execute("SELECT id FROM t").fetchall()}


def test_a_commit_on_one_replica_reaches_the_other_within_2_seconds(tmp_path, daemons):
    with running_primary(tmp_path / "p") as server:
        clone(tmp_path, fresh_url(server), "a.db", "b.db")
        a, b = connect(tmp_path / "a.db"), connect(tmp_path / "b.db")
        a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        a.commit()
        daemon = Daemon(tmp_path, "a.db", "b.db")
        daemons.append(daemon)
        daemon.ready()
        wait_for(lambda: b.execute("SELECT count(*) FROM sqlite_schema WHERE name = 't'").fetchone()[0], 10, "table")
        latencies = []
        for i in range(6):
            writer, reader = (a, b) if i % 2 == 0 else (b, a)
            writer.execute("INSERT INTO t VALUES (?, ?)", (i, f"round {i}"))
            writer.commit()
            started = time.monotonic()
            wait_for(lambda i=i: reader.execute("SELECT 1 FROM t WHERE id = ?", (i,)).fetchone(), 2.0, f"row {i}")
            latencies.append(time.monotonic() - started)
        print("propagation latencies (s):", " ".join(f"{x:.3f}" for x in latencies))
        wait_for(lambda: a.stats().pending_changes == 0 and b.stats().pending_changes == 0, 10, "outboxes empty")
        # the daemon's gauges are what its pusher read last (it reads every watch interval, 0.1 s):
        # the outbox being empty shows there within a few of them, not at the same instant
        labels = [f'{{replica="{tmp_path / name}"}}' for name in ("a.db", "b.db")]
        wait_for(
            lambda: all(daemon.metrics()[f"turso_sync_pending_changes{label}"] == 0 for label in labels),
            5,
            "the pending_changes gauges at 0",
        )
        metrics = daemon.metrics()
        for label in labels:
            assert metrics[f"turso_sync_pending_changes{label}"] == 0
            assert metrics[f"turso_sync_pushes_total{label}"] >= 3
            assert metrics[f"turso_sync_pulls_total{label}"] >= 3
            assert metrics[f"turso_sync_up{label}"] == 1
            assert metrics[f"turso_sync_lag_seconds{label}"] < 2
            assert metrics[f"turso_sync_bytes_sent_total{label}"] > 0
            assert metrics[f"turso_sync_bytes_received_total{label}"] > 0
            assert metrics[f"turso_sync_errors_total{label}"] == 0
            assert f"turso_sync_conflicts_total{label}" in metrics
        status, health = daemon.health()
        assert status == 200 and health["status"] == "ok" and len(health["replicas"]) == 2
        assert daemon.terminate() == 0
        assert daemon.tail[-1] == "turso-sync daemon: stopped"
        a.close()
        b.close()


def test_killing_and_restarting_the_primary_loses_nothing(tmp_path, daemons):
    with running_primary(tmp_path / "p") as server:
        clone(tmp_path, fresh_url(server), "a.db", "b.db")
        a = connect(tmp_path / "a.db")
        a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        a.commit()
        a.push()
        a.close()
        daemon = Daemon(tmp_path, "a.db", "b.db")
        daemons.append(daemon)
        daemon.ready()
        written: dict[str, list[int]] = {"a.db": [], "b.db": []}
        stop = threading.Event()
        failures: list[BaseException] = []

        def write(name: str, first: int) -> None:
            try:
                conn = connect(tmp_path / name)
                wait_for(lambda: conn.execute("SELECT 1 FROM sqlite_schema WHERE name = 't'").fetchone(), 10, "t")
                n = first
                while not stop.is_set():
                    conn.execute("INSERT INTO t VALUES (?, ?)", (n, name))
                    conn.commit()  # local writes never wait for the primary
                    written[name].append(n)
                    n += 1
                    stop.wait(0.02)
                conn.close()
            except BaseException as exc:
                failures.append(exc)

        writers = [threading.Thread(target=write, args=(n, f)) for n, f in (("a.db", 0), ("b.db", 1_000_000))]
        for w in writers:
            w.start()
        try:
            wait_for(lambda: len(written["a.db"]) > 20 and len(written["b.db"]) > 20, 30, "writes before the kill")
            server.kill()  # SIGKILL, in the middle of pushes and long-polls
            label = f'{{replica="{tmp_path / "a.db"}"}}'
            wait_for(lambda: daemon.metrics()[f"turso_sync_up{label}"] == 0, 30, "the daemon to notice")
            during = {k: len(v) for k, v in written.items()}
            wait_for(lambda: all(len(written[k]) > during[k] + 20 for k in written), 30, "writes while down")
            status, health = daemon.health()
            assert status == 200 and health["status"] == "degraded"
            assert daemon.metrics()[f"turso_sync_errors_total{label}"] > 0
            server.start()  # same data dir, same port
            back = time.monotonic()
            wait_for(lambda: daemon.metrics()[f"turso_sync_up{label}"] == 1, 30, "the daemon to reconnect")
            print(f"reconnected {time.monotonic() - back:.2f}s after the primary came back")
            wait_for(lambda: all(len(written[k]) > during[k] + 40 for k in written), 30, "writes after the restart")
        finally:
            stop.set()
            for w in writers:
                w.join(30)
        assert not failures, failures
        everything = set(written["a.db"]) | set(written["b.db"])
        a, b = connect(tmp_path / "a.db"), connect(tmp_path / "b.db")
        try:
            wait_for(lambda: ids(a) == everything and ids(b) == everything, 30, "both replicas to have every write")
        except AssertionError as exc:
            raise AssertionError(
                f"missing on a: {len(everything - ids(a))}, on b: {len(everything - ids(b))}; "
                f"{a.stats()} {b.stats()}\n{daemon.log()[-3000:]}"
            ) from exc
        wait_for(lambda: a.stats().pending_changes == b.stats().pending_changes == 0, 30, "outboxes empty")
        for conn in (a, b):
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert daemon.terminate() == 0
        a.close()
        b.close()
        log = daemon.log()
        assert "retrying in" in log and "primary reachable" in log
        print(f"rows written while the primary was killed and restarted: {len(everything)}")


def _sync_lock_held(path: Path) -> bool:
    """True while some agent holds the replica's sync lock (a pull being applied, or a push)."""
    fd = os.open(str(path) + "-sync.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases it at once if we got it
    return False


def test_sigterm_during_a_pull_leaves_the_replica_intact(tmp_path, daemons):
    with running_primary(tmp_path / "p") as server:
        url = fresh_url(server)
        clone(tmp_path, url, "b.db")
        writer = turso_sync.connect(tmp_path / "w.db", url)
        writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        writer.commit()
        writer.push()
        b = connect(tmp_path / "b.db")
        b.execute("CREATE TABLE IF NOT EXISTS mine (id INTEGER PRIMARY KEY, v TEXT)")
        b.commit()
        local_rows = 0
        caught_in_pull = 0
        for round_ in range(4):
            daemon = Daemon(tmp_path, "b.db", metrics=False)
            daemons.append(daemon)
            daemon.ready()
            for _ in range(5):  # local writes the daemon pushes while pulls come in
                b.execute("INSERT INTO mine VALUES (?, 'kept')", (local_rows,))
                b.commit()
                local_rows += 1
            base = round_ * 20_000
            writer.executemany("INSERT INTO t VALUES (?, ?)", [(base + i, "x" * 150) for i in range(20_000)])
            writer.commit()
            writer.push()  # a large remote commit: the daemon's long-poll wakes and applies it
            deadline = time.monotonic() + 30
            while not _sync_lock_held(tmp_path / "b.db") and time.monotonic() < deadline:
                pass
            caught_in_pull += int(time.monotonic() < deadline)
            assert daemon.terminate() == 0, daemon.log()
            assert daemon.tail[-1] == "turso-sync daemon: stopped"
            assert b.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            count = b.execute("SELECT count(*) FROM t").fetchone()[0]
            assert count in (base, base + 20_000), count  # the old state or the new one, never a mix
            assert b.execute("SELECT count(*) FROM mine").fetchone()[0] == local_rows  # no committed write lost
        assert caught_in_pull >= 1
        verify = cli("verify", "b.db", cwd=tmp_path, env=key_env())
        assert verify.code == 0, verify.err
        assert cli("sync", "b.db", "-q", cwd=tmp_path, env=key_env()).code == 0
        assert b.execute("SELECT count(*) FROM t").fetchone()[0] == 80_000
        assert writer.pull() is True or True
        assert writer.execute("SELECT count(*) FROM mine").fetchone()[0] == local_rows
        writer.close()
        b.close()


def test_refused_token_wrong_key_and_wrong_path(tmp_path, daemons):
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "tokens").write_text("right-token-Qm3 rw *\n")
    with running_primary(folder, "--token-file", str(folder / "tokens")) as server:
        env = {**key_env(), "TURSO_SYNC_AUTH_TOKEN": "right-token-Qm3"}
        assert cli("clone", fresh_url(server), "a.db", "-q", cwd=tmp_path, env=env).code == 0
        refused = cli("daemon", "a.db", "--auth-token", "stolen-token-XYZ", cwd=tmp_path, env=key_env())
        assert refused.code == 4, refused.both
        assert "stolen-token-XYZ" not in refused.both and KEY256 not in refused.both
        wrong_key = cli("daemon", "a.db", "--encryption-key", "e" * 64, cwd=tmp_path, env=env)
        assert wrong_key.code == 5 and "e" * 64 not in wrong_key.both
        not_replica = cli("daemon", "a.db", "nothing.db", cwd=tmp_path, env=env)
        assert not_replica.code == 2 and "nothing.db does not exist" in not_replica.err
        public = cli("daemon", "a.db", "--metrics", "0.0.0.0:9464", cwd=tmp_path, env=env)
        assert public.code == 2 and "loopback only" in public.err
