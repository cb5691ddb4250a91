"""The CLI on hardened replicas: `clone --encryption-format hardened`, a passphrase file, reopen by key alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import turso_sync
from tests.conftest import KEY256
from tests.integration.cli_harness import clean_env, cli, fresh_url, key_env, running_primary
from tests.integration.primary_harness import PrimaryProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrimaryProcess]:
    with running_primary(tmp_path_factory.mktemp("hardened-cli")) as proc:
        yield proc


def seeded_url(server: PrimaryProcess, tmp_path: Path) -> str:
    url = fresh_url(server)
    seed = turso_sync.connect(tmp_path / "seed.db", url)
    seed.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    seed.execute("INSERT INTO t VALUES (1, 'one')")
    seed.commit()
    seed.push()
    seed.close()
    return url


def test_clone_hardened_with_a_key_then_push_pull_verify_by_key_alone(tmp_path: Path, server: PrimaryProcess):
    url = seeded_url(server, tmp_path)
    made = cli("clone", url, "h.db", "--encryption-format", "hardened", cwd=tmp_path, env=key_env())
    assert made.code == 0, made.both
    head = (tmp_path / "h.db").read_bytes()[:8]
    assert head[:5] == b"Turso" and head[6] == 0x80, "the hardened cipher id in page 1"
    # from here on the file says its format: the key alone opens it
    assert cli("exec", "h.db", "INSERT INTO t VALUES (2, 'two')", cwd=tmp_path, env=key_env()).code == 0
    pushed = cli("push", "h.db", cwd=tmp_path, env=key_env())
    assert pushed.code == 0, pushed.both
    assert cli("pull", "h.db", cwd=tmp_path, env=key_env()).code == 0
    verified = cli("verify", "h.db", cwd=tmp_path, env=key_env())
    assert verified.code == 0, verified.both
    wrong = cli("verify", "h.db", cwd=tmp_path, env=key_env("11" * 32))
    assert wrong.code == 5, wrong.both


def test_clone_with_a_passphrase_file(tmp_path: Path, server: PrimaryProcess):
    url = seeded_url(server, tmp_path)
    secret = tmp_path / "pass"
    secret.write_text("correct horse battery staple\n")
    secret.chmod(0o600)
    made = cli("clone", url, "p.db", "--passphrase-file", secret, cwd=tmp_path, env=clean_env())
    assert made.code == 0, made.both
    status = cli("status", "p.db", "--passphrase-file", secret, cwd=tmp_path, env=clean_env())
    assert status.code == 0, status.both
    assert "correct horse" not in status.both
    wrong = tmp_path / "wrong"
    wrong.write_text("wrong horse battery staple\n")
    refused = cli("status", "p.db", "--passphrase-file", wrong, cwd=tmp_path, env=clean_env())
    assert refused.code == 5, refused.both
    assert "horse" not in refused.both
    conn = turso_sync.connect(tmp_path / "p.db", passphrase="correct horse battery staple")
    assert conn.execute("SELECT v FROM t").fetchall() == [("one",)]
    conn.close()


def test_a_key_and_a_passphrase_together_are_refused(tmp_path: Path, server: PrimaryProcess):
    secret = tmp_path / "pass"
    secret.write_text("pw pw pw pw\n")
    both = cli("clone", fresh_url(server), "x.db", "--passphrase-file", secret, cwd=tmp_path, env=key_env(KEY256))
    assert both.code == 5, both.both
    assert "not both" in both.err and not (tmp_path / "x.db").exists()
