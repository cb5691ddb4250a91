"""Test harness for the primary: the server as a subprocess, and peer clients as line-driven subprocesses.

Everything started here is stopped here (by process id), and every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
PEERS_DIR = REPO / ".peers"
PEER_DRIVERS = Path(__file__).resolve().parent / "peers"
TURSODB = PEERS_DIR / "node_modules" / "@tursodatabase" / "cli-linux-x64-gnu" / "tursodb"
NPM_SYNC = PEERS_DIR / "node_modules" / "@tursodatabase" / "sync" / "dist" / "promise.js"


def _readline(stream: Any, deadline: float, what: str) -> str:
    """One line from a pipe, failing at ``deadline`` instead of hanging."""
    fd = stream.fileno()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out waiting for {what}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            line = stream.readline()
            if not line:
                raise AssertionError(f"{what}: the process closed its output")
            return line


class PrimaryProcess:
    """``turso-sync serve`` in a subprocess; ``start``/``stop``/``restart``/``kill``."""

    def __init__(self, data_dir: Path, *args: str, port: int = 0) -> None:
        self.data_dir = data_dir
        self.args = list(args)
        self.port = port
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"

    def start(self, timeout: float = 30.0) -> str:
        log = open(self.log_path, "a")  # handed to the child, closed below
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "turso_sync.cli.main",
                    "serve",
                    "--data-dir",
                    str(self.data_dir),
                    "--listen",
                    f"127.0.0.1:{self.port}",
                    *self.args,
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                cwd=REPO,
            )
        finally:
            log.close()
        line = _readline(self.proc.stdout, time.monotonic() + timeout, "the server to start")
        assert "listening on" in line, line
        self.url = line.split("listening on ", 1)[1].split()[0]
        self.port = int(self.url.rsplit(":", 1)[1])
        return self.url

    def log(self) -> str:
        """Everything the server wrote to stderr so far."""
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            status = self.proc.wait(timeout)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None
        return status

    def kill(self) -> None:
        """SIGKILL: no chance to clean up."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None

    def restart(self, hard: bool = False) -> str:
        """Stop (or kill) and start again on the same port."""
        if hard:
            self.kill()
        else:
            self.stop()
        return self.start()

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/health", timeout=10).json()

    def close(self) -> None:
        if self.proc is not None:
            self.stop()


def pipeline(url: str, *statements: str | tuple[str, list[Any]], token: str | None = None) -> dict[str, Any]:
    """Run statements through /v2/pipeline as one batch; returns the batch result (asserts no step error)."""
    steps = []
    for item in statements:
        sql, args = (item, []) if isinstance(item, str) else item
        steps.append({"stmt": {"sql": sql, "args": [_value(a) for a in args]}})
    body = {"baton": None, "requests": [{"type": "batch", "batch": {"steps": steps}}]}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = httpx.post(f"{url}/v2/pipeline", json=body, headers=headers, timeout=60)
    assert resp.status_code == 200, resp.text
    result = resp.json()["results"][0]
    assert result["type"] == "ok", result
    batch = result["response"]["result"]
    assert all(e is None for e in batch["step_errors"]), batch["step_errors"]
    return batch


def _value(v: Any) -> dict[str, Any]:
    if v is None:
        return {"type": "null"}
    if isinstance(v, int):
        return {"type": "integer", "value": str(v)}
    if isinstance(v, float):
        return {"type": "float", "value": v}
    return {"type": "text", "value": str(v)}


class PeerError(AssertionError):
    """A peer client command failed."""


class Peer:
    """A real Turso sync client in a subprocess, driven one JSON command per line.

    ``kind`` is ``pyturso`` (PyPI pyturso 0.8.3) or ``npm`` (@tursodatabase/sync 0.7.2).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        if kind == "pyturso":
            argv = [sys.executable, str(PEER_DRIVERS / "pyturso_driver.py")]
        elif kind == "npm":
            node = shutil.which("node")
            assert node, "node is needed for the npm peer"
            argv = [node, str(PEER_DRIVERS / "npm_driver.mjs")]
        else:
            raise ValueError(kind)
        env = dict(os.environ, TURSO_PEERS=str(PEERS_DIR))
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
        )

    def send(self, op: str, **kw: Any) -> None:
        """Start a command without waiting for its answer."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()

    def receive(self, timeout: float = 60.0) -> Any:
        """The answer to the oldest command sent; raises PeerError if it failed."""
        line = _readline(self.proc.stdout, time.monotonic() + timeout, f"the {self.kind} client")
        answer = json.loads(line)
        if not answer["ok"]:
            raise PeerError(f"{self.kind}: {answer['error']}")
        return answer["result"]

    def call(self, op: str, timeout: float = 60.0, **kw: Any) -> Any:
        """Run a command and return its result."""
        self.send(op, **kw)
        return self.receive(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("close", timeout=30)
            except (PeerError, AssertionError):
                pass
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        if self.proc.stdout:
            self.proc.stdout.close()


def peers_installed() -> bool:
    """True when `make peers` has installed the npm client and the reference server."""
    return NPM_SYNC.exists() and TURSODB.exists()
