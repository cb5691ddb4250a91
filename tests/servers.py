"""Real servers on 127.0.0.1 for integration tests: Turso's tursodb and our primary.

Each is a context manager that starts the server as a child process on a free port, waits (with
a deadline) until it answers, yields its URL, and stops it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent
TURSODB = ROOT / ".peers" / "node_modules" / "@tursodatabase" / "cli-linux-x64-gnu" / "tursodb"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str, path: str, method: str = "GET") -> bool:
    try:
        if method == "GET":
            httpx.get(url + path, timeout=1)
        else:
            httpx.post(url + path, content=b'{"baton":null,"requests":[]}', timeout=1)
        return True
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def tursodb(folder: Path) -> Iterator[str]:
    """Turso's reference sync server (``tursodb --sync-server``) on a fresh database."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [str(TURSODB), "-q", "--sync-server", f"127.0.0.1:{port}", str(folder / "server.db")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is not None or _answers(url, "/v2/pipeline", "POST"), 30, "tursodb to listen")
        assert proc.poll() is None, "tursodb exited at start"
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=10)


@contextlib.contextmanager
def primary(data_dir: Path, *extra: str, port: int | None = None) -> Iterator[str]:
    """Our primary (``turso-sync serve``) in development mode unless ``extra`` says otherwise."""
    port = port or free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "turso_sync.cli.main",
            "serve",
            "--data-dir",
            str(data_dir),
            "--listen",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is not None or _answers(url, "/health"), 30, "the primary to listen")
        if proc.poll() is not None:
            raise AssertionError(f"primary exited at start: {proc.stderr.read().decode() if proc.stderr else ''}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
