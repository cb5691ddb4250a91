"""The storage interface: a small set of object operations every backend implements.

Modelled on Litestream's ``ReplicaClient``: the revision log, the snapshots and the writer
lease are built on put/get/list/delete plus two conditional writes, so a backend is a small
class (``s3.S3Client`` for any S3-compatible service, ``memory.MemoryClient`` for fast unit
tests).  Keys are ``/``-separated paths without empty segments: SeaweedFS collapses ``//``,
so a key with one would name a different object there than on AWS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ObjectInfo:
    """One key as listed: its name, size in bytes, ETag (quoted, as the store gives it) and when the
    store wrote it (Unix time by the store's clock, as precise as the store says: S3 gives seconds;
    None when unknown)."""

    key: str
    size: int
    etag: str
    modified: float | None = None


@dataclass(frozen=True)
class StoredObject:
    """The bytes of an object and the ETag to pass to ``put_if_match`` to replace exactly them."""

    data: bytes
    etag: str


class ObjectClient(Protocol):
    """What the revision log and the lease need from an object store."""

    async def get(self, key: str) -> StoredObject:
        """The object at ``key``; raises ObjectNotFound."""
        ...

    async def put(self, key: str, data: bytes) -> str:
        """Write ``data`` at ``key`` unconditionally; return its ETag."""
        ...

    async def put_if_absent(self, key: str, data: bytes) -> str:
        """Write ``data`` only if ``key`` does not exist (``If-None-Match: *``); raises PreconditionFailed."""
        ...

    async def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        """Replace the object only if its ETag is ``etag`` (``If-Match``); raises PreconditionFailed,
        also when the key does not exist."""
        ...

    async def list(self, prefix: str, start_after: str | None = None) -> list[ObjectInfo]:
        """Every key under ``prefix`` (after ``start_after``, if given), in byte order."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key``; a key that does not exist is not an error."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def check_key(key: str) -> str:
    """``key`` if it is a usable object key, else ValueError naming it."""
    if not key or key.startswith("/") or "//" in key or len(key.encode()) > 1024:
        raise ValueError(
            f"object key {key!r} is not usable: it must be 1-1024 bytes, not start with '/' and have no '//'"
        )
    return key
