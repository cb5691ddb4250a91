"""The main database file's controls: only the ones its class acts on reach Python.

With the compiled helper, SQLite's other controls (``LOCK_TIMEOUT`` at every read transaction)
go straight to the unix file through ``_speedups.file_control_router``; without it the class's
``xFileControl`` routes them itself.  Either way the checkpoint's controls still archive the WAL
(and the envelope layout still swallows the size hints).  ``make test`` runs this file with the
helper refused as well.
"""

from __future__ import annotations

import gc
import os
from collections import Counter
from pathlib import Path
from typing import Any

import apsw
import pytest

import turso_sync
from turso_sync import _compiled
from turso_sync.local import vfs
from turso_sync.local.framelog import FrameLog

KEY = "6f" * 32

_speedups = _compiled.speedups()
needs_compiled = pytest.mark.skipif(
    _speedups is None, reason="turso_sync._speedups not built, or refused by TURSO_SYNC_PURE_PYTHON"
)


class _File:
    """Anything a weak reference can point to."""


def _calls(log: list[tuple[str, object, int, int]], name: str) -> Any:
    def call(file: object, op: int, ptr: int) -> bool:
        log.append((name, file, op, ptr))
        return name == "hook"

    return call


@needs_compiled
def test_router_sends_the_handled_ops_to_the_hook_and_the_rest_to_base() -> None:
    assert _speedups is not None
    log: list[tuple[str, object, int, int]] = []
    f = _File()
    router = _speedups.file_control_router(f, frozenset({31, 32}), _calls(log, "hook"), _calls(log, "base"))
    assert router(31, 7) is True
    assert router(34, 8) is False  # LOCK_TIMEOUT
    assert router(32, 0) is True
    assert log == [("hook", f, 31, 7), ("base", f, 34, 8), ("hook", f, 32, 0)]


@needs_compiled
def test_router_holds_its_file_weakly_and_refuses_bad_input() -> None:
    assert _speedups is not None
    f = _File()
    router = _speedups.file_control_router(f, [1], _calls([], "hook"), _calls([], "base"))
    with pytest.raises(TypeError, match="exactly 2 positional arguments"):
        router(1)
    with pytest.raises(TypeError):
        router("1", 0)
    del f
    gc.collect()
    with pytest.raises(ReferenceError, match="no longer exists"):
        router(1, 0)
    with pytest.raises(TypeError, match="must be callable"):
        _speedups.file_control_router(_File(), [1], None, _calls([], "base"))
    with pytest.raises(ValueError, match="at most 8"):
        _speedups.file_control_router(_File(), range(9), _calls([], "hook"), _calls([], "base"))
    with pytest.raises(TypeError, match="must be ints"):
        _speedups.file_control_router(_File(), ["x"], _calls([], "hook"), _calls([], "base"))


@pytest.mark.parametrize(
    ("options", "cls"),
    [
        ({"encryption_key": KEY}, vfs.EncryptedDBFile),
        ({"encryption_key": KEY, "cipher": "envelope"}, vfs.EnvelopeDBFile),
        ({}, vfs.PlainDBFile),
    ],
    ids=["turso", "envelope", "plain"],
)
def test_only_the_controls_a_file_acts_on_reach_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: dict[str, str], cls: type
) -> None:
    seen: Counter[int] = Counter()
    method = cls.xFileControl

    def spy(self: Any, op: int, ptr: int) -> bool:
        seen[op] += 1
        return method(self, op, ptr)

    monkeypatch.setattr(cls, "xFileControl", spy)
    path = tmp_path / "db"
    db = turso_sync.connect(path, record_frames=True, **options)
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    db.executemany("INSERT INTO t (v) VALUES (?)", [(os.urandom(500),) for _ in range(300)])
    db.commit()
    for i in range(1, 50):  # a read transaction each: LOCK_TIMEOUT each
        db.execute("SELECT v FROM t WHERE id = ?", (i,)).fetchone()
    db.apsw_connection.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    assert db.execute("SELECT count(*) FROM t").fetchone() == (300,)
    db.close()
    # the checkpoint's controls still reach the class: the WAL was archived before its backfill
    assert seen[apsw.SQLITE_FCNTL_CKPT_START] >= 1 and seen[apsw.SQLITE_FCNTL_CKPT_DONE] >= 1
    assert FrameLog.exists(str(path))
    if _speedups is not None:
        assert set(seen) <= cls._handled_controls  # LOCK_TIMEOUT and the rest went to the unix file
    else:
        assert seen[apsw.SQLITE_FCNTL_LOCK_TIMEOUT] >= 49  # the class's method routes them itself
    again = turso_sync.connect(path, **options)
    assert again.execute("SELECT count(*) FROM t").fetchone() == (300,)
    again.close()


def test_the_router_is_used_exactly_when_the_compiled_helper_is() -> None:
    assert (vfs._file_control_router is None) == (_compiled.speedups() is None)
