"""``rekey`` stopped at one of its saved points, in process: what a SIGKILL there leaves on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from turso_sync.crypto.keyring import KeyRing
from turso_sync.local import rekey as rekey_module
from turso_sync.local.rekey import rekey


class Killed(BaseException):
    """Stands for SIGKILL at one of the sweep's saved points."""


def stop_rotation_midway(path: Path, old: str, new: str, monkeypatch: pytest.MonkeyPatch, saves: int) -> None:
    """``rekey`` killed after its ``saves``-th save of the ring (1: ring written, 2: start committed, 3+: batches)."""
    saved = rekey_module._Rotation._save_ring
    calls = 0

    def save_then_maybe_die(self: rekey_module._Rotation, ring: KeyRing) -> None:
        nonlocal calls
        calls += 1
        saved(self, ring)
        if calls == saves:
            raise Killed()

    monkeypatch.setattr(rekey_module._Rotation, "_save_ring", save_then_maybe_die)
    with pytest.raises(Killed):
        rekey(path, encryption_key=old, new_key=new, batch_pages=4)
    monkeypatch.undo()
