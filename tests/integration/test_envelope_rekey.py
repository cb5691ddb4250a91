"""Key rotation of an envelope replica of ``tursodb --sync-server`` under load, killed at random points.

The replica is bootstrapped from a default ``tursodb`` (pages reserve no bytes), so it uses the
envelope layout: each page in a ``P + 32``-byte slot, its nonce after the ciphertext and tag.
A pull that rebased a local change leaves a revert (kept in the sync state: a few pages), so
every place that keeps images is there: the database file, the WAL, the frame log and the revert.

A writer and a reader in processes of their own use the replica throughout, opened once with
the first key.  Each rotation runs ``rekey`` in a forked process killed with SIGKILL after a
progress line of a phase picked at random (seeded; the rig is rekey_rig.py), then
run again until one finishes.  After each kill every row the writer saw committed is there and
``PRAGMA integrity_check`` is ok; after each rotation the old key is refused and no ring is
left.  At the end no image of an older epoch is left in the database file, the WAL, the frame
log or the revert, and the replica still pushes to and pulls from the server.  The kill
points are counted by the last progress line before each kill (printed with ``-s``).
"""

from __future__ import annotations

import base64
import glob
import random
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

import turso_sync
from tests.integration.test_envelope_sync import seed_without_reserved_bytes
from tests.servers import primary, tursodb
from turso_sync.crypto.envelope import is_envelope
from turso_sync.local.rekey import frame_log_images, rekey, revert_images
from turso_sync.sync.files import ReplicaFiles
from turso_sync.sync.state import SyncState

from .rekey_rig import ACCOUNTS, BALANCE, KillPoint, RotationRig

pytestmark = pytest.mark.peers

SEED = 141414
KILLS = 20
P = 4096
S = P + 32  # an envelope slot
NONCE_AT = P + 16  # the nonce (epoch first) follows the ciphertext of the whole page and its tag

# the progress line after which the signal is sent (the run goes on a little until it lands): each
# phase as often as the sweep of pages, whose lines are many; None: at once
KILL_AFTER: list[str | None] = [
    None,
    "new writes use the new key",
    "re-encrypting pages",
    "re-encrypting pages",
    "checkpointed",
    "re-encrypting the frame log and revert files",
]


def epoch_at(image: bytes) -> int:
    return int.from_bytes(image[NONCE_AT : NONCE_AT + 2], "big")


def epochs_on_disk(path: Path) -> dict[str, set[int]]:
    """The epoch of every slot of the database file, every WAL frame, every frame log and revert image."""
    data = path.read_bytes()
    assert is_envelope(data[:7]) and len(data) % P == 0
    found = {"database": {epoch_at(data[i * S : (i + 1) * S]) for i in range(len(data) // S)}}
    wal = Path(f"{path}-wal").read_bytes() if Path(f"{path}-wal").exists() else b""
    found["WAL"] = {epoch_at(wal[off + 24 : off + 24 + S]) for off in range(32, len(wal) - (24 + S) + 1, 24 + S)}
    frames = Path(f"{path}-frames").read_bytes()
    found["frame log"] = {epoch_at(frames[off : off + S]) for _rec, off, _pgno in frame_log_images(frames, S)}
    found["revert files"] = set()  # and the small revert the sync state keeps
    for raw in [Path(name).read_bytes() for name in glob.glob(f"{path}-revert-*[0-9]")] + inline_revert(path):
        found["revert files"] |= {epoch_at(raw[off : off + S]) for _pgno, off in revert_images(raw, S)}
    return found


def inline_revert(path: Path) -> list[bytes]:
    """The revert bytes ``<db>-sync`` keeps (``revert_inline``), if any."""
    state = SyncState.load(str(path))
    return [base64.b64decode(state.revert_inline)] if state is not None and state.revert_inline else []


def make_replica(path: Path, url: str, key: str, tmp_path: Path) -> None:
    """An envelope replica of the server with rows over many pages, pushed, and a revert from a rebase."""
    a = turso_sync.connect(path, url, encryption_key=key)
    a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    a.execute("CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INTEGER)")
    a.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"row-{i}-" + "w" * 40) for i in range(1, 800)])
    a.executemany("INSERT INTO acct VALUES (?, ?)", [(i, BALANCE) for i in range(1, ACCOUNTS + 1)])
    a.commit()
    a.push()
    b = turso_sync.connect(tmp_path / "b.db", url)
    b.execute("INSERT INTO t VALUES (5000, 'from b')")
    b.commit()
    b.push()
    b.close()
    a.execute("INSERT INTO t VALUES (5001, 'from a')")
    a.commit()
    assert a.pull()  # rebases the local change over b's: the synced base's images go to a revert
    a.push()  # its mark and counters in -sync.volatile, over the -sync the rotation rewrites
    assert Path(f"{path}-sync.volatile").exists()
    a.close()
    assert is_envelope(path.read_bytes()[:7])
    # a few pages: kept in the sync state (a larger revert, in a file, is rewritten the same way)
    assert inline_revert(path), "no revert: the rotation's copies would not be exercised"


