"""``ObjectClient`` for any S3-compatible service, over aiobotocore (no S3 signing of our own).

Path-style addressing (``http://endpoint/bucket/key``), so a local SeaweedFS or MinIO works
without wildcard DNS.  Credentials come only from botocore's standard chain: the
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (/ ``AWS_SESSION_TOKEN``) environment
variables, ``AWS_PROFILE`` and the files under ``~/.aws``; this module never reads, takes or
logs them.

Conditional writes map to S3's headers: ``put_if_absent`` sends ``If-None-Match: *``,
``put_if_match`` sends ``If-Match: <etag>``.  A refusal is 412 ``PreconditionFailed``; AWS
answers ``If-Match`` on a missing key with 404 and a concurrent conditional write with 409
``ConditionalRequestConflict``, SeaweedFS with 412: all three are a lost condition here.
Anything else that fails (refused connection, timeout, 5xx after botocore's retries) is
``StoreUnavailable``: the caller does not know whether a write landed and must find out
(the revision log reads the key back).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from .client import ObjectInfo, StoredObject, check_key
from .errors import ObjectNotFound, PreconditionFailed, StoreUnavailable

#: Errors of the aiohttp transport underneath botocore that escape its own wrapping.
#: The slowest upload a PUT's deadline allows for (bytes per second), on top of ``write_budget_s``.
PUT_FLOOR_BYTES_PER_S = 1 << 20

_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError)
try:
    import aiohttp

    _TRANSPORT_ERRORS = (*_TRANSPORT_ERRORS, aiohttp.ClientError)
except ImportError:  # pragma: no cover - aiohttp is a dependency of both aiobotocore and the primary
    pass


@dataclass(frozen=True)
class S3Location:
    """Where a store lives: ``s3://BUCKET/PREFIX``, the endpoint URL and the region."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str = "us-east-1"

    @classmethod
    def parse(cls, url: str, endpoint_url: str | None = None, region: str | None = None) -> S3Location:
        """The location named by ``s3://BUCKET[/PREFIX]``; ValueError saying what is wrong."""
        if not url.startswith("s3://"):
            raise ValueError(f"store {url!r} is not an s3:// URL (expected s3://BUCKET/PREFIX)")
        bucket, _, prefix = url[len("s3://") :].partition("/")
        prefix = prefix.strip("/")
        if not bucket or "/" in bucket:
            raise ValueError(f"store {url!r} names no bucket (expected s3://BUCKET/PREFIX)")
        if prefix:
            check_key(prefix)
        return cls(bucket, prefix, endpoint_url, region or "us-east-1")

    def key(self, name: str) -> str:
        """The full key of ``name`` under this location's prefix."""
        return check_key(f"{self.prefix}/{name}" if self.prefix else name)


