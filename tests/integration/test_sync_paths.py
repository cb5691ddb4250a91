"""The same history gives the same outcome on every sync path, under every conflict policy.

Two replicas edit the same rows offline; A syncs first, then B, each by one path: the library's
``pull()``-then-``push()``, ``push()`` alone, ``sync()``, ``turso-sync sync`` and ``turso-sync
push`` typed in a shell, the daemon, and ``turso_sync.aio``.  A push never overwrites a remote
change it has not seen (its compare-and-set guard fails, it pulls, the rebase settles the clash
under the policy and journals it, it pushes again), so the rows and B's journal are the same
whatever the path.  One primary serves the module; each test has a database of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import turso_sync
import turso_sync.aio
from tests.conftest import KEY256
from tests.integration.cli_harness import cli, fresh_url, key_env, running_primary
from tests.integration.primary_harness import PrimaryProcess
from turso_sync.sync.daemon import SyncDaemon

pytestmark = pytest.mark.peers


def merge(table: str, pk: dict[str, Any], base: Any, local: Any, remote: Any, kind: str) -> Any:
    """A resolver: concatenate both texts on update/update, keep the remote side otherwise."""
    if kind == "update/update":
        return {**remote, "v": f"{remote['v']}+{local['v']}"}
    return "remote"


POLICIES: dict[str, Any] = {
    "last_push_wins": "last_push_wins",
    "remote_wins": "remote_wins",
    "local_wins": "local_wins",
    "callable": merge,
}

SETUP = (
    "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, n INTEGER);"
    "CREATE TABLE u (id INTEGER PRIMARY KEY, name TEXT UNIQUE);"
    "INSERT INTO t VALUES (1, 'base', 1), (2, 'base', 2), (3, 'base', 3), (4, 'keep', 4),"
    " (5, 'base', 5), (6, 'base', 6);"
)
# A syncs first, so for B (the later one) "remote" is A's side
EDITS_A = (
    "UPDATE t SET v = 'A' WHERE id = 1;"  # update/update, same column
    "DELETE FROM t WHERE id = 2;"  # B updates it: update/delete for B
    "UPDATE t SET v = 'A3' WHERE id = 3;"  # B deletes it: delete/update for B
    "UPDATE t SET v = 'A5' WHERE id = 5;"  # B edits another column: no conflict
    "UPDATE t SET v = 'A6' WHERE id = 6;"  # B edits v and n: only v overlaps
    "INSERT INTO t VALUES (100, 'A', 0);"  # insert/insert, same key
    "INSERT INTO u VALUES (1, 'same-name');"  # unique clash on another column
)
EDITS_B = (
    "UPDATE t SET v = 'B' WHERE id = 1;"
    "UPDATE t SET v = 'B2' WHERE id = 2;"
    "DELETE FROM t WHERE id = 3;"
    "UPDATE t SET n = 55 WHERE id = 5;"
    "UPDATE t SET v = 'B6', n = 66 WHERE id = 6;"
    "INSERT INTO t VALUES (100, 'B', 0);"
    "INSERT INTO u VALUES (2, 'same-name');"
)
# rows of t once everything synced (None: the row is gone)
EXPECTED_T: dict[str, dict[int, tuple[str, int] | None]] = {
    "last_push_wins": {1: ("B", 1), 2: None, 3: None, 6: ("B6", 66), 100: ("B", 0)},
    "remote_wins": {1: ("A", 1), 2: None, 3: ("A3", 3), 6: ("A6", 66), 100: ("A", 0)},
    "local_wins": {1: ("B", 1), 2: ("B2", 2), 3: None, 6: ("B6", 66), 100: ("B", 0)},
    "callable": {1: ("A+B", 1), 2: None, 3: ("A3", 3), 6: ("A6+B6", 66), 100: ("A", 0)},
}
# every policy: both column edits of row 5 survive, row 4 untouched, u keeps A's row only
COMMON_T = {4: ("keep", 4), 5: ("A5", 55)}
# what B's journal records, per (table, key): (kind, resolution, the remote value it met)
JOURNAL: dict[str, dict[tuple[str, str], tuple[str, str]]] = {
    "last_push_wins": {
        ("t", "1"): ("update/update", "local"),
        ("t", "2"): ("update/delete", "remote"),
        ("t", "3"): ("delete/update", "local"),
        ("t", "6"): ("update/update", "local"),
        ("t", "100"): ("insert/insert", "local"),
        ("u", "2"): ("constraint", "remote"),
    },
    "remote_wins": {
        ("t", "1"): ("update/update", "remote"),
        ("t", "2"): ("update/delete", "remote"),
        ("t", "3"): ("delete/update", "remote"),
        ("t", "6"): ("update/update", "remote"),
        ("t", "100"): ("insert/insert", "remote"),
        ("u", "2"): ("constraint", "remote"),
    },
    "local_wins": {
        ("t", "1"): ("update/update", "local"),
        ("t", "2"): ("update/delete", "local"),
        ("t", "3"): ("delete/update", "local"),
        ("t", "6"): ("update/update", "local"),
        ("t", "100"): ("insert/insert", "local"),
        ("u", "2"): ("constraint", "remote"),
    },
    "callable": {
        ("t", "1"): ("update/update", "merged"),
        ("t", "2"): ("update/delete", "remote"),
        ("t", "3"): ("delete/update", "remote"),
        ("t", "6"): ("update/update", "merged"),
        ("t", "100"): ("insert/insert", "remote"),
        ("u", "2"): ("constraint", "remote"),
    },
}
# the remote value each journal entry of B met (A's side): never dropped silently
REMOTE_V = {("t", "1"): "A", ("t", "3"): "A3", ("t", "6"): "A6", ("t", "100"): "A"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrimaryProcess]:
    with running_primary(tmp_path_factory.mktemp("paths")) as srv:
        yield srv


@contextlib.contextmanager
def opened(path: Path, url: str, policy: Any) -> Iterator[Any]:
    """An encrypted replica connection, closed at the end (``with conn`` only commits)."""
    conn = turso_sync.connect(path, url, encryption_key=KEY256, conflict=policy)
    try:
        yield conn
    finally:
        conn.close()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- the paths: each syncs one replica's pending changes with the primary -------------------


def by_pull_then_push(path: Path, url: str, policy: Any, tmp: Path) -> None:
    with opened(path, url, policy) as conn:
        conn.pull()
        conn.push()


def by_push(path: Path, url: str, policy: Any, tmp: Path) -> None:
    with opened(path, url, policy) as conn:
        conn.push()


def by_sync(path: Path, url: str, policy: Any, tmp: Path) -> None:
    with opened(path, url, policy) as conn:
        conn.sync()


def by_cli(command: str) -> Callable[[Path, str, Any, Path], None]:
    def run(path: Path, url: str, policy: Any, tmp: Path) -> None:
        result = cli(command, path, "--conflict", policy, cwd=tmp, env=key_env())
        assert result.code == 0, result.both

    return run


def by_daemon(path: Path, url: str, policy: Any, tmp: Path) -> None:
    daemon = SyncDaemon([str(path)], encryption_key=KEY256, conflict=policy, long_poll=0.2, interval=0.05)
    daemon.start()
    try:
        with opened(path, url, policy) as conn:
            wait_until(lambda: conn.stats().pending_changes == 0 and conn.stats().pushes > 0, "the daemon to push")
    finally:
        daemon.close()  # stop, then release the sync lock stop() takes
    assert daemon.fatal is None, daemon.fatal


def by_aio(path: Path, url: str, policy: Any, tmp: Path) -> None:
    async def main() -> None:
        conn = await turso_sync.aio.connect(path, url, encryption_key=KEY256, conflict=policy)
        try:
            await conn.sync()
        finally:
            await conn.close()

    asyncio.run(main())


PATHS: dict[str, Callable[[Path, str, Any, Path], None]] = {
    "pull+push": by_pull_then_push,
    "push": by_push,
    "sync": by_sync,
    "cli-sync": by_cli("sync"),
    "cli-push": by_cli("push"),
    "daemon": by_daemon,
    "aio": by_aio,
}


@pytest.mark.parametrize("policy_name", list(POLICIES))
@pytest.mark.parametrize("path_name", list(PATHS))
def test_same_outcome_on_every_path(server: PrimaryProcess, tmp_path: Path, path_name: str, policy_name: str):
    if path_name.startswith("cli") and policy_name == "callable":
        pytest.skip("a resolver function exists only in the library")
    policy = POLICIES[policy_name]
    url = fresh_url(server)
    a_path, b_path = tmp_path / "a.db", tmp_path / "b.db"
    with opened(a_path, url, policy) as a:
        a.executescript(SETUP)
        a.push()
    with opened(b_path, url, policy) as b:
        b.pull()
        b.executescript(EDITS_B)
    with opened(a_path, url, policy) as a:
        a.executescript(EDITS_A)

    PATHS[path_name](a_path, url, policy, tmp_path)
    PATHS[path_name](b_path, url, policy, tmp_path)

    a = turso_sync.connect(a_path, url, encryption_key=KEY256, conflict=policy)
    b = turso_sync.connect(b_path, url, encryption_key=KEY256, conflict=policy)
    try:
        b.pull()  # the path may have pushed without pulling last
        a.pull()
        expected = {**COMMON_T, **EXPECTED_T[policy_name]}
        for conn in (a, b):
            assert conn.stats().pending_changes == 0, (path_name, conn.path)
            rows = {r[0]: (r[1], r[2]) for r in conn.execute("SELECT id, v, n FROM t")}
            assert rows == {k: v for k, v in expected.items() if v is not None}, (path_name, conn.path)
            assert conn.execute("SELECT id, name FROM u").fetchall() == [(1, "same-name")]
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert a.conflicts() == [], "A synced first: it met nothing"
        journal = {(c.table, str(next(iter(c.pk.values())))): c for c in b.conflicts()}
        assert {k: (c.kind, c.resolution) for k, c in journal.items()} == JOURNAL[policy_name], path_name
        for key, remote_v in REMOTE_V.items():
            assert journal[key].remote is not None and journal[key].remote["v"] == remote_v, (key, journal[key])
    finally:
        a.close()
        b.close()


def test_push_over_the_size_limit(server: PrimaryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Transactions split across requests; one transaction over the limit goes as a stream of requests."""
    from turso_sync.sync import push as push_mod
    from turso_sync.sync.transport import HttpTransport

    monkeypatch.setattr(push_mod, "MAX_PUSH_BODY", 64 << 10)  # the primary's 64 MiB, scaled down
    url = fresh_url(server)
    sent: list[bytes] = []

    class Recording(HttpTransport):
        def request(self, path: str, body: bytes, content_type: str, timeout: float, idempotent: bool) -> Any:
            sent.append(body)
            return super().request(path, body, content_type, timeout, idempotent)

    a = turso_sync.connect(
        tmp_path / "a.db", url, encryption_key=KEY256, conflict="last_push_wins", transport=Recording(url)
    )
    with contextlib.closing(a):
        a.execute("CREATE TABLE big (id INTEGER PRIMARY KEY, v TEXT)")
        a.commit()
        for i in range(8):  # eight transactions of ~20 KiB: more than one request, each whole
            a.execute("INSERT INTO big VALUES (?, ?)", (i, "x" * 20_000))
            a.commit()
        assert a.push() == 9
        for i in range(100, 106):  # one transaction of ~180 KiB (no single value over a request)
            a.execute("INSERT INTO big VALUES (?, ?)", (i, "z" * 30_000))
        a.commit()
        sent.clear()
        assert a.push() == 1  # a chain of requests on one stream
        assert a.stats().pending_changes == 0
        chained = [body for body in sent if b'"baton":"' in body]
        assert len(chained) >= 2, "the transaction went as one stream of several requests"
        assert all(len(body) <= 64 << 10 for body in sent)
    with opened(tmp_path / "b.db", url, "last_push_wins") as b:
        assert b.execute("SELECT count(*), max(id), sum(length(v)) FROM big WHERE id >= 100").fetchone() == (
            6,
            105,
            180_000,
        )


