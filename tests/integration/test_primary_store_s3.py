"""``turso-sync serve --store s3://...`` against a real S3 store (SeaweedFS ``weed mini``) and real replicas.

Each test runs a real ``turso-sync serve`` subprocess on its own key prefix and drives it
with ``turso_sync.connect`` replicas.  The store is the truth: the data directory is deleted
between runs, and a push acknowledged once must be there after any restart.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import zstandard

import turso_sync
from tests.conftest import KEY256
from tests.integration.primary_harness import PrimaryProcess
from tests.s3_harness import BUCKET, WeedMini, running_weed
from turso_sync.primary.objectstore.s3 import S3Client

T = TypeVar("T")

_prefixes = itertools.count()


def _primary(weed: WeedMini, data_dir: Path, prefix: str, *extra: str, port: int = 0) -> PrimaryProcess:
    return PrimaryProcess(
        data_dir,
        "--store",
        f"s3://{BUCKET}/{prefix}",
        "--s3-endpoint",
        weed.endpoint,
        *extra,
        port=port,
    )


def _retrying(action: Callable[[], T], what: str, timeout: float = 60.0) -> T:
    """``action()`` once it stops failing with a sync error (503 while a lease changes hands), within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except turso_sync.Error as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} kept failing for {timeout}s: {exc}") from exc
            time.sleep(0.1)  # polling the condition with a deadline


def _rows(conn: turso_sync.SyncConnection) -> list[tuple[int, str]]:
    return [tuple(r) for r in conn.execute("SELECT id, body FROM notes ORDER BY id").fetchall()]


def _no_500(server: PrimaryProcess) -> None:
    log = server.log()
    assert "Traceback" not in log, log[-3000:]
    assert " 500 " not in log


def test_every_acknowledged_push_survives_kill_9_and_a_deleted_data_dir(weed: WeedMini, tmp_path: Path) -> None:
    prefix = f"store-kill-{next(_prefixes)}"
    data = tmp_path / "data"
    server = _primary(weed, data, prefix, "--lease-ttl", "2", "--access-log")
    url = server.start()
    try:
        a = turso_sync.connect(tmp_path / "a.db", url)
        a.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        a.commit()
        a.push()
        for i in range(1, 21):
            a.execute("INSERT INTO notes VALUES (?, ?)", (i, f"row {i}"))
            a.commit()
            a.push()  # acknowledged: durable in the store
        # a transaction held across requests (a Hrana stream) commits like any push
        with httpx.Client(timeout=30) as http:
            first = http.post(
                f"{url}/v2/pipeline",
                json={
                    "baton": None,
                    "requests": [
                        {"type": "execute", "stmt": {"sql": "BEGIN"}},
                        {"type": "execute", "stmt": {"sql": "INSERT INTO notes VALUES (100, 'stream')"}},
                    ],
                },
            ).json()
            assert first["baton"], first
            done = http.post(
                f"{url}/v2/pipeline",
                json={"baton": first["baton"], "requests": [{"type": "execute", "stmt": {"sql": "COMMIT"}}]},
            )
            assert done.status_code == 200, done.text
            assert done.json()["results"][0]["type"] == "ok", done.text
        expected = [(i, f"row {i}") for i in range(1, 21)] + [(100, "stream")]

        server.kill()
        shutil.rmtree(data)
        server.start()  # same port, new process, empty data dir: everything comes from the store

        # the dead server's lease must run out first: 503 meanwhile, then the replica carries on
        _retrying(a.pull, "a pull after the restart")
        assert _rows(a) == expected
        fresh = _retrying(lambda: turso_sync.connect(tmp_path / "fresh.db", url), "a bootstrap after the restart")
        assert isinstance(fresh, turso_sync.SyncConnection)
        assert _rows(fresh) == expected
        # pushes go on, exactly once, and survive a second kill too
        a.execute("INSERT INTO notes VALUES (21, 'after restart')")
        a.commit()
        _retrying(a.push, "a push after the restart")
        server.kill()
        shutil.rmtree(data)
        server.start()
        _retrying(fresh.pull, "a pull after the second restart")
        assert _rows(fresh) == sorted([*expected, (21, "after restart")])
        a.close()
        fresh.close()
        _no_500(server)
    finally:
        if server.proc is not None:
            server.stop()


