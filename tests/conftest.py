"""Shared fixtures: keys, a real S3 store (`weed`), and a helper to wait on a condition with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.s3_harness import WeedMini

KEY256 = "00112233445566778899aabbccddeeff" * 2
KEY128 = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


def wait_for(condition: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(params=["encrypted", "plaintext"])
def key(request: pytest.FixtureRequest) -> str | None:
    """Run a test against an encrypted and a plaintext database."""
    return KEY256 if request.param == "encrypted" else None


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WeedMini]:
    """One real ``weed mini`` (an S3 store on loopback) per test module, its access key in this
    process's environment (and so in the servers' it starts); stopped after the module."""
    from tests.s3_harness import running_weed

    with running_weed(tmp_path_factory.mktemp("weed")) as server:
        yield server
