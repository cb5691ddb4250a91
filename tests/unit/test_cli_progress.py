"""Progress on a terminal is a tqdm bar; in a pipe or a log there is no bar (a real pty and a real pipe)."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import termios
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from turso_sync.cli.progress import ProgressMeter


@contextmanager
def terminal(columns: int = 80) -> Iterator[tuple[TextIO, Callable[[], str]]]:
    """A text stream on the slave side of a pty and a function that reads what it showed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24 if columns else 0, columns, 0, 0))
    stream = open(slave, "w", encoding="utf-8")

    def shown() -> str:
        stream.flush()
        chunks = []
        while select.select([master], [], [], 0)[0]:
            chunks.append(os.read(master, 65536))
        return b"".join(chunks).decode()

    try:
        yield stream, shown
    finally:
        stream.close()
        os.close(master)


def test_on_a_terminal_a_bar_shows_bytes_and_percentage_and_stays_after_finish():
    with terminal() as (stream, shown):
        assert stream.isatty()
        meter = ProgressMeter("clone", stream, delay=0)
        meter("/pull-updates", 1024, 4096)
        meter("/pull-updates", 4096, 4096)
        meter.finish()
        text = shown()
    assert "\r" in text  # redrawn in place
    last = text.replace("\r\n", "\n").split("\r")[-1]
    assert last.startswith("clone: 100%|") and "4.00k/4.00k" in last and "B/s]" in last and last.endswith("\n")


def test_on_a_terminal_a_bar_not_due_yet_prints_nothing():
    with terminal() as (stream, shown):
        meter = ProgressMeter("pull", stream, delay=3600)
        meter("/pull-updates", 10, 100)
        meter("/pull-updates", 100, 100)
        meter.finish()
        assert shown() == ""


def test_in_a_pipe_there_is_no_bar_only_plain_lines():
    read_end, write_end = os.pipe()
    with open(write_end, "w") as stream, open(read_end) as pipe:
        assert not stream.isatty()
        meter = ProgressMeter("pull", stream, delay=0, every=0)
        for received in (1024, 2048, 4096):
            meter("/pull-updates", received, 4096)
        meter.finish()
        stream.close()
        text = pipe.read()
    lines = text.splitlines()
    assert len(lines) == 3 and all(line.startswith("pull: ") for line in lines)
    assert lines[-1].startswith("pull: 4.0 KiB of 4.0 KiB (100%), ")
    assert "\r" not in text and "\x1b" not in text and "|" not in text


def test_on_a_terminal_a_retried_response_replaces_the_bar():
    with terminal() as (stream, shown):
        meter = ProgressMeter("pull", stream, delay=0)
        meter("/pull-updates", 3072, 4096)
        meter("/pull-updates", 512, 2048)  # fewer bytes than before: a new response
        meter("/pull-updates", 2048, 2048)
        meter.finish()
        text = shown()
    final = text.replace("\r\n", "\n").split("\r")[-1]
    assert final.startswith("pull: 100%|") and "2.00k/2.00k" in final
    assert text.count("\n") == 1  # one bar left on screen, the superseded one cleared


def test_a_terminal_without_a_size_is_treated_as_a_log():
    with terminal(columns=0) as (stream, shown):
        assert stream.isatty()
        meter = ProgressMeter("pull", stream, delay=0, every=0)
        meter("/pull-updates", 2048, 4096)
        meter.finish()
        text = shown()
    assert text.startswith("pull: 2.0 KiB of 4.0 KiB (50%), ") and "|" not in text
    assert text.endswith("\r\n") and text.count("\r") == 1  # the pty's own newline, no redraw
