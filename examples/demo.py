"""`make demo`: the product end to end, on this machine, in a throw-away folder.

Run with ``make demo`` (or ``.venv/bin/python examples/demo.py`` once installed); it is an example
of using the library and the command, not part of the installed package.  Everything it starts, it stops.

1. the encrypted local engine (library calls);
2. sync through the ``turso-sync`` command, as a person types it: a primary on 127.0.0.1, two
   encrypted replicas, writes on both while the primary is down, sync, the conflict journal,
   converged rows;
3. the daemon keeping both replicas in sync: a write on one reaches the other.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import signal
import subprocess
import sys
import tempfile
import time

import httpx

import turso_sync
from turso_sync.local.engine import LocalDatabase


def _say(text: str) -> None:
    print(text, flush=True)


def local_engine_demo(folder: str) -> None:
    """An encrypted database: write, read, no plaintext on disk, a wrong key refused."""
    key = secrets.token_hex(32)  # lives in memory only; never printed
    path = os.path.join(folder, "notes.db")
    _say(f"== Encrypted local database at {path} (aes256gcm, key kept in memory)")
    conn = turso_sync.connect(path, encryption_key=key)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    conn.executemany(
        "INSERT INTO notes(body) VALUES (?)",
        [(f"TOP-SECRET note number {i}",) for i in range(1000)],
    )
    conn.commit()
    count, first = conn.execute("SELECT count(*), min(body) FROM notes").fetchone()
    _say(f"   wrote {count} rows; first row reads back as {first!r}")

    files = sorted(f for f in os.listdir(folder) if f.startswith("notes.db"))
    for name in files:
        data = open(os.path.join(folder, name), "rb").read()  # noqa: SIM115
        found = b"TOP-SECRET" in data
        _say(f"   {name:<16} {len(data):>9} bytes, plaintext 'TOP-SECRET' present: {found}")
        if found:
            raise SystemExit(f"demo failed: plaintext found in {name}")
    conn.close()

    with open(path, "rb") as f:
        _say(f"   file starts with {f.read(7)!r} (Turso's encrypted format)")
    before = open(path, "rb").read()  # noqa: SIM115
    try:
        turso_sync.connect(path, encryption_key=secrets.token_hex(32))
    except turso_sync.DatabaseError as exc:
        _say(f"   wrong key refused: {exc}")
    else:
        raise SystemExit("demo failed: a wrong key was accepted")
    if open(path, "rb").read() != before:  # noqa: SIM115
        raise SystemExit("demo failed: the refused open changed the file")
    _say("   the refused open left the file byte-for-byte unchanged")

    _say("== Frame log: every committed transaction is numbered and can be undone")
    db = LocalDatabase(path, encryption_key=key)
    conn = db.connect()
    watermark = db.current_seq()
    conn.execute("DELETE FROM notes WHERE id % 2 = 0")
    conn.commit()
    rows = conn.execute("SELECT count(*) FROM notes").fetchone()[0]
    _say(f"   seq {watermark} -> {db.current_seq()}: deleted half; rows now {rows}")
    db.discard_after(watermark)
    rows = conn.execute("SELECT count(*) FROM notes").fetchone()[0]
    _say(f"   discard_after({watermark}): rows back to {rows}, pages byte-for-byte as at seq {watermark}")
    conn.close()
    db.close()


class Child:
    """A child process whose stdout is read line by line with deadlines."""

    def __init__(self, args: list[str], cwd: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._selector = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self._selector.register(self.proc.stdout, selectors.EVENT_READ)

    def readline(self, timeout: float) -> str:
        """The next line of stdout; fails after ``timeout`` seconds or at exit."""
        assert self.proc.stdout is not None
        if not self._selector.select(timeout):
            raise SystemExit(f"demo failed: {self.proc.args!r} said nothing within {timeout}s")
        line = self.proc.stdout.readline().decode()
        if not line:
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise SystemExit(f"demo failed: {self.proc.args!r} exited ({self.proc.poll()}): {err.strip()}")
        return line.rstrip("\n")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait (SIGKILL if it does not exit in time); returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            status = self.proc.wait()
        self._selector.close()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return status


class Session:
    """Runs ``turso-sync`` commands in the demo folder and shows them as typed."""

    def __init__(self, folder: str, key: str) -> None:
        self.folder = folder
        # the key travels in the environment, never on a command line or in a file
        self.env = {**os.environ, "TURSO_SYNC_ENCRYPTION_KEY": key}
        self.children: list[Child] = []

    def run(self, *args: str, expect: int = 0) -> str:
        """Show and run one command; its output is indented below it."""
        _say("   $ turso-sync " + " ".join(_quote(a) for a in args))
        done = subprocess.run(
            [sys.executable, "-m", "turso_sync.cli.main", *args],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        for line in (done.stdout + done.stderr).splitlines():
            _say("     " + line)
        if done.returncode != expect:
            raise SystemExit(f"demo failed: exit status {done.returncode}, expected {expect}")
        if expect:
            _say(f"     (exit status {done.returncode})")
        return done.stdout

    def start(self, *args: str) -> Child:
        """Start a long-running command (the primary, the daemon)."""
        _say("   $ turso-sync " + " ".join(_quote(a) for a in args) + " &")
        child = Child([sys.executable, "-m", "turso_sync.cli.main", *args], self.folder, self.env)
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        """Stop whatever is still running."""
        for child in self.children:
            if child.proc.poll() is None:
                child.stop()


def _quote(arg: str) -> str:
    return f'"{arg}"' if any(c in arg for c in " *'();") else arg


def _start_primary(session: Session, port: int) -> tuple[Child, str]:
    primary = session.start("serve", "--data-dir", "primary", "--listen", f"127.0.0.1:{port}", "--log-level", "warning")
    line = primary.readline(60)
    _say("     " + line)
    return primary, line.split("listening on ", 1)[1].split()[0]


def _rows(session: Session, replica: str) -> list[dict[str, object]]:
    out = session.run("exec", replica, "SELECT id, body, author FROM notes ORDER BY id", "--json")
    return list(json.loads(out))


def sync_demo(folder: str) -> None:
    """A primary, two encrypted replicas, offline writes, a conflict, convergence, the daemon."""
    session = Session(folder, secrets.token_hex(32))
    try:
        _sync_steps(session)
    finally:
        session.stop_all()


def _sync_steps(session: Session) -> None:
    _say("")
    _say("== A primary on 127.0.0.1 and two encrypted replicas (key in $TURSO_SYNC_ENCRYPTION_KEY)")
    primary, url = _start_primary(session, 0)
    db_url = f"{url}/db/notes"
    session.run("clone", db_url, "alice.db")
    session.run("clone", db_url, "bob.db")
    session.run("exec", "alice.db", "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, author TEXT)")
    session.run("exec", "alice.db", "INSERT INTO notes VALUES (1, 'buy milk', 'alice'), (2, 'call mum', 'alice')")
    session.run("push", "alice.db")
    session.run("pull", "bob.db")

    _say("")
    _say("== The primary goes away; both replicas keep working offline")
    port = int(url.rsplit(":", 1)[1])
    _say(f"     (primary stopped: exit status {primary.stop()})")
    session.run(
        "exec",
        "alice.db",
        "UPDATE notes SET body = 'buy oat milk' WHERE id = 1; INSERT INTO notes VALUES (3, 'water plants', 'alice')",
    )
    session.run(
        "exec",
        "bob.db",
        "UPDATE notes SET body = 'buy milk and bread' WHERE id = 1; "
        "INSERT INTO notes VALUES (4, 'book dentist', 'bob')",
    )
    session.run("sync", "alice.db", expect=3)  # exit status 3: the primary cannot be reached
    session.run("status", "bob.db")

    _say("")
    _say("== The primary is back (same data, same port): sync, see the conflict, converge")
    primary, url = _start_primary(session, port)
    session.run("sync", "alice.db")
    session.run("pull", "bob.db")  # bob's pending edit of note 1 meets alice's: a conflict, journaled
    session.run("sync", "bob.db")
    session.run("pull", "alice.db")
    session.run("conflicts", "bob.db")
    alice, bob = _rows(session, "alice.db"), _rows(session, "bob.db")
    if alice != bob or [r["id"] for r in alice] != [1, 2, 3, 4]:
        raise SystemExit(f"demo failed: the replicas did not converge: {alice} != {bob}")
    _say("   both replicas hold the same 4 rows (last push wins: bob's edit of note 1)")
    session.run("verify", "alice.db")

    _say("")
    _say("== The daemon keeps both replicas in sync: a write on alice reaches bob")
    metrics_port = _free_port()
    daemon = session.start(
        "daemon", "alice.db", "bob.db", "--metrics", f"127.0.0.1:{metrics_port}", "--log-level", "warning"
    )
    _say("     " + daemon.readline(60))
    session.run("exec", "alice.db", "INSERT INTO notes VALUES (5, 'written while the daemon runs', 'alice')")
    latency = _wait_for_row(os.path.join(session.folder, "bob.db"), session.env["TURSO_SYNC_ENCRYPTION_KEY"], 5)
    _say(f"   note 5 is readable on bob {latency * 1000:.0f} ms after `exec` returned on alice")
    metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    _say(f"   $ curl http://127.0.0.1:{metrics_port}/metrics   (excerpt)")
    for line in metrics.splitlines():
        if line.startswith(("turso_sync_pushes_total", "turso_sync_pulls_total", "turso_sync_lag_seconds")):
            _say("     " + line.replace(session.folder + os.sep, ""))
    status = daemon.stop()
    _say(f"     (daemon stopped by SIGTERM: exit status {status})")
    if status != 0:
        raise SystemExit("demo failed: the daemon did not exit cleanly")
    session.run("verify", "bob.db")
    _say(f"     (primary stopped: exit status {primary.stop()})")


def _wait_for_row(path: str, key: str, row_id: int, timeout: float = 10.0) -> float:
    """Seconds until ``row_id`` is readable in the replica at ``path``."""
    started = time.monotonic()
    conn = turso_sync.connect(path, encryption_key=key)
    try:
        while conn.execute("SELECT 1 FROM notes WHERE id = ?", (row_id,)).fetchone() is None:
            if time.monotonic() - started > timeout:
                raise SystemExit(f"demo failed: note {row_id} did not reach {path} within {timeout}s")
            time.sleep(0.02)
    finally:
        conn.close()
    return time.monotonic() - started


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    """Run every demo step; exit non-zero if any claim does not hold."""
    with tempfile.TemporaryDirectory(prefix="turso-sync-demo-") as folder:
        local_engine_demo(folder)
        sync_demo(folder)
    _say("")
    _say("demo finished: everything it started is stopped and its files are removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
