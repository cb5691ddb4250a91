"""What ``connect(path, remote_url)`` opens: a local database, an existing replica or a new one.

Local work only (no network, no sync engine imported), so opening a plain database stays light.
"""

from __future__ import annotations

import contextlib
import os

from ..local.connection import Connection
from .files import ReplicaFiles


def replica_target(
    path: str, remote_url: str | None, encryption_key: str | None, cipher: str
) -> tuple[ReplicaFiles, bool, bool]:
    """What ``connect(path, remote_url)`` opens: ``(files, a replica?, a new one?)`` (local work only).

    A replica whose files no longer belong together is refused before anything opens it, and
    so is a database that lost its sync state (it holds the sync tables without ``-sync``).
    """
    real = os.path.realpath(path)
    files = ReplicaFiles(real)
    if remote_url is not None and not files.is_replica() and os.path.exists(real):
        opened = Connection(real, encryption_key=encryption_key, cipher=cipher, record_frames=False)
        with contextlib.closing(opened) as existing:
            files.raise_if_state_lost(existing)
    if remote_url is None and not files.is_replica():
        return files, False, False
    if files.is_replica():
        files.raise_if_damaged(encryption_key, cipher)
    return files, True, not files.is_replica() and not os.path.exists(real)
