"""Revisions on the wire, and the commit feed that wakes long-polls (no polling)."""

from __future__ import annotations

import asyncio

import pytest

from turso_sync.errors import ProtocolError
from turso_sync.primary.revision import CommitFeed, format_revision, parse_revision


def test_revision_round_trip_and_rejects() -> None:
    assert parse_revision(format_revision(12), "client_revision") == 12
    for bad in ("", "-1", "1.0", "abc", " 1", "١٢", "9" * 21, str(2**63), "h-6059aff6e8005ad0"):
        with pytest.raises(ProtocolError, match="client_revision"):
            parse_revision(bad, "client_revision")


def test_feed_wakes_every_waiter_on_a_commit() -> None:
    async def scenario() -> list[object]:
        feed = CommitFeed()
        noted = feed.version
        feed.bump()  # a commit between noting the counter and waiting is not lost
        assert await feed.wait_after(noted, timeout=30)
        noted = feed.version
        first = asyncio.ensure_future(feed.wait_after(noted, timeout=30))
        second = asyncio.ensure_future(feed.wait_after(noted, timeout=30))
        await asyncio.sleep(0)  # let both register
        assert feed.waiting == 2
        feed.bump()
        woke = [await asyncio.wait_for(first, 5), await asyncio.wait_for(second, 5)]
        third = asyncio.ensure_future(feed.wait_after(feed.version, timeout=30))
        await asyncio.sleep(0)
        feed.close()  # shutdown releases waiters with "nothing new"
        return [*woke, await asyncio.wait_for(third, 5), feed.waiting, await feed.wait_after(feed.version, 30)]

    assert asyncio.run(scenario()) == [True, True, False, 0, False]


def test_feed_times_out() -> None:
    async def scenario() -> tuple[bool, int]:
        feed = CommitFeed()
        result = await feed.wait_after(feed.version, timeout=0.05)
        return result, feed.waiting

    assert asyncio.run(scenario()) == (False, 0)
