"""kill -9 during push and during pull, 50 times: no corruption, no lost write, no double apply."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import turso_sync
from tests.childlines import ChildLines
from tests.conftest import KEY256
from tests.servers import ROOT, primary

pytestmark = [pytest.mark.peers, pytest.mark.slow]

CHILD = textwrap.dedent(
    """
    import random, sys
    import turso_sync
    path, key, start, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rnd = random.Random(seed)
    conn = turso_sync.connect(path, encryption_key=key)
    n = start
    while True:
        for _ in range(rnd.randint(1, 3)):
            count = rnd.randint(1, 20)
            conn.executemany("INSERT INTO log VALUES ('replica', ?)", [(n + i,) for i in range(count)])
            n += count
            conn.commit()
            print("committed", n, flush=True)
        step = rnd.choice(["push", "pull", "sync"])
        getattr(conn, step)()
        print("did", step, flush=True)
    """
)


def test_kill_during_push_and_pull(tmp_path):
    seed = int(os.environ.get("CRASH_SEED", random.randrange(1 << 30)))
    print("seed", seed)
    rnd = random.Random(seed)
    with primary(tmp_path / "server") as url:
        other = turso_sync.connect(tmp_path / "other.db", url, encryption_key=KEY256)
        other.executescript("CREATE TABLE log (who TEXT, n INTEGER);")
        other.push()
        path = tmp_path / "replica.db"
        turso_sync.connect(path, url, encryption_key=KEY256).close()
        committed: set[int] = set()
        other_rows = 0
        start = 0
        steps_seen = set()
        for run in range(50):
            # the remote moves on between runs, so pulls have pages to apply
            other.executemany("INSERT INTO log VALUES ('other', ?)", [(other_rows + i,) for i in range(3)])
            other.commit()
            other.push()
            other_rows += 3
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(path), KEY256, str(start), str(rnd.randrange(1 << 30))],
                stdout=subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            lines = ChildLines(child)
            for _ in range(rnd.randint(1, 8)):
                line = lines.readline(timeout=60)
                if not line:
                    break
                words = line.split()
                if words[0] == "committed":
                    committed.update(range(start, int(words[1])))  # every id below is committed
                else:
                    steps_seen.add(words[1])
            end = time.perf_counter() + rnd.uniform(0, 0.05)
            while time.perf_counter() < end:
                pass  # a random moment inside the next step
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
            start += 100_000  # the next run writes fresh ids
            conn = turso_sync.connect(path, encryption_key=KEY256)
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",), f"run {run}"
            local = {n for (n,) in conn.execute("SELECT n FROM log WHERE who = 'replica'")}
            assert committed <= local, f"run {run}: lost {sorted(committed - local)[:5]}"
            conn.close()
        assert {"push", "pull"} <= steps_seen | {"sync"}
        # after the storm: sync converges, every row exactly once on both sides
        conn = turso_sync.connect(path, encryption_key=KEY256)
        conn.sync()
        other.pull()
        for c in (conn, other):
            all_rows = c.execute("SELECT who, n FROM log").fetchall()
            assert len(all_rows) == len(set(all_rows)), "a change was applied twice"
            assert {n for who, n in all_rows if who == "replica"} >= committed
            assert {n for who, n in all_rows if who == "other"} == set(range(other_rows))
        assert sorted(conn.execute("SELECT * FROM log")) == sorted(other.execute("SELECT * FROM log"))
        conn.close()
        other.close()
