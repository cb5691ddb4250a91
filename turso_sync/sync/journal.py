"""The conflict journal: every conflict a rebase met, kept in ``_turso_sync_conflicts``.

The rebase writes it (``rebase.py``, inside the in-memory replay, so it is installed with the
pull); this module reads it back for ``conflicts()`` and ``stats()``.
"""

from __future__ import annotations

from ..local.capture import CONFLICTS_TABLE
from ..local.engine import LocalDatabase
from .rebase import Conflict, row_from_json


def read_conflicts(db: LocalDatabase) -> list[Conflict]:
    """The journal, oldest first."""
    out = []
    for row in db.query(
        f"SELECT id, at, revision, tbl, pk, kind, resolution, base, local, remote, result "
        f"FROM {CONFLICTS_TABLE} ORDER BY id"
    ):
        cid, at, revision, table, pk, kind, resolution, base, local, remote, result = row
        out.append(
            Conflict(
                table,
                row_from_json(pk) or {},
                kind,
                resolution,
                row_from_json(base),
                row_from_json(local),
                row_from_json(remote),
                row_from_json(result),
                revision or "",
                at,
                cid,
            )
        )
    return out


def conflict_count(db: LocalDatabase) -> int:
    """How many conflicts the journal holds."""
    return int(db.query(f"SELECT count(*) FROM {CONFLICTS_TABLE}")[0][0] or 0)
