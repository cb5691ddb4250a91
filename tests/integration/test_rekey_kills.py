"""Key rotation under load, killed at random points: nothing is lost, the old key ends refused.

A writer and a reader run in processes of their own for the whole test, opened once with the
first key; they live through every rotation (their codecs learn each new key from the ring).
Each rotation runs ``rekey`` in a third process, killed with SIGKILL right after a random
number of its progress lines (seeded), then started again, until a run finishes.  After every
kill the test opens the database itself with the key ring (either key of the rotation) and
checks that every row the writer saw committed is there, whole, and that
``PRAGMA integrity_check`` is ok.  After every rotation the old key is refused and no ring file
is left; at the end every older key is refused and no image in the database file, the WAL or
the frame log is under an older epoch.  The kill points are counted by the last progress line
before each kill (printed with ``-s``).
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest

import turso_sync
from turso_sync.crypto.hardened import HardenedCodec
from turso_sync.crypto.page_codec import HARDENED_CIPHERS
from turso_sync.local.engine import LocalDatabase
from turso_sync.local.rekey import frame_log_images, scan_frame_log

from .rekey_rig import ACCOUNTS, BALANCE, RotationRig

SEED = 1414
KILLS = 50
P = 4096


def epochs_on_disk(path: Path, final_key: str) -> tuple[set[int], set[int], int]:
    """Epochs of every page of the database file and every WAL frame; frame log images off ``final``."""
    data = path.read_bytes()
    db = {int.from_bytes(data[i * P + P - 12 : i * P + P - 10], "big") for i in range(len(data) // P)}
    wal: set[int] = set()
    if Path(f"{path}-wal").exists():
        raw = Path(f"{path}-wal").read_bytes()
        for off in range(32, len(raw) - (24 + P) + 1, 24 + P):
            wal.add(int.from_bytes(raw[off + 24 + P - 12 : off + 24 + P - 10], "big"))
    codec = HardenedCodec(HARDENED_CIPHERS["hardened"], bytes.fromhex(final_key))
    final = max(db)
    return db, wal, scan_frame_log(str(path), codec, final)


@pytest.mark.timeout(180)
def test_rotations_killed_at_random_points_lose_nothing(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    path = tmp_path / "app.db"
    keys = [secrets.token_hex(32)]
    LocalDatabase(path, encryption_key=keys[0], cipher="hardened").close()  # a frame log, as a replica keeps
    conn = turso_sync.connect(str(path), encryption_key=keys[0], cipher="hardened")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INTEGER)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"row-{i}-" + "w" * 40) for i in range(1, 800)])
    conn.executemany("INSERT INTO acct VALUES (?, ?)", [(i, BALANCE) for i in range(1, ACCOUNTS + 1)])
    conn.commit()
    conn.close()
    with RotationRig(tmp_path, path, keys[0], "hardened", first_id=1000, update_every=7) as rig:
        while rig.kills < KILLS:
            # progress lines: start, one per page, checkpoint, copies, retire
            rig.rotate(secrets.token_hex(32), lambda: _after_lines(rng.randrange(0, 24)), every_row=True)
        rig.finish()
    keys = rig.keys
    rotations = rig.rotations
    rows = rig.check([keys[-1]], every_row=True)
    assert rows >= 799 + 100  # the writer got through at least a hundred transactions
    db_epochs, wal_epochs, old_in_log = epochs_on_disk(path, keys[-1])
    assert db_epochs == {rotations + 1} and wal_epochs <= {rotations + 1} and old_in_log == 0
    assert len(list(frame_log_images(Path(f"{path}-frames").read_bytes(), P))) > 100  # history was kept
    for old in keys[:-1]:
        with pytest.raises(turso_sync.EncryptionError):
            turso_sync.connect(str(path), encryption_key=old, cipher="hardened")


def _after_lines(count: int) -> Callable[[list[str]], bool]:
    """Kill once the run has printed ``count`` progress lines."""
    return lambda seen: len(seen) >= count
