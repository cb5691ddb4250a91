"""The compiled helper is optional: without it (not built, or refused by the environment) the package
imports and works on its pure-Python twins, and a WAL either one writes is read by the other."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import KEY256
from turso_sync import _compiled
from turso_sync.local.walformat import read_committed, wal_checksum_slow

# A child that opens an encrypted database, checks which checksum it uses, adds rows and dies
# without a checkpoint (os._exit), so the next opener must recover the committed frames from the
# WAL, checking every frame's checksum.  argv: path, rows to add, "absent" to run as if the module
# had never been built (a None in sys.modules makes its import fail, as a missing file does).
_CHILD = """
import os, sys
if sys.argv[3] == "absent":
    sys.modules["turso_sync._speedups"] = None
import turso_sync
from turso_sync.local import walformat
conn = turso_sync.connect(sys.argv[1], encryption_key=sys.argv[4])
conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB)")
before = conn.execute("SELECT count(*) FROM t").fetchone()[0]
for i in range(int(sys.argv[2])):
    conn.execute("INSERT INTO t (v) VALUES (?)", (os.urandom(3000),))
    conn.commit()
print(walformat.CHECKSUM_IMPLEMENTATION, before, "numpy" in sys.modules, flush=True)
os._exit(0)
"""


def _run_child(path: Path, rows: int, mode: str, env: dict[str, str] | None = None) -> tuple[str, int]:
    implementation, before, _numpy = _run_child_full(path, rows, mode, env)
    return implementation, before


def _run_child_full(path: Path, rows: int, mode: str, env: dict[str, str] | None = None) -> tuple[str, int, bool]:
    """What the child printed: the checksum in use, the rows it found, whether numpy got imported."""
    child_env = {k: v for k, v in os.environ.items() if k != _compiled.PURE_PYTHON_ENV}
    child_env.update(env or {})
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(rows), mode, KEY256],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert out.returncode == 0, out.stderr
    implementation, before, numpy = out.stdout.split()
    return implementation, int(before), numpy == "True"


def _built() -> bool:
    try:
        from turso_sync import _speedups  # noqa: F401
    except ImportError:
        return False
    return True


def test_without_the_compiled_module_the_package_works_and_wal_files_agree(tmp_path):
    db = tmp_path / "db"
    # written without the module: numpy checksums, left in the WAL by a process that died
    assert _run_child(db, 20, "absent") == ("numpy", 0)
    wal = (tmp_path / "db-wal").read_bytes()
    hdr, txns = read_committed(wal)
    assert hdr is not None and len(txns) >= 20  # every commit's frame chain verifies here too
    first = txns[0].frames[0]
    off = 32  # the first frame's header, right after the WAL header
    assert wal_checksum_slow(wal[off : off + 8] + first.body, hdr.cksum1, hdr.cksum2, hdr.big_endian) == (
        int.from_bytes(wal[off + 16 : off + 20], "big"),
        int.from_bytes(wal[off + 20 : off + 24], "big"),
    )
    # recovered by the implementation in use here (compiled where built), which adds more
    expected = "c" if _built() else "numpy"
    assert _run_child(db, 5, "default") == (expected, 20)
    # and back: the module-less process recovers what that one wrote
    assert _run_child(db, 0, "absent") == ("numpy", 25)


def test_the_environment_variable_forces_the_fallback(tmp_path):
    assert _run_child(tmp_path / "db", 3, "default", {_compiled.PURE_PYTHON_ENV: "1"}) == ("numpy", 0)


def test_the_environment_variable_set_to_0_or_empty_does_not(tmp_path):
    expected = "c" if _built() else "numpy"
    assert _run_child(tmp_path / "db", 1, "default", {_compiled.PURE_PYTHON_ENV: "0"}) == (expected, 0)
    assert _run_child(tmp_path / "db", 1, "default", {_compiled.PURE_PYTHON_ENV: ""}) == (expected, 1)


def test_numpy_is_imported_only_by_the_fallback(tmp_path):
    # importing numpy costs ~0.1 s of every start (and OpenBLAS's threads spin ~0.1 s of CPU after
    # it): with the compiled checksum a process that writes and recovers an encrypted WAL never does
    db = tmp_path / "db"
    assert _run_child_full(db, 3, "absent")[2] is True
    if _built():
        assert _run_child_full(db, 3, "default") == ("c", 3, False)


def test_speedups_answers_none_when_refused_or_absent(monkeypatch):
    for value in ("1", "yes"):
        monkeypatch.setenv(_compiled.PURE_PYTHON_ENV, value)
        assert _compiled.pure_python_forced()
        assert _compiled.speedups() is None
    monkeypatch.setenv(_compiled.PURE_PYTHON_ENV, "0")
    monkeypatch.setitem(sys.modules, "turso_sync._speedups", None)  # as if never built
    assert _compiled.speedups() is None
    monkeypatch.delitem(sys.modules, "turso_sync._speedups")
    if _built():
        assert _compiled.speedups() is not None


def test_fastvfs_answers_none_when_refused_or_absent(monkeypatch):
    monkeypatch.setenv(_compiled.PURE_PYTHON_ENV, "1")
    assert _compiled.fastvfs() is None
    monkeypatch.setenv(_compiled.PURE_PYTHON_ENV, "0")
    monkeypatch.setitem(sys.modules, "turso_sync._fastvfs", None)  # as if never built
    assert _compiled.fastvfs() is None
