"""Group commit on a primary on local disk: no answer shows a commit whose WAL frames are not synced.

Clients' commits write their WAL frames without waiting for the disk (``synchronous=NORMAL``);
the database's worker syncs the WAL once for every commit made since the last sync, and only
then do the answers of the jobs that ran after those commits leave (docs/primary.md, "Group
commit"). A real primary in this process (so its sync can be held, watched or failed), real
HTTP, real replicas (``turso_sync.connect``) in threads, real files.

The power-loss check copies what a power loss would leave at the start of every sync (the
database file, which only checkpoints write and sync, and the WAL up to the length it had when
it was last synced) and opens each copy: every push a replica saw acknowledged before that
moment must be in it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time

import httpx
import pytest

import turso_sync
from tests.sim.primary import InProcessPrimary, hrana_query
from turso_sync.primary import database as database_mod

TABLE = "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"


def _hosted(primary: InProcessPrimary) -> database_mod.HostedDatabase:
    store = primary._server.store  # type: ignore[union-attr]
    assert store is not None
    return store._open["default"]


class HeldSyncs:
    """The primary's WAL syncs, held while ``hold`` is set: each waits for a ``release()``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.hold = False
        self.held = 0  # syncs that were held (or are)
        self._gate = threading.Semaphore(0)
        real = database_mod.HostedDatabase._sync_wal

        def held(db: database_mod.HostedDatabase) -> None:
            if self.hold:
                self.held += 1
                assert self._gate.acquire(timeout=30), "the test never released the sync"
            real(db)

        monkeypatch.setattr(database_mod.HostedDatabase, "_sync_wal", held)

    def release(self, n: int = 1) -> None:
        for _ in range(n):
            self._gate.release()

    def stop(self) -> None:
        """Hold no more syncs, and let any held one go."""
        self.hold = False
        self.release(3)


