"""`make demo` runs end to end and says what it shows (the same script, examples/demo.py, that `make demo` runs)."""

from __future__ import annotations

import subprocess
import sys

from tests.integration.cli_harness import REPO, clean_env


def test_demo_runs_and_stops_everything():
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "demo.py")],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for claim in (
        "plaintext 'TOP-SECRET' present: False",
        "(exit status 3)",
        "update/update on notes id=1 -> local",
        "both replicas hold the same 4 rows",
        "note 5 is readable on bob",
        "(daemon stopped by SIGTERM: exit status 0)",
        "demo finished",
    ):
        assert claim in out, claim
