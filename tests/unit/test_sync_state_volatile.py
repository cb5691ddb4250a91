"""``<db>-sync.volatile``: the saves a power loss may undo wait for no disk, and are never read torn.

A ``durable=False`` save that changes only ``VOLATILE_FIELDS`` (a push's mark and counters, a
pull that brought nothing) writes them to ``-sync.volatile`` with the epoch of the ``-sync`` file
they extend and a checksum, without any sync; ``SyncState.load`` lays them over ``-sync`` only
when both hold.  The property test runs sequences of saves against the real files, then plays a
power loss the way a file system may (the last folder-synced ``-sync`` or any later one; any
volatile file ever written, whole, cut short, zeroed, with a byte flipped or a digit changed,
half written over another, or none) and checks that the state read back is exactly the state of
one save at or after the last durable one: never a torn state, never a mix, never older than what
was made durable.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from turso_sync.sync import state as state_mod
from turso_sync.sync.state import PUSH_MARK_KEY, VOLATILE_FIELDS, VOLATILE_SUFFIX, SyncState

URL = "https://remote.invalid"


def saved_fields(state: SyncState) -> dict[str, object]:
    """What a save writes of a state (the snapshot ``_durable`` is not saved)."""
    return json.loads(json.dumps({spec.name: getattr(state, spec.name) for spec in state_mod._SAVED_FIELDS}))


@pytest.fixture
def writes(monkeypatch):
    """Every file the state module writes: (name, synced) in order (a rename follows each but the
    volatile file, overwritten in place); and every folder it syncs."""
    seen: list[tuple[str, bool]] = []
    real_write, real_overwrite, real_dir = state_mod._write_whole, state_mod._overwrite, state_mod.fsync_dir

    def write(path: str, data: bytes, *, sync: bool) -> None:
        seen.append((os.path.basename(path), sync))
        real_write(path, data, sync=sync)

    def overwrite(path: str, data: bytes) -> None:
        seen.append((os.path.basename(path) + " in place", False))
        real_overwrite(path, data)

    def sync_dir(path: str) -> None:
        seen.append(("folder of " + os.path.basename(path), True))
        real_dir(path)

    monkeypatch.setattr(state_mod, "_write_whole", write)
    monkeypatch.setattr(state_mod, "_overwrite", overwrite)
    monkeypatch.setattr(state_mod, "fsync_dir", sync_dir)
    return seen


def a_state(db: str) -> SyncState:
    state = SyncState(URL, "client-1", synced_revision="r1", extra={PUSH_MARK_KEY: [0, 0]})
    state.save(db)
    loaded = SyncState.load(db)
    assert loaded is not None
    return loaded


def test_a_save_of_counters_and_mark_writes_only_the_volatile_file_and_waits_for_no_disk(tmp_path, writes):
    db = str(tmp_path / "a.db")
    state = a_state(db)
    before = os.stat(db + "-sync")
    writes.clear()
    state.pushes += 1
    state.forgotten += 2
    state.extra[PUSH_MARK_KEY] = [0, 7]
    state.save(db, durable=False)
    assert writes == [("a.db-sync.volatile in place", False)]
    after = os.stat(db + "-sync")
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    seen = SyncState.load(db)  # what another process reads, at once
    assert seen is not None and saved_fields(seen) == saved_fields(state)
    assert seen.pushes == 1 and seen.forgotten == 2 and seen.extra[PUSH_MARK_KEY] == [0, 7]


def test_a_non_durable_save_that_changes_another_field_writes_the_state_file(tmp_path, writes):
    db = str(tmp_path / "a.db")
    state = a_state(db)
    epoch = state.epoch
    writes.clear()
    state.pushes += 1
    state.zstd = True  # not safe to keep only in the volatile file: -sync itself is written
    state.save(db, durable=False)
    assert writes == [("a.db-sync.tmp", True)]  # its data synced, the folder not
    assert state.epoch != epoch
    seen = SyncState.load(db)
    assert seen is not None and saved_fields(seen) == saved_fields(state)


def test_a_durable_save_writes_a_new_epoch_and_an_older_volatile_file_is_ignored(tmp_path, writes):
    db = str(tmp_path / "a.db")
    state = a_state(db)
    state.pushes = 5
    state.save(db, durable=False)
    old_volatile = Path(db + VOLATILE_SUFFIX).read_bytes()
    state.pulls = 3
    state.synced_revision = "r2"
    state.save(db)
    assert writes[-2:] == [("a.db-sync.tmp", True), ("folder of a.db-sync", True)]
    Path(db + VOLATILE_SUFFIX).write_bytes(old_volatile)  # still there (or back after a power loss)
    seen = SyncState.load(db)
    assert seen is not None and saved_fields(seen) == saved_fields(state) and seen.pushes == 5 and seen.pulls == 3


@pytest.mark.parametrize(
    "damage", ["empty", "cut", "zeros", "flipped body", "a number changed", "flipped head", "not ours", "other fields"]
)
def test_a_torn_or_foreign_volatile_file_is_ignored_and_the_durable_state_read(tmp_path, damage):
    db = str(tmp_path / "a.db")
    state = a_state(db)
    durable = saved_fields(state)
    state.pushes += 1
    state.extra[PUSH_MARK_KEY] = [0, 9]
    state.save(db, durable=False)
    path = Path(db + VOLATILE_SUFFIX)
    data = bytearray(path.read_bytes())
    if damage == "empty":
        data = bytearray()
    elif damage == "cut":
        data = data[: len(data) - 5]
    elif damage == "zeros":
        data = bytearray(len(data))
    elif damage == "flipped body":
        data[-3] ^= 0x01
    elif damage == "a number changed":
        at = bytes(data).index(b'"pushes": ') + len(b'"pushes": ')
        data[at] = ord("7")  # valid JSON, every field in place: only the checksum tells
    elif damage == "flipped head":
        data[12] ^= 0x01  # inside the epoch
    elif damage == "not ours":
        data = bytearray(b'{"pushes": 99}')
    else:  # whole, checksum right, but not the fields the file holds: ignored, not trusted
        head, body = bytes(data).split(b"\n", 1)
        fields = json.loads(body)
        del fields["errors"]
        body = json.dumps(fields).encode()
        magic, epoch, _crc = head.split(b" ")
        crc = zlib.crc32(body, zlib.crc32(epoch))
        data = bytearray(b"%s %s %08x\n" % (magic, epoch, crc) + body)
    path.write_bytes(bytes(data))
    seen = SyncState.load(db)
    assert seen is not None and saved_fields(seen) == durable


def test_a_state_file_without_an_epoch_is_given_one_before_any_volatile_save(tmp_path, writes):
    """A ``-sync`` written before the volatile file existed (or by an older release) has no epoch:
    no volatile file is laid over it, and the first save writes ``-sync`` itself."""
    db = str(tmp_path / "a.db")
    values = saved_fields(SyncState(URL, "client-1", synced_revision="r1"))
    del values["epoch"]
    Path(db + "-sync").write_text(json.dumps(values))
    Path(db + VOLATILE_SUFFIX).write_bytes(b"TSVOLAT1 None 00000000\n{}")  # nothing may match a missing epoch
    state = SyncState.load(db)
    assert state is not None and state.epoch is None
    state.pushes += 1
    state.save(db, durable=False)
    assert writes == [("a.db-sync.tmp", True)]
    assert state.epoch is not None
    state.pushes += 1
    state.save(db, durable=False)
    assert writes[-1] == ("a.db-sync.volatile in place", False)
    seen = SyncState.load(db)
    assert seen is not None and seen.pushes == 2


def test_a_writer_that_rewrites_the_state_file_in_place_keeps_the_volatile_fields(tmp_path):
    """Key rotation rewrites ``-sync`` itself (the revert images it keeps), keeping its other keys,
    the epoch too (``local/rekey.py``): the counters and mark saved since still lay over it, and
    what the rotation wrote is what is read, since the volatile file never holds those fields."""
    db = str(tmp_path / "a.db")
    state = a_state(db)
    state.revert_seq = 4
    state.revert_inline = "b2xk"
    state.save(db)
    state.pushes += 1
    state.extra[PUSH_MARK_KEY] = [0, 3]
    state.save(db, durable=False)
    raw = json.loads(Path(db + "-sync").read_text())
    raw["revert_inline"] = "bmV3"  # the rotation's rewrite, as it does it: load the JSON, change, dump
    Path(db + "-sync").write_text(json.dumps(raw, indent=1, sort_keys=True))
    seen = SyncState.load(db)
    assert seen is not None
    assert seen.revert_inline == "bmV3" and seen.pushes == 1 and seen.extra[PUSH_MARK_KEY] == [0, 3]
    assert "revert_inline" not in VOLATILE_FIELDS and "synced_revision" not in VOLATILE_FIELDS


# --- the property: a power loss after any sequence of saves --------------------------------------

# an operation: what changes in memory, and how it is saved
_OPS = st.sampled_from(["push", "pull nothing", "push in doubt", "pull installs", "new option quietly", "error"])


def _apply(state: SyncState, op: str, n: int) -> bool:
    """Change ``state`` as the operation does; return the ``durable`` its caller saves with."""
    if op == "push":
        state.pushes += 1
        state.forgotten += 1
        state.last_push = float(n)
        state.extra[PUSH_MARK_KEY] = [0, n]
        return False
    if op == "pull nothing":
        state.pulls += 1
        state.last_pull = float(n)
        state.bytes_received += 10
        return False
    if op == "push in doubt":
        state.push_in_doubt = True
        state.extra.pop(PUSH_MARK_KEY, None)
        return True
    if op == "pull installs":
        state.push_in_doubt = False
        state.synced_revision = f"r{n}"
        state.synced_seq = n
        state.pulls += 1
        return True
    if op == "new option quietly":  # a field outside VOLATILE_FIELDS, saved with durable=False
        state.zstd = not state.zstd
        state.pushes += 1
        return False
    state.errors += 1
    return False


def _variants(data: bytes, cut: int, other: bytes) -> list[bytes]:
    """A file's contents after a power loss when its data was never synced: whole, or torn
    (``other``: another version of the file, overwritten in place by this one)."""
    flipped = bytearray(data)
    if flipped:
        flipped[cut % len(flipped)] ^= 0x40
    # still valid JSON with every field in place, one number changed: only the checksum tells
    body_at = data.find(b"\n") + 1
    digits = [i for i in range(body_at, len(data)) if 0x30 <= data[i] <= 0x39]
    renumbered = bytearray(data)
    if digits:
        i = digits[cut % len(digits)]
        renumbered[i] = 0x30 + (renumbered[i] - 0x30 + 1) % 10
    at = cut % max(1, len(data))
    spliced = data[:at] + other[at:]  # the write half done over the version before
    return [data, data[:at], bytes(len(data)), bytes(flipped), bytes(renumbered), spliced]


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=st.lists(_OPS, min_size=1, max_size=20), pick=st.data())
def test_after_a_power_loss_the_state_is_one_a_save_made_at_or_after_the_last_durable_one(tmp_path, ops, pick):
    folder = tmp_path / f"run-{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    db = str(folder / "a.db")
    synced_dirs: list[int] = []
    real_dir = state_mod.fsync_dir

    state = SyncState(URL, "client-1", synced_revision="r0", extra={PUSH_MARK_KEY: [0, 0]})
    state.save(db)
    loaded = SyncState.load(db)
    assert loaded is not None
    state = loaded
    snapshots = [saved_fields(state)]
    sync_versions = [Path(db + "-sync").read_bytes()]  # -sync as each save left it (renamed, data synced)
    durable_version = 0  # the -sync version the folder was last synced with
    durable_snapshot = 0
    volatile_versions: list[bytes] = []  # every volatile file written (never synced)
    for n, op in enumerate(ops, start=1):
        durable = _apply(state, op, n)
        synced_dirs.clear()
        state_mod.fsync_dir = lambda path: (synced_dirs.append(1), real_dir(path))  # type: ignore[assignment]
        try:
            state.save(db, durable=durable)
        finally:
            state_mod.fsync_dir = real_dir
        snapshots.append(saved_fields(state))
        current = Path(db + "-sync").read_bytes()
        if current != sync_versions[-1]:
            sync_versions.append(current)
        if os.path.exists(db + VOLATILE_SUFFIX):
            volatile = Path(db + VOLATILE_SUFFIX).read_bytes()
            if not volatile_versions or volatile != volatile_versions[-1]:
                volatile_versions.append(volatile)
        if synced_dirs:
            durable_version, durable_snapshot = len(sync_versions) - 1, len(snapshots) - 1
        # another process sees every save at once
        seen = SyncState.load(db)
        assert seen is not None and saved_fields(seen) == snapshots[-1], op

    # the power loss: -sync is the version the folder was synced with or a later one; the volatile
    # file any version ever written, whole or torn, or none
    after = folder / "after"
    after.mkdir()
    back = str(after / "a.db")
    chosen = pick.draw(st.integers(durable_version, len(sync_versions) - 1), label="-sync version")
    Path(back + "-sync").write_bytes(sync_versions[chosen])
    if volatile_versions and pick.draw(st.booleans(), label="a volatile file survives"):
        version = pick.draw(st.sampled_from(volatile_versions), label="volatile version")
        kind = pick.draw(st.integers(0, 5), label="whole / cut / zeros / flipped / a number changed / spliced")
        cut = pick.draw(st.integers(0, 10_000), label="where")
        other = pick.draw(st.sampled_from(volatile_versions), label="the version under it")
        Path(back + VOLATILE_SUFFIX).write_bytes(_variants(version, cut, other)[kind])
    seen = SyncState.load(back)
    assert seen is not None
    got = saved_fields(seen)
    assert got in snapshots[durable_snapshot:], (ops, got)
    shutil.rmtree(folder)
