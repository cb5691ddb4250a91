"""Running ``turso-sync`` the way a user types it, against a real primary on 127.0.0.1.

``cli(...)`` runs ``python -m turso_sync.cli.main ARGS`` in a child process (cwd = the test's
folder, no TURSO_SYNC_* variables inherited) and returns its exit status, stdout and stderr.
Each test addresses its own database on a shared primary (``/db/<unique name>``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import KEY256
from tests.integration.primary_harness import PrimaryProcess

REPO = Path(__file__).resolve().parents[2]
TURSO_SYNC = [sys.executable, "-m", "turso_sync.cli.main"]


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def both(self) -> str:
        return self.out + self.err


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without our variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURSO_SYNC_")}
    env.update(extra)
    return env


def cli(*args: str | Path, cwd: Path, env: dict[str, str] | None = None, stdin: str | None = None) -> Result:
    """Run one command to completion (a minute at most)."""
    proc = subprocess.run(
        [*TURSO_SYNC, *map(str, args)],
        cwd=cwd,
        env=env if env is not None else clean_env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def key_env(key: str = KEY256) -> dict[str, str]:
    """The environment carrying the encryption key."""
    return clean_env(TURSO_SYNC_ENCRYPTION_KEY=key)


@contextlib.contextmanager
def running_primary(folder: Path, *args: str) -> Iterator[PrimaryProcess]:
    """Our primary as a child process (stopped at the end)."""
    folder.mkdir(parents=True, exist_ok=True)
    server = PrimaryProcess(folder / "data", "--log-level", "warning", *args)
    server.start()
    try:
        yield server
    finally:
        server.close()


def fresh_url(server: PrimaryProcess) -> str:
    """A database of its own on the shared primary."""
    return f"{server.url}/db/t{uuid.uuid4().hex[:12]}"