def _until(check, what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_answers_wait_for_the_sync_of_their_commits(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A commit alone syncs in its own job; commits made while others waited share a queued sync.
    Each held sync holds the answers of the commits it covers."""
    syncs = HeldSyncs(monkeypatch)
    primary = InProcessPrimary(tmp_path / "srv")
    url = primary.start()
    answers: dict[int, object] = {}

    def insert(http: httpx.Client, row: int) -> threading.Thread:
        def run() -> None:
            answers[row] = hrana_query(http, url, f"INSERT INTO t VALUES ({row}, 'x')")

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    try:
        with httpx.Client(timeout=20) as http:
            hrana_query(http, url, TABLE)
            hosted = _hosted(primary)
            assert hosted.group_commit
            syncs.hold = True
            first = insert(http, 1)
            _until(lambda: syncs.held == 1, "the first commit never asked for a sync")
            first.join(0.3)
            assert first.is_alive() and 1 not in answers  # committed, not synced: no answer yet
            # two more wait behind the held sync (the worker is in it): they will share one
            others = [insert(http, 2), insert(http, 3)]
            _until(lambda: hosted._jobs_submitted - hosted._jobs_started >= 2, "the requests never reached the worker")
            syncs.release()
            first.join(20)
            assert answers[1] == []
            _until(lambda: syncs.held == 2, "the shared sync never ran")
            assert hosted._lane_commits >= 4  # the table, 1, 2 and 3: committed
            for thread in others:
                thread.join(0.3)
                assert thread.is_alive()
            assert 2 not in answers and 3 not in answers  # their sync is held: no answer
            syncs.release()
            for thread in others:
                thread.join(20)
            assert answers[2] == answers[3] == []
            syncs.hold = False
            assert hrana_query(http, url, "SELECT id FROM t ORDER BY id") == [[1], [2], [3]]
            assert hosted.wal_syncs >= 3 and hosted.wal_synced_commits >= 4
    finally:
        syncs.stop()
        primary.close()


def test_a_rollback_answers_once_its_commit_is_synced(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A commit no pipeline made (``POST /admin/rollback`` commits on a clients' connection) is
    synced before its answer too: the lanes' commit hook sees every commit."""
    syncs = HeldSyncs(monkeypatch)
    primary = InProcessPrimary(tmp_path / "srv")
    url = primary.start()
    try:
        with httpx.Client(timeout=20) as http:
            hrana_query(http, url, TABLE)
            hrana_query(http, url, "INSERT INTO t VALUES (1, 'one')")
            hosted = _hosted(primary)
            target = primary._run(hosted.call(hosted.local_seq))
            hrana_query(http, url, "INSERT INTO t VALUES (2, 'two')")
            syncs.hold = True
            answer: list[httpx.Response] = []
            rollback = threading.Thread(
                target=lambda: answer.append(http.post(f"{url}/admin/rollback", json={"revision": target}))
            )
            rollback.start()
            _until(lambda: syncs.held == 1, "the rollback's commit never asked for a sync")
            rollback.join(0.5)
            assert rollback.is_alive() and not answer  # rolled back, not synced: no answer yet
            syncs.stop()
            rollback.join(20)
            assert answer[0].status_code == 200, answer[0].text
            assert hrana_query(http, url, "SELECT id FROM t") == [[1]]
    finally:
        syncs.stop()
        primary.close()


def test_a_sync_that_fails_refuses_the_answer_and_the_database_is_opened_again(tmp_path, monkeypatch, caplog):
    fail = [False]
    real = database_mod.HostedDatabase._sync_wal

    def failing(self: database_mod.HostedDatabase) -> None:
        if fail[0]:
            fail[0] = False
            raise OSError(5, "Input/output error")  # stands in for a disk that fails fsync (EIO)
        real(self)

    monkeypatch.setattr(database_mod.HostedDatabase, "_sync_wal", failing)
    primary = InProcessPrimary(tmp_path / "srv")
    url = primary.start()
    try:
        with httpx.Client(timeout=20) as http:
            hrana_query(http, url, TABLE)
            before = _hosted(primary)
            fail[0] = True
            body = {
                "baton": None,
                "requests": [{"type": "execute", "stmt": {"sql": "INSERT INTO t VALUES (1, 'x')"}}],
            }
            resp = http.post(f"{url}/v2/pipeline", json=body)
            assert resp.status_code == 503
            assert resp.json()["code"] == "STORAGE_FAILED"
            assert "not acknowledged" in resp.json()["error"]
            assert before.broken
            # the next request gets the database opened again from its files, and it works
            hrana_query(http, url, "INSERT INTO t VALUES (2, 'y')")
            assert _hosted(primary) is not before
            rows = hrana_query(http, url, "SELECT id FROM t ORDER BY id")
            assert [2] in rows and rows in ([[2]], [[1], [2]])  # the unacknowledged row may or may not be there
    finally:
        primary.close()
    assert any("syncing its WAL failed" in r.getMessage() for r in caplog.records)


def test_power_loss_at_any_sync_keeps_every_acknowledged_push(tmp_path, monkeypatch):
    replicas, pushes_each = 4, 25
    snapshots: list[tuple[float, bytes, bytes]] = []
    durable_wal = [0]  # the WAL's length when it was last synced (a checkpoint syncs it too)
    real_sync = database_mod.HostedDatabase._sync_wal
    real_truncate = database_mod.HostedDatabase._truncate_wal

    def read(path: str) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    def watched_sync(self: database_mod.HostedDatabase) -> None:
        # what a power loss now would leave: the database file as synced, the WAL as last synced
        snapshots.append((time.monotonic(), read(self.path), read(self.path + "-wal")[: durable_wal[0]]))
        real_sync(self)
        durable_wal[0] = os.path.getsize(self.path + "-wal")

    def watched_truncate(self: database_mod.HostedDatabase) -> None:
        real_truncate(self)
        if os.path.exists(self.path + "-wal"):
            durable_wal[0] = os.path.getsize(self.path + "-wal")

    monkeypatch.setattr(database_mod.HostedDatabase, "_sync_wal", watched_sync)
    monkeypatch.setattr(database_mod.HostedDatabase, "_truncate_wal", watched_truncate)
    primary = InProcessPrimary(tmp_path / "srv")
    url = primary.start()
    acks: list[tuple[float, int]] = []
    failures: list[BaseException] = []
    lock = threading.Lock()
    try:
        primary.query(TABLE)
        go = threading.Barrier(replicas)

        def run(r: int) -> None:
            try:
                conn = turso_sync.connect(str(tmp_path / f"r{r}.db"), url)
                go.wait(60)
                for i in range(pushes_each):
                    row = r * 1000 + i
                    conn.execute("INSERT INTO t VALUES (?, ?)", (row, f"r{r}"))
                    conn.commit()
                    conn.push()
                    with lock:
                        acks.append((time.monotonic(), row))
                conn.close()
            except BaseException as exc:  # reported below
                failures.append(exc)

        threads = [threading.Thread(target=run, args=(r,)) for r in range(replicas)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not failures, failures[0]
        hosted = _hosted(primary)
        assert len(acks) == replicas * pushes_each
        assert sorted(r[0] for r in primary.query("SELECT id FROM t")) == sorted(row for _, row in acks)
        # replicas pushing together shared syncs: fewer syncs than commits
        assert hosted.wal_synced_commits >= replicas * pushes_each
        assert hosted.wal_syncs < hosted.wal_synced_commits
        assert hosted.after_commit_jobs < hosted.after_commit_commits  # and emptied the WAL together
    finally:
        primary.close()

    assert len(snapshots) >= 10
    checked = 0
    for n, (moment, db_bytes, wal_bytes) in enumerate(snapshots):
        acked = {row for when, row in acks if when < moment}
        if not db_bytes:
            assert not acked
            continue
        folder = tmp_path / f"loss{n}"
        folder.mkdir()
        (folder / "db").write_bytes(db_bytes)
        if wal_bytes:
            (folder / "db-wal").write_bytes(wal_bytes)
        conn = sqlite3.connect(folder / "db")
        try:
            found = {row for (row,) in conn.execute("SELECT id FROM t")} if acked else set()
            if acked:
                assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        finally:
            conn.close()
        missing = acked - found
        assert not missing, f"power loss at sync {n}: acknowledged pushes {sorted(missing)} are not on disk"
        checked += bool(acked)
    assert checked >= 5