class S3Client:
    """An ``ObjectClient`` on one bucket; create with ``await S3Client.open(location)``, then ``close()``."""

    def __init__(
        self, location: S3Location, client: Any, stack: contextlib.AsyncExitStack, write_budget_s: float = 20.0
    ) -> None:
        self.location = location
        self._s3 = client
        self._stack = stack
        #: a PUT's deadline, plus its size at PUT_FLOOR_BYTES_PER_S (see ``_put``)
        self.write_budget_s = write_budget_s

    @classmethod
    async def open(
        cls,
        location: S3Location,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 15.0,
        max_attempts: int = 3,
        max_pool_connections: int = 32,
    ) -> S3Client:
        """Open a connection pool to the location's endpoint (nothing is sent until the first request)."""
        config = AioConfig(
            s3={"addressing_style": "path"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            max_pool_connections=max_pool_connections,
        )
        stack = contextlib.AsyncExitStack()
        session = get_session()
        client = await stack.enter_async_context(
            session.create_client("s3", endpoint_url=location.endpoint_url, region_name=location.region, config=config)
        )
        return cls(location, client, stack, write_budget_s=connect_timeout + read_timeout)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._stack.aclose()

    async def __aenter__(self) -> S3Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- the interface ---------------------------------------------------------------------------

    async def get(self, key: str) -> StoredObject:
        """The object at ``key``; raises ObjectNotFound."""
        try:
            resp = await self._s3.get_object(Bucket=self.location.bucket, Key=key)
            async with resp["Body"] as body:
                data = await body.read()
        except ClientError as exc:
            if _status(exc) == 404:
                raise ObjectNotFound(key) from None
            raise self._unavailable("GET", key, exc) from None
        except (BotoCoreError, *_TRANSPORT_ERRORS) as exc:
            raise self._unavailable("GET", key, exc) from None
        return StoredObject(bytes(data), str(resp["ETag"]))

    async def put(self, key: str, data: bytes) -> str:
        """Write unconditionally; return the ETag."""
        return await self._put(key, data, {})

    async def put_if_absent(self, key: str, data: bytes) -> str:
        """Write only if ``key`` does not exist (``If-None-Match: *``); raises PreconditionFailed."""
        return await self._put(key, data, {"IfNoneMatch": "*"})

    async def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        """Replace only if the ETag is still ``etag`` (``If-Match``); raises PreconditionFailed."""
        return await self._put(key, data, {"IfMatch": etag})

    async def _put(self, key: str, data: bytes, condition: dict[str, str]) -> str:
        check_key(key)
        # botocore sends a PUT with "Expect: 100-continue", and aiohttp starts its read timeout only
        # once the body is out, which waits for the 100: a store that accepts the connection and
        # then stalls would hold the PUT (and every push waiting on it) for as long as it stalls.
        # So each PUT has a deadline of its own; running out of it is "unavailable", like any
        # other failed write whose outcome is unknown (the caller reads the key back).
        deadline = self.write_budget_s + len(data) / PUT_FLOOR_BYTES_PER_S
        try:
            async with asyncio.timeout(deadline):
                resp = await self._s3.put_object(Bucket=self.location.bucket, Key=key, Body=data, **condition)
        except ClientError as exc:
            status, code = _status(exc), _code(exc)
            lost = status == 412 or code == "ConditionalRequestConflict" or (status == 404 and "IfMatch" in condition)
            if condition and lost:
                what = "the key exists (If-None-Match: *)" if "IfNoneMatch" in condition else "the ETag changed"
                raise PreconditionFailed(key, f"{what}; store said {status} {code}") from None
            raise self._unavailable("PUT", key, exc) from None
        except (BotoCoreError, *_TRANSPORT_ERRORS) as exc:
            raise self._unavailable("PUT", key, exc) from None
        return str(resp["ETag"])

    async def list(self, prefix: str, start_after: str | None = None) -> list[ObjectInfo]:
        """Every key under ``prefix`` after ``start_after``, in byte order (all pages of ListObjectsV2)."""
        args: dict[str, Any] = {"Bucket": self.location.bucket, "Prefix": prefix}
        if start_after is not None:
            args["StartAfter"] = start_after
        out: list[ObjectInfo] = []
        try:
            paginator = self._s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(**args):
                for item in page.get("Contents", ()):
                    stamp = item.get("LastModified")
                    modified = stamp.timestamp() if stamp is not None else None
                    out.append(ObjectInfo(str(item["Key"]), int(item["Size"]), str(item.get("ETag", "")), modified))
        except (ClientError, BotoCoreError, *_TRANSPORT_ERRORS) as exc:
            raise self._unavailable("LIST", prefix, exc) from None
        return out

    async def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""
        try:
            await self._s3.delete_object(Bucket=self.location.bucket, Key=key)
        except ClientError as exc:
            if _status(exc) != 404:
                raise self._unavailable("DELETE", key, exc) from None
        except (BotoCoreError, *_TRANSPORT_ERRORS) as exc:
            raise self._unavailable("DELETE", key, exc) from None

    def _unavailable(self, op: str, key: str, exc: BaseException) -> StoreUnavailable:
        where = self.location.endpoint_url or "AWS S3"
        if isinstance(exc, NoCredentialsError):
            return StoreUnavailable(
                f"{op} s3://{self.location.bucket}/{key}: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the server's environment"
            )
        detail = f"{_status(exc)} {_code(exc)}" if isinstance(exc, ClientError) else f"{type(exc).__name__}: {exc}"
        return StoreUnavailable(f"{op} s3://{self.location.bucket}/{key} at {where} failed ({detail}); retry later")


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
