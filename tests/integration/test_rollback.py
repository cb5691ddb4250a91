"""Rolling a database back (``POST /admin/rollback``, ``turso-sync rollback``) on a real ``turso-sync serve``.

Real replicas (``turso_sync.connect``) write, push and pull around the rollback.  The rollback
must be a new revision on top of the head with the target's user-visible content, leave the
sync's bookkeeping (``turso_sync_last_change_id``) at its head values, and let replicas carry
on: what they pushed after the target is gone, nothing is pushed twice, pending changes rebase.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import turso_sync
from tests.conftest import wait_for
from tests.integration.primary_harness import PrimaryProcess, pipeline
from tests.s3_harness import BUCKET, WeedMini
from turso_sync.cli.exit_codes import ExitCode
from turso_sync.cli.main import main as cli_main
from turso_sync.local.framelog import FrameLog, RevisionGone

ADMIN = "admin-token-Xk39sLq0"
WRITER = "writer-token-7Qm2pA1"
READER = "reader-token-9Zt4wB2"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PrimaryProcess]:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{ADMIN} admin *\n{WRITER} rw *\n{READER} r *\n")
    tokens.chmod(0o600)
    proc = PrimaryProcess(tmp_path / "data", "--token-file", str(tokens))
    proc.start()
    try:
        yield proc
    finally:
        proc.close()


def _replica(path: Path, url: str) -> turso_sync.SyncConnection:
    conn = turso_sync.connect(path, url, auth_token=WRITER)
    assert isinstance(conn, turso_sync.SyncConnection)
    return conn


def _revision(conn: turso_sync.SyncConnection) -> int:
    conn.pull()
    assert conn.last_sync is not None
    return int(conn.last_sync.revision)


def _rows(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(sql)]


def _server_rows(url: str, sql: str) -> list[list[Any]]:
    batch = pipeline(url, sql, token=WRITER)
    return [[v.get("value") for v in row] for row in batch["step_results"][0]["rows"]]


def _rollback(url: str, tmp_path: Path, to: str, token: str = ADMIN, db: str = "default") -> int:
    token_file = tmp_path / f"token-{token[:5]}"
    token_file.write_text(token + "\n")
    return cli_main(["rollback", url, "--db", db, "--to", to, "--auth-token-file", str(token_file)])


def _post(
    url: str, body: Any, token: str | None = ADMIN, db: str = "default", raw: bytes | None = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    target = f"{url}/db/{db}/admin/rollback"
    if raw is not None:
        return httpx.post(target, content=raw, headers=headers, timeout=60)
    return httpx.post(target, json=body, headers=headers, timeout=60)


def test_rows_and_schema_after_the_target_are_gone(
    server: PrimaryProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = server.url
    with contextlib.closing(_replica(tmp_path / "a.db", url)) as a:
        a.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        a.execute("CREATE INDEX notes_body ON notes(body)")
        a.executemany("INSERT INTO notes VALUES (?, ?)", [(1, "one"), (2, "two")])
        # a trigger there at the target: the rollback's own deletes must not fire it
        a.execute("CREATE TABLE audit (gone INTEGER)")
        a.execute("CREATE TRIGGER notes_audit AFTER DELETE ON notes BEGIN INSERT INTO audit VALUES (old.id); END")
        a.commit()
        a.push()
        pipeline(url, "PRAGMA user_version = 1", token=WRITER)  # pushes carry rows and schema, not pragmas
        target = _revision(a)
        # after the target: rows, a column, a table, a view, a trigger, a changed user_version
        a.execute("INSERT INTO notes VALUES (3, 'three')")
        a.execute("UPDATE notes SET body = 'ONE' WHERE id = 1")
        a.execute("ALTER TABLE notes ADD COLUMN tag TEXT")
        a.execute("CREATE TABLE extra (x)")
        a.execute("INSERT INTO extra VALUES (42)")
        a.execute("CREATE VIEW loud AS SELECT upper(body) FROM notes")
        a.execute("CREATE TRIGGER notes_log AFTER UPDATE ON extra BEGIN SELECT 1; END")
        a.commit()
        a.push()
        pipeline(url, "PRAGMA user_version = 2", token=WRITER)
        head = _revision(a)
        marks = _server_rows(url, "SELECT client_id, pull_gen, change_id FROM turso_sync_last_change_id ORDER BY 1")
        assert marks, "a replica that pushed has a change-id mark on the primary"

        capsys.readouterr()
        assert _rollback(url, tmp_path, str(target)) == ExitCode.OK
        printed = capsys.readouterr().out
        assert f"to the content of revision {target}" in printed and f"head was {head}" in printed, printed

        rolled = _revision(a)
        assert rolled > head  # a new revision on top: history stays linear
        assert _rows(a, "SELECT id, body FROM notes ORDER BY id") == [(1, "one"), (2, "two")]
        assert [r[1] for r in _rows(a, "PRAGMA table_info(notes)")] == ["id", "body"]
        names = _rows(a, "SELECT type, name FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%' ORDER BY name")
        assert ("table", "extra") not in names and ("view", "loud") not in names
        assert ("trigger", "notes_log") not in names and ("index", "notes_body") in names
        assert ("trigger", "notes_audit") in names and _rows(a, "SELECT * FROM audit") == []
        assert _rows(a, "PRAGMA user_version") == [(1,)]
        # the sync's bookkeeping is the head's, not the target's
        assert _server_rows(url, "SELECT client_id, pull_gen, change_id FROM turso_sync_last_change_id ORDER BY 1") == (
            marks
        )

        # the same request again finds nothing to change and commits nothing
        again = _post(url, {"revision": target})
        assert again.status_code == 200, again.text
        assert again.json()["revision"] == again.json()["previous_head"] == str(rolled)
        assert again.json()["changes"] == {}

        # a new replica bootstraps the rolled-back state; writing goes on from there
        with contextlib.closing(_replica(tmp_path / "c.db", url)) as c:
            assert _rows(c, "SELECT id, body FROM notes ORDER BY id") == [(1, "one"), (2, "two")]
        a.execute("INSERT INTO notes VALUES (3, 'three again')")
        a.commit()
        a.push()
        assert _server_rows(url, "SELECT id, body FROM notes ORDER BY id") == [
            ["1", "one"],
            ["2", "two"],
            ["3", "three again"],
        ]
    assert ADMIN not in server.log() and WRITER not in server.log()


def test_replicas_carry_on_after_a_rollback(server: PrimaryProcess, tmp_path: Path) -> None:
    url = server.url
    with (
        contextlib.closing(_replica(tmp_path / "a.db", url)) as a,
        contextlib.closing(_replica(tmp_path / "b.db", url)) as b,
    ):
        a.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY AUTOINCREMENT, who TEXT, body TEXT)")
        a.execute("INSERT INTO notes (who, body) VALUES ('a', 'before')")
        a.commit()
        a.push()
        target = _revision(a)
        b.pull()
        # b pushes after the target (to be rolled back); a has a change pending, never pushed
        b.execute("INSERT INTO notes (who, body) VALUES ('b', 'rolled back')")
        b.commit()
        b.push()
        a.execute("INSERT INTO notes (who, body) VALUES ('a', 'pending')")
        a.commit()

        answer = _post(url, {"revision": str(target)})
        assert answer.status_code == 200, answer.text
        assert answer.json()["source"] == "history"
        assert answer.json()["changes"]["rows_deleted"] == 1
        # AUTOINCREMENT: the counter stays the head's, so the rolled-back row's id is not handed out again
        assert _server_rows(url, "SELECT seq FROM sqlite_sequence WHERE name = 'notes'") == [["2"]]

        # b pulls the rolled-back state; its rolled-back row is not pushed again
        b.pull()
        assert _rows(b, "SELECT who, body FROM notes ORDER BY id") == [("a", "before")]
        b.execute("INSERT INTO notes (who, body) VALUES ('b', 'after')")
        b.commit()
        b.push()
        b.push()  # nothing left: pushing again sends nothing
        # a's pending change rebases on the rolled-back state and lands once
        a.pull()
        assert _rows(a, "SELECT who, body FROM notes ORDER BY id")[0] == ("a", "before")
        assert ("a", "pending") in _rows(a, "SELECT who, body FROM notes")
        assert ("b", "rolled back") not in _rows(a, "SELECT who, body FROM notes")
        a.push()
        a.pull()
        b.pull()
        want = [["a", "before"], ["a", "pending"], ["b", "after"]]
        assert sorted(_server_rows(url, "SELECT who, body FROM notes")) == want
        assert sorted(list(r) for r in _rows(a, "SELECT who, body FROM notes")) == want
        assert sorted(list(r) for r in _rows(b, "SELECT who, body FROM notes")) == want
        # b's next row did not take the id of its rolled-back one (a's pending row kept the id it had)
        assert _server_rows(url, "SELECT id FROM notes WHERE body = 'after'") == [["3"]]


def test_refusals(server: PrimaryProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = server.url
    with contextlib.closing(_replica(tmp_path / "a.db", url)) as a:
        a.execute("CREATE TABLE t (x)")
        a.commit()
        a.push()
        head = _revision(a)
    assert _post(url, {"revision": 0}, token=None).status_code == 401
    for token in (READER, WRITER):
        refused = _post(url, {"revision": 0}, token=token)
        assert refused.status_code == 403, refused.text
        assert "admin" in refused.json()["error"]
    assert _post(url, {"revision": 0}, token="not-a-token-at-all").status_code == 401
    for raw in (b"{", b"[1]", b'{"revision": -1}', b'{"revision": 1, "at": "x"}', b'{"at": "yesterday"}'):
        bad = _post(url, None, raw=raw)
        assert bad.status_code == 400, (raw, bad.text)
    ahead = _post(url, {"revision": head + 100})
    assert ahead.status_code == 400 and f"(revision {head})" in ahead.json()["error"], ahead.text
    assert ahead.json()["code"] == "REVISION_AHEAD"
    timed = _post(url, {"at": "2026-01-01T00:00:00Z"})
    assert timed.status_code == 400 and "--store" in timed.json()["error"], timed.text
    assert _post(url, None, raw=b" " * 5000 + b'{"revision": 0}').status_code == 413
    assert _post(url, {"revision": 0}, db="nosuchdb").status_code == 404
    # the command: a rw token is refused (exit 4), a revision ahead of the head is a usage error (2)
    capsys.readouterr()
    assert _rollback(url, tmp_path, "0", token=WRITER) == ExitCode.AUTH
    assert "admin" in capsys.readouterr().err
    assert _rollback(url, tmp_path, str(head + 100)) == ExitCode.USAGE
    assert "newer than the head" in capsys.readouterr().err
    assert cli_main(["rollback", url]) == ExitCode.USAGE
    assert "needs --to" in capsys.readouterr().err
    # nothing of it changed the database
    assert _server_rows(url, "SELECT count(*) FROM sqlite_schema WHERE name = 't'") == [["1"]]
    assert WRITER not in server.log() and ADMIN not in server.log()


def _stream(url: str, baton: str | None, *sql: str) -> str | None:
    """One request of a Hrana stream (a transaction kept open between requests); the baton after it."""
    requests: list[dict[str, Any]] = [{"type": "execute", "stmt": {"sql": q}} for q in sql]
    if baton is not None and sql[-1] == "COMMIT":
        requests.append({"type": "close"})
    resp = httpx.post(
        f"{url}/v2/pipeline",
        json={"baton": baton, "requests": requests},
        headers={"Authorization": f"Bearer {WRITER}"},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    assert all(r["type"] == "ok" for r in resp.json()["results"]), resp.text
    return resp.json()["baton"]


def test_a_rollback_waits_for_a_stream_holding_the_write_lock(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{ADMIN} admin *\n{WRITER} rw *\n")
    tokens.chmod(0o600)
    server = PrimaryProcess(tmp_path / "data", "--token-file", str(tokens), "--stream-lock-wait", "1")
    url = server.start()
    try:
        pipeline(url, "CREATE TABLE t (x)", "INSERT INTO t VALUES ('target')", token=WRITER)
        with contextlib.closing(_replica(tmp_path / "a.db", url)) as a:
            target = _revision(a)
        baton = _stream(url, None, "BEGIN IMMEDIATE", "INSERT INTO t VALUES ('in a stream')")
        assert baton is not None
        # the stream keeps the write lock past the wait: 503, and nothing was rolled back
        locked = _post(url, {"revision": target})
        assert locked.status_code == 503 and locked.json()["code"] == "DATABASE_LOCKED", locked.text
        assert "Retry-After" in locked.headers
        # once the stream commits, the rollback runs after it and removes its row too
        assert _stream(url, baton, "COMMIT") is None
        done = _post(url, {"revision": target})
        assert done.status_code == 200, done.text
        assert done.json()["changes"]["rows_deleted"] == 1
        assert _server_rows(url, "SELECT x FROM t") == [["target"]]
    finally:
        server.close()


def test_an_encrypted_primary_rolls_back_and_writes_no_plaintext(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("ab" * 32)
    key_file.chmod(0o600)
    data = tmp_path / "data"
    server = PrimaryProcess(data, "--encryption-key-file", str(key_file))  # development mode: any token is admin
    url = server.start()
    try:
        with contextlib.closing(_replica(tmp_path / "a.db", url)) as a:
            a.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
            a.execute("INSERT INTO notes VALUES (1, 'plaintext-marker-4711')")
            a.commit()
            a.push()
            target = _revision(a)
            a.execute("DELETE FROM notes")
            a.commit()
            a.push()
            answer = _post(url, {"revision": target})
            assert answer.status_code == 200, answer.text
            a.pull()
            assert _rows(a, "SELECT id, body FROM notes") == [(1, "plaintext-marker-4711")]
    finally:
        server.close()
    for path in data.rglob("*"):
        if path.is_file():
            assert b"plaintext-marker-4711" not in path.read_bytes(), path


def test_a_revision_older_than_the_history_kept_is_409_naming_the_oldest(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{ADMIN} admin *\n{WRITER} rw *\n")
    tokens.chmod(0o600)
    data = tmp_path / "data"
    server = PrimaryProcess(data, "--token-file", str(tokens), "--history-bytes", "65536", "--history-seconds", "0")
    url = server.start()
    frames = FrameLog(str(data / "databases" / "default" / "db"), None)

    def pruned_past(revision: int) -> bool:
        try:
            list(frames.history(revision, with_images=False))
        except RevisionGone:
            return True
        return False

    def settled(revision: int) -> bool:
        """Pruned past ``revision``, and under the bound (no prune runs until the log grows again)."""
        return pruned_past(revision) and os.path.getsize(frames.path) <= 65536

    try:
        with contextlib.closing(_replica(tmp_path / "a.db", url)) as a:
            a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            a.commit()
            a.push()
            target = _revision(a)
            for i in range(60):  # one revision each
                a.execute("INSERT INTO t VALUES (?, ?)", (i, f"row-{i}-" + "x" * 2500))
                a.commit()
                a.push()
            wait_for(lambda: settled(target), 30, "the frame log to be pruned past the target")
            gone = _post(url, {"revision": target})
            assert gone.status_code == 409 and gone.json()["code"] == "REVISION_UNAVAILABLE", gone.text
            oldest = int(gone.json()["error"].split("the oldest revision it can roll back to is ")[1].split(";")[0])
            assert target < oldest <= target + 60
            just_before = _post(url, {"revision": oldest - 1})
            assert just_before.status_code == 409 and f"is {oldest};" in just_before.json()["error"]
            done = _post(url, {"revision": oldest})
            assert done.status_code == 200, done.text
            a.pull()
            # revision target + k holds the first k rows
            assert _rows(a, "SELECT count(*) FROM t") == [(oldest - target,)]
    finally:
        server.close()


def _after_takeover(action: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """``action()`` once the restarted server holds the writer lease (it answers 503 until then), within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = action()
        except turso_sync.Error as exc:  # a replica's request met the 503
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} kept failing for {timeout} s: {exc}") from exc
        else:
            if not isinstance(result, httpx.Response) or result.status_code != 503:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} kept getting 503 for {timeout} s: {result.text}")
        time.sleep(0.1)  # polling the condition with a deadline


