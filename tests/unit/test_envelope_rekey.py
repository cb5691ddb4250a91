"""Key rotation and passphrase changes on envelope files, in one process.

An envelope file stores each page in a slot of ``P + 32`` bytes whose nonce follows the
ciphertext and tag (``crypto/envelope.py``); the rotation reads and rewrites images by slot.
The epochs are checked here from the raw bytes, where the layout keeps the nonce, and by
``encryption_report``, which authenticates every image.  Kills are simulated by an exception
at each point where the sweep saves its progress; the real thing (SIGKILL, other processes,
a server) is tests/integration/test_envelope_rekey.py.
"""

from __future__ import annotations

import argparse
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

import turso_sync
from tests.unit.rekey_stops import Killed, stop_rotation_midway
from tests.unit.reverts import KEPT, keep_revert, read_kept_revert, stored_revert
from turso_sync.cli import passwd as passwd_cli
from turso_sync.cli import rekey as rekey_cli
from turso_sync.cli.exit_codes import ExitCode
from turso_sync.crypto import keys
from turso_sync.crypto.envelope import EnvelopeCodec, is_envelope
from turso_sync.crypto.hardened import FileParams, HardenedCodec
from turso_sync.crypto.page_codec import HARDENED_CIPHERS
from turso_sync.local import rekey as rekey_module
from turso_sync.local.engine import LocalDatabase
from turso_sync.local.rekey import change_passphrase, frame_log_images, rekey, revert_images
from turso_sync.sync.files import ReplicaFiles

P = 4096
S = P + 32
NONCE_AT = P + 16  # after the ciphertext of the whole page and its tag


def make_envelope_db(path: Path, secret: str, cipher: str = "envelope", rows: int = 300) -> None:
    """A local envelope database with a frame log (as a replica keeps) and rows over many pages."""
    make_db(path, secret, cipher, rows)
    assert is_envelope(path.read_bytes()[:7])


def make_db(path: Path, secret: str, cipher: str, rows: int) -> None:
    LocalDatabase(path, encryption_key=secret, cipher=cipher).close()
    conn = turso_sync.connect(str(path), encryption_key=secret, cipher=cipher)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"row-{i}-" + "e" * 300) for i in range(rows)])
    conn.commit()
    conn.execute("UPDATE t SET v = v || '-again' WHERE id % 3 = 0")  # history in the frame log
    conn.commit()
    conn.close()


def rows_of(path: Path, secret: str, cipher: str = "envelope") -> list[tuple[object, ...]]:
    conn = turso_sync.connect(str(path), encryption_key=secret, cipher=cipher)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return conn.execute("SELECT id, v FROM t ORDER BY id").fetchall()
    finally:
        conn.close()


