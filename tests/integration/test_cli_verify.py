"""`turso-sync verify PATH`: files, encryption (format, key epochs, rotation, every page that fails
authentication), integrity, and whether the replica has the primary's latest revision."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator

import pytest

import turso_sync
from tests.conftest import KEY256
from tests.integration.cli_harness import cli, fresh_url, key_env, running_primary
from tests.servers import primary
from turso_sync.local import rekey as rekey_module
from turso_sync.local.framelog import FrameLog


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    with running_primary(tmp_path_factory.mktemp("primary")) as s:
        yield s


def test_up_to_date_then_behind(tmp_path, server):
    url = fresh_url(server)
    assert cli("clone", url, "r.db", "-q", cwd=tmp_path).code == 0
    fresh = cli("verify", "r.db", cwd=tmp_path)
    assert fresh.code == 0, fresh.err
    lines = fresh.out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("files:     ok (") and lines[1].startswith("integrity: ok (")
    assert lines[2] == "revision:  up to date with the primary (revision 0)"
    writer = turso_sync.connect(tmp_path / "w.db", url)
    writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    writer.commit()
    writer.push()
    writer.close()
    cli("exec", "r.db", "CREATE TABLE mine (id INTEGER PRIMARY KEY)", cwd=tmp_path)
    behind = cli("verify", "r.db", cwd=tmp_path)
    assert behind.code == 0, behind.err
    assert "pending:   1 local change(s) not pushed yet" in behind.out
    assert "was behind the primary (had 0); pulled revision 1, now up to date" in behind.out
    assert "up to date with the primary (revision 1)" in cli("verify", "r.db", cwd=tmp_path).out


def test_offline(tmp_path):
    with running_primary(tmp_path / "p") as own:
        assert cli("clone", fresh_url(own), "r.db", "-q", cwd=tmp_path).code == 0
    local_only = cli("verify", "r.db", "--offline", cwd=tmp_path)
    assert local_only.code == 0 and "not compared with the primary: --offline" in local_only.out
    unreachable = cli("verify", "r.db", cwd=tmp_path)
    assert unreachable.code == 3
    assert "integrity: ok" in unreachable.out and "could not ask the primary" in unreachable.out
    assert "cannot reach" in unreachable.err


def test_damaged_replica_exits_7(tmp_path, server):
    assert cli("clone", fresh_url(server), "r.db", "-q", cwd=tmp_path).code == 0
    cli(
        "exec",
        "r.db",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE);"
        "INSERT INTO t VALUES (1, 'MARKER-aaaa'), (2, 'MARKER-bbbb')",
        cwd=tmp_path,
    )
    conn = turso_sync.connect(tmp_path / "r.db")
    (root,) = conn.execute("SELECT rootpage FROM sqlite_schema WHERE name = 'sqlite_autoindex_t_1'").fetchone()
    conn.checkpoint()
    conn.close()
    data = bytearray((tmp_path / "r.db").read_bytes())
    page = data[(root - 1) * 4096 : root * 4096]
    at = (root - 1) * 4096 + page.index(b"MARKER-aaaa")
    data[at : at + 11] = b"MARKER-zzzz"  # the index entry no longer matches its row
    (tmp_path / "r.db").write_bytes(bytes(data))
    damaged = cli("verify", "r.db", cwd=tmp_path)
    assert damaged.code == 7, damaged.both
    # the frame log recorded that page last: the file check names it before SQLite's integrity check
    assert damaged.out.startswith("files:     DAMAGED")
    assert f"page {root} of the database file is not the image its frame log recorded last" in damaged.out


def test_emptied_replica_exits_7_everywhere_and_repair_reclones(tmp_path, server):
    assert cli("clone", fresh_url(server), "r.db", "-q", cwd=tmp_path).code == 0
    cli("exec", "r.db", "CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1)", cwd=tmp_path)
    assert cli("push", "r.db", "-q", cwd=tmp_path).code == 0
    for suffix in ("", "-wal", "-shm"):
        if (tmp_path / f"r.db{suffix}").exists():
            os.truncate(tmp_path / f"r.db{suffix}", 0)  # `: > r.db` (and its WAL)
    damaged = cli("verify", "r.db", cwd=tmp_path)
    assert damaged.code == 7, damaged.both
    assert damaged.out.startswith("files:     DAMAGED (1 problem(s))")
    assert "r.db: the database file is empty" in damaged.out
    assert "turso-sync verify --repair r.db" in damaged.out
    pulled = cli("pull", "r.db", cwd=tmp_path)
    assert pulled.code == 7 and "verify --repair" in pulled.err, pulled.both
    repaired = cli("verify", "r.db", "--repair", cwd=tmp_path)
    assert repaired.code == 0, repaired.both
    assert "local changes not pushed before the damage are lost" in repaired.out
    assert "integrity: ok" in repaired.out
    assert cli("exec", "r.db", "SELECT count(*) FROM t", cwd=tmp_path).out.split()[-1] == "1"
    assert cli("verify", "r.db", cwd=tmp_path).code == 0


def test_lost_frame_log_repair_keeps_the_pending_change(tmp_path, server):
    url = fresh_url(server)
    assert cli("clone", url, "r.db", "-q", cwd=tmp_path).code == 0
    cli("exec", "r.db", "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", cwd=tmp_path)
    assert cli("push", "r.db", "-q", cwd=tmp_path).code == 0
    cli("exec", "r.db", "INSERT INTO t VALUES (7, 'pending')", cwd=tmp_path)
    os.remove(tmp_path / "r.db-frames")
    damaged = cli("verify", "r.db", "--offline", cwd=tmp_path)
    assert damaged.code == 7 and "r.db-frames: the frame log is missing" in damaged.out, damaged.both
    assert cli("verify", "r.db", "--repair", "--offline", cwd=tmp_path).code == 2  # repair needs the primary
    repaired = cli("verify", "r.db", "--repair", cwd=tmp_path)
    assert repaired.code == 0, repaired.both
    assert "kept 1 pending change(s)" in repaired.out and "pending:   1 local change(s)" in repaired.out
    assert cli("sync", "r.db", "-q", cwd=tmp_path).code == 0
    other = turso_sync.connect(tmp_path / "o.db", url)
    assert other.execute("SELECT v FROM t").fetchall() == [("pending",)]
    other.close()


def test_lost_sync_state_exits_7_and_repairs_with_the_url(tmp_path, server):
    url = fresh_url(server)
    assert cli("clone", url, "r.db", "-q", cwd=tmp_path).code == 0
    cli("exec", "r.db", "CREATE TABLE t (id INTEGER PRIMARY KEY)", cwd=tmp_path)
    os.remove(tmp_path / "r.db-sync")
    damaged = cli("verify", "r.db", cwd=tmp_path)
    assert damaged.code == 7, damaged.both
    assert "r.db-sync: the sync state is missing, but the database is a replica" in damaged.out
    assert "verify --repair r.db --remote URL" in damaged.out
    repaired = cli("verify", "r.db", "--repair", "--remote", url, cwd=tmp_path)
    assert repaired.code == 0, repaired.both
    assert "kept 1 pending change(s)" in repaired.out
    assert cli("push", "r.db", cwd=tmp_path).out.strip() == "pushed 1 transaction(s)"


# --- encryption: the format, the key epochs, every page that fails (issue 14) ------------------------------


def seed_remote(tmp_path, url: str, rows: int, key: str | None = None) -> None:
    """Rows pushed to the primary by another replica.  With a key, the remote's pages reserve 28 bytes
    (the seed is made before anything is pulled), so an encrypted clone of it uses those bytes: Turso's
    format or the hardened one, not the envelope layout."""
    writer = turso_sync.connect(tmp_path / "seed.db", url, encryption_key=key, bootstrap_if_empty=False)
    writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    writer.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"row {i} " + "y" * 400) for i in range(rows)])
    writer.commit()
    writer.push()
    writer.close()


def flip(path, pgno: int) -> None:
    data = bytearray(path.read_bytes())
    data[(pgno - 1) * 4096 + 1000] ^= 0xFF
    path.write_bytes(bytes(data))


def test_plaintext_replica_says_so_in_text_and_json(tmp_path, server):
    url = fresh_url(server)
    seed_remote(tmp_path, url, 20)
    assert cli("clone", url, "r.db", "-q", cwd=tmp_path).code == 0
    text = cli("verify", "r.db", "--offline", cwd=tmp_path)
    assert text.code == 0, text.both
    assert text.out.splitlines()[0].endswith("; format: plaintext (not encrypted)")
    assert "epochs:" not in text.out and "rotation:" not in text.out
    answer = cli("verify", "r.db", "--json", cwd=tmp_path)
    assert answer.code == 0, answer.both
    found = json.loads(answer.out)  # one JSON object and nothing else on stdout
    assert found["status"] == 0 and found["files"]["ok"] and found["integrity"]["ok"]
    assert found["encryption"]["format"] == "plaintext" and found["encryption"]["failures"] == []
    assert found["revision"]["after"] == found["revision"]["before"]


def test_two_damaged_pages_in_turso_format_are_both_named(tmp_path, server):
    url = fresh_url(server)
    seed_remote(tmp_path, url, 300, KEY256)
    assert cli("clone", url, "r.db", "-q", cwd=tmp_path, env=key_env()).code == 0
    fine = cli("verify", "r.db", "--offline", cwd=tmp_path, env=key_env())
    assert fine.code == 0, fine.both
    assert fine.out.splitlines()[0].endswith("; format: Turso's format (aes256gcm)")
    assert "page image(s) authenticated" in fine.out
    # two pages of the table the clone copied (the frame log never held them): the scan names both
    flip(tmp_path / "r.db", 10)
    flip(tmp_path / "r.db", 14)
    damaged = cli("verify", "r.db", "--offline", cwd=tmp_path, env=key_env())
    assert damaged.code == 7, damaged.both
    lines = damaged.out.splitlines()
    assert lines[0].startswith("files:     ok")
    assert lines[1].startswith("integrity: FAILED (r.db: pages 10, 14 failed authentication")
    assert "changed on disk" in lines[1]
    assert lines[2].startswith("remedy:    run `turso-sync verify --repair r.db`")
    found = json.loads(cli("verify", "r.db", "--offline", "--json", cwd=tmp_path, env=key_env()).out)
    assert found["status"] == 7
    assert [(f["page"], f["place"]) for f in found["encryption"]["failures"]] == [(10, "database"), (14, "database")]


def test_two_damaged_pages_the_frame_log_recorded_are_both_named(tmp_path, server):
    url = fresh_url(server)
    seed_remote(tmp_path, url, 300, KEY256)
    assert cli("clone", url, "r.db", "-q", cwd=tmp_path, env=key_env()).code == 0
    conn = turso_sync.connect(tmp_path / "r.db", encryption_key=KEY256)
    conn.execute("UPDATE t SET v = 'changed here' WHERE id IN (1, 299)")  # a page at each end of the table
    conn.commit()
    conn.checkpoint()
    conn.close()
    log = FrameLog(str((tmp_path / "r.db").resolve()), None)
    written = sorted({page.pgno for txn in log.history(None) for page in txn.pages if page.pgno > 2})
    assert len(written) >= 2
    for pgno in written[:2]:
        flip(tmp_path / "r.db", pgno)
    damaged = cli("verify", "r.db", "--offline", cwd=tmp_path, env=key_env())
    assert damaged.code == 7, damaged.both
    assert damaged.out.startswith("files:     DAMAGED (2 problem(s)); format: Turso's format (aes256gcm)")
    for pgno in written[:2]:
        assert f"r.db: page {pgno} of the database file failed authentication: it was changed on disk" in damaged.out


def stop_rotation_midway(path, old: str, new: str, saves: int) -> None:
    """``rekey`` killed right after its ``saves``-th save of its progress (3 and on: after a batch)."""
    saved = rekey_module._Rotation._save_ring
    calls = 0

    def save_then_die(self, ring):
        nonlocal calls
        calls += 1
        saved(self, ring)
        if calls == saves:
            raise Stopped()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rekey_module._Rotation, "_save_ring", save_then_die)
        with pytest.raises(Stopped):
            rekey_module.rekey(path, encryption_key=old, new_key=new, batch_pages=2)


class Stopped(BaseException):
    """Stands for the rotation's process killed at one of its saved points."""


