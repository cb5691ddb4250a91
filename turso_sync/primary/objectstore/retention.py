"""Retention: history older than the window is dropped, down to the snapshot that still rebuilds it.

Every revision stored within the window (default 7 days) stays restorable: the newest snapshot
stored *before* the window began is kept, with the segment that ends at its revision and every
segment after it; older snapshots and every segment ending before that snapshot's revision are
deleted.  Without such a
snapshot nothing is deleted (the window's oldest revisions need the history before them).
Ages are the store's own ``LastModified`` dates, compared with the store's clock as the caller
passes it (``now``), never with a replica's.

Only the writer compacts (after it wrote a snapshot).  Readers that start from the latest
snapshot at or before the revision they want never touch what is deleted; a restore of a
revision older than the window gets ``RevisionNotStored`` naming the oldest that is kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .client import ObjectClient
from .layout import DatabaseKeys

log = logging.getLogger("turso_sync.primary.objectstore")

#: Default retention window: a week.
DEFAULT_RETENTION_S = 7 * 24 * 3600.0


@dataclass(frozen=True)
class Compaction:
    """What one compaction did: the snapshot history now starts from, and the objects deleted."""

    base: int | None
    segments_deleted: int
    snapshots_deleted: int


async def compact(client: ObjectClient, keys: DatabaseKeys, *, now: float, retention_s: float) -> Compaction:
    """Delete the history of ``keys.name`` that no revision stored after ``now - retention_s`` needs.

    Raises StoreUnavailable (whatever was deleted before stays deleted: each deletion is safe
    on its own, oldest first).
    """
    cutoff = now - retention_s
    snaps = []
    for info in await client.list(keys.snapshot_prefix):
        try:
            snaps.append((keys.snapshot_number(info.key), info))
        except ValueError:
            continue
    old = [(rev, info) for rev, info in snaps if info.modified is not None and info.modified < cutoff]
    if not old:
        return Compaction(None, 0, 0)
    base = max(rev for rev, _ in old)
    doomed_segments = []
    infos = await client.list(keys.log_prefix)
    for i, info in enumerate(infos):
        try:
            first = keys.segment_number(info.key)
        except ValueError:
            continue
        # a segment ends where the next begins (the newest is never doomed); the one that ends at
        # the base is kept, so the time of the base revision stays known (revision_at_time)
        following = next((keys.segment_number(j.key) for j in infos[i + 1 :] if _named(keys, j.key)), None)
        if following is not None and following - 1 < base and first <= base:
            doomed_segments.append(info.key)
    # the older snapshots first, then the segments oldest first: at every step the history that
    # is left reads as "begins at the base snapshot" (RevisionLog.load), never as a gap
    doomed_snaps = [info.key for rev, info in snaps if rev < base]
    for key in doomed_snaps:
        await client.delete(key)
    for key in doomed_segments:
        await client.delete(key)
    if doomed_segments or doomed_snaps:
        log.info(
            "database %s: history before revision %d compacted (%d segments, %d snapshots deleted)",
            keys.name,
            base,
            len(doomed_segments),
            len(doomed_snaps),
        )
    return Compaction(base, len(doomed_segments), len(doomed_snaps))


def _named(keys: DatabaseKeys, key: str) -> bool:
    try:
        keys.segment_number(key)
    except ValueError:
        return False
    return True
