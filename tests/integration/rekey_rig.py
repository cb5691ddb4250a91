"""The rig of the key-rotation kill tests (test_rekey_kills.py, test_envelope_rekey.py).

A writer and a reader use the database in processes of their own for the whole test, opened once
with the first key; they live through every rotation (their codecs learn each new key from the
ring).  The writer logs every id it saw committed.  Each rotation runs ``rekey`` in a process
forked from a warm sweeper process and killed with SIGKILL where the test's chooser says, then run
again until one run finishes; after each kill the test's check runs.  The kill points are counted
by the last progress line before each kill.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import pytest

import turso_sync
from tests.childlines import ChildLines

ACCOUNTS = 10
BALANCE = 100

# argv: role, path, key file, stop file, log file, cipher ("" when the file says, a replica), first
# id, every how many inserts an older row is updated (0: never)
WORKER = r"""
import os, random, sys, time, traceback
import turso_sync

role, path, key_file, stop_file, log_file, cipher = sys.argv[1:7]
first_id, update_every = int(sys.argv[7]), int(sys.argv[8])
with open(key_file) as f:
    key = f.read().strip()
if cipher:
    conn = turso_sync.connect(path, encryption_key=key, cipher=cipher)
else:
    conn = turso_sync.connect(path, encryption_key=key)  # a replica: its file says the format
    assert isinstance(conn, turso_sync.SyncConnection)
print("ready", flush=True)
rng = random.Random(role)
done = 0
try:
    if role == "writer":
        log = open(log_file, "a")
        next_id = first_id
        while not os.path.exists(stop_file):
            a, b = rng.sample(range(1, 11), 2)
            try:
                conn.execute("INSERT INTO t (id, v) VALUES (?, ?)", (next_id, f"row-{next_id}-" + "w" * 40))
                conn.execute("UPDATE acct SET bal = bal - 1 WHERE id = ?", (a,))
                conn.execute("UPDATE acct SET bal = bal + 1 WHERE id = ?", (b,))
                if update_every and next_id % update_every == 0:
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

#: Called with the progress lines a run has printed so far, before each next line is read: True
#: sends the kill.  A test makes one per run.
KillPoint = Callable[[list[str]], bool]


def open_with_ring(
    path: Path, keys: list[str], cipher: str | None
) -> turso_sync.Connection | turso_sync.SyncConnection:
    """The database opened with the first key of the rotation that opens it."""
    errors = []
    extra = {"cipher": cipher} if cipher else {}
    for key in keys:
        try:
            return turso_sync.connect(str(path), encryption_key=key, **extra)
        except turso_sync.EncryptionError as exc:
            errors.append(str(exc))
    raise AssertionError(f"no key of the ring opens the database: {errors}")


def check_intact(path: Path, keys: list[str], log: Path, cipher: str | None, every_row: bool) -> int:
    """Integrity ok, the accounts' sum kept, every row the writer logged there and whole; the row count.

    ``every_row``: every row of ``t`` must be a row the writer (or the seed) wrote, not only the logged ones.
    """
    committed = [int(x) for x in log.read_text().split()]
    conn = open_with_ring(path, keys, cipher)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = dict(conn.execute("SELECT id, v FROM t").fetchall())
        assert conn.execute("SELECT sum(bal) FROM acct").fetchone() == (ACCOUNTS * BALANCE,)
    finally:
        conn.close()
    missing = [i for i in committed if i not in rows]
    assert not missing, f"committed rows lost: {missing[:10]}"
    for row_id in rows if every_row else committed:
        value = rows[row_id]
        assert value in (f"row-{row_id}-" + "w" * 40, f"row-{row_id}-updated"), (row_id, value[:40])
    return len(rows)


