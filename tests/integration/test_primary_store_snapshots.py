"""Snapshots written by ``serve --store`` while it takes pushes, and a cold start from one.

The server runs in this process (on a background event loop) so the test can set the snapshot
interval low; it speaks HTTP to real ``turso_sync.connect`` replicas as ``turso-sync serve`` does.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path

import pytest

import turso_sync
from tests.s3_harness import BUCKET, InProcessPrimary, WeedMini
from turso_sync.primary.durable import StoreSettings
from turso_sync.primary.objectstore import DatabaseKeys, RevisionLog
from turso_sync.primary.objectstore.s3 import S3Client


def _snapshots(weed: WeedMini, prefix: str) -> list[int]:
    async def main() -> list[int]:
        client = await S3Client.open(weed.location())
        try:
            return await RevisionLog(client, DatabaseKeys(prefix, "default")).snapshot_revisions()
        finally:
            await client.close()

    return asyncio.run(main())


def test_snapshots_are_written_as_revisions_are_stored_and_a_cold_start_uses_them(
    weed: WeedMini, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="turso_sync.primary")
    prefix = "snapshots-1"
    settings = StoreSettings(f"s3://{BUCKET}/{prefix}", weed.endpoint, None, lease_ttl=5, snapshot_every=5)
    server = InProcessPrimary(tmp_path / "data", settings)
    try:
        a = turso_sync.connect(tmp_path / "a.db", server.url)
        a.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        a.commit()
        a.push()
        for i in range(1, 13):
            a.execute("INSERT INTO notes VALUES (?, ?)", (i, f"row {i}"))
            a.commit()
            a.push()
        deadline = time.monotonic() + 30
        while len(_snapshots(weed, prefix)) < 2:  # written in the background after the revisions
            assert time.monotonic() < deadline, _snapshots(weed, prefix)
            time.sleep(0.1)  # polling the condition with a deadline
        a.close()
    finally:
        server.close()

    snaps = _snapshots(weed, prefix)
    # a cold start on an empty data dir reads the newest snapshot and the revisions after it
    shutil.rmtree(tmp_path / "data")
    caplog.clear()
    server = InProcessPrimary(tmp_path / "data", settings)
    try:
        b = turso_sync.connect(tmp_path / "b.db", server.url)
        assert b.execute("SELECT count(*), max(id) FROM notes").fetchone() == (12, 12)
        b.close()
    finally:
        server.close()
    assert snaps == sorted(snaps) and snaps[-1] > 5
    rebuilt = [r.getMessage() for r in caplog.records if "rebuilt from the store" in r.getMessage()]
    assert rebuilt and f"snapshot {snaps[-1]}," in rebuilt[0], rebuilt


def _segment_firsts(weed: WeedMini, prefix: str) -> list[int]:
    async def main() -> list[int]:
        client = await S3Client.open(weed.location())
        keys = DatabaseKeys(prefix, "default")
        try:
            return [keys.segment_number(i.key) for i in await client.list(keys.log_prefix)]
        finally:
            await client.close()

    return asyncio.run(main())


def test_with_no_retention_window_history_before_the_newest_snapshot_is_deleted(weed: WeedMini, tmp_path: Path) -> None:
    prefix = "retention-0"
    settings = StoreSettings(
        f"s3://{BUCKET}/{prefix}", weed.endpoint, None, lease_ttl=5, snapshot_every=4, retention_s=0
    )
    server = InProcessPrimary(tmp_path / "data", settings)
    try:
        a = turso_sync.connect(tmp_path / "a.db", server.url)
        a.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        a.commit()
        a.push()
        for i in range(1, 11):
            a.execute("INSERT INTO notes VALUES (?, ?)", (i, f"row {i}"))
            a.commit()
            a.push()
        deadline = time.monotonic() + 30
        while _segment_firsts(weed, prefix)[0] == 1:  # compaction runs after a snapshot, in the background
            assert time.monotonic() < deadline, _segment_firsts(weed, prefix)
            time.sleep(0.1)  # polling the condition with a deadline
        a.close()
    finally:
        server.close()
    snaps = _snapshots(weed, prefix)
    firsts = _segment_firsts(weed, prefix)
    # one snapshot left, the segment that ends at it, and the segments after it
    assert len(snaps) == 1 and firsts[0] <= snaps[0], (snaps, firsts)
    assert all(f > snaps[0] for f in firsts[1:]), (snaps, firsts)
    shutil.rmtree(tmp_path / "data")
    server = InProcessPrimary(tmp_path / "data", settings)
    try:
        b = turso_sync.connect(tmp_path / "b.db", server.url)
        assert b.execute("SELECT count(*), max(id) FROM notes").fetchone() == (10, 10)
        b.close()
    finally:
        server.close()
