"""`turso-sync shell PATH`: statements and dot commands from a pipe, and a prompt on a terminal."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from collections.abc import Iterator

import pytest

import turso_sync
from tests.integration.cli_harness import TURSO_SYNC, clean_env, cli, fresh_url, running_primary


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    with running_primary(tmp_path_factory.mktemp("primary")) as s:
        yield s


SCRIPT = """\
CREATE TABLE t (id INTEGER PRIMARY KEY,
                v TEXT);
INSERT INTO t VALUES (1, 'one');
BEGIN;
INSERT INTO t VALUES (2, 'two');
INSERT INTO t VALUES (3, 'three');
COMMIT;
.tables
.json on
SELECT * FROM t ORDER BY id;
.json off
SELECT count(*) AS n FROM t;
.push
.status
.schema t
SELECT * FROM missing;
.bogus
SELECT 'still running' AS s
"""


def test_piped_statements_and_dot_commands(tmp_path, server):
    url = fresh_url(server)
    assert cli("clone", url, "r.db", "-q", cwd=tmp_path).code == 0
    result = cli("shell", "r.db", cwd=tmp_path, stdin=SCRIPT)
    assert result.code == 1  # two inputs failed: the exit status says so when reading a pipe
    out = result.out
    assert "r.db>" not in out  # no prompt without a terminal
    assert '[{"id": 1, "v": "one"}, {"id": 2, "v": "two"}, {"id": 3, "v": "three"}]' in out
    assert "n\n-\n3\n" in out
    assert "pushed 3 transaction(s)" in out
    assert re.search(r"^pending changes +0$", out, re.M)  # .status prints what `status` prints
    assert "CREATE TABLE t (id INTEGER PRIMARY KEY,\n                v TEXT);" in out
    assert out.rstrip().endswith("still running")
    assert "error: no such table: missing" in result.err
    assert "error: unknown command .bogus" in result.err
    reader = turso_sync.connect(tmp_path / "o.db", url)
    assert reader.execute("SELECT count(*) FROM t").fetchone() == (3,)
    reader.close()


def test_an_open_transaction_is_rolled_back_at_the_end(tmp_path, server):
    assert cli("clone", fresh_url(server), "r.db", "-q", cwd=tmp_path).code == 0
    script = "CREATE TABLE t (id INTEGER PRIMARY KEY);\nBEGIN;\nINSERT INTO t VALUES (1);\n"
    result = cli("shell", "r.db", cwd=tmp_path, stdin=script)
    assert result.code == 0 and "rolling back" in result.err
    assert cli("exec", "r.db", "SELECT count(*) FROM t", cwd=tmp_path).out.splitlines()[-1] == "0"


class Terminal:
    """The shell on a pseudo-terminal: what a person typing sees."""

    def __init__(self, cwd) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [*TURSO_SYNC, "shell", "r.db"],
            cwd=cwd,
            env=clean_env(TERM="dumb"),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            close_fds=True,
        )
        os.close(slave)
        self.seen = b""

    def expect(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{text!r} not shown; screen so far: {self.seen.decode(errors='replace')!r}"
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    self.seen += os.read(self.master, 4096)
                except OSError:
                    break  # the child closed the terminal
        assert text.encode() in self.seen, self.seen

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=30)
        finally:
            self.proc.kill()
            os.close(self.master)


def test_interactive_prompt(tmp_path, server):
    assert cli("clone", fresh_url(server), "r.db", "-q", cwd=tmp_path).code == 0
    term = Terminal(tmp_path)
    try:
        term.expect("turso-sync shell on r.db")
        term.expect("r.db> ")
        term.type("SELECT 40 +")
        term.expect("...> ")  # the statement is not complete yet
        term.type("2 AS answer;")
        term.expect("42")
        term.type(".quit")
        assert term.close() == 0
    finally:
        term.proc.kill()
