"""A pyturso client and our client share one server; neither double-applies the other's changes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import turso_sync
from tests.integration.test_sync_agent import server  # noqa: F401 - the parametrized server fixture

pytestmark = pytest.mark.peers
DRIVER = Path(__file__).parent / "peers" / "pyturso_driver.py"


class Pyturso:
    """pyturso 0.8.3 in its own process, one JSON command per line."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(DRIVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def __call__(self, op: str, **kw):
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        assert answer["ok"], answer.get("error")
        return answer.get("result")

    def close(self) -> None:
        self("close")
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def test_pyturso_and_turso_sync_share_a_server(tmp_path, server):  # noqa: F811
    ours = turso_sync.connect(tmp_path / "ours.db", server)
    ours.executescript(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);"
        "CREATE TABLE log (who TEXT, msg TEXT);"  # no primary key: a double apply would duplicate rows
        "INSERT INTO t VALUES (1, 'ours'), (2, 'ours');"
        "INSERT INTO log VALUES ('ours', 'first');"
    )
    ours.push()
    peer = Pyturso()
    try:
        peer("connect", path=str(tmp_path / "peer.db"), url=server)
        assert peer("query", sql="SELECT id, v FROM t ORDER BY id") == [[1, "ours"], [2, "ours"]]
        peer("exec", sql="INSERT INTO t VALUES (3, 'peer')")
        peer("exec", sql="UPDATE t SET v = 'peer-edit' WHERE id = 1")
        for i in range(3):
            peer("exec", sql="INSERT INTO log VALUES ('peer', ?)", args=[f"p{i}"])
        peer("push")
        assert ours.pull() is True
        assert ours.execute("SELECT id, v FROM t ORDER BY id").fetchall() == [
            (1, "peer-edit"),
            (2, "ours"),
            (3, "peer"),
        ]
        # both write again, push twice each (the second push has nothing new), pull
        ours.execute("UPDATE t SET v = 'ours-edit' WHERE id = 2")
        ours.executemany("INSERT INTO log VALUES ('ours', ?)", [(f"o{i}",) for i in range(4)])
        ours.commit()
        ours.push()
        ours.push()
        peer("exec", sql="INSERT INTO log VALUES ('peer', 'late')")
        peer("push")
        peer("push")
        peer("pull")
        ours.pull()
        theirs = peer("query", sql="SELECT who, msg FROM log ORDER BY who, msg")
        mine = [list(r) for r in ours.execute("SELECT who, msg FROM log ORDER BY who, msg")]
        assert mine == theirs
        assert len(mine) == 1 + 3 + 4 + 1, mine
        assert peer("query", sql="SELECT id, v FROM t ORDER BY id") == [
            list(r) for r in ours.execute("SELECT id, v FROM t ORDER BY id")
        ]
    finally:
        peer.close()
        ours.close()
