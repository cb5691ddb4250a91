"""Progress of long transfers (a clone, a large pull) on stderr.

On a terminal: a ``tqdm`` bar (bytes, percentage when the size is known, rate).  Anywhere else (a
log file, a pipe, CI, a pseudo-terminal without a size) there is no bar: a plain line at most once
a second, no carriage returns or escape codes.  Transfers that finish within half a second print
nothing: short pulls stay quiet.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from tqdm import tqdm


def human_bytes(count: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _is_terminal(stream: TextIO) -> bool:
    """A terminal with a width.  A pseudo-terminal of 0 columns (``script`` run without a terminal,
    for one) is a log, and tqdm would draw only empty lines there."""
    if not stream.isatty():
        return False
    try:
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (OSError, ValueError):
        return False


class ProgressMeter:
    """A ``progress(path, received, total)`` callback for the transport that shows how far a transfer is."""

    def __init__(self, label: str, stream: TextIO | None = None, *, delay: float = 0.5, every: float = 1.0) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.delay = delay
        self.every = every
        self.received = 0
        self._started: float | None = None
        self._last_drawn = 0.0
        self._drawn = False
        self._tty = _is_terminal(self.stream)
        self._bar: tqdm | None = None

    def __call__(self, path: str, received: int, total: int | None) -> None:
        restarted = received < self.received  # a new response (the first chunk of a long-poll answer, a retry)
        self.received = received
        if self._tty:
            self._show_bar(received, total, restarted)
            return
        now = time.monotonic()
        if self._started is None or restarted:
            self._started = now
        if now - self._started < self.delay:
            return
        if self._drawn and now - self._last_drawn < self.every:
            return
        self._last_drawn = now
        self._write_line(received, total, now - self._started)

    def _show_bar(self, received: int, total: int | None, restarted: bool) -> None:
        if restarted and self._bar is not None:
            self._bar.leave = False  # a retried or superseded response: clear its bar
            self._bar.close()
            self._bar = None
        if self._bar is None:
            self._bar = tqdm(
                desc=self.label,
                total=total,
                file=self.stream,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                delay=self.delay,
                leave=True,
                dynamic_ncols=True,
            )
        if total is not None and self._bar.total != total:
            self._bar.total = total
        self._bar.update(received - self._bar.n)

    def _write_line(self, received: int, total: int | None, elapsed: float) -> None:
        text = f"{self.label}: {human_bytes(received)}"
        if total:
            text += f" of {human_bytes(total)} ({100 * received // total}%)"
        text += f", {human_bytes(received / max(elapsed, 1e-6))}/s"
        self.stream.write(text + "\n")
        self.stream.flush()
        self._drawn = True

    def finish(self) -> None:
        """Close the bar on a terminal, leaving its last state on screen (call once the transfer is over)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._drawn = False