def test_push_over_the_size_limit_to_a_server_without_streams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """tursodb keeps no transaction between requests: the big one is refused before any change is sent."""
    from tests.servers import TURSODB, tursodb
    from turso_sync.sync import push as push_mod

    if not TURSODB.exists():
        pytest.skip("tursodb is not installed (make peers)")
    monkeypatch.setattr(push_mod, "MAX_PUSH_BODY", 64 << 10)
    with tursodb(tmp_path / "tursodb") as url:
        a = turso_sync.connect(tmp_path / "a.db", url)
        try:
            a.execute("CREATE TABLE big (id INTEGER PRIMARY KEY, v TEXT)")
            a.commit()
            assert a.push() == 1
            a.execute("INSERT INTO big VALUES (100, ?)", ("y" * 100_000,))
            a.commit()
            with pytest.raises(turso_sync.PushRejectedError, match=r"over the 0.0625 MiB a sync server") as info:
                a.push()
            assert str(info.value).endswith(
                "split it into smaller transactions (delete it locally and redo it in parts)"
            )
            assert a.stats().pending_changes == 1
            # the remedy the error names: delete it locally; the two cancel out and nothing is sent
            a.execute("DELETE FROM big WHERE id = 100")
            a.commit()
            assert a.push() == 0
            assert a.stats().pending_changes == 0
        finally:
            a.close()