def test_a_hardened_replica_mid_rotation_shows_its_epochs_and_the_rotation(tmp_path, server):
    url = fresh_url(server)
    seed_remote(tmp_path, url, 100, KEY256)
    made = cli("clone", url, "h.db", "--encryption-format", "hardened", "-q", cwd=tmp_path, env=key_env())
    assert made.code == 0, made.both
    assert cli("exec", "h.db", "INSERT INTO t VALUES (1000, 'pending')", cwd=tmp_path, env=key_env()).code == 0
    new = "5e" * 32
    stop_rotation_midway(tmp_path / "h.db", KEY256, new, saves=4)  # two batches of 2 pages re-encrypted
    for key in (KEY256, new):  # either key of the ring
        mid = cli("verify", "h.db", "--offline", cwd=tmp_path, env=key_env(key))
        assert mid.code == 0, mid.both
        lines = mid.out.splitlines()
        assert lines[0].endswith("; format: hardened (AES-256-GCM-SIV, raw key), key epoch 2")
        assert lines[1].startswith("epochs:    key epoch 2 (new writes): database ")
        assert lines[2].startswith("           key epoch 1: database ") and "frame log" in lines[2]
        assert "outbox" in mid.out  # the pending change's pages, under whichever epoch holds them now
        assert lines[3] == (
            "rotation:  from key epoch 1 to 2 under way (re-encrypting pages, from page 5); "
            "`turso-sync rekey h.db` finishes it; keep h.db-rekey with the database until then"
        )
        assert lines[4] == "page map:  h.db-pagemap: a page rolled back on disk is refused"
        assert lines[5].startswith("integrity: ok (")
    found = json.loads(cli("verify", "h.db", "--offline", "--json", cwd=tmp_path, env=key_env()).out)
    rotation = found["encryption"]["rotation"]
    assert (rotation["old_epoch"], rotation["new_epoch"], rotation["next_page"]) == (1, 2, 5)
    assert set(found["encryption"]["epochs"]) == {"1", "2"} and found["encryption"]["epoch"] == 2
    (tmp_path / "new.key").write_text(new)
    finished = cli("rekey", "h.db", "--new-key-file", "new.key", "-q", cwd=tmp_path, env=key_env())
    assert finished.code == 0, finished.both
    after = cli("verify", "h.db", "--offline", cwd=tmp_path, env=key_env(new))
    assert after.code == 0, after.both
    assert "rotation:  none under way" in after.out and "key epoch 1" not in after.out
    assert after.out.splitlines()[1].startswith("epochs:    key epoch 2 (new writes): database ")