@pytest.mark.parametrize("ttl", ["60", "2"], ids=["outage-within-lease", "lease-runs-out-during-outage"])
def test_store_down_mid_push_is_503_and_the_retried_push_lands_once(tmp_path: Path, ttl: str) -> None:
    """With a long lease the queued revision is uploaded by the retry; with a short one the lease
    runs out while the store is down, the writer is retired, and the database is opened again
    from the store (the unacknowledged local commit dropped, the retried push applied anew)."""
    # a store of its own, killed and restarted by this test
    with running_weed(tmp_path / "weed") as store:
        _store_down_mid_push(store, tmp_path, ttl)


def _store_down_mid_push(store: WeedMini, tmp_path: Path, ttl: str) -> None:
    server = _primary(store, tmp_path / "data", "store-down", "--lease-ttl", ttl)
    try:
        url = server.start()
        a = turso_sync.connect(tmp_path / "a.db", url)
        a.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        a.execute("CREATE TABLE log (n INTEGER)")
        a.commit()
        a.push()
        a.execute("INSERT INTO notes VALUES (1, 'before')")
        a.commit()
        a.push()

        store.kill()
        # not a primary key conflict on retry: a plain table counts how often the push landed
        a.execute("INSERT INTO notes VALUES (2, 'while down')")
        a.execute("INSERT INTO log VALUES (2)")
        a.commit()
        with pytest.raises(turso_sync.Error) as failed:
            a.push()
        assert "503" in str(failed.value), failed.value
        assert "store" in str(failed.value).lower(), failed.value

        store.start()
        _retrying(a.push, "the retried push")
        b = turso_sync.connect(tmp_path / "b.db", url)
        assert isinstance(b, turso_sync.SyncConnection)
        assert _rows(b) == [(1, "before"), (2, "while down")]
        assert b.execute("SELECT n FROM log").fetchall() == [(2,)]
        b.close()

        # and it is in the store, not only on this server's disk (a clean stop releases the lease)
        assert server.stop() == 0
        shutil.rmtree(tmp_path / "data")
        server.start()
        c = turso_sync.connect(tmp_path / "c.db", url)
        assert isinstance(c, turso_sync.SyncConnection)
        assert _rows(c) == [(1, "before"), (2, "while down")]
        assert c.execute("SELECT n FROM log").fetchall() == [(2,)]
        c.close()
        a.close()
        _no_500(server)
    finally:
        if server.proc is not None:
            server.stop()


def test_concurrent_pushes_are_each_acknowledged_once_stored(weed: WeedMini, tmp_path: Path) -> None:
    """8 replicas push at once (group commit through the primary); after kill -9 and a deleted
    data dir, every acknowledged row is there and the log reads as one chain."""
    prefix = f"store-concurrent-{next(_prefixes)}"
    data = tmp_path / "data"
    server = _primary(weed, data, prefix, "--lease-ttl", "2")
    url = server.start()
    try:
        seed = turso_sync.connect(tmp_path / "seed.db", url)
        seed.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        seed.commit()
        seed.push()
        seed.close()
        acked: list[int] = []
        errors: list[BaseException] = []

        def writer(k: int) -> None:
            try:
                conn = turso_sync.connect(tmp_path / f"w{k}.db", url)
                for i in range(10):
                    n = k * 100 + i
                    conn.execute("INSERT INTO notes VALUES (?, ?)", (n, f"w{k}"))
                    conn.commit()
                    conn.push()
                    acked.append(n)
                conn.close()
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not errors, errors
        assert len(acked) == 80
        server.kill()
        shutil.rmtree(data)
        server.start()
        check = _retrying(lambda: turso_sync.connect(tmp_path / "check.db", url), "a bootstrap after the restart")
        assert isinstance(check, turso_sync.SyncConnection)
        assert sorted(r[0] for r in check.execute("SELECT id FROM notes").fetchall()) == sorted(acked)
        check.close()
        _no_500(server)
    finally:
        if server.proc is not None:
            server.stop()