def slot_epochs(data: bytes) -> set[int]:
    """The epoch of every slot of an envelope database file (the padding is shorter than a slot)."""
    return {int.from_bytes(data[i * S + NONCE_AT : i * S + NONCE_AT + 2], "big") for i in range(len(data) // S)}


def frame_log_epochs(path: Path) -> set[int]:
    data = Path(f"{path}-frames").read_bytes()
    return {
        int.from_bytes(data[off + NONCE_AT : off + NONCE_AT + 2], "big") for _r, off, _p in frame_log_images(data, S)
    }


def test_an_envelope_file_rotates_and_the_old_key_opens_nothing(tmp_path: Path) -> None:
    path = tmp_path / "env.db"
    old, new = secrets.token_hex(32), secrets.token_hex(32)
    make_envelope_db(path, old)
    before = rows_of(path, old)
    assert slot_epochs(path.read_bytes()) == {1} and frame_log_epochs(path) == {1}
    seen: list[str] = []
    result = rekey(path, encryption_key=old, new_key=new, batch_pages=8, progress=lambda p: seen.append(p.phase))
    assert (result.old_epoch, result.new_epoch, result.resumed) == (1, 2, False)
    assert result.pages_rewritten > 8 and result.copies_rewritten > 0
    assert seen[-1] == "old key retired"
    data = path.read_bytes()
    assert is_envelope(data[:7]) and len(data) % P == 0
    assert slot_epochs(data) == {2}
    assert frame_log_epochs(path) == {2}
    assert not Path(f"{path}-rekey").exists()
    assert rows_of(path, new) == before
    with pytest.raises(turso_sync.EncryptionError, match="wrong encryption key"):
        turso_sync.connect(str(path), encryption_key=old)
    report = ReplicaFiles(str(path)).encryption_report(new, "envelope")
    assert report.format == "envelope" and report.epoch == 2 and report.failures == []
    assert set(report.epochs) == {2}
    again = rekey(path, encryption_key=old, new_key=new)  # done already: found so, nothing rewritten
    assert (again.resumed, again.pages_rewritten) == (True, 0)


@pytest.mark.parametrize("kill_at", range(1, 8))  # ring written, start, batches, swept, copies
def test_an_envelope_rotation_stopped_at_any_saved_point_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kill_at: int
) -> None:
    path = tmp_path / "env.db"
    old, new = secrets.token_hex(32), secrets.token_hex(32)
    make_envelope_db(path, old, rows=120)
    before = rows_of(path, old)
    stop_rotation_midway(path, old, new, monkeypatch, saves=kill_at)
    assert Path(f"{path}-rekey").exists()
    assert rows_of(path, old) == before  # either key of a rotation under way opens it
    result = rekey(path, encryption_key=old, new_key=new, batch_pages=4)
    assert result.resumed
    assert rows_of(path, new) == before
    assert slot_epochs(path.read_bytes()) == {2} and frame_log_epochs(path) == {2}
    with pytest.raises(turso_sync.EncryptionError):
        turso_sync.connect(str(path), encryption_key=old)


@pytest.mark.parametrize("kept", KEPT)
def test_an_envelope_revert_file_is_re_encrypted_by_slot(tmp_path: Path, kept: str) -> None:
    path = tmp_path / "env.db"
    old, new = secrets.token_hex(32), secrets.token_hex(32)
    make_envelope_db(path, old, rows=100)
    db_path = str(path.resolve())
    codec = EnvelopeCodec(HARDENED_CIPHERS["envelope"], bytes.fromhex(old), P)
    data = path.read_bytes()
    codec.open_file(data[:S])
    pages = {pgno: codec.decrypt(data[(pgno - 1) * S : pgno * S], pgno) for pgno in (2, 3)}
    keep_revert(db_path, 5, pages, codec, kept)  # a replica's synced base images, as a pull leaves them
    result = rekey(path, encryption_key=old, new_key=new)
    assert result.copies_rewritten >= 2
    reopened = EnvelopeCodec(HARDENED_CIPHERS["envelope"], bytes.fromhex(new), P)
    reopened.open_file(path.read_bytes()[:S])
    raw = stored_revert(db_path, 5, kept)
    stored = [raw[24 + 4 + i * (4 + S) :][:S] for i in range(2)]
    assert {int.from_bytes(image[NONCE_AT : NONCE_AT + 2], "big") for image in stored} == {2}
    assert read_kept_revert(db_path, 5, reopened, kept) == pages


def test_a_lost_ring_of_an_envelope_rotation_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "env.db"
    old, new = secrets.token_hex(32), secrets.token_hex(32)
    make_envelope_db(path, old, rows=100)
    monkeypatch.setattr(rekey_module._Rotation, "_sweep", lambda self, ring: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        rekey(path, encryption_key=old, new_key=new)
    monkeypatch.undo()
    Path(f"{path}-rekey").unlink()
    with pytest.raises(turso_sync.EncryptionError, match=r"key ring .*env\.db-rekey is missing.*still needs the old"):
        rekey(path, encryption_key=new)


def test_a_run_killed_between_removing_the_ring_and_retiring_is_finished_by_the_same_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same rekey command again (old key, the new key) finishes it; it used to start a rotation
    to the key the file already uses and fail ("the new key is the key the file already uses")."""
    path = tmp_path / "env.db"
    old, new = secrets.token_hex(32), secrets.token_hex(32)
    make_envelope_db(path, old, rows=100)
    before = rows_of(path, old)

    def die(self: rekey_module._Rotation, conn: object) -> None:
        raise Killed()  # the ring is removed just before this, page 1 still says "previous live"

    monkeypatch.setattr(rekey_module._Rotation, "_retire_locked", die)
    with pytest.raises(Killed):
        rekey(path, encryption_key=old, new_key=new)
    monkeypatch.undo()
    assert not Path(f"{path}-rekey").exists()
    again = rekey(path, encryption_key=old, new_key=new)
    assert again.resumed and (again.old_epoch, again.new_epoch) == (1, 2)
    assert rows_of(path, new) == before
    with pytest.raises(turso_sync.EncryptionError):
        turso_sync.connect(str(path), encryption_key=old)
    third = secrets.token_hex(32)  # and a new key after it starts the next rotation
    assert (rekey(path, encryption_key=new, new_key=third).new_epoch, rows_of(path, third)) == (3, before)


def test_an_envelope_passphrase_changes_with_page1_alone(tmp_path: Path) -> None:
    path = tmp_path / "pw.db"
    make_envelope_db(path, "old words", cipher="envelope-passphrase", rows=100)
    want = rows_of(path, "old words", "envelope-passphrase")
    before = path.read_bytes()
    change_passphrase(path, "old words", "new words", argon2=keys.ARGON2_FLOOR)
    after = path.read_bytes()
    assert len(after) == len(before) and is_envelope(after[:7])
    changed = {i + 1 for i in range(len(after) // S) if after[i * S : (i + 1) * S] != before[i * S : (i + 1) * S]}
    assert changed == {1}
    assert after[len(after) // S * S :] == before[len(before) // S * S :]  # the padding too
    params = FileParams.of_page1(after)
    assert params.argon2 == keys.ARGON2_FLOOR and params.epoch == 1
    assert rows_of(path, "new words", "envelope-passphrase") == want
    with pytest.raises(turso_sync.EncryptionError, match="wrong encryption key"):
        turso_sync.connect(str(path), encryption_key="old words", cipher="envelope-passphrase")


@pytest.mark.parametrize("kept", KEPT)
@pytest.mark.parametrize("cipher", ["envelope-passphrase", "hardened-passphrase"])
def test_passwd_leaves_no_copy_of_page1_with_the_old_wrap(tmp_path: Path, cipher: str, kept: str) -> None:
    """The frame log and revert files keep page 1 as it was on disk, its header holding the
    wrapped data key: left alone, the old passphrase would still unwrap it from them."""
    path = tmp_path / "pw.db"
    make_db(path, "old words", cipher, rows=60)
    size = S if cipher.startswith("envelope") else P
    db_path = str(path.resolve())
    spec = HARDENED_CIPHERS[cipher.replace("-", "")]
    codec = EnvelopeCodec(spec, b"old words", P) if size == S else HardenedCodec(spec, b"old words", P)
    data = path.read_bytes()
    codec.open_file(data[:size])
    pages = {1: codec.decrypt(data[:size], 1), 2: codec.decrypt(data[size : 2 * size], 2)}
    keep_revert(db_path, 3, pages, codec, kept)
    old_params = FileParams.of_page1(data)

    def page1_copies() -> list[FileParams]:
        log = Path(f"{path}-frames").read_bytes()
        raw = stored_revert(db_path, 3, kept)
        offsets = [(log, off) for _rec, off, pgno in frame_log_images(log, size) if pgno == 1]
        offsets += [(raw, off) for pgno, off in revert_images(raw, size) if pgno == 1]
        return [FileParams.of_page1(data[off : off + size]) for data, off in offsets]

    assert old_params in page1_copies()
    change_passphrase(path, "old words", "new words", argon2=keys.ARGON2_FLOOR)
    new_params = FileParams.of_page1(path.read_bytes())
    assert new_params.wrapped != old_params.wrapped
    copies = page1_copies()
    assert len(copies) >= 2 and set(copies) == {new_params}
    new_codec = EnvelopeCodec(spec, b"new words", P) if size == S else HardenedCodec(spec, b"new words", P)
    new_codec.open_file(path.read_bytes()[:size])
    assert read_kept_revert(db_path, 3, new_codec, kept)[2] == codec.decrypt(data[size : 2 * size], 2)
    with pytest.raises(turso_sync.EncryptionError, match="wrong encryption key"):
        turso_sync.connect(str(path), encryption_key="old words", cipher=cipher)


def test_an_envelope_passphrase_file_rotates_to_a_new_data_key(tmp_path: Path) -> None:
    path = tmp_path / "pw.db"
    make_envelope_db(path, "correct horse", cipher="envelope-passphrase", rows=100)
    before = rows_of(path, "correct horse", "envelope-passphrase")
    wrapped = FileParams.of_page1(path.read_bytes()[:S]).wrapped
    result = rekey(path, passphrase="correct horse", batch_pages=16)
    assert result.new_epoch == 2
    params = FileParams.of_page1(path.read_bytes()[:S])
    assert params.epoch == 2 and params.wrapped != wrapped and not params.previous_live
    assert slot_epochs(path.read_bytes()) == {2} and frame_log_epochs(path) == {2}
    assert rows_of(path, "correct horse", "envelope-passphrase") == before


def parse(module: object, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)  # type: ignore[attr-defined]
    return parser.parse_args(argv)


def test_the_commands_take_envelope_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "env.db"
    old, new = secrets.token_hex(32), secrets.token_hex(32)
    make_envelope_db(path, old, rows=80)
    (tmp_path / "old.key").write_text(old + "\n")
    (tmp_path / "new.key").write_text(new + "\n")
    argv = [str(path), "--encryption-key-file", str(tmp_path / "old.key"), "--new-key-file", str(tmp_path / "new.key")]
    assert rekey_cli.run(parse(rekey_cli, argv)) == ExitCode.OK
    out, err = capsys.readouterr()
    assert "epoch 2 in use, epoch 1 retired" in out and old not in out + err and new not in out + err
    assert len(rows_of(path, new)) == 80
    pw = tmp_path / "pw.db"
    make_envelope_db(pw, "old words", cipher="envelope-passphrase", rows=20)
    (tmp_path / "old.pw").write_text("old words\n")
    (tmp_path / "new.pw").write_text("new words\n")
    argv = [str(pw), "--passphrase-file", str(tmp_path / "old.pw"), "--new-passphrase-file", str(tmp_path / "new.pw")]
    assert passwd_cli.run(parse(passwd_cli, argv)) == ExitCode.OK
    assert "passphrase changed" in capsys.readouterr().out
    assert len(rows_of(pw, "new words", "envelope-passphrase")) == 20


# A stand-in for another process's checkpoint: SQLite's unix VFS takes byte 121 of -shm exclusively
# (WAL_CKPT_LOCK), without waiting, before it writes the database file; here it writes slot 1
# again and again, with two valid images, so that an unguarded read often crosses a write.
CHECKPOINTER = r"""
import fcntl, os, struct, sys, time
path = sys.argv[1]
first, second = bytes.fromhex(sys.stdin.readline()), bytes.fromhex(sys.stdin.readline())
db = os.open(path, os.O_WRONLY)
shm = os.open(path + "-shm", os.O_RDWR | os.O_CREAT, 0o600)
print("ready", flush=True)
while True:
    try:
        fcntl.fcntl(shm, fcntl.F_SETLK, struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 121, 1, 0))
    except OSError:
        continue  # busy, as a checkpoint finds it: it gives up and comes back later
    for _ in range(1000):
        os.pwrite(db, second, 0)
        os.pwrite(db, first, 0)
    fcntl.fcntl(shm, fcntl.F_SETLK, struct.pack("hhqqi", fcntl.F_UNLCK, os.SEEK_SET, 121, 1, 0))
    time.sleep(0.0002)  # pacing: checkpoints come and go
"""


def test_page1_is_read_while_no_checkpoint_writes_it(tmp_path: Path) -> None:
    """``rekey`` reads page 1 without a connection to find which epoch the key opens; a read
    that crosses another process's checkpoint write (a slot spans two memory pages) would fail
    like a wrong key.  It holds checkpoints off while it reads."""
    path = tmp_path / "env.db"
    key = secrets.token_hex(32)
    make_envelope_db(path, key, rows=50)
    codec = EnvelopeCodec(HARDENED_CIPHERS["envelope"], bytes.fromhex(key), P)
    first = path.read_bytes()[:S]
    codec.open_file(first)
    second = codec.encrypt(codec.decrypt(first, 1), 1)  # the same page 1 under another nonce
    assert second != first
    proc = subprocess.Popen(
        [sys.executable, "-c", CHECKPOINTER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(f"{first.hex()}\n{second.hex()}\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "ready"
        for _ in range(2000):
            assert rekey_module._opening_secret(str(path), key, None) == (key, "envelope")
        with pytest.raises(turso_sync.EncryptionError, match="wrong encryption key"):
            rekey_module._opening_secret(str(path), secrets.token_hex(32), None)  # a wrong key still is one
    finally:
        proc.kill()
        proc.wait()