class RotationRig:
    """The workers and the sweeper process around one database; a context manager."""

    def __init__(
        self, tmp_path: Path, path: Path, first_key: str, cipher: str | None, first_id: int, update_every: int
    ) -> None:
        self.tmp_path, self.path, self.cipher = tmp_path, path, cipher
        self.keys = [first_key]
        self.log, self.stop = tmp_path / "committed", tmp_path / "stop"
        self.kills = self.rotations = 0
        self.points: collections.Counter[str] = collections.Counter()  # the last progress line before each kill
        self._worker_args = [cipher or "", str(first_id), str(update_every)]
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.outputs: dict[str, ChildLines] = {}
        self.sweepers: subprocess.Popen[bytes] | None = None
        self._errors_file = tmp_path / "sweepers.err"

    def __enter__(self) -> RotationRig:
        tmp = self.tmp_path
        (tmp / "worker.py").write_text(WORKER)
        (tmp / "sweepers.py").write_text(SWEEPERS)
        key_file = tmp / "key-0"
        key_file.write_text(self.keys[0])
        self.log.write_text("")
        try:
            for role in ("writer", "reader"):
                argv = [str(tmp / "worker.py"), role, str(self.path), str(key_file), str(self.stop), str(self.log)]
                self.workers[role] = subprocess.Popen(
                    [sys.executable, *argv, *self._worker_args],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                self.outputs[role] = ChildLines(self.workers[role])
            for role, lines in self.outputs.items():
                assert self._line(lines, role) == "ready"
            with open(self._errors_file, "wb") as errors:
                self.sweepers = subprocess.Popen(
                    [sys.executable, str(tmp / "sweepers.py"), str(self.path)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=errors,
                )
            self.relayed = ChildLines(self.sweepers)
            assert self._relayed() == "ready"
        except BaseException:
            self._stop_all()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop_all()

    def check(self, keys: list[str], every_row: bool) -> int:
        return check_intact(self.path, keys, self.log, self.cipher, every_row)

    def rotate(self, new: str, kill_point: Callable[[], KillPoint], every_row: bool) -> None:
        """Rotate to ``new``: runs killed where ``kill_point()`` says, checked after each kill, until one finishes.

        After it, the database opens with ``new`` alone, the old key is refused and no ring is left.
        """
        old = self.keys[-1]
        self.keys.append(new)
        self.rotations += 1
        old_file, new_file = self.tmp_path / f"key-{self.rotations - 1}", self.tmp_path / f"key-{self.rotations}"
        old_file.write_text(old)
        new_file.write_text(new)
        sweepers = self.sweepers
        assert sweepers is not None and sweepers.stdin is not None
        while True:
            sweepers.stdin.write(f"run {old_file} {new_file}\n".encode())
            sweepers.stdin.flush()
            started = self._relayed()
            assert started.startswith("pid "), started
            should_kill = kill_point()
            seen: list[str] = []
            while not (seen and seen[-1].startswith("exit")):
                if should_kill(seen):
                    break
                seen.append(self._relayed())
            if not (seen and seen[-1].startswith("exit")):
                sweepers.stdin.write(b"kill\n")  # a run that ended meanwhile is not signalled
                sweepers.stdin.flush()
                while not (seen and seen[-1].startswith("exit")):
                    seen.append(self._relayed())
            code = int(seen[-1].split()[1])
            if code == 0:
                assert "done" in seen
                break  # this run finished the rotation (perhaps just before the signal)
            assert code == -signal.SIGKILL, f"the sweeper failed: {self._sweepers_errors()}"
            self.kills += 1
            self.points[seen[-2].rsplit(" ", 2)[0] if len(seen) > 1 else "before any progress"] += 1
            self.check([old, new], every_row)
            for role, proc in self.workers.items():
                assert proc.poll() is None, f"{role} died: {self._stderr(role)}"
        self.check([new], every_row)
        extra = {"cipher": self.cipher} if self.cipher else {}
        with pytest.raises(turso_sync.EncryptionError, match="wrong encryption key"):
            turso_sync.connect(str(self.path), encryption_key=old, **extra)
        assert not Path(f"{self.path}-rekey").exists()

    def finish(self) -> None:
        """Stop the workers; each must exit cleanly after its last transaction."""
        print(f"{self.kills} kills over {self.rotations} rotations, after: {dict(self.points)}", file=sys.stderr)
        self.stop.write_text("")
        for role, proc in self.workers.items():
            assert proc.wait(timeout=60) == 0, f"{role}: {self._stderr(role)}"
            assert self.outputs[role].readline().startswith(f"{role} finished")

    def _line(self, lines: ChildLines, role: str) -> str:
        try:
            return lines.readline()
        except AssertionError as exc:
            raise AssertionError(f"{role}: {exc}: {self._stderr(role)}") from None

    def _relayed(self) -> str:
        try:
            return self.relayed.readline()
        except AssertionError as exc:
            raise AssertionError(f"sweepers: {exc}: {self._sweepers_errors()}") from None

    def _stderr(self, role: str) -> str:
        proc = self.workers[role]
        if proc.poll() is None:
            return "(still running)"
        assert proc.stderr is not None
        return proc.stderr.read().decode()[-3000:]

    def _sweepers_errors(self) -> str:
        return self._errors_file.read_text()[-3000:] if self._errors_file.exists() else ""

    def _stop_all(self) -> None:
        self.stop.write_text("")
        if self.sweepers is not None:
            self.sweepers.kill()
            self.sweepers.wait()
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