def test_an_envelope_replica_with_two_damaged_slots(tmp_path):
    """A remote whose pages reserve no bytes (our primary's default database, written by stdlib SQLite):
    the encrypted clone uses the envelope layout, pages in 4,128-byte slots."""
    data_dir = tmp_path / "server"
    seeded = data_dir / "databases" / "default" / "db"
    seeded.parent.mkdir(parents=True)
    db = sqlite3.connect(seeded)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    db.executemany("INSERT INTO t VALUES (?, ?)", [(i, "z" * 300) for i in range(200)])
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    with primary(data_dir) as url:
        assert cli("clone", url, "e.db", "-q", cwd=tmp_path, env=key_env()).code == 0
    shown = cli("verify", "e.db", "--offline", cwd=tmp_path, env=key_env())
    assert shown.code == 0, shown.both
    lines = shown.out.splitlines()
    assert lines[0].endswith(
        "; format: envelope (hardened AES-256-GCM-SIV, whole pages in larger slots, raw key), key epoch 1"
    )
    assert lines[1].startswith("epochs:    key epoch 1 (new writes): database ")
    assert lines[2] == "rotation:  none under way"
    slot = 4096 + 32
    data = bytearray((tmp_path / "e.db").read_bytes())
    for pgno in (6, 9):
        data[(pgno - 1) * slot + 2000] ^= 0x77
    (tmp_path / "e.db").write_bytes(bytes(data))
    damaged = cli("verify", "e.db", "--offline", cwd=tmp_path, env=key_env())
    assert damaged.code == 7, damaged.both
    assert "integrity: FAILED (e.db: pages 6, 9 failed authentication" in damaged.out
