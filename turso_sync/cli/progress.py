"""A byte counter on stderr for long transfers (a clone, a large pull).

On a terminal it redraws one line; otherwise (a log file, a pipe) it writes a line at most once
a second.  Transfers that finish within half a second print nothing: short pulls stay quiet.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def human_bytes(count: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


class ProgressMeter:
    """A ``progress(path, received, total)`` callback for the transport that draws a counter."""

    def __init__(self, label: str, stream: TextIO | None = None, *, delay: float = 0.5, every: float = 1.0) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.delay = delay
        self.every = every
        self.received = 0
        self._started: float | None = None
        self._last_drawn = 0.0
        self._drawn = False
        self._tty = self.stream.isatty()

    def __call__(self, path: str, received: int, total: int | None) -> None:
        now = time.monotonic()
        if self._started is None or received < self.received:
            self._started = now  # a new response (the first chunk of a long-poll answer, a retry)
        self.received = received
        if now - self._started < self.delay:
            return
        if not self._tty and self._drawn and now - self._last_drawn < self.every:
            return
        if self._tty and now - self._last_drawn < 0.1:
            return
        self._last_drawn = now
        self._draw(received, total, now - self._started)

    def _draw(self, received: int, total: int | None, elapsed: float) -> None:
        text = f"{self.label}: {human_bytes(received)}"
        if total:
            text += f" of {human_bytes(total)} ({100 * received // total}%)"
        text += f", {human_bytes(received / max(elapsed, 1e-6))}/s"
        if self._tty:
            self.stream.write("\r\033[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self._drawn = True

    def finish(self) -> None:
        """End the redrawn line on a terminal (call once the transfer is over)."""
        if self._tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
        self._drawn = False
