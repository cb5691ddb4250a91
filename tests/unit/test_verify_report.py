"""``ReplicaFiles.encryption_report`` (what `turso-sync verify` says of encryption), on local files only.

A plaintext file, a file in Turso's format, a hardened file in the middle of a key rotation (the
sweep stopped at one of its saved points, as tests/unit/test_rekey_ring.py does) and files with two
damaged pages, each of which must be named.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

import turso_sync
from tests.unit.rekey_stops import stop_rotation_midway
from turso_sync.local.engine import LocalDatabase
from turso_sync.local.rekey import rekey
from turso_sync.sync import files as files_module
from turso_sync.sync.files import EncryptionReport, PageFailure, ReplicaFiles

P = 4096


def make_db(path: Path, rows: int = 300, **options: str) -> None:
    conn = turso_sync.connect(str(path), **options)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"row-{i}-" + "v" * 200) for i in range(rows)])
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()  # every page in the database file
    conn.close()


def flip(path: Path, pgno: int) -> None:
    """Change one byte inside page ``pgno``'s ciphertext (or content), as a disk or an attacker would."""
    data = bytearray(path.read_bytes())
    data[(pgno - 1) * P + 1500] ^= 0x5A
    path.write_bytes(bytes(data))


def page_count(path: Path) -> int:
    return path.stat().st_size // P


def test_a_plaintext_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.db"
    make_db(path, rows=50)
    report = ReplicaFiles(path).encryption_report()
    assert (report.format, report.cipher, report.epoch) == ("plaintext", None, None)
    assert report.pages == page_count(path) and report.pages > 2
    assert report.epochs == {} and report.rotation is None
    assert report.authenticated == 0 and report.failures == []  # nothing to authenticate
    with pytest.raises(turso_sync.EncryptionError, match="plaintext SQLite database"):
        ReplicaFiles(path).encryption_report(secrets.token_hex(32))


def test_a_file_in_turso_format_authenticates_every_page_and_the_wal(tmp_path: Path) -> None:
    path, key = tmp_path / "t.db", secrets.token_hex(16)
    make_db(path, rows=100, encryption_key=key, cipher="aes128gcm")
    conn = turso_sync.connect(str(path), encryption_key=key, cipher="aes128gcm")
    conn.execute("UPDATE t SET v = 'changed' WHERE id < 5")  # a few frames left in the WAL
    conn.commit()
    report = ReplicaFiles(path).encryption_report(key, "aes128gcm")  # while the connection is open
    conn.close()
    assert (report.format, report.cipher, report.passphrase) == ("turso", "aes128gcm", False)
    assert report.epochs == {} and report.epoch is None and report.rotation is None
    assert report.pages > 2 and report.failures == []
    assert report.authenticated > report.pages  # every database page, and the WAL's frames
    with pytest.raises(turso_sync.EncryptionError, match="wrong encryption key"):
        ReplicaFiles(path).encryption_report(secrets.token_hex(16), "aes128gcm")


def test_two_damaged_pages_in_turso_format_are_both_named(tmp_path: Path) -> None:
    path, key = tmp_path / "t.db", secrets.token_hex(32)
    make_db(path, encryption_key=key)
    flip(path, 4)
    flip(path, 9)
    report = ReplicaFiles(path).encryption_report(key)
    assert [(f.file, f.pgno, f.place) for f in report.failures] == [
        (str(path.resolve()), 4, "database"),
        (str(path.resolve()), 9, "database"),
    ]
    assert report.authenticated == report.pages - 2
    assert report.failures[0].line() == f"{path.resolve()}: page 4 failed authentication"


def test_without_a_key_the_format_and_epochs_are_read_but_nothing_is_authenticated(tmp_path: Path) -> None:
    path, key = tmp_path / "h.db", secrets.token_hex(32)
    make_db(path, rows=60, encryption_key=key, encryption_format="hardened")
    flip(path, 3)
    report = ReplicaFiles(path).encryption_report()
    assert (report.format, report.cipher, report.epoch) == ("hardened", "aes-256-gcm-siv", 1)
    assert report.epochs == {1: {"database": report.pages}}
    assert report.authenticated == 0 and report.failures == []


def test_a_passphrase_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "pw.db"
    make_db(path, rows=20, passphrase="correct horse")
    report = ReplicaFiles(path).encryption_report("correct horse", "hardened-passphrase")
    assert (report.format, report.passphrase, report.epoch) == ("hardened", True, 1)
    assert report.failures == [] and report.authenticated == report.pages


