"""The object-store layer against a real S3 store: SeaweedFS ``weed mini`` on 127.0.0.1.

One ``weed mini`` serves the whole test session (tests/s3_harness.py starts and stops it);
each test works under its own key prefix.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.s3_harness import BUCKET, ROOT, WeedMini, aws_env, revision_page
from turso_sync.local.engine import LocalDatabase
from turso_sync.primary.objectstore import (
    DatabaseKeys,
    Deposed,
    GroupCommit,
    LogWriter,
    ObjectNotFound,
    PreconditionFailed,
    Revision,
    RevisionLog,
    SnapshotImage,
    StoreUnavailable,
    WriterLease,
    restore,
    restore_to_file,
)
from turso_sync.primary.objectstore.s3 import S3Client, S3Location

T = TypeVar("T")


@pytest.fixture(scope="session")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WeedMini]:
    """One weed mini for the session, its access key in this process's AWS environment."""
    server = WeedMini(tmp_path_factory.mktemp("weed"))
    old = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    try:
        with server:
            yield server
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run(weed: WeedMini, body: Callable[[S3Client], Awaitable[T]]) -> T:
    """Run ``body`` with a client of the test store, on a fresh event loop."""

    async def main() -> T:
        client = await S3Client.open(weed.location())
        try:
            return await body(client)
        finally:
            await client.close()

    return asyncio.run(main())


def fresh_keys(name: str = "db") -> DatabaseKeys:
    return DatabaseKeys(f"t{random.randrange(1 << 40):x}", name)


def test_s3_client_semantics(weed: WeedMini) -> None:
    async def body(c: S3Client) -> None:
        root = fresh_keys().root
        etag = await c.put_if_absent(f"{root}/a", b"one")
        assert (await c.get(f"{root}/a")).data == b"one"
        with pytest.raises(PreconditionFailed, match="If-None-Match"):
            await c.put_if_absent(f"{root}/a", b"two")
        new = await c.put_if_match(f"{root}/a", b"two", etag)
        with pytest.raises(PreconditionFailed):
            await c.put_if_match(f"{root}/a", b"three", etag)  # stale ETag
        with pytest.raises(PreconditionFailed):
            await c.put_if_match(f"{root}/missing", b"x", new)  # SeaweedFS 412, AWS 404: both a conflict
        assert (await c.get(f"{root}/a")).data == b"two"
        for k in ("b/2", "b/10", "b/1"):
            await c.put(f"{root}/{k}", k.encode())
        listed = [i.key for i in await c.list(f"{root}/b/")]
        assert listed == [f"{root}/b/1", f"{root}/b/10", f"{root}/b/2"]
        assert [i.key for i in await c.list(f"{root}/b/", start_after=f"{root}/b/10")] == [f"{root}/b/2"]
        with pytest.raises(ObjectNotFound):
            await c.get(f"{root}/nothing")
        await c.delete(f"{root}/a")
        await c.delete(f"{root}/a")  # missing: fine
        with pytest.raises(ValueError, match="//"):
            await c.put(f"{root}//x", b"")

    run(weed, body)