def test_a_clean_restart_reuses_the_local_files_and_a_kill_rebuilds_them(weed: WeedMini, tmp_path: Path) -> None:
    """After a clean stop the data dir is reused (replicas pull only what changed); after kill -9 it
    is rebuilt from the store (replicas behind the new base get every page again)."""
    prefix = f"store-reuse-{next(_prefixes)}"
    server = _primary(weed, tmp_path / "data", prefix, "--lease-ttl", "2")
    url = server.start()
    try:
        a = turso_sync.connect(tmp_path / "a.db", url)
        a.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        for i in range(20):
            a.execute("INSERT INTO notes VALUES (?, ?)", (i, "x" * 2000))
        a.commit()
        a.push()
        a.pull()
        pages = a.execute("PRAGMA page_count").fetchone()[0]
        assert pages > 10  # the primary's copy has about as many (the rows are most of them)

        assert server.stop() == 0
        server.start()
        _retrying(a.pull, "a pull after the clean restart")
        assert a.last_sync is not None and 0 < a.last_sync.pages_received <= 2, a.last_sync
        assert "local files (left at revision" in server.log()

        server.kill()
        server.start()
        _retrying(a.pull, "a pull after kill -9")
        assert a.last_sync is not None and a.last_sync.pages_received > 10, a.last_sync  # every page again
        a.execute("INSERT INTO notes VALUES (100, 'after')")
        a.commit()
        _retrying(a.push, "a push after kill -9")
        assert server.stop() == 0
        shutil.rmtree(tmp_path / "data")
        server.start()
        b = turso_sync.connect(tmp_path / "b.db", url)
        assert b.execute("SELECT count(*) FROM notes").fetchone() == (21,)
        b.close()
        a.close()
        _no_500(server)
    finally:
        if server.proc is not None:
            server.stop()


def test_an_encrypted_primary_stays_encrypted_in_the_store_and_comes_back(weed: WeedMini, tmp_path: Path) -> None:
    """--encryption-key-file with --store: the store holds the pages as encrypted on disk (no row text
    in any object), and a deleted data dir comes back with the same key."""
    prefix = f"store-encrypted-{next(_prefixes)}"
    key_file = tmp_path / "key"
    key_file.write_text(KEY256)
    key_file.chmod(0o600)
    server = _primary(weed, tmp_path / "data", prefix, "--lease-ttl", "2", "--encryption-key-file", str(key_file))
    url = server.start()
    try:
        a = turso_sync.connect(tmp_path / "a.db", url)
        a.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        a.execute("INSERT INTO notes VALUES (1, 'plaintext-marker-4711')")
        a.commit()
        a.push()
        server.kill()
        shutil.rmtree(tmp_path / "data")
        server.start()
        b = _retrying(lambda: turso_sync.connect(tmp_path / "b.db", url), "a bootstrap after the restart")
        assert isinstance(b, turso_sync.SyncConnection)
        assert _rows(b) == [(1, "plaintext-marker-4711")]
        b.close()
        a.close()
        _no_500(server)
    finally:
        if server.proc is not None:
            server.stop()

    async def objects() -> list[bytes]:
        client = await S3Client.open(weed.location())
        try:
            infos = await client.list(f"{prefix}/")
            return [zstd_plain((await client.get(i.key)).data) for i in infos]
        finally:
            await client.close()

    bodies = asyncio.run(objects())
    assert bodies
    for body in bodies:
        assert b"plaintext-marker-4711" not in body


def zstd_plain(data: bytes) -> bytes:
    """An object's bytes with its zstd frame (if any) decompressed, for a search for plaintext."""
    start = data.find(b"\x28\xb5\x2f\xfd")  # the zstd frame magic
    if start < 0:
        return data
    return data[:start] + zstandard.ZstdDecompressor().decompressobj().decompress(data[start:])
