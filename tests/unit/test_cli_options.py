"""The CLI's shared pieces without a server: secrets, exit codes, progress, tables, metrics text."""

from __future__ import annotations

import argparse
import io

import pytest

from tests.conftest import KEY128, KEY256
from turso_sync import errors
from turso_sync.cli.exit_codes import CommandError, ExitCode, classify, describe
from turso_sync.cli.main import COMMANDS, build_parser
from turso_sync.cli.metrics import parse_address, render
from turso_sync.cli.progress import ProgressMeter, human_bytes
from turso_sync.cli.replica_args import auth_token, encryption_key
from turso_sync.cli.rows import print_table, rows_as_objects
from turso_sync.sync.daemon import Backoff, ReplicaStatus


def args(**values) -> argparse.Namespace:
    base = {"auth_token": None, "auth_token_file": None, "encryption_key": None, "encryption_key_file": None}
    base.update(values)
    base.setdefault("cipher", "aes256gcm")
    return argparse.Namespace(**base)


def test_secret_precedence_flag_then_file_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TURSO_SYNC_AUTH_TOKEN", "from-env")
    assert auth_token(args()) == "from-env"
    (tmp_path / "t").write_text("  from-file\n")
    assert auth_token(args(auth_token_file=str(tmp_path / "t"))) == "from-file"
    assert auth_token(args(auth_token="from-flag")) == "from-flag"
    monkeypatch.delenv("TURSO_SYNC_AUTH_TOKEN")
    assert auth_token(args()) is None


def test_keys_are_checked_against_the_cipher_without_echoing_them(tmp_path, monkeypatch):
    monkeypatch.delenv("TURSO_SYNC_ENCRYPTION_KEY", raising=False)
    assert encryption_key(args(encryption_key=KEY256)) == KEY256
    assert encryption_key(args(encryption_key=KEY128, cipher="aes128gcm")) == KEY128
    with pytest.raises(CommandError) as info:
        encryption_key(args(encryption_key=KEY128))
    assert info.value.code == ExitCode.ENCRYPTION_KEY and KEY128 not in str(info.value)
    with pytest.raises(CommandError) as missing:
        encryption_key(args(encryption_key_file=str(tmp_path / "none")))
    assert missing.value.code == ExitCode.USAGE


def test_exit_codes():
    assert classify(errors.RemoteError(401, b"", "/pull-updates")) == ExitCode.AUTH
    assert classify(errors.RemoteError(403, b"", "/v2/pipeline")) == ExitCode.AUTH
    assert classify(errors.RemoteError(503, b"", "/pull-updates")) == ExitCode.NETWORK
    assert classify(errors.NetworkError("gone")) == ExitCode.NETWORK
    assert classify(errors.PushRejectedError("no", 3)) == ExitCode.REJECTED
    assert classify(errors.EncryptionError("key")) == ExitCode.ENCRYPTION_KEY
    assert classify(errors.OperationalError("no such table: x")) == ExitCode.ERROR
    assert classify(CommandError("bad", ExitCode.USAGE)) == ExitCode.USAGE
    line = describe(errors.NetworkError("cannot\nreach"), ExitCode.NETWORK)
    assert "\n" not in line and line.startswith("cannot reach (")
    assert describe(errors.RemoteError(401, b"secret body", "/p"), ExitCode.AUTH).startswith(
        "the primary refused the auth token (HTTP 401)"
    )


def test_every_command_has_help_and_a_parser():
    parser = build_parser()
    for name in COMMANDS:
        assert parser.parse_args([name, *_minimal(name)]).command == name


def _minimal(name: str) -> list[str]:
    return {
        "serve": ["--data-dir", "d"],
        "clone": ["http://127.0.0.1:1", "p"],
        "exec": ["p", "SELECT 1"],
        "daemon": ["p"],
        "restore": ["--store", "s3://b/p", "--at", "1", "--to", "out.db"],
    }.get(name, ["p"])


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_meter_is_quiet_for_short_transfers_and_counts_long_ones(monkeypatch):
    clock = Clock()
    monkeypatch.setattr("turso_sync.cli.progress.time.monotonic", clock)
    out = io.StringIO()
    meter = ProgressMeter("clone", out)
    meter("/pull-updates", 1000, 4000)
    clock.now = 0.2
    meter("/pull-updates", 2000, 4000)
    assert out.getvalue() == ""  # under half a second: nothing
    clock.now = 0.6
    meter("/pull-updates", 3000, 4000)
    clock.now = 0.9
    meter("/pull-updates", 3500, 4000)  # within a second of the last line (not a terminal)
    clock.now = 1.7
    meter("/pull-updates", 4000, 4000)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("clone: 2.9 KiB of 3.9 KiB (75%)")
    assert lines[1].startswith("clone: 3.9 KiB of 3.9 KiB (100%)")
    assert len(lines) == 2
    assert human_bytes(5) == "5 B" and human_bytes(3 * 1024 * 1024) == "3.0 MiB"


def test_tables_and_json_rows():
    out = io.StringIO()
    print_table(["id", "v"], [(1, None), (22, b"\x01")], out)
    assert out.getvalue().splitlines() == ["id | v", "---+------", "1  | NULL", "22 | x'01'"]
    assert rows_as_objects(["b"], [(b"\xff",)]) == [{"b": {"$base64": "/w=="}}]


def test_metrics_text_and_address():
    status = ReplicaStatus(
        path='/data/a "quoted".db',
        revision="7",
        pending_changes=2,
        bytes_sent=10,
        bytes_received=20,
        pulls=3,
        pushes=4,
        conflicts=1,
        errors=0,
        last_pull_unix_time=None,
        last_push_unix_time=None,
        connected=True,
        lag_seconds=None,
        last_error=None,
    )
    text = render([status])
    assert "# TYPE turso_sync_pulls_total counter" in text
    assert 'turso_sync_pending_changes{replica="/data/a \\"quoted\\".db"} 2' in text
    assert 'turso_sync_lag_seconds{replica="/data/a \\"quoted\\".db"} NaN' in text
    for name in (
        "lag_seconds",
        "pending_changes",
        "bytes_sent_total",
        "bytes_received_total",
        "pulls_total",
        "pushes_total",
        "errors_total",
        "conflicts_total",
    ):
        assert f"turso_sync_{name}{{" in text
    assert parse_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_address("[::1]:0") == ("::1", 0)
    for bad in ("0.0.0.0:9464", "10.1.2.3:80", "9464", "localhost:x"):
        with pytest.raises(CommandError):
            parse_address(bad)


def test_backoff_grows_with_jitter_and_stays_bounded():
    backoff = Backoff(base=0.25, cap=4.0, rng=lambda: 1.0)
    assert [backoff.next() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]
    low = Backoff(base=0.25, cap=4.0, rng=lambda: 0.0)
    assert [low.next() for _ in range(3)] == [0.125, 0.25, 0.5]
    backoff.reset()
    assert backoff.next() == 0.25
