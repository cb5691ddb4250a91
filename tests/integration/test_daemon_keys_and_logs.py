"""`turso-sync daemon`: replicas with their own keys side by side, and what it logs at the default level.

The daemon runs as a child process, as a user starts it (``test_cli_daemon.Daemon``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import turso_sync
from tests.conftest import KEY256, wait_for
from tests.integration.cli_harness import clean_env, cli, fresh_url, running_primary
from tests.integration.test_cli_daemon import Daemon

KEY_A = "a1" * 32
KEY_B = "b2" * 32


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.close()


def test_one_daemon_serves_replicas_with_different_keys_and_none(tmp_path, daemons):
    (tmp_path / "a.key").write_text(KEY_A + "\n")
    (tmp_path / "b.key").write_text(KEY_B + "\n")
    replicas = {"a.db": ("a.key", KEY_A), "b.db": ("b.key", KEY_B), "p.db": (None, None)}
    with running_primary(tmp_path / "p") as server:
        urls = {}
        config = []
        for name, (key_file, _key) in replicas.items():
            urls[name] = fresh_url(server)
            key_args = ["--encryption-key-file", key_file] if key_file else []
            assert cli("clone", urls[name], name, "-q", *key_args, cwd=tmp_path).code == 0
            config.append(
                f'[[replica]]\npath = "{name}"\n' + (f'encryption_key_file = "{key_file}"\n' if key_file else "")
            )
        (tmp_path / "replicas.toml").write_text("\n".join(config))
        # the key of the environment is not used for the replicas of --config (p.db stays plaintext)
        daemon = Daemon(tmp_path, "--config", "replicas.toml", metrics=False)
        daemons.append(daemon)
        daemon.ready()
        cmdline = Path(f"/proc/{daemon.proc.pid}/cmdline").read_bytes()
        for name, (_file, key) in replicas.items():
            local = turso_sync.connect(tmp_path / name, encryption_key=key)
            local.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            local.execute("INSERT INTO t VALUES (1, ?)", (f"from {name}",))
            local.commit()  # the daemon pushes it
            local.close()
            remote = turso_sync.connect(tmp_path / f"check-{name}", urls[name], encryption_key=KEY256)

            def arrived(remote=remote) -> bool:
                # the CREATE TABLE commits on its own (DDL opens no transaction, as in sqlite3), so the
                # daemon may push it before the INSERT: wait for the row, not just the table
                remote.pull()
                if not remote.execute("SELECT 1 FROM sqlite_schema WHERE name = 't'").fetchone():
                    return False
                return bool(remote.execute("SELECT 1 FROM t").fetchone())

            wait_for(arrived, 30, f"{name}'s commit on the primary")
            assert remote.execute("SELECT v FROM t").fetchall() == [(f"from {name}",)]
            remote.execute("INSERT INTO t VALUES (2, 'from the primary')")
            remote.commit()
            remote.push()
            remote.close()
            local = turso_sync.connect(tmp_path / name, encryption_key=key)
            wait_for(lambda local=local: local.execute("SELECT count(*) FROM t").fetchone()[0] == 2, 30, "the pull")
            local.close()
        assert daemon.terminate() == 0
    log = daemon.log()
    assert log.count("(encrypted)") == 2 and log.count("(plaintext)") == 1, log
    for key in (KEY_A, KEY_B, KEY256):
        assert key not in log and key.encode() not in cmdline
    assert (tmp_path / "p.db").read_bytes().startswith(b"SQLite format 3\x00")
    assert (tmp_path / "b.db").read_bytes().startswith(b"Turso")


def test_config_errors_name_the_replica_and_never_the_key(tmp_path):
    (tmp_path / "a.key").write_text(KEY_A)
    with running_primary(tmp_path / "p") as server:
        assert cli("clone", fresh_url(server), "a.db", "-q", "--encryption-key-file", "a.key", cwd=tmp_path).code == 0
        assert cli("clone", fresh_url(server), "p.db", "-q", cwd=tmp_path).code == 0
    config = tmp_path / "replicas.toml"
    config.write_text(
        '[[replica]]\npath = "a.db"\nencryption_key_file = "a.key"\n[[replica]]\npath = "p.db"\n'
        'encryption_key_file = "a.key"\n'
    )
    plaintext = cli("daemon", "--config", "replicas.toml", cwd=tmp_path, env=clean_env())
    assert plaintext.code == 5, plaintext.both
    assert "p.db is not encrypted: drop the key (encryption_key_file of replica 2 in replicas.toml)" in plaintext.err
    config.write_text('[[replica]]\npath = "a.db"\n')
    missing = cli("daemon", "--config", "replicas.toml", cwd=tmp_path, env=clean_env())
    assert (
        missing.code == 5 and "a.db is encrypted: give its key with encryption_key_file in replicas.toml" in missing.err
    )
    config.write_text(f'[[replica]]\npath = "a.db"\nencryption_key = "{KEY_A}"\n')
    inline = cli("daemon", "--config", "replicas.toml", cwd=tmp_path, env=clean_env())
    assert inline.code == 2 and "a key is never written in the config" in inline.err
    config.write_text("[[replica]\n")
    assert cli("daemon", "--config", "replicas.toml", cwd=tmp_path).code == 2
    for result in (plaintext, missing, inline):
        assert KEY_A not in result.both and "Traceback" not in result.both


def _steps(log: str) -> list[str]:
    return [line for line in log.splitlines() if ": pushed " in line or ": pulled revision " in line]


@pytest.mark.parametrize("access_log", [False, True])
def test_the_default_level_logs_no_line_per_sync_and_a_retried_pull_is_one_warning(tmp_path, daemons, access_log):
    env_key = {"encryption_key": KEY256}
    with running_primary(tmp_path / "p") as server:
        url = fresh_url(server)
        assert cli("clone", url, "a.db", "-q", cwd=tmp_path, env=clean_env(TURSO_SYNC_ENCRYPTION_KEY=KEY256)).code == 0
        daemon = Daemon(tmp_path, "a.db", metrics=False, extra=("--access-log",) if access_log else ())
        daemons.append(daemon)
        daemon.ready()
        local = turso_sync.connect(tmp_path / "a.db", **env_key)
        local.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        local.commit()
        remote = turso_sync.connect(tmp_path / "remote.db", url, **env_key)

        def has_table() -> bool:
            remote.pull()
            return bool(remote.execute("SELECT 1 FROM sqlite_schema WHERE name = 't'").fetchone())

        wait_for(has_table, 30, "the table pushed by the daemon")
        for i in range(5):
            local.execute("INSERT INTO t VALUES (?)", (i,))
            local.commit()
            remote.execute("INSERT INTO t VALUES (?)", (100 + i,))
            remote.commit()
            remote.push()
        wait_for(lambda: local.execute("SELECT count(*) FROM t").fetchone()[0] == 10, 30, "the remote rows")
        wait_for(lambda: local.stats().pending_changes == 0, 30, "the local rows pushed")
        remote.close()
        steps = _steps(daemon.log())
        if access_log:
            assert steps and all(" INFO " in line for line in steps)
        else:
            assert steps == [], steps
        server.kill()  # the pulls fail now, and are retried
        wait_for(lambda: "pull failed" in daemon.log(), 30, "a failed pull")
        server.start()
        wait_for(lambda: daemon.log().count("primary reachable") >= 2, 30, "the daemon to reconnect")
        assert daemon.terminate() == 0
        local.close()
    log = daemon.log()
    (failure,) = [line for line in log.splitlines() if "pull failed" in line]  # repeats are at debug level
    assert " WARNING turso_sync.daemon: " in failure and "retrying in" in failure
    assert "Traceback" not in log and " ERROR " not in log
    if not access_log:
        lines = [line for line in log.splitlines() if line.strip()]
        # start (syncing with), first reach, the failure, the recovery, stop (3 lines)
        assert len(lines) <= 8, log
    assert KEY256 not in log
