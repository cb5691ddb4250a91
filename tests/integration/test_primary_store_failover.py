"""Two ``turso-sync serve --store`` processes on one bucket: one writer per database, and takeover.

The second server refuses a database the first holds (503 ``WRITER_ELSEWHERE``) for as long as
the first lives; after ``kill -9`` of the first it takes over by itself, with every push the
first acknowledged, and the store's log stays one linear history.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

import turso_sync
from tests.integration.primary_harness import PrimaryProcess
from tests.s3_harness import BUCKET, WeedMini
from turso_sync.primary.objectstore import DatabaseKeys, RevisionLog
from turso_sync.primary.objectstore.s3 import S3Client

TTL = 2.0


def _server(weed: WeedMini, data_dir: Path, prefix: str) -> PrimaryProcess:
    return PrimaryProcess(
        data_dir,
        "--store",
        f"s3://{BUCKET}/{prefix}",
        "--s3-endpoint",
        weed.endpoint,
        "--lease-ttl",
        str(TTL),
    )


def _insert(url: str, n: int) -> httpx.Response:
    body = {
        "baton": None,
        "requests": [{"type": "execute", "stmt": {"sql": f"INSERT INTO notes VALUES ({n}, 'row {n}')"}}],
    }
    return httpx.post(f"{url}/v2/pipeline", json=body, timeout=30)


def _acked(resp: httpx.Response) -> bool:
    return resp.status_code == 200 and resp.json()["results"][0]["type"] == "ok"


def test_one_writer_per_database_and_takeover_after_kill_9(weed: WeedMini, tmp_path: Path) -> None:
    prefix = "failover-1"
    first = _server(weed, tmp_path / "first", prefix)
    second = _server(weed, tmp_path / "second", prefix)
    url_a = first.start()
    url_b = second.start()
    acked: list[int] = []
    try:
        a = turso_sync.connect(tmp_path / "a.db", url_a)
        a.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        a.commit()
        a.push()
        # for two lease lifetimes, the second server never takes a write while the first renews
        n = 0
        end = time.monotonic() + 2 * TTL
        while time.monotonic() < end:
            n += 1
            resp = _insert(url_a, n)
            assert _acked(resp), resp.text
            acked.append(n)
            refused = _insert(url_b, 10_000 + n)
            assert refused.status_code == 503, refused.text
            assert refused.json()["code"] == "WRITER_ELSEWHERE"
            assert "Retry-After" in refused.headers
        assert len(acked) >= 2

        first.kill()
        killed = time.monotonic()
        # the second takes over by itself; pushes to it are refused until then, never lost after
        deadline = killed + 10 * TTL + 30
        while True:
            resp = _insert(url_b, 20_000)
            if _acked(resp):
                break
            assert resp.status_code == 503, resp.text
            assert time.monotonic() < deadline, "the second server did not take over"
        took = time.monotonic() - killed
        print(f"takeover {took:.2f} s after kill -9 (lease ttl {TTL:g} s)")

        b = turso_sync.connect(tmp_path / "b.db", url_b)
        ids = [r[0] for r in b.execute("SELECT id FROM notes ORDER BY id").fetchall()]
        assert ids == [*acked, 20_000]  # every acknowledged push, none of the refused ones
        b.close()

        # the first, back on its old (stale) data dir, is now the one refused
        first.start()
        refused = _insert(first.url, 30_000)
        assert refused.status_code == 503 and refused.json()["code"] == "WRITER_ELSEWHERE", refused.text
        a.close()
    finally:
        for server in (first, second):
            if server.proc is not None:
                server.stop()

    # one linear history: the chain reads without a gap, epochs never go back, two takeovers
    async def history() -> list[tuple[int, int, bool]]:
        from tests.s3_harness import aws_env

        with aws_env(weed):
            client = await S3Client.open(weed.location())
            try:
                segments = await RevisionLog(client, DatabaseKeys(prefix, "default")).segments_after(0)
            finally:
                await client.close()
        return [(s.first, s.epoch, s.takeover) for s in segments]

    chain = asyncio.run(history())
    epochs = [epoch for _, epoch, _ in chain]
    assert epochs == sorted(epochs)
    assert [epoch for _, epoch, takeover in chain if takeover] == sorted(set(epochs))
    assert len(set(epochs)) >= 2
