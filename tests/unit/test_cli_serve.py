"""`turso-sync serve` option handling (no server is started here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from turso_sync.cli.main import build_parser, main
from turso_sync.primary.server import ConfigError, is_loopback, parse_listen, read_key_file


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("8080", "127.0.0.1:", ":80", "host:99999", "host:http"):
        with pytest.raises(ConfigError, match="HOST:PORT"):
            parse_listen(bad)


def test_is_loopback() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.9.9.9", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "::", "example.com"))


def test_dev_mode_refuses_non_loopback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["serve", "--data-dir", str(tmp_path / "d"), "--listen", "0.0.0.0:0"])
    assert status == 2
    assert "development mode" in capsys.readouterr().err


def test_bad_key_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("not-a-hex-key-but-secret")
    with pytest.raises(ConfigError) as info:
        read_key_file(str(key), "aes256gcm")
    assert "not-a-hex-key-but-secret" not in str(info.value)
    key.write_text("ab" * 32 + "\n")
    assert read_key_file(str(key), "aes256gcm") == "ab" * 32


def test_serve_options() -> None:
    args = build_parser().parse_args(["serve", "--data-dir", "d", "--max-body-bytes", "1000"])
    assert args.listen == "127.0.0.1:8080" and args.max_body_bytes == 1000 and args.token_file is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--follow"], "--follow only apply with --store"),
        (
            ["--retention-days", "3", "--s3-region", "eu-west-1"],
            "--retention-days, --s3-region only apply with --store",
        ),
        (["--store", "s3://b/p", "--snapshot-every", "0"], "--snapshot-every must be 1 or more"),
        (["--store", "s3://b/p", "--retention-days", "-1"], "--retention-days must be 0 or more"),
        (["--store", "s3://b/p", "--lease-ttl", "0"], "--lease-ttl must be positive"),
    ],
)
def test_store_options_are_checked_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    status = main(["serve", "--data-dir", str(tmp_path / "d"), *options])
    assert status == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_store_options_reach_the_server_settings() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--data-dir",
            "d",
            "--store",
            "s3://b/p",
            "--follow",
            "--snapshot-every",
            "50",
            "--retention-days",
            "2",
        ]
    )
    assert (args.follow, args.snapshot_every, args.retention_days) == (True, 50, 2.0)
