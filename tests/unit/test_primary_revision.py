"""Revisions on the wire, and the long-poll feed (no polling, wakes on publish)."""

from __future__ import annotations

import asyncio

import pytest

from turso_sync.errors import ProtocolError
from turso_sync.primary.revision import RevisionFeed, format_revision, parse_revision


def test_revision_round_trip_and_rejects() -> None:
    assert parse_revision(format_revision(12), "client_revision") == 12
    for bad in ("", "-1", "1.0", "abc", " 1", "١٢", "9" * 21, str(2**63), "h-6059aff6e8005ad0"):
        with pytest.raises(ProtocolError, match="client_revision"):
            parse_revision(bad, "client_revision")


def test_feed_wakes_waiters_beyond_their_revision() -> None:
    async def scenario() -> list[object]:
        feed = RevisionFeed(5)
        assert await feed.wait_beyond(4, timeout=0)  # already newer: no wait at all
        waiter = asyncio.ensure_future(feed.wait_beyond(5, timeout=30))
        other = asyncio.ensure_future(feed.wait_beyond(6, timeout=30))
        await asyncio.sleep(0)  # let both register
        assert feed.waiting == 2
        feed.publish(6)
        woke = await asyncio.wait_for(waiter, 5)
        assert feed.waiting == 1 and not other.done()
        feed.publish(6)  # same revision again: nothing happens
        feed.close()
        return [woke, await asyncio.wait_for(other, 5), feed.waiting, await feed.wait_beyond(9, 30)]

    assert asyncio.run(scenario()) == [True, False, 0, False]


def test_feed_times_out() -> None:
    async def scenario() -> tuple[bool, int]:
        feed = RevisionFeed(1)
        result = await feed.wait_beyond(1, timeout=0.05)
        return result, feed.waiting

    assert asyncio.run(scenario()) == (False, 0)
