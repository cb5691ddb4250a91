"""The server a simulation runs against, on 127.0.0.1.

``InProcessPrimary``: our primary (``turso_sync.primary``) from a background event loop;
``TursodbServer``: ``tursodb --sync-server`` (``--server tursodb``).  Both restart on the same
port with the same data, so replicas keep their URL.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx

from turso_sync.primary.server import PrimaryServer, ServerConfig

logging.getLogger("turso_sync.primary").setLevel(logging.ERROR)


class InProcessPrimary:
    """``start()``, ``restart()``, ``close()``; ``query(sql)`` runs SQL on it over Hrana."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = 0
        self.url = ""
        self._server: PrimaryServer | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sim-primary", daemon=True)
        self._thread.start()
        self._http = httpx.Client(timeout=60)

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(120)

    def start(self) -> str:
        """Serve the data directory (on the port of the last run, if any)."""
        server = PrimaryServer(ServerConfig(str(self.data_dir), host="127.0.0.1", port=self.port))
        self.url = self._run(server.start())
        self.port = int(self.url.rsplit(":", 1)[1])
        self._server = server
        return self.url

    def stop(self) -> None:
        """Stop serving (requests in flight finish; databases are closed)."""
        if self._server is not None:
            self._run(self._server.stop())
            self._server = None

    def restart(self) -> None:
        """Stop, then serve again on the same port."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and end the loop thread."""
        self.stop()
        self._http.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()

    def query(self, sql: str, args: list[Any] | None = None) -> list[list[Any]]:
        """Rows of one statement run on the primary (values as Python objects)."""
        return hrana_query(self._http, self.url, sql, args)


def hrana_query(http: httpx.Client, url: str, sql: str, args: list[Any] | None = None) -> list[list[Any]]:
    """Rows of one statement run over ``/v2/pipeline`` on any server speaking Hrana."""
    stmt = {"sql": sql, "args": [_hrana_value(a) for a in args or []], "want_rows": True}
    # a one-step batch: the request form both our primary and tursodb answer
    body = {"baton": None, "requests": [{"type": "batch", "batch": {"steps": [{"stmt": stmt}]}}]}
    resp = http.post(f"{url}/v2/pipeline", json=body)
    if resp.status_code != 200:
        raise RuntimeError(f"{url} answered {resp.status_code} to {sql!r}: {resp.text[:300]}")
    result = resp.json()["results"][0]
    if result["type"] != "ok":
        raise RuntimeError(f"{url} refused {sql!r}: {result}")
    batch = result["response"]["result"]
    if batch["step_errors"][0] is not None:
        raise RuntimeError(f"{url} refused {sql!r}: {batch['step_errors'][0]}")
    return [[_python_value(v) for v in row] for row in batch["step_results"][0]["rows"]]


def _hrana_value(v: Any) -> dict[str, Any]:
    if v is None:
        return {"type": "null"}
    if isinstance(v, int):
        return {"type": "integer", "value": str(v)}
    return {"type": "text", "value": str(v)}


def _python_value(v: dict[str, Any]) -> Any:
    kind = v["type"]
    if kind == "null":
        return None
    if kind == "integer":
        return int(v["value"])
    if kind == "float":
        return float(v["value"])
    if kind == "blob":
        import base64

        return base64.b64decode(v["base64"])
    return v["value"]


class TursodbServer:
    """Turso's reference server (``tursodb --sync-server``) with the same face as ``InProcessPrimary``.

    Restarts are ``kill -9`` and a new process on the same port and database file.
    """

    def __init__(self, data_dir: Path) -> None:
        from tests.servers import TURSODB, free_port

        self.binary = str(TURSODB)
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._http = httpx.Client(timeout=60)

    def start(self) -> str:
        """Start serving the database file."""
        from tests.conftest import wait_for

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [self.binary, "-q", "--sync-server", f"127.0.0.1:{self.port}", str(self.data_dir / "server.db")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        proc = self._proc
        wait_for(lambda: proc.poll() is not None or self._answers(), 30, "tursodb to listen")
        if proc.poll() is not None:
            raise RuntimeError(f"tursodb exited at start with {proc.returncode}")
        return self.url

    def _answers(self) -> bool:
        try:
            self._http.post(f"{self.url}/v2/pipeline", content=b'{"baton":null,"requests":[]}', timeout=1)
            return True
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        """Kill the server."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(30)
            self._proc = None

    def restart(self) -> None:
        """Kill, then serve again on the same port."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server."""
        self.stop()
        self._http.close()

    def query(self, sql: str, args: list[Any] | None = None) -> list[list[Any]]:
        """Rows of one statement run on the server."""
        return hrana_query(self._http, self.url, sql, args)