def test_a_hardened_file_mid_rotation_reports_both_epochs_and_the_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "app.db"
    old, new = secrets.token_hex(32), secrets.token_hex(32)
    LocalDatabase(path, encryption_key=old, cipher="hardened").close()  # keeps a frame log, as a replica does
    make_db(path, rows=200, encryption_key=old, encryption_format="hardened")
    reader = turso_sync.connect(str(path), encryption_key=old)  # open: the sweep's frames stay in the WAL
    assert reader.execute("SELECT count(*) FROM t").fetchone() == (200,)
    stop_rotation_midway(path, old, new, monkeypatch, saves=4)  # two batches of 4 pages swept
    during = ReplicaFiles(path).encryption_report(new, "hardened")
    assert during.failures == [] and during.epoch == 2
    assert during.epochs[2]["WAL"] >= 8 and "database" not in during.epochs[2]  # pages 1..8 rewritten as frames
    assert during.epochs[1]["database"] == during.pages
    reader.close()  # the last connection: its checkpoint copies the WAL into the file
    for key in (old, new):  # either key of the ring opens the file and reads both epochs
        report = ReplicaFiles(path).encryption_report(key, "hardened")
        assert report.format == "hardened" and report.epoch == 2
        assert report.failures == [], [f.line() for f in report.failures]
        rotation = report.rotation
        assert rotation is not None
        assert (rotation.old_epoch, rotation.new_epoch, rotation.ring_present) == (1, 2, True)
        assert rotation.phase == "re-encrypting pages" and rotation.next_page == 9
        assert rotation.ring_file == str(path.resolve()) + "-rekey"
        assert set(report.epochs) == {1, 2}
        assert report.epochs[2]["database"] == 8 and "WAL" not in report.epochs[2]
        assert report.epochs[1]["database"] == report.pages - 8
        assert report.epochs[1]["frame log"] > 0  # history kept under the old key, not swept yet
        assert report.epochs[2]["frame log"] > 0  # the sweep's own transactions, archived at that checkpoint
        total = sum(sum(places.values()) for places in report.epochs.values())
        assert report.authenticated == total  # every image counted was authenticated
    rekey(path, encryption_key=old, new_key=new)  # resume: the rotation ends
    done = ReplicaFiles(path).encryption_report(new, "hardened")
    assert done.rotation is None and done.failures == []
    assert set(done.epochs) == {2} and done.epochs[2]["database"] == done.pages


def test_a_rotation_whose_ring_is_lost_is_reported_and_its_old_pages_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "app.db"
    old, new = secrets.token_hex(32), secrets.token_hex(32)
    make_db(path, rows=100, encryption_key=old, encryption_format="hardened")
    stop_rotation_midway(path, old, new, monkeypatch, saves=3)
    conn = turso_sync.connect(str(path), encryption_key=old)  # its checkpoint puts page 1 of epoch 2 in the file
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    conn.close()
    (tmp_path / "app.db-rekey").unlink()
    report = ReplicaFiles(path).encryption_report(new, "hardened")
    assert report.rotation is not None and not report.rotation.ring_present
    assert (report.rotation.old_epoch, report.rotation.new_epoch, report.rotation.phase) == (1, 2, "")
    assert report.failures and all("epoch 1" in f.reason for f in report.failures)
    assert len(report.failures) == report.epochs[1]["database"]  # every page the sweep had not reached


def test_two_damaged_pages_of_a_hardened_file_are_both_named_with_the_wal(tmp_path: Path) -> None:
    path, key = tmp_path / "h.db", secrets.token_hex(32)
    make_db(path, encryption_key=key, encryption_format="hardened")
    flip(path, 3)
    flip(path, 6)
    report = ReplicaFiles(path).encryption_report(key)
    assert [(f.pgno, f.place) for f in report.failures] == [(3, "database"), (6, "database")]
    assert report.epochs == {1: {"database": report.pages}}
    # a page moved to another place in the file is named too (the hardened format binds the page number)
    data = bytearray(path.read_bytes())
    data[7 * P : 8 * P] = data[8 * P : 9 * P]  # page 9's image over page 8
    path.write_bytes(bytes(data))
    moved = ReplicaFiles(path).encryption_report(key)
    assert [f.pgno for f in moved.failures] == [3, 6, 8]


def test_an_envelope_file_is_read_slot_by_slot(tmp_path: Path) -> None:
    """The envelope layout (a replica of a remote whose pages reserve no bytes): pages in P + 32-byte slots."""
    path, key = tmp_path / "e.db", secrets.token_hex(32)
    make_db(path, rows=100, encryption_key=key, cipher="envelope")
    report = ReplicaFiles(path).encryption_report(key)
    assert (report.format, report.cipher, report.epoch) == ("envelope", "aes-256-gcm-siv", 1)
    slot = P + 32
    assert report.pages == path.stat().st_size // slot and report.pages > 5
    assert report.epochs == {1: {"database": report.pages}} and report.failures == []
    assert report.authenticated == report.pages
    data = bytearray(path.read_bytes())
    for pgno in (2, 5):
        data[(pgno - 1) * slot + 700] ^= 0x33
    path.write_bytes(bytes(data))
    damaged = ReplicaFiles(path).encryption_report(key)
    assert [(f.pgno, f.place) for f in damaged.failures] == [(2, "database"), (5, "database")]


def test_the_report_as_json() -> None:
    report = EncryptionReport("/x/app.db", "hardened", "aes-256-gcm-siv", epoch=2, epochs={2: {"database": 5}})
    report.failures.append(PageFailure("/x/app.db-wal", 3, "WAL", "frame 12", "written under key epoch 1"))
    again = json.loads(json.dumps(report.to_dict()))
    assert again["epochs"] == {"2": {"database": 5}} and again["rotation"] is None
    assert again["failures"] == [
        {
            "file": "/x/app.db-wal",
            "page": 3,
            "place": "WAL",
            "detail": "frame 12",
            "reason": "written under key epoch 1",
        }
    ]
    assert (
        report.failures[0].line() == "/x/app.db-wal: page 3 (frame 12) failed authentication: written under key epoch 1"
    )


def test_without_authentication_sqlite_never_opens_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """verify reads a damaged replica's format this way: SQLite must not touch a file that may be damaged."""
    path, key = tmp_path / "h.db", secrets.token_hex(32)
    make_db(path, rows=40, encryption_key=key, encryption_format="hardened")

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a connection was opened")

    monkeypatch.setattr(files_module, "Connection", refuse)
    report = ReplicaFiles(path).encryption_report(key, authenticate=False)
    assert (report.format, report.epoch, report.authenticated) == ("hardened", 1, 0)
    assert report.epochs == {1: {"database": report.pages}} and not report.outbox_known