def test_rollback_on_the_store_reaches_past_the_local_history_and_is_durable(weed: WeedMini, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{ADMIN} admin *\n{WRITER} rw *\n")
    tokens.chmod(0o600)
    data = tmp_path / "data"
    store = ["--store", f"s3://{BUCKET}/rollback-1", "--s3-endpoint", weed.endpoint, "--lease-ttl", "1"]
    store += ["--token-file", str(tokens)]
    server = PrimaryProcess(data, *store)
    url = server.start()
    try:
        with contextlib.closing(_replica(tmp_path / "a.db", url)) as a:
            a.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
            a.execute("INSERT INTO notes VALUES (1, 'kept')")
            a.commit()
            a.push()
            target = _revision(a)
            a.execute("INSERT INTO notes VALUES (2, 'rolled back')")
            a.execute("CREATE TABLE later (x)")
            a.commit()
            a.push()
            # kill -9 and an empty cache: the local history now begins at the takeover revision
            server.kill()
            shutil.rmtree(data)
            server.start()
            answer = _after_takeover(lambda: _post(url, {"revision": target}), "the rollback")
            assert answer.status_code == 200, answer.text
            assert answer.json()["source"] == "store"
            assert answer.json()["changes"]["tables_dropped"] == 1
            a.pull()
            assert _rows(a, "SELECT id, body FROM notes ORDER BY id") == [(1, "kept")]
            rolled = int(answer.json()["revision"])

            # a time: the newest revision stored by then (a minute ahead: the store dates to the second)
            later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=1)
            at_now = _post(url, {"at": later.strftime("%Y-%m-%dT%H:%M:%SZ")})
            assert at_now.status_code == 200, at_now.text
            assert at_now.json()["target"] == at_now.json()["revision"] == str(rolled)
            too_old = _post(url, {"at": "2001-01-01T00:00:00Z"})
            assert too_old.status_code == 409 and "nothing was stored" in too_old.json()["error"], too_old.text

        # acknowledged means stored: after another kill -9 and an empty cache, a new replica sees the rollback
        server.kill()
        shutil.rmtree(data)
        server.start()
        b = _after_takeover(lambda: _replica(tmp_path / "b.db", url), "a new replica's bootstrap")
        with contextlib.closing(b):
            assert _rows(b, "SELECT id, body FROM notes ORDER BY id") == [(1, "kept")]
            assert _rows(b, "SELECT name FROM sqlite_schema WHERE name = 'later'") == []
    finally:
        server.close()
    assert ADMIN not in server.log()


def test_a_follower_refuses_a_rollback_and_names_the_writer(weed: WeedMini, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{ADMIN} admin *\n{WRITER} rw *\n")
    tokens.chmod(0o600)
    store = ["--store", f"s3://{BUCKET}/rollback-2", "--s3-endpoint", weed.endpoint, "--token-file", str(tokens)]
    writer = PrimaryProcess(tmp_path / "writer", *store)
    follower = PrimaryProcess(tmp_path / "follower", *store, "--follow")
    url = writer.start()
    try:
        pipeline(url, "CREATE TABLE t (x)", "INSERT INTO t VALUES (1)", token=WRITER)
        follower.start()
        refused = _post(follower.url, {"revision": 0})
        assert refused.status_code == 403 and refused.json()["code"] == "FOLLOWER_READ_ONLY", refused.text
        assert "writer" in refused.json()["error"]
    finally:
        follower.close()
        writer.close()
