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

import collections
import os
import random
import secrets
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import turso_sync
from turso_sync.crypto.hardened import HardenedCodec
from turso_sync.crypto.page_codec import HARDENED_CIPHERS
from turso_sync.local.engine import LocalDatabase
from turso_sync.local.rekey import frame_log_images, scan_frame_log

SEED = 1414
KILLS = 50
ACCOUNTS = 10
BALANCE = 100
P = 4096

WORKER = r"""
import os, random, sys, time, traceback
import turso_sync

role, path, key_file, stop_file, log_file = sys.argv[1:6]
with open(key_file) as f:
    key = f.read().strip()
conn = turso_sync.connect(path, encryption_key=key, cipher="hardened")
print("ready", flush=True)
rng = random.Random(role)
done = 0
try:
    if role == "writer":
        log = open(log_file, "a")
        next_id = 1000
        while not os.path.exists(stop_file):
            a, b = rng.sample(range(1, 11), 2)
            try:
                conn.execute("INSERT INTO t (id, v) VALUES (?, ?)", (next_id, f"row-{next_id}-" + "w" * 40))
                conn.execute("UPDATE acct SET bal = bal - 1 WHERE id = ?", (a,))
                conn.execute("UPDATE acct SET bal = bal + 1 WHERE id = ?", (b,))
                if next_id % 7 == 0:
                    old = rng.randrange(1, next_id)
                    conn.execute("UPDATE t SET v = 'row-' || id || '-updated' WHERE id = ?", (old,))
                conn.commit()
            except turso_sync.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                conn.rollback()
                continue
            log.write(f"{next_id}\n")
            log.flush()
            next_id += 1
            done += 1
            time.sleep(0.02)  # pacing: an application's steady load, not a loop that starves other writers
    else:
        last = 0
        while not os.path.exists(stop_file):
            try:
                total, accounts = conn.execute("SELECT sum(bal), count(*) FROM acct").fetchone()
                (rows,) = conn.execute("SELECT count(*) FROM t").fetchone()
            except turso_sync.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                continue
            assert (total, accounts) == (1000, 10), (total, accounts)
            assert rows >= last, (rows, last)
            last = rows
            done += 1
    conn.close()
except BaseException:
    traceback.print_exc()
    sys.exit(1)
print(f"{role} finished after {done} transactions", flush=True)
"""

# Forks one sweeper per run from a process that has imported everything already (starting
# Python and importing turso_sync costs more than a whole small sweep); each run is a process
# of its own.  Commands on stdin: "run OLD_KEY_FILE NEW_KEY_FILE", "kill" (SIGKILL to the run,
# sent here, where the run is reaped, so its pid cannot have been reused).  The run's progress
# lines are relayed on stdout, then "exit N".
SWEEPERS = r"""
import os, selectors, signal, sys, traceback
from turso_sync.local.rekey import rekey

path = sys.argv[1]
sel = selectors.DefaultSelector()
sel.register(sys.stdin.fileno(), selectors.EVENT_READ, None)
running = None
commands = b""  # one read may hold several commands ("kill" and the next "run"), or part of one
print("ready", flush=True)


def start(old_file, new_file):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 0
        try:
            out = os.fdopen(w, "w")
            old, new = open(old_file).read().strip(), open(new_file).read().strip()
            rekey(path, encryption_key=old, new_key=new, batch_pages=1,
                  progress=lambda p: print(p.phase, p.done, p.total, file=out, flush=True))
            print("done", file=out, flush=True)
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    os.close(w)
    sel.register(r, selectors.EVENT_READ, pid)
    print(f"pid {pid}", flush=True)
    return pid


while True:
    for key, _ in sel.select():
        if key.data is None:
            data = os.read(key.fd, 4096)
            if not data:
                sys.exit(0)
            commands += data
            while b"\n" in commands:
                line, commands = commands.split(b"\n", 1)
                command, *files = line.decode().split()
                if command == "kill":
                    if running is not None:
                        os.kill(running, signal.SIGKILL)
                    continue
                running = start(*files)
        else:
            data = os.read(key.fd, 65536)
            if data:
                sys.stdout.write(data.decode())
                sys.stdout.flush()
            else:
                sel.unregister(key.fd)
                os.close(key.fd)
                _, status = os.waitpid(key.data, 0)
                running = None
                print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)
"""


class Lines:
    """A child's stdout, read line by line with a deadline (no blocking read without one)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.selector = selectors.DefaultSelector()
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        self.selector.register(proc.stdout, selectors.EVENT_READ)
        self.buffer = b""
        self.eof = False

    def next(self, timeout: float = 30.0) -> str | None:
        """The next line, or None at the end of the output."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            if self.eof:
                return None
            left = deadline - time.monotonic()
            assert left > 0, "no output from the child in time"
            if self.selector.select(left):
                assert self.proc.stdout is not None
                chunk = self.proc.stdout.read()
                if chunk == b"":
                    self.eof = True
                elif chunk:
                    self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


def open_with_ring(path: Path, keys: list[str]) -> turso_sync.Connection:
    """The database opened with the first key of the rotation that opens it."""
    errors = []
    for key in keys:
        try:
            return turso_sync.connect(str(path), encryption_key=key, cipher="hardened")
        except turso_sync.EncryptionError as exc:
            errors.append(str(exc))
    raise AssertionError(f"no key of the ring opens the database: {errors}")


