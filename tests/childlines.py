"""Read a child process's stdout line by line, each read bounded by a deadline (no sleeping)."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from pathlib import Path


class ChildLines:
    """Lines from a child's binary stdout pipe; ``readline`` fails after ``timeout`` seconds."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buffer = b""
        self.eof = False
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.fd, selectors.EVENT_READ)

    def _fill(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for more output; False if none came."""
        if self.eof or not self.selector.select(max(timeout, 0.0)):
            return False
        chunk = os.read(self.fd, 65536)
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True

    def _pop(self) -> str | None:
        if b"\n" not in self.buffer:
            return None
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    def readline(self, timeout: float = 30.0) -> str:
        """The next full line (without its newline); AssertionError at the deadline or at EOF."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._pop()
            if line is not None:
                return line
            if self.eof:
                raise AssertionError(f"child exited (code {self.proc.poll()}) before writing a full line")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line from the child within {timeout}s")
            self._fill(remaining)

    def lines_until(self, deadline: float) -> list[str]:
        """Every full line that arrives before the monotonic ``deadline`` (or EOF)."""
        out = []
        while True:
            line = self._pop()
            if line is not None:
                out.append(line)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.eof:
                return out
            self._fill(remaining)

    def rest(self) -> list[str]:
        """Every complete line still to come, once the child has exited (the pipe reaches EOF).

        A partial last line (the child died in the middle of writing it) is dropped.
        """
        while self._fill(30.0):
            pass
        if not self.eof:
            raise AssertionError("the child's stdout did not reach EOF within 30s")
        out = []
        while (line := self._pop()) is not None:
            out.append(line)
        self.buffer = b""
        return out

    def close(self) -> None:
        self.selector.close()


def kill_after_commits(proc: subprocess.Popen[bytes], commits: int, extra_s: float, stderr_path: Path) -> list[str]:
    """Let a writer that prints ``ready`` and then ``commit ...`` lines run until ``commits`` of them
    came and ``extra_s`` seconds more, SIGKILL it, and return every line it printed."""
    lines = ChildLines(proc)
    seen: list[str] = []
    try:
        seen.append(lines.readline(timeout=60))
        assert seen[0] == "ready", seen
        done = 0
        while done < commits:
            line = lines.readline(timeout=60)
            seen.append(line)
            done += line.startswith("commit ")
        seen += lines.lines_until(time.monotonic() + extra_s)
        assert proc.poll() is None, f"the writer died on its own:\n{stderr_path.read_text()[-3000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        seen += lines.rest()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        lines.close()
    assert proc.returncode == -signal.SIGKILL
    return seen
