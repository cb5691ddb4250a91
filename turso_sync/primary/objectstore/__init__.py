"""The primary's object-store layer: a durable, fenced revision log of each database in any S3 store.

Used by ``turso-sync serve --store`` (``primary/durable.py``) and ``turso-sync restore``; see
docs/object-storage.md.

* ``client``: the ``ObjectClient`` interface (put/get/list/delete, put-if-absent, put-if-match);
  ``s3.S3Client`` over aiobotocore, ``memory.MemoryClient`` for fast unit tests;
* ``segment``: the bytes of revision segments and snapshots (zstd), pure;
* ``revlog``: ``RevisionLog`` (reading) and ``LogWriter`` (the single, fenced appender);
* ``lease``: ``WriterLease``, the writer lease with an epoch;
* ``group``: ``GroupCommit``, revisions that arrive together shipped as one object;
* ``restore``: the database bytes at any stored revision;
* ``shipping``: revisions and whole images read from the local engine, as stored on disk
  (imported on its own: it pulls in the local engine).
"""

from .client import ObjectClient, ObjectInfo, StoredObject
from .errors import (
    CorruptObject,
    Deposed,
    NotWriter,
    ObjectNotFound,
    ObjectStoreError,
    PreconditionFailed,
    RevisionNotStored,
    StoreUnavailable,
)
from .group import GroupCommit
from .layout import DatabaseKeys
from .lease import LeaseRecord, WriterLease
from .memory import MemoryClient
from .restore import apply_revision, image_of, restore, restore_to_file, revision_at_time
from .revlog import LogHead, LogState, LogWriter, RevisionLog
from .segment import Revision, Segment, SnapshotImage

__all__ = [
    "CorruptObject",
    "DatabaseKeys",
    "Deposed",
    "GroupCommit",
    "LeaseRecord",
    "LogHead",
    "LogState",
    "LogWriter",
    "MemoryClient",
    "NotWriter",
    "ObjectClient",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStoreError",
    "PreconditionFailed",
    "Revision",
    "RevisionLog",
    "RevisionNotStored",
    "Segment",
    "SnapshotImage",
    "StoreUnavailable",
    "StoredObject",
    "WriterLease",
    "apply_revision",
    "image_of",
    "restore",
    "restore_to_file",
    "revision_at_time",
]
