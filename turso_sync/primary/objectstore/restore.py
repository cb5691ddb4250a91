"""Point-in-time restore: the database's bytes at any stored revision.

The latest snapshot at or before the revision, then every revision after it up to the one
asked for, applied page by page (``apply_revision``, pure), and the file cut to the size the
last revision recorded.
"""

from __future__ import annotations

import datetime
import os

from .client import ObjectClient
from .errors import CorruptObject, RevisionNotStored
from .layout import DatabaseKeys
from .revlog import LogState, RevisionLog
from .segment import Revision, SnapshotImage


def apply_revision(image: bytearray, page_size: int, rev: Revision) -> None:
    """Write ``rev``'s pages into ``image`` (a whole database, in place) and cut it to ``rev.db_size`` pages.

    Raises CorruptObject if the result would have a page that no snapshot or revision supplied.
    """
    before = len(image) // page_size
    end = rev.db_size * page_size
    if len(image) > end:
        del image[end:]
    elif len(image) < end:
        missing = [p for p in range(before + 1, rev.db_size + 1) if p not in rev.pages]
        if missing:
            raise CorruptObject(
                f"revision {rev.number}",
                f"the database grows to {rev.db_size} pages but pages {missing[:5]} were never stored",
            )
        image.extend(bytes(end - len(image)))
    for pgno, page in rev.pages.items():
        if pgno <= rev.db_size:
            image[(pgno - 1) * page_size : pgno * page_size] = page


async def restore(client: ObjectClient, keys: DatabaseKeys, at: int | None = None) -> SnapshotImage:
    """The database ``keys.name`` as it was right after revision ``at`` (the newest stored one if None).

    Raises RevisionNotStored when ``at`` lies outside the stored history, StoreUnavailable
    when the store fails, CorruptObject when an object does not decode.
    """
    return image_of(await RevisionLog(client, keys).load(at), at)


def image_of(state: LogState, at: int | None = None) -> SnapshotImage:
    """The database a loaded log state describes (up to revision ``at``): its snapshot, then its revisions."""
    if state.snapshot is not None:
        image = bytearray(state.snapshot.data)
        page_size = state.snapshot.page_size
    else:
        image = bytearray()
        page_size = state.head.page_size
    for seg in state.segments:
        for rev in seg.revisions:
            if at is not None and rev.number > at:
                break
            apply_revision(image, seg.page_size, rev)
    return SnapshotImage(state.head.revision, page_size, len(image) // page_size, bytes(image))


async def restore_to_file(client: ObjectClient, keys: DatabaseKeys, path: str, at: int | None = None) -> int:
    """Write the database at ``at`` to a new file ``path`` (never over an existing one); return its revision."""
    image = await restore(client, keys, at)
    with open(path, "xb") as out:
        out.write(image.data)
        out.flush()
        os.fsync(out.fileno())
    return image.revision


async def revision_at_time(client: ObjectClient, keys: DatabaseKeys, when: float) -> int:
    """The newest revision that was durable in the store at Unix time ``when``.

    A revision is durable once the segment holding it is written, so this is the last revision
    of the newest segment the store dates (``LastModified``, by the store's clock, to the second
    on S3) at or before ``when``.  Raises RevisionNotStored when no segment is that old, or when
    the store gives no dates.
    """
    log = RevisionLog(client, keys)
    infos = [i for i in await client.list(keys.log_prefix) if _is_segment(keys, i.key)]
    if infos and any(i.modified is None for i in infos):
        raise RevisionNotStored(f"database {keys.name}: the store does not date its objects; restore a revision")
    older = [i for i in infos if i.modified is not None and i.modified <= when]
    if not older:
        first = min((i.modified for i in infos if i.modified is not None), default=None)
        since = f"the oldest stored revision was written at {_utc(first)}" if first is not None else "it is empty"
        raise RevisionNotStored(
            f"database {keys.name}: nothing was stored at or before {_utc(when)} ({since}); pick a later time"
        )
    chosen = max(older, key=lambda i: keys.segment_number(i.key))
    return (await log.read_segment(keys.segment_number(chosen.key))).last


def _is_segment(keys: DatabaseKeys, key: str) -> bool:
    try:
        keys.segment_number(key)
    except ValueError:
        return False
    return True


def _utc(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
