"""`make demo` runs end to end and says what it shows (the same script, examples/demo.py, that `make demo` runs).

It also stops everything it started: once it exits (at the end, or on Ctrl-C in the middle of
the object-store part), no process is left running in its temporary folder or naming it, and
the folder is gone.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.cli_harness import REPO, clean_env

DEMO = [sys.executable, str(REPO / "examples" / "demo.py")]


def _demo_folder(out: str) -> str:
    found = re.search(r"(/\S*/turso-sync-demo-[^/\s]+)/", out)
    assert found, "the demo named no folder of its own"
    return found.group(1)


def _processes_in(folder: str) -> list[str]:
    """Processes whose command line names ``folder`` or whose working directory is inside it."""
    left = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if folder in cmdline or cwd.startswith(folder):
            left.append(f"{entry.name}: {cmdline.strip()}")
    return left


def test_demo_runs_and_stops_everything():
    done = subprocess.run(DEMO, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]  # nothing it started failed while stopping
    out = done.stdout
    for claim in (
        "plaintext 'TOP-SECRET' present: False",
        "(exit status 3)",
        "update/update on notes id=1 -> local",
        "both replicas hold the same 4 rows",
        "note 5 is readable on bob",
        "(daemon stopped by SIGTERM: exit status 0)",
        "a write sent to the standby directly while the writer lives: 503 WRITER_ELSEWHERE",
        "the standby took over: first sync acknowledged",
        "acknowledged rows lost: 0",
        "carol and dave both hold the same",
        "demo finished",
    ):
        assert claim in out, claim
    folder = _demo_folder(out)
    assert not os.path.exists(folder)
    assert _processes_in(folder) == []


def test_ctrl_c_during_the_object_store_part_stops_everything():
    """SIGINT to the demo's process group (what Ctrl-C in a terminal sends) once the store, both servers
    and the replicas run: the demo exits, says so, and leaves no process and no folder behind."""
    demo = subprocess.Popen(
        DEMO,
        cwd=REPO,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert demo.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(demo.stdout, selectors.EVENT_READ)
        seen = ""
        deadline = time.monotonic() + 240
        while "rows acknowledged" not in seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0 and selector.select(remaining), seen[-3000:]
            line = demo.stdout.readline()
            assert line, f"the demo exited early: {seen[-3000:]}"
            seen += line
        selector.close()
        folder = _demo_folder(seen[seen.index("object store") :])
        assert _processes_in(folder) != []  # the store and the servers are running now
        os.killpg(demo.pid, signal.SIGINT)
        rest = demo.stdout.read()
        assert demo.wait(60) == 130, rest[-3000:]
        assert "demo interrupted: everything it started is stopped" in rest
        assert "Traceback" not in rest
        assert not os.path.exists(folder)
        assert _processes_in(folder) == []
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(30)
        if demo.stdout is not None:
            demo.stdout.close()
