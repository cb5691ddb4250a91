"""A benchmark worker: a child process (``python -m MODULE --worker``) that answers JSON lines.

Each client library runs in a process of its own (pyturso caches databases per process) and times
itself; the benchmark sends one command per line and reads one answer per line, with a deadline.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


class JsonWorker:
    """One child process running ``MODULE --worker``."""

    def __init__(self, module: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )

    def ask(self, cmd: dict[str, Any], who: str, what: str, timeout: float) -> dict[str, Any]:
        """Send ``cmd``; the answer without its ``ok`` flag, or an error naming ``who`` and ``what``."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"the {who} worker did not finish {what} in {timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {who} worker exited during {what}")
        answer: dict[str, Any] = json.loads(line)
        if not answer.pop("ok"):
            raise RuntimeError(f"{who} failed {what}:\n{answer['error']}")
        return answer

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(60)
