"""A read-only follower on the store beside a real writer: bootstraps, pulls, long-polls and reads.

The writer is a real ``turso-sync serve --store`` subprocess; the follower is ``PrimaryServer``
with ``StoreSettings(follow=True)`` in this process (what ``serve --store ... --follow`` runs).
Real replicas bootstrap from the follower, see the writer's pushes there, and are told where
writes go.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

import turso_sync
from tests.integration.primary_harness import PrimaryProcess
from tests.s3_harness import BUCKET, InProcessPrimary, WeedMini
from turso_sync.primary.durable import StoreSettings


def _ids(conn: turso_sync.SyncConnection) -> list[int]:
    return [r[0] for r in conn.execute("SELECT id FROM notes ORDER BY id").fetchall()]


def test_a_follower_serves_what_the_writer_stored_and_refuses_writes(weed: WeedMini, tmp_path: Path) -> None:
    prefix = "follow-1"
    writer = PrimaryProcess(tmp_path / "w", "--store", f"s3://{BUCKET}/{prefix}", "--s3-endpoint", weed.endpoint)
    writer.start()
    follower: InProcessPrimary | None = None
    try:
        a = turso_sync.connect(tmp_path / "a.db", writer.url)
        a.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        for i in range(1, 6):
            a.execute("INSERT INTO notes VALUES (?, ?)", (i, f"row {i}"))
        a.commit()
        a.push()
        settings = StoreSettings(f"s3://{BUCKET}/{prefix}", weed.endpoint, None, follow=True, follow_poll=0.1)
        follower = InProcessPrimary(tmp_path / "f", settings)

        r = turso_sync.connect(tmp_path / "r.db", follower.url)
        assert isinstance(r, turso_sync.SyncConnection)
        assert _ids(r) == [1, 2, 3, 4, 5]
        # the writer's later pushes reach the follower's replicas (revision numbers are the store's)
        for i in range(6, 9):
            a.execute("INSERT INTO notes VALUES (?, ?)", (i, f"row {i}"))
            a.commit()
            a.push()
        deadline = time.monotonic() + 30
        while _ids(r) != list(range(1, 9)):
            assert time.monotonic() < deadline, _ids(r)
            r.pull(2000)  # a long-poll: woken when the follower installs a revision
        # writes go to the writer: the follower says so
        r.execute("INSERT INTO notes VALUES (100, 'to the follower')")
        r.commit()
        with pytest.raises(turso_sync.Error, match="read-only from the object store"):
            r.push()
        reads = httpx.post(
            f"{follower.url}/v2/pipeline",
            json={"baton": None, "requests": [{"type": "execute", "stmt": {"sql": "SELECT count(*) FROM notes"}}]},
            timeout=30,
        )
        assert reads.status_code == 200, reads.text
        assert reads.json()["results"][0]["response"]["result"]["rows"][0][0]["value"] == "8"
        writes = httpx.post(
            f"{follower.url}/v2/pipeline",
            json={"baton": None, "requests": [{"type": "execute", "stmt": {"sql": "DELETE FROM notes"}}]},
            timeout=30,
        )
        assert writes.status_code == 403 and writes.json()["code"] == "FOLLOWER_READ_ONLY", writes.text
        r.close()
        a.close()
    finally:
        if follower is not None:
            follower.close()
        writer.stop()
    assert "Traceback" not in writer.log()