def check_intact(path: Path, keys: list[str], log: Path) -> int:
    committed = [int(x) for x in log.read_text().split()]
    conn = open_with_ring(path, keys)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = dict(conn.execute("SELECT id, v FROM t").fetchall())
        assert conn.execute("SELECT sum(bal) FROM acct").fetchone() == (ACCOUNTS * BALANCE,)
    finally:
        conn.close()
    missing = [i for i in committed if i not in rows]
    assert not missing, f"committed rows lost: {missing[:10]}"
    for row_id, value in rows.items():
        assert value in (f"row-{row_id}-" + "w" * 40, f"row-{row_id}-updated"), (row_id, value[:40])
    return len(rows)


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
    (tmp_path / "worker.py").write_text(WORKER)
    (tmp_path / "sweepers.py").write_text(SWEEPERS)
    key_file = tmp_path / "key-0"
    key_file.write_text(keys[0])
    stop, log = tmp_path / "stop", tmp_path / "committed"
    log.write_text("")
    workers = {
        role: subprocess.Popen(
            [sys.executable, str(tmp_path / "worker.py"), role, str(path), str(key_file), str(stop), str(log)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for role in ("writer", "reader")
    }
    outputs = {role: Lines(proc) for role, proc in workers.items()}
    for role, lines in outputs.items():
        assert lines.next() == "ready", workers[role].stderr.read().decode()  # type: ignore[union-attr]
    errors_file = open(tmp_path / "sweepers.err", "wb")  # closed at the end of the test
    sweepers = subprocess.Popen(
        [sys.executable, str(tmp_path / "sweepers.py"), str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=errors_file,
    )

    def sweepers_errors() -> str:
        return (tmp_path / "sweepers.err").read_text()[-3000:]

    relayed = Lines(sweepers)
    assert relayed.next() == "ready", sweepers_errors()
    kills = rotations = 0
    points: collections.Counter[str] = collections.Counter()  # the last progress line before each kill
    try:
        while kills < KILLS:
            rotations += 1
            old, new = keys[-1], secrets.token_hex(32)
            keys.append(new)
            old_file, new_file = tmp_path / f"key-{rotations - 1}", tmp_path / f"key-{rotations}"
            old_file.write_text(old)
            new_file.write_text(new)
            while True:
                assert sweepers.stdin is not None
                sweepers.stdin.write(f"run {old_file} {new_file}\n".encode())
                sweepers.stdin.flush()
                started = relayed.next()
                assert started is not None and started.startswith("pid "), started
                kill_after = rng.randrange(0, 24)  # progress lines: start, one per page, checkpoint, copies, retire
                seen: list[str] = []
                while len(seen) < kill_after and not (seen and seen[-1].startswith("exit")):
                    seen.append(relayed.next() or "")
                if not (seen and seen[-1].startswith("exit")):
                    sweepers.stdin.write(b"kill\n")  # a run that ended meanwhile is not signalled
                    sweepers.stdin.flush()
                    while not (seen and seen[-1].startswith("exit")):
                        seen.append(relayed.next() or "")
                code = int(seen[-1].split()[1])
                if code == 0:
                    assert "done" in seen
                    break  # this run finished the rotation (perhaps just before the signal)
                assert code == -signal.SIGKILL, f"the sweeper failed: {sweepers_errors()}"
                kills += 1
                points[seen[-2].rsplit(" ", 2)[0] if len(seen) > 1 else "before any progress"] += 1
                check_intact(path, [old, new], log)
                for role, proc in workers.items():
                    assert proc.poll() is None, f"{role} died: {proc.stderr.read().decode()}"  # type: ignore[union-attr]
            check_intact(path, [new], log)
            with pytest.raises(turso_sync.EncryptionError, match="wrong encryption key"):
                turso_sync.connect(str(path), encryption_key=old, cipher="hardened")
            assert not Path(f"{path}-rekey").exists()
        print(f"{kills} kills over {rotations} rotations, after: {dict(points)}", file=sys.stderr)
        stop.write_text("")
        for role, proc in workers.items():
            assert proc.wait(timeout=60) == 0, f"{role}: {proc.stderr.read().decode()}"  # type: ignore[union-attr]
            assert (outputs[role].next() or "").startswith(f"{role} finished")
    finally:
        stop.write_text("")
        sweepers.kill()
        sweepers.wait()
        errors_file.close()
        for proc in workers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    rows = check_intact(path, [keys[-1]], log)
    assert rows >= 799 + 100  # the writer got through at least a hundred transactions
    db_epochs, wal_epochs, old_in_log = epochs_on_disk(path, keys[-1])
    assert db_epochs == {rotations + 1} and wal_epochs <= {rotations + 1} and old_in_log == 0
    assert len(list(frame_log_images(Path(f"{path}-frames").read_bytes(), P))) > 100  # history was kept
    for old in keys[:-1]:
        with pytest.raises(turso_sync.EncryptionError):
            turso_sync.connect(str(path), encryption_key=old, cipher="hardened")
