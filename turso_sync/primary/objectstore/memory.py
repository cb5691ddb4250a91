"""An object store held in memory, for fast unit tests only.

It implements the same ``ObjectClient`` interface with the semantics the S3 client gives:
ETags are the quoted MD5 of the content, ``If-Match`` on a missing key is a conflict, listing
is in byte order.  It proves nothing about a real store: the integration tests run the same
code against ``weed mini``.  Every operation yields to the event loop first, so tasks racing
on it interleave as they would over a network.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable

from .client import ObjectInfo, StoredObject, check_key
from .errors import ObjectNotFound, PreconditionFailed, StoreUnavailable


class MemoryClient:
    """A dict of key -> bytes behind the ``ObjectClient`` interface."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        #: when each key was written, by ``clock`` (a test may replace the clock)
        self.modified: dict[str, float] = {}
        self.clock: Callable[[], float] = time.time
        #: set by a test to fail operations: called with (operation, key); raise to fail it
        self.fault: Callable[[str, str], None] | None = None
        self.requests = 0

    async def _enter(self, op: str, key: str) -> None:
        await asyncio.sleep(0)  # let other tasks run, as a network round trip would
        self.requests += 1
        if self.fault is not None:
            self.fault(op, key)

    @staticmethod
    def _etag(data: bytes) -> str:
        return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'

    async def get(self, key: str) -> StoredObject:
        """The object at ``key``; raises ObjectNotFound."""
        await self._enter("get", key)
        data = self.objects.get(key)
        if data is None:
            raise ObjectNotFound(key)
        return StoredObject(data, self._etag(data))

    async def put(self, key: str, data: bytes) -> str:
        """Write unconditionally; return the ETag."""
        await self._enter("put", check_key(key))
        self.objects[key] = bytes(data)
        self.modified[key] = self.clock()
        return self._etag(data)

    async def put_if_absent(self, key: str, data: bytes) -> str:
        """Write only if ``key`` does not exist; raises PreconditionFailed."""
        await self._enter("put_if_absent", check_key(key))
        if key in self.objects:
            raise PreconditionFailed(key, "the key exists (If-None-Match: *)")
        self.objects[key] = bytes(data)
        self.modified[key] = self.clock()
        return self._etag(data)

    async def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        """Replace only if the current ETag is ``etag``; raises PreconditionFailed."""
        await self._enter("put_if_match", check_key(key))
        current = self.objects.get(key)
        if current is None or self._etag(current).strip('"') != etag.strip('"'):
            raise PreconditionFailed(key, f"the object is no longer {etag} (If-Match)")
        self.objects[key] = bytes(data)
        self.modified[key] = self.clock()
        return self._etag(data)

    async def list(self, prefix: str, start_after: str | None = None) -> list[ObjectInfo]:
        """Keys under ``prefix`` after ``start_after``, in byte order."""
        await self._enter("list", prefix)
        keys = sorted(
            (k for k in self.objects if k.startswith(prefix) and (start_after is None or k > start_after)),
            key=lambda k: k.encode(),
        )
        return [ObjectInfo(k, len(self.objects[k]), self._etag(self.objects[k]), self.modified.get(k)) for k in keys]

    async def delete(self, key: str) -> None:
        """Remove ``key`` if it exists."""
        await self._enter("delete", key)
        self.objects.pop(key, None)
        self.modified.pop(key, None)

    async def close(self) -> None:
        """Nothing to release."""


def unavailable(op: str, key: str) -> None:
    """A ``fault`` hook that fails every operation, as a store that is down would."""
    raise StoreUnavailable(f"the store is down (simulated) during {op} of {key!r}")
