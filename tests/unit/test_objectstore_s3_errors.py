"""How S3Client maps S3's answers to the layer's errors, for answers weed mini never gives
(AWS's 404 on If-Match and 409 ConditionalRequestConflict, a 503): botocore's Stubber answers
in place of a server.  No network; the real-server tests are in tests/integration."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from botocore.stub import Stubber

from turso_sync.primary.objectstore.errors import ObjectNotFound, PreconditionFailed, StoreUnavailable
from turso_sync.primary.objectstore.s3 import S3Client, S3Location

LOCATION = S3Location("bucket", "", "http://127.0.0.1:9", "us-east-1")


def with_stub(
    monkeypatch: pytest.MonkeyPatch,
    arrange: Callable[[Stubber], None],
    act: Callable[[S3Client], Awaitable[object]],
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "stub")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "stub-secret")

    async def main() -> None:
        client = await S3Client.open(LOCATION, max_attempts=1)
        try:
            with Stubber(client._s3) as stub:
                arrange(stub)
                await act(client)
                stub.assert_no_pending_responses()
        finally:
            await client.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("status", "code"), [(412, "PreconditionFailed"), (404, "NoSuchKey"), (409, "ConditionalRequestConflict")]
)
def test_if_match_conflicts_of_every_kind_are_precondition_failed(
    monkeypatch: pytest.MonkeyPatch, status: int, code: str
) -> None:
    def arrange(stub: Stubber) -> None:
        stub.add_client_error("put_object", service_error_code=code, http_status_code=status)

    async def act(c: S3Client) -> None:
        with pytest.raises(PreconditionFailed, match=f"{status} {code}"):
            await c.put_if_match("k", b"x", '"etag"')

    with_stub(monkeypatch, arrange, act)


def test_a_404_on_an_unconditional_put_is_not_a_conflict(monkeypatch: pytest.MonkeyPatch) -> None:
    def arrange(stub: Stubber) -> None:
        stub.add_client_error("put_object", service_error_code="NoSuchBucket", http_status_code=404)

    async def act(c: S3Client) -> None:
        with pytest.raises(StoreUnavailable, match="404 NoSuchBucket"):
            await c.put("k", b"x")

    with_stub(monkeypatch, arrange, act)


def test_a_5xx_is_unavailable_and_a_missing_key_is_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    def arrange(stub: Stubber) -> None:
        stub.add_client_error("put_object", service_error_code="SlowDown", http_status_code=503)
        stub.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404)

    async def act(c: S3Client) -> None:
        with pytest.raises(StoreUnavailable, match="503 SlowDown"):
            await c.put_if_absent("k", b"x")
        with pytest.raises(ObjectNotFound, match="'k'"):
            await c.get("k")

    with_stub(monkeypatch, arrange, act)


def test_conditional_puts_send_the_conditions(monkeypatch: pytest.MonkeyPatch) -> None:
    def arrange(stub: Stubber) -> None:
        stub.add_response(
            "put_object", {"ETag": '"a"'}, {"Bucket": "bucket", "Key": "k", "Body": b"x", "IfNoneMatch": "*"}
        )
        stub.add_response(
            "put_object", {"ETag": '"b"'}, {"Bucket": "bucket", "Key": "k", "Body": b"y", "IfMatch": '"a"'}
        )

    async def act(c: S3Client) -> None:
        assert await c.put_if_absent("k", b"x") == '"a"'
        assert await c.put_if_match("k", b"y", '"a"') == '"b"'

    with_stub(monkeypatch, arrange, act)


def test_no_credentials_says_which_variables_to_set(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", f"{tmp_path}/none")
    monkeypatch.setenv("AWS_CONFIG_FILE", f"{tmp_path}/none")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    async def main() -> None:
        client = await S3Client.open(LOCATION, max_attempts=1)
        try:
            with pytest.raises(StoreUnavailable, match="no AWS credentials found; set AWS_ACCESS_KEY_ID"):
                await client.put("k", b"x")
        finally:
            await client.close()

    asyncio.run(main())