def test_wrong_secret_is_unavailable_and_never_shown(weed: WeedMini, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-zz9")

    async def body(c: S3Client) -> None:
        with pytest.raises(StoreUnavailable, match="SignatureDoesNotMatch") as err:
            await c.put_if_absent(f"{fresh_keys().root}/x", b"x")
        assert "wrong-secret-zz9" not in str(err.value)

    run(weed, body)


def test_unreachable_store_is_unavailable() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed

    async def main() -> None:
        c = await S3Client.open(S3Location(BUCKET, "", f"http://127.0.0.1:{port}"), max_attempts=1)
        try:
            with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{port}"):
                await c.put_if_absent("x", b"x")
        finally:
            await c.close()

    asyncio.run(main())


def test_location_parsing() -> None:
    loc = S3Location.parse("s3://bucket/some/prefix/", "http://127.0.0.1:1", None)
    assert (loc.bucket, loc.prefix, loc.region) == ("bucket", "some/prefix", "us-east-1")
    for bad in ("http://x", "s3://", "s3:///p", "s3://b/a//c"):
        with pytest.raises(ValueError):
            S3Location.parse(bad)


def _workload(seed: int) -> list[list[str]]:
    """Transactions (lists of statements) that grow, rewrite and shrink a database."""
    rng = random.Random(seed)
    txns = [["CREATE TABLE t(id INTEGER PRIMARY KEY, body BLOB)"]]
    for i in range(30):
        kind = i % 5
        if kind in (0, 1):
            size = rng.randint(10, 9000)
            txns.append([f"INSERT INTO t(body) VALUES (randomblob({size}))"] * rng.randint(1, 20))
        elif kind == 2:
            txns.append([f"UPDATE t SET body = randomblob({rng.randint(10, 3000)}) WHERE id % 3 = {i % 3}"])
        elif kind == 3:
            txns.append([f"DELETE FROM t WHERE id % 4 = {i % 4}"])
        else:
            txns.append(["DELETE FROM t WHERE id > (SELECT max(id) FROM t) - 30"])
            txns.append(["VACUUM"])  # gives the freed pages back: the database shrinks
    return txns


def test_restore_is_byte_for_byte_the_local_sqlite_file_at_every_revision(weed: WeedMini, tmp_path: Path) -> None:
    """A local database goes through inserts, updates and deletes that shrink it; each committed
    transaction is shipped as a revision; every revision restores to the file's exact bytes."""
    path = tmp_path / "local.db"
    engine = LocalDatabase(path)
    conn = engine.connect(isolation_level=None)
    expected: dict[int, bytes] = {}

    async def body(c: S3Client) -> None:
        keys = fresh_keys()
        lease = WriterLease(c, keys.lease, "test", ttl=30)
        await lease.acquire(timeout=5)
        writer = await LogWriter.take_over(RevisionLog(c, keys), lease, page_size=engine.page_size)
        assert writer.head.revision == 1  # the takeover revision, on an empty database
        expected[1] = b""
        # the file as the engine created it is not a transaction of its history: ship it whole first
        initial = path.read_bytes()
        P = engine.page_size
        pages = {i + 1: initial[i * P : (i + 1) * P] for i in range(len(initial) // P)}
        group = GroupCommit(writer)
        await group.commit(Revision(2, len(pages), pages))
        expected[2] = initial
        seq = engine.current_seq()
        base = 2 - seq  # local transaction s is revision base + s
        for i, statements in enumerate(_workload(5)):
            if len(statements) > 1:
                conn.execute("BEGIN")
            for sql in statements:
                conn.execute(sql)
            if len(statements) > 1:
                conn.execute("COMMIT")
            for txn in engine.history(seq):
                await group.commit(Revision(base + txn.seq, txn.db_size, txn.pages))
                seq = txn.seq
            engine.checkpoint()  # so the file alone holds the state at this revision
            data = path.read_bytes()
            expected[base + seq] = data
            if i == 15:
                image = SnapshotImage(base + seq, engine.page_size, len(data) // engine.page_size, data)
                assert await writer.write_snapshot(image)
        assert len(expected) > 20
        sizes = [len(v) for _, v in sorted(expected.items())]
        assert any(b < a for a, b in itertools.pairwise(sizes)), sizes  # it shrank (VACUUM)
        for rev_no, data in expected.items():
            image = await restore(c, keys, rev_no)
            assert image.revision == rev_no
            assert image.data == data, f"revision {rev_no}: restored bytes differ from the local file"
        last = await restore_to_file(c, keys, str(tmp_path / "restored.db"))
        assert (tmp_path / "restored.db").read_bytes() == expected[last]

    try:
        run(weed, body)
    finally:
        conn.close()
        engine.close()
    restored = sqlite3.connect(tmp_path / "restored.db")
    try:
        assert restored.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        restored.close()


def test_racing_writers_on_s3_never_both_append(weed: WeedMini) -> None:
    """A writer deposed behind its back keeps appending while the new one takes over and appends:
    20 rounds, each ending with one linear history that holds every acknowledged revision."""

    class Clock:
        def __init__(self) -> None:
            self.now = 0.0

        def __call__(self) -> float:
            return self.now

    async def one_round(c: S3Client, seed: int) -> bool:
        rng = random.Random(seed)
        keys = fresh_keys()
        ca, cb = Clock(), Clock()
        lease_a = WriterLease(c, keys.lease, "a", ttl=10, clock=ca)
        await lease_a.acquire(timeout=0)
        a = await LogWriter.take_over(RevisionLog(c, keys), lease_a, page_size=4096)
        lease_b = WriterLease(c, keys.lease, "b", ttl=10, clock=cb)
        assert not await lease_b.try_acquire()
        cb.now += 11  # a is "paused": its clock stands still, b's runs out the ttl
        assert await lease_b.try_acquire()
        acked: list[tuple[int, bytes]] = []
        took_over = asyncio.Event()

        async def append(w: LogWriter, name: str) -> bool:
            n = w.head.revision + 1
            page = f"{name}{n}".encode().ljust(4096, b".")
            try:
                await w.append([Revision(n, 1, {1: page})])
            except Deposed:
                return False
            acked.append((n, page))
            return True

        refused = False

        async def run_a() -> None:
            nonlocal refused
            after = 0
            for _ in range(100):
                # pushes arrive a few ms apart (back to back, a would outrun every takeover attempt until its
                # lease clock ran out: see docs/object-storage.md)
                await asyncio.sleep(rng.random() * 0.006)
                if not await append(a, "a"):
                    refused = True
                    return
                after += took_over.is_set()
                if after >= 4:
                    return

        async def run_b() -> None:
            await asyncio.sleep(rng.random() * 0.02)  # start the takeover somewhere among a's appends
            b = await LogWriter.take_over(RevisionLog(c, keys), lease_b)
            took_over.set()
            for _ in range(4):
                assert await append(b, "b")

        await asyncio.gather(run_a(), run_b())
        state = await RevisionLog(c, keys).load()
        stored = {r.number: (seg.epoch, r.pages.get(1)) for seg in state.segments for r in seg.revisions}
        numbers = sorted(stored)
        assert numbers == list(range(1, numbers[-1] + 1))
        assert len({n for n, _ in acked}) == len(acked), f"round {seed}: a revision acknowledged twice"
        for n, page in acked:
            assert stored[n][1] == page, f"round {seed}: acknowledged revision {n} lost"
        epochs = [stored[n][0] for n in numbers]
        assert epochs == sorted(epochs), f"round {seed}: the deposed writer appended after the takeover"
        return refused

    async def body(c: S3Client) -> None:
        refusals = [await one_round(c, seed) for seed in range(20)]
        assert any(refusals), "the old writer was never refused: the race never happened"

    run(weed, body)


def test_contenders_for_an_expired_lease_on_s3_have_one_winner(weed: WeedMini) -> None:
    async def body(c: S3Client) -> None:
        for round_ in range(10):
            keys = fresh_keys()
            first = WriterLease(c, keys.lease, "first", ttl=0.05)
            await first.acquire(timeout=0)
            contenders = [WriterLease(c, keys.lease, f"c{i}", ttl=0.05) for i in range(6)]
            await asyncio.gather(*(x.try_acquire() for x in contenders))  # each starts watching
            deadline = time.monotonic() + 5
            winners: list[bool] = []
            while not any(winners):
                assert time.monotonic() < deadline, "no contender took the expired lease"
                winners = list(await asyncio.gather(*(x.try_acquire() for x in contenders)))
            assert sum(winners) == 1, f"round {round_}: {winners}"
            assert [x.epoch for x, won in zip(contenders, winners, strict=True) if won] == [2]

    run(weed, body)


def test_group_commit_on_s3_groups_and_stores_everything(weed: WeedMini) -> None:
    async def body(c: S3Client) -> None:
        keys = fresh_keys()
        lease = WriterLease(c, keys.lease, "g", ttl=30)
        await lease.acquire(timeout=0)
        writer = await LogWriter.take_over(RevisionLog(c, keys), lease, page_size=4096)
        group = GroupCommit(writer)
        revisions = [Revision(n, 1, {1: revision_page(n)}) for n in range(2, 202)]
        await asyncio.gather(*(group.commit(r) for r in revisions))
        assert writer.head.revision == 201
        assert group.uploads < 100, group.uploads
        state = await RevisionLog(c, keys).load()
        assert len(state.segments) == group.uploads + 1  # + the takeover
        assert {r.number: r.pages[1] for seg in state.segments[1:] for r in seg.revisions} == {
            r.number: r.pages[1] for r in revisions
        }

    run(weed, body)


def test_standby_takes_over_from_a_killed_writer_and_no_acknowledged_revision_is_lost(weed: WeedMini) -> None:
    """A writer in a child process appends as fast as it can; kill -9; a standby watching the lease
    takes over.  Bound: ttl + 2 x poll + the takeover's reads and one write."""
    ttl, poll, runs = 1.5, 0.05, 3
    timings: list[float] = []
    for _ in range(runs):
        keys = fresh_keys()
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.s3_harness", weed.endpoint, keys.root, keys.name, str(ttl), "50"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            first = child.stdout.readline()  # type: ignore[union-attr]
            assert first.startswith("epoch 1"), first + child.stderr.read()  # type: ignore[union-attr]

            async def standby(c: S3Client, child: subprocess.Popen[str] = child) -> tuple[float, LogWriter]:
                lease = WriterLease(c, keys.lease, "standby", ttl=ttl)
                assert not await lease.try_acquire()  # held: start watching it
                acked = 0
                while acked < 120:  # let the child get well into its work
                    line = await asyncio.to_thread(child.stdout.readline)  # type: ignore[union-attr]
                    assert line.startswith("acked"), line
                    acked += 1
                    if acked % 10 == 0:
                        assert not await lease.try_acquire()
                os.killpg(child.pid, signal.SIGKILL)
                killed = time.monotonic()
                await lease.acquire(timeout=ttl * 10, poll=poll)
                writer = await LogWriter.take_over(RevisionLog(c, keys), lease)
                return time.monotonic() - killed, writer

            took, writer = run(weed, standby)
            child.wait(10)
            rest = child.stdout.read()  # type: ignore[union-attr]
            acked_numbers = [int(line.split()[1]) for line in rest.splitlines() if line.startswith("acked")]
            assert writer.loaded is not None
            stored = {r.number: r for seg in writer.loaded.segments for r in seg.revisions}
            snapshot = writer.loaded.snapshot
            last_acked = max(acked_numbers, default=0)
            assert writer.previous_head >= last_acked, "an acknowledged revision is missing from the store"
            for n in acked_numbers:
                if snapshot is not None and n <= snapshot.revision:
                    continue
                assert stored[n].pages[1] == revision_page(n), f"revision {n} differs"
            assert writer.head.revision == writer.previous_head + 1 and writer.epoch == 2
            timings.append(took)
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait(10)
            child.stdout.close()  # type: ignore[union-attr]
            child.stderr.close()  # type: ignore[union-attr]
    shown = ", ".join(f"{t:.2f}s" for t in timings)
    print(f"\nkill -9 to takeover (ttl {ttl}s, poll {poll}s): {shown}; bound {ttl + 2 * poll:.2f}s + takeover I/O")


def test_store_killed_and_restarted_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """kill -9 of the store in the middle of a writer's appends: while it is down nothing is
    acknowledged (StoreUnavailable); after it restarts on the same folder the queued revisions
    are stored with the next one, and every acknowledged revision reads back."""
    server = WeedMini(tmp_path / "weed")
    with server, aws_env(server):

        async def main() -> None:
            c = await S3Client.open(server.location(), connect_timeout=1, read_timeout=3, max_attempts=1)
            try:
                keys = fresh_keys()
                lease = WriterLease(c, keys.lease, "w", ttl=120)
                await lease.acquire(timeout=5)
                writer = await LogWriter.take_over(RevisionLog(c, keys), lease, page_size=4096)
                group = GroupCommit(writer)
                acked = []
                for n in range(2, 22):
                    await group.commit(Revision(n, 1, {1: revision_page(n)}))
                    acked.append(n)
                server.kill()
                with pytest.raises(StoreUnavailable):
                    await group.commit(Revision(22, 1, {1: revision_page(22)}))
                assert writer.head.revision == 21
                await asyncio.to_thread(server.start)
                await group.commit(Revision(23, 1, {1: revision_page(23)}))  # carries 22 along
                acked += [22, 23]
                state = await RevisionLog(c, keys).load()
                stored = {r.number: r.pages.get(1) for seg in state.segments for r in seg.revisions}
                assert sorted(stored) == list(range(1, 24))
                assert all(stored[n] == revision_page(n) for n in acked)
            finally:
                await c.close()

        asyncio.run(main())