@pytest.mark.timeout(180)
def test_an_envelope_replica_rotates_under_load_killed_at_random_points(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    path = tmp_path / "env.db"
    keys = [secrets.token_hex(32)]
    with tursodb(tmp_path / "srv") as url:
        make_replica(path, url, keys[0], tmp_path)
        assert {e for found in epochs_on_disk(path).values() for e in found} == {1}
        with RotationRig(tmp_path, path, keys[0], None, first_id=10000, update_every=0) as rig:
            while rig.kills < KILLS:
                rig.rotate(secrets.token_hex(32), lambda: _after_phase(rng), every_row=False)
            rig.finish()
        keys, rotations, log = rig.keys, rig.rotations, rig.log
        final = rotations + 1
        rows = rig.check([keys[-1]], every_row=False)
        assert rows >= 801 + 50  # the writer got through transactions while the rotations ran
        found = epochs_on_disk(path)
        assert found["database"] == {final}, found
        assert found["WAL"] <= {final} and found["frame log"] == {final} and found["revert files"] == {final}, found
        report = ReplicaFiles(str(path)).encryption_report(keys[-1], "envelope")
        assert (report.format, report.epoch, report.failures) == ("envelope", final, [])
        for old in keys[:-1]:
            with pytest.raises(turso_sync.EncryptionError):
                turso_sync.connect(str(path), encryption_key=old)

        # the rotated replica still syncs both ways with the server
        committed = [int(x) for x in log.read_text().split()]
        a = turso_sync.connect(path, encryption_key=keys[-1])
        assert isinstance(a, turso_sync.SyncConnection)
        a.push()
        c = turso_sync.connect(tmp_path / "c.db", url)  # a new plaintext replica: what the server has now
        assert c.execute("SELECT count(*) FROM t WHERE id >= 10000").fetchone() == (len(committed),)
        assert c.execute("SELECT sum(bal) FROM acct").fetchone() == (ACCOUNTS * BALANCE,)
        c.execute("INSERT INTO t VALUES (7000, 'after the rotations')")
        c.commit()
        c.push()
        c.close()
        assert a.pull()
        assert a.execute("SELECT v FROM t WHERE id = 7000").fetchone() == ("after the rotations",)
        assert a.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        a.close()
        found = epochs_on_disk(path)
        assert {e for places in found.values() for e in places} == {final}, found  # the pull wrote the new epoch


def _after_phase(rng: random.Random) -> KillPoint:
    """Kill after a progress line of a phase picked at random (a page sweep's line after 1 to 29 of them)."""
    phase = rng.choice(KILL_AFTER)
    times = rng.randrange(1, 30) if phase == "re-encrypting pages" else 1  # one line per page
    return lambda seen: phase is None or sum(line.startswith(phase) for line in seen) >= times


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """``turso-sync ARGV`` in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "turso_sync.cli.main", *argv], capture_output=True, text=True, timeout=120
    )


def test_passwd_and_rekey_on_an_envelope_replica_protected_by_a_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "pw.db"
    old_pw, new_pw = tmp_path / "old.pw", tmp_path / "new.pw"
    old_pw.write_text("old words\n")
    new_pw.write_text("new words\n")
    with tursodb(tmp_path / "srv") as url:
        a = turso_sync.connect(path, url, passphrase="old words")
        a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        a.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"row-{i}-" + "p" * 200) for i in range(400)])
        a.commit()
        a.push()
        want = a.execute("SELECT id, v FROM t ORDER BY id").fetchall()
        a.close()
        before = path.read_bytes()
        wal = Path(f"{path}-wal")
        assert is_envelope(before[:7]) and (not wal.exists() or not wal.stat().st_size)  # all in the database file
        done = cli("passwd", str(path), "--passphrase-file", str(old_pw), "--new-passphrase-file", str(new_pw))
        assert done.returncode == 0, done.stderr
        assert "passphrase changed" in done.stdout and "words" not in done.stdout + done.stderr
        after = path.read_bytes()
        assert len(after) == len(before)
        changed = [i + 1 for i in range(len(after) // S) if after[i * S : (i + 1) * S] != before[i * S : (i + 1) * S]]
        assert changed == [1]  # only page 1's slot: the data key re-wrapped, every other slot as it was
        with pytest.raises(turso_sync.EncryptionError, match="wrong encryption key"):
            turso_sync.connect(path, passphrase="old words")
        a = turso_sync.connect(path, passphrase="new words")
        assert isinstance(a, turso_sync.SyncConnection)
        assert a.execute("SELECT id, v FROM t ORDER BY id").fetchall() == want
        assert a.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        a.close()

        # a rotation to a new data key under the same passphrase, by the command too
        done = cli("rekey", str(path), "--passphrase-file", str(new_pw), "--batch-pages", "8")
        assert done.returncode == 0, done.stderr
        assert "key epoch 2 in use, epoch 1 retired" in done.stdout
        assert {e for places in epochs_on_disk(path).values() for e in places} == {2}
        a = turso_sync.connect(path, passphrase="new words")
        assert isinstance(a, turso_sync.SyncConnection)
        a.execute("INSERT INTO t VALUES (1000, 'after passwd and rekey')")
        a.commit()
        a.push()
        b = turso_sync.connect(tmp_path / "b.db", url)
        assert b.execute("SELECT v FROM t WHERE id = 1000").fetchone() == ("after passwd and rekey",)
        b.execute("INSERT INTO t VALUES (1001, 'from b')")
        b.commit()
        b.push()
        b.close()
        assert a.pull()
        assert a.execute("SELECT count(*) FROM t").fetchone() == (402,)
        assert a.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        a.close()
        assert {e for places in epochs_on_disk(path).values() for e in places} == {2}


def test_a_partial_envelope_replica_rotates_and_fetches_its_missing_pages_under_the_new_key(tmp_path: Path) -> None:
    """Pages a partial replica has not fetched are not on disk: the sweep passes them by, and each
    one fetched after the rotation is written under the new epoch."""
    data_dir = tmp_path / "server"
    seed_without_reserved_bytes(data_dir, 3000)
    path = tmp_path / "partial.db"
    old, new = secrets.token_hex(32), secrets.token_hex(32)
    with primary(data_dir) as url:
        full = turso_sync.connect(tmp_path / "full.db", url)
        want = full.execute("SELECT count(*), sum(id), sum(length(v)) FROM t").fetchall()
        full.close()
        conn = turso_sync.connect(path, url, encryption_key=old, partial=turso_sync.PartialSync(prefix_bytes=64 * 1024))
        before = conn.stats()
        assert before.pages_present is not None and before.pages_total is not None
        assert before.pages_present < before.pages_total
        conn.close()
        result = rekey(path, encryption_key=old, new_key=new, batch_pages=16)
        assert result.new_epoch == 2 and 0 < result.pages_rewritten < before.pages_total
        with pytest.raises(turso_sync.EncryptionError, match="wrong encryption key"):
            turso_sync.connect(path, encryption_key=old)
        conn = turso_sync.connect(path, encryption_key=new)
        assert isinstance(conn, turso_sync.SyncConnection)
        assert conn.execute("SELECT count(*), sum(id), sum(length(v)) FROM t").fetchall() == want  # fetches the rest
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        after = conn.stats()
        assert after.pages_present is not None and after.pages_present > before.pages_present
        conn.close()
    data = path.read_bytes()
    slots = [data[i * S : (i + 1) * S] for i in range(len(data) // S)]
    assert {epoch_at(slot) for slot in slots if any(slot)} == {2}  # fetched ones too; never fetched: zeros
    assert {e for places in epochs_on_disk(path).values() for e in places} <= {0, 2}
