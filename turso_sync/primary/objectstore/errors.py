"""Every exception of the object-store layer.

::

    turso_sync.Error
     └─ ObjectStoreError              anything the object store layer raises
         ├─ StoreUnavailable          the store did not answer, or answered an error: retry later (HTTP 503)
         ├─ ObjectNotFound            a GET of a key that does not exist
         ├─ PreconditionFailed        a conditional write lost (If-None-Match / If-Match)
         ├─ CorruptObject             an object's bytes are not what this layer wrote
         ├─ RevisionNotStored         a revision outside the history the store holds
         └─ NotWriter                 this process may not append: no unexpired writer lease
             └─ Deposed               another writer took over; this one is fenced off for good
"""

from __future__ import annotations

from ...errors import Error


class ObjectStoreError(Error):
    """Base class of the object-store layer's errors."""


class StoreUnavailable(ObjectStoreError):  # noqa: N818 - reads as a state
    """The store could not be reached, timed out, or answered an error; nothing was acknowledged."""


class ObjectNotFound(ObjectStoreError):  # noqa: N818 - reads as what happened
    """The key does not exist in the store."""

    def __init__(self, key: str) -> None:
        super().__init__(f"object {key!r} does not exist in the store")
        self.key = key


class PreconditionFailed(ObjectStoreError):  # noqa: N818 - the S3 error's own name
    """A conditional write lost: the key existed (If-None-Match) or changed or vanished (If-Match)."""

    def __init__(self, key: str, condition: str) -> None:
        super().__init__(f"conditional write of {key!r} refused: {condition}")
        self.key = key
        self.condition = condition


class CorruptObject(ObjectStoreError):  # noqa: N818 - reads as a state
    """An object's bytes do not decode as what this layer writes under that key."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"object {key!r} is corrupt or not written by turso-sync: {why}")
        self.key = key


class RevisionNotStored(ObjectStoreError):  # noqa: N818 - reads as a state
    """A revision outside the history held in the store (before the oldest snapshot, or after the head)."""


class NotWriter(ObjectStoreError):  # noqa: N818 - reads as a state
    """This process holds no unexpired writer lease for the database, so it may not append."""


class Deposed(NotWriter):
    """Another writer took the database over; this writer can never append to it again."""
