"""Turso's own sync clients against our primary: pyturso 0.8.3 and @tursodatabase/sync 0.7.2.

Each client runs in its own process (pyturso caches databases per path per process) and is
driven command by command.  The server runs as ``turso-sync serve`` on 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.integration.primary_harness import Peer, PeerError, PrimaryProcess, peers_installed, pipeline

pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(not peers_installed(), reason="run `make peers` first"),
]

KINDS = ["pyturso", "npm"]
BASES = ["root", "named"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PrimaryProcess]:
    proc = PrimaryProcess(tmp_path / "data")
    proc.start()
    yield proc
    proc.close()


@pytest.fixture
def peer() -> Iterator[Callable[[str], Peer]]:
    started: list[Peer] = []

    def make(kind: str) -> Peer:
        p = Peer(kind)
        started.append(p)
        return p

    yield make
    for p in started:
        p.close()


def base_url(server: PrimaryProcess, base: str) -> str:
    return server.url if base == "root" else f"{server.url}/db/shop"


def other(kind: str) -> str:
    return "npm" if kind == "pyturso" else "pyturso"


@pytest.mark.parametrize("base", BASES)
def test_rows_pushed_by_one_client_reach_the_other_both_ways(
    server: PrimaryProcess, peer: Callable[[str], Peer], tmp_path: Path, base: str
) -> None:
    url = base_url(server, base)
    py = peer("pyturso")
    py.call("connect", path=str(tmp_path / "py.db"), url=url)
    py.call("exec", sql="CREATE TABLE items(id INTEGER PRIMARY KEY, v TEXT)")
    py.call("exec", sql="INSERT INTO items VALUES (?, ?)", args=[1, "from pyturso"])
    py.call("exec", sql="INSERT INTO items VALUES (?, ?)", args=[2, "also pyturso"])
    py.call("push")

    npm = peer("npm")
    npm.call("connect", path=str(tmp_path / "npm.db"), url=url)  # bootstrap
    assert npm.call("query", sql="SELECT id, v FROM items ORDER BY id") == [[1, "from pyturso"], [2, "also pyturso"]]
    npm.call("exec", sql="INSERT INTO items VALUES (?, ?)", args=[3, "from npm"])
    npm.call("exec", sql="UPDATE items SET v = ? WHERE id = ?", args=["edited by npm", 1])
    npm.call("push")

    assert py.call("pull") is True
    assert py.call("query", sql="SELECT id, v FROM items ORDER BY id") == [
        [1, "edited by npm"],
        [2, "also pyturso"],
        [3, "from npm"],
    ]
    py.call("exec", sql="DELETE FROM items WHERE id = ?", args=[2])
    py.call("push")
    assert npm.call("pull") is True
    assert npm.call("query", sql="SELECT id FROM items ORDER BY id") == [[1], [3]]

    served = pipeline(url, "SELECT count(*) FROM items")
    assert served["step_results"][0]["rows"] == [[{"type": "integer", "value": "2"}]]
    if base == "named":  # the named database is separate from the default one
        root = pipeline(server.url, "SELECT count(*) FROM sqlite_schema WHERE name = 'items'")
        assert root["step_results"][0]["rows"] == [[{"type": "integer", "value": "0"}]]


FILL = "INSERT INTO big(payload) SELECT randomblob(2000) FROM n"


def _seed(url: str, rows: int) -> None:
    pipeline(url, "CREATE TABLE IF NOT EXISTS big(id INTEGER PRIMARY KEY, payload BLOB)")
    for _ in range(0, rows, 100):
        pipeline(url, (f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) {FILL}", [100]))


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("kind", KINDS)
def test_reconnecting_to_an_existing_file_pulls_only_what_changed(
    server: PrimaryProcess, peer: Callable[[str], Peer], tmp_path: Path, kind: str, base: str
) -> None:
    url = base_url(server, base)
    _seed(url, 300)  # ~600 KB, about 160 pages
    path = str(tmp_path / f"{kind}.db")
    first = peer(kind)
    first.call("connect", path=path, url=url)
    boot = first.call("stats")
    assert first.call("query", sql="SELECT count(*) FROM big") == [[300]]
    assert boot["received"] > 150 * 4096
    first.close()

    pipeline(url, "INSERT INTO big(payload) VALUES (x'01')")
    pages_before = server.health()["pages_sent"]

    again = peer(kind)  # a new process on the same local file: no bootstrap
    again.call("connect", path=path, url=url)
    assert again.call("pull") is True
    assert again.call("query", sql="SELECT count(*) FROM big") == [[301]]
    received = again.call("stats")["received"]
    pages_sent = server.health()["pages_sent"] - pages_before
    assert 1 <= pages_sent <= 4, pages_sent  # the changed leaf, maybe an interior page and page 1
    assert received < 5 * 4200 < boot["received"] // 20, (received, boot["received"])


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("kind", KINDS)
def test_long_poll_returns_when_a_commit_lands(
    server: PrimaryProcess, peer: Callable[[str], Peer], tmp_path: Path, kind: str, base: str
) -> None:
    url = base_url(server, base)
    pipeline(url, "CREATE TABLE events(id INTEGER PRIMARY KEY, what TEXT)")
    client = peer(kind)
    client.call("connect", path=str(tmp_path / "lp.db"), url=url, long_poll_ms=120_000)
    client.send("pull")  # parks on the server: nothing is newer than what it just bootstrapped
    wait_for(lambda: server.health()["long_polls_waiting"] == 1, timeout=30, what="the long-poll to park")
    pipeline(url, ("INSERT INTO events(what) VALUES (?)", ["woke up"]))
    # far below the 120 s poll timeout: a timed-out poll would answer False, not True
    assert client.receive(timeout=60) is True
    assert client.call("query", sql="SELECT what FROM events") == [["woke up"]]
    assert server.health()["long_polls_waiting"] == 0


@pytest.mark.parametrize("kind", KINDS)
def test_long_poll_without_commit_returns_nothing_at_its_timeout(
    server: PrimaryProcess, peer: Callable[[str], Peer], tmp_path: Path, kind: str
) -> None:
    pipeline(server.url, "CREATE TABLE quiet(x)")
    client = peer(kind)
    client.call("connect", path=str(tmp_path / "q.db"), url=server.url, long_poll_ms=300)
    revision = client.call("stats")["revision"]
    assert client.call("pull") is False
    assert client.call("stats")["revision"] == revision
    assert server.health()["long_polls_waiting"] == 0


@pytest.mark.parametrize("hard", [False, True], ids=["sigterm", "sigkill"])
def test_server_restart_between_push_and_pull_loses_nothing(
    server: PrimaryProcess, peer: Callable[[str], Peer], tmp_path: Path, hard: bool
) -> None:
    for name in ("", "/db/notes"):
        py = peer("pyturso")
        py.call("connect", path=str(tmp_path / f"py{name.replace('/', '-')}.db"), url=server.url + name)
        py.call("exec", sql="CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
        for i in range(20):
            py.call("exec", sql="INSERT INTO notes(body) VALUES (?)", args=[f"note {i}"])
        py.call("push")
        py.close()
    count_before = pipeline(server.url, "SELECT count(*) FROM notes")["step_results"][0]["rows"]

    server.restart(hard=hard)

    assert pipeline(server.url, "SELECT count(*) FROM notes")["step_results"][0]["rows"] == count_before
    for name in ("", "/db/notes"):
        npm = peer("npm")
        npm.call("connect", path=str(tmp_path / f"npm{name.replace('/', '-')}.db"), url=server.url + name)
        assert npm.call("query", sql="SELECT count(*), max(body) FROM notes") == [[20, "note 9"]]
    # a replica made before the restart keeps pulling incrementally from its stored revision
    py = peer("pyturso")
    py.call("connect", path=str(tmp_path / "py.db"), url=server.url)
    pipeline(server.url, "INSERT INTO notes(body) VALUES ('after restart')")
    assert py.call("pull") is True
    assert py.call("query", sql="SELECT count(*) FROM notes") == [[21]]


def test_tokens_with_real_clients(tmp_path: Path, peer: Callable[[str], Peer]) -> None:
    writer, reader = "writer-" + os.urandom(8).hex(), "reader-" + os.urandom(8).hex()
    tokens = tmp_path / "tokens"
    tokens.write_text(f"sha256:{hashlib.sha256(writer.encode()).hexdigest()} rw *\n{reader} r default\n")
    tokens.chmod(0o600)
    server = PrimaryProcess(tmp_path / "data", "--token-file", str(tokens))
    server.start()
    try:
        w = peer("pyturso")
        w.call("connect", path=str(tmp_path / "w.db"), url=server.url, token=writer)
        w.call("exec", sql="CREATE TABLE t(x)")
        w.call("exec", sql="INSERT INTO t VALUES (1)")
        w.call("push")

        r = peer("npm")
        r.call("connect", path=str(tmp_path / "r.db"), url=server.url, token=reader)
        assert r.call("query", sql="SELECT x FROM t") == [[1]]
        r.call("exec", sql="INSERT INTO t VALUES (2)")
        with pytest.raises(PeerError, match="403"):
            r.call("push")

        with pytest.raises(PeerError, match="401"):
            peer("pyturso").call("connect", path=str(tmp_path / "x.db"), url=server.url, token="wrong-token")
        with pytest.raises(PeerError, match="403"):
            peer("npm").call("connect", path=str(tmp_path / "y.db"), url=server.url + "/db/other", token=reader)
    finally:
        server.close()
    log = server.log()
    assert writer not in log and reader not in log


def test_encrypted_at_rest(tmp_path: Path, peer: Callable[[str], Peer]) -> None:
    key = tmp_path / "key"
    key.write_text(os.urandom(32).hex())
    server = PrimaryProcess(tmp_path / "data", "--encryption-key-file", str(key))
    server.start()
    try:
        py = peer("pyturso")
        py.call("connect", path=str(tmp_path / "py.db"), url=server.url)
        py.call("exec", sql="CREATE TABLE secrets(v TEXT)")
        py.call("exec", sql="INSERT INTO secrets VALUES (?)", args=["PLAINTEXT-MARKER-" + "x" * 50])
        py.call("push")
        npm = peer("npm")
        npm.call("connect", path=str(tmp_path / "npm.db"), url=server.url)
        assert npm.call("query", sql="SELECT count(*) FROM secrets") == [[1]]
        server.restart()
        assert npm.call("pull") is False  # same revision after the restart
        for file in (tmp_path / "data").rglob("*"):
            if file.is_file():
                assert b"PLAINTEXT-MARKER" not in file.read_bytes(), file
    finally:
        server.close()
    assert key.read_text() not in server.log()

    wrong = tmp_path / "wrong-key"
    wrong.write_text(os.urandom(32).hex())
    refused = PrimaryProcess(tmp_path / "data", "--encryption-key-file", str(wrong))
    with pytest.raises(AssertionError):
        refused.start(timeout=30)
    assert refused.proc is not None and refused.proc.wait(30) == 2
    assert "wrong encryption key" in refused.log() and wrong.read_text() not in refused.log()
    refused.proc = None


def test_clients_using_remote_encryption_share_the_pages(
    server: PrimaryProcess, peer: Callable[[str], Peer], tmp_path: Path
) -> None:
    """Replicas that encrypt with Turso's 28-byte ciphers need the primary's 28 reserved bytes per page."""
    key = base64.b64encode(os.urandom(32)).decode()
    py = peer("pyturso")
    py.call("connect", path=str(tmp_path / "py.db"), url=server.url, remote_key=key)
    py.call("exec", sql="CREATE TABLE t(x TEXT)")
    py.call("exec", sql="INSERT INTO t VALUES ('encrypted replica')")
    py.call("push")
    npm = peer("npm")
    npm.call("connect", path=str(tmp_path / "npm.db"), url=server.url, remote_key=key)
    assert npm.call("query", sql="SELECT x FROM t") == [["encrypted replica"]]
    npm.call("exec", sql="INSERT INTO t VALUES ('back')")
    npm.call("push")
    assert py.call("pull") is True
    assert py.call("query", sql="SELECT x FROM t ORDER BY x") == [["back"], ["encrypted replica"]]
