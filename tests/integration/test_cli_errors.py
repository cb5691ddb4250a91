"""What every command shares: tokens and keys from flag, file or environment, exit codes, one-line errors.

Secrets must never show up in any output, whatever fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import KEY128, KEY256
from tests.integration.cli_harness import clean_env, cli, fresh_url, key_env, running_primary

GOOD = "good-token-8dK2mQ7x"
BAD = "wrong-token-Zp41Lw9"
OTHER_KEY = "f" * 64


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    folder = tmp_path_factory.mktemp("primary")
    tokens = folder / "tokens"
    tokens.write_text(f"{GOOD} rw *\n")
    tokens.chmod(0o600)
    with running_primary(folder, "--token-file", str(tokens)) as s:
        yield s


@pytest.fixture
def replica(tmp_path: Path, server) -> str:
    """An encrypted replica cloned with the good token (from the environment)."""
    env = clean_env(TURSO_SYNC_AUTH_TOKEN=GOOD, TURSO_SYNC_ENCRYPTION_KEY=KEY256)
    result = cli("clone", fresh_url(server), "r.db", "-q", cwd=tmp_path, env=env)
    assert result.code == 0, result.err
    return "r.db"


def no_secret_in(result, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in result.both


def test_token_from_flag_file_and_environment(tmp_path, server, replica):
    (tmp_path / "token").write_text(GOOD + "\n")
    by_file = cli("pull", replica, "--auth-token-file", "token", cwd=tmp_path, env=key_env())
    by_flag = cli("pull", replica, "--auth-token", GOOD, cwd=tmp_path, env=key_env())
    by_env = cli(
        "pull", replica, cwd=tmp_path, env=clean_env(TURSO_SYNC_AUTH_TOKEN=GOOD, TURSO_SYNC_ENCRYPTION_KEY=KEY256)
    )
    for result in (by_file, by_flag, by_env):
        assert result.code == 0, result.err
        no_secret_in(result, GOOD, KEY256)
    for name in Path(tmp_path).iterdir():  # nothing the replica keeps holds the token or the key
        if name.is_file() and name.name != "token":
            data = name.read_bytes()
            assert GOOD.encode() not in data and KEY256.encode() not in data, name


@pytest.mark.parametrize("command", ["pull", "push", "sync", "verify"])
def test_bad_token_exits_4_and_is_never_shown(tmp_path, server, replica, command):
    assert cli("exec", replica, "CREATE TABLE t (id INTEGER PRIMARY KEY)", cwd=tmp_path, env=key_env()).code == 0
    result = cli(command, replica, "--auth-token", BAD, cwd=tmp_path, env=key_env())
    assert result.code == 4, result.both
    assert "the primary refused the auth token (HTTP 401)" in result.err
    assert result.err.count("\n") == 1 and "Traceback" not in result.err
    no_secret_in(result, BAD, KEY256)


def test_missing_token_on_clone_exits_4(tmp_path, server):
    result = cli("clone", fresh_url(server), "x.db", cwd=tmp_path)
    assert result.code == 4 and not (tmp_path / "x.db").exists()


def test_keys(tmp_path, replica):
    missing = cli("status", replica, cwd=tmp_path)
    assert missing.code == 5 and "is encrypted" in missing.err
    wrong = cli("status", replica, "--encryption-key", OTHER_KEY, cwd=tmp_path)
    assert wrong.code == 5 and "wrong encryption key" in wrong.err
    no_secret_in(wrong, OTHER_KEY)
    malformed = cli("status", replica, "--encryption-key", "not-hex-secret", cwd=tmp_path)
    assert malformed.code == 5 and "hex digits only" in malformed.err
    no_secret_in(malformed, "not-hex-secret")
    wrong_cipher = cli("status", replica, "--encryption-key", KEY128, "--cipher", "aes128gcm", cwd=tmp_path)
    assert wrong_cipher.code == 5
    no_secret_in(wrong_cipher, KEY128)
    (tmp_path / "key").write_text(KEY256 + "\n")
    assert cli("status", replica, "--encryption-key-file", "key", cwd=tmp_path).code == 0


def test_usage_errors_exit_2(tmp_path, replica):
    gone = cli("status", replica, "--encryption-key-file", "no-such-file", cwd=tmp_path)
    assert gone.code == 2 and "cannot read encryption key file no-such-file" in gone.err
    (tmp_path / "empty").write_text("\n")
    empty = cli("pull", replica, "--auth-token-file", "empty", cwd=tmp_path, env=key_env())
    assert empty.code == 2 and "is empty" in empty.err
    both = cli("pull", replica, "--auth-token", "a", "--auth-token-file", "empty", cwd=tmp_path)
    assert both.code == 2 and "not allowed with argument" in both.err
    assert cli("frobnicate", cwd=tmp_path).code == 2


def test_debug_adds_the_traceback(tmp_path, replica):
    plain = cli("exec", replica, "SELECT * FROM nope", cwd=tmp_path, env=key_env())
    debug = cli("exec", replica, "SELECT * FROM nope", "--debug", cwd=tmp_path, env=key_env())
    assert plain.code == debug.code == 1
    assert "Traceback" not in plain.err and "Traceback (most recent call last)" in debug.err
    assert debug.err.rstrip().endswith("turso-sync exec: no such table: nope")


def test_help_lists_every_command(tmp_path):
    result = cli("--help", cwd=tmp_path)
    assert result.code == 0
    for command in (
        "serve",
        "clone",
        "pull",
        "push",
        "sync",
        "status",
        "exec",
        "shell",
        "conflicts",
        "verify",
        "daemon",
    ):
        assert command in result.out
    pull_help = cli("pull", "--help", cwd=tmp_path)
    assert "conn.pull(long_poll_timeout_ms)" in pull_help.out and "TURSO_SYNC_AUTH_TOKEN" in pull_help.out
