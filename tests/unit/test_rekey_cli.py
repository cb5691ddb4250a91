"""``turso-sync rekey`` and ``turso-sync passwd`` through their entry points (``add_arguments``/``run``).

The two commands are not yet listed in ``cli/main.py``'s ``COMMANDS``; each test builds the
command's parser the way ``main.build_parser`` does.
"""

from __future__ import annotations

import argparse
import secrets
from pathlib import Path

import pytest

import turso_sync
from turso_sync.cli import passwd, rekey
from turso_sync.cli.exit_codes import CommandError, ExitCode


def parse(module: object, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"turso-sync {module.__name__.rsplit('.', 1)[-1]}")  # type: ignore[attr-defined]
    module.add_arguments(parser)  # type: ignore[attr-defined]
    return parser.parse_args(argv)


def test_rekey_with_key_files_prints_progress_but_never_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "app.db"
    old, new = secrets.token_hex(32), secrets.token_hex(32)
    conn = turso_sync.connect(str(path), encryption_key=old, cipher="hardened")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, "r" * 300) for i in range(200)])
    conn.commit()
    conn.close()
    (tmp_path / "old.key").write_text(old + "\n")
    (tmp_path / "new.key").write_text(new + "\n")
    args = parse(
        rekey,
        [str(path), "--encryption-key-file", str(tmp_path / "old.key"), "--new-key-file", str(tmp_path / "new.key")],
    )
    assert rekey.run(args) == ExitCode.OK
    out, err = capsys.readouterr()
    assert "epoch 1 -> 2: re-encrypting pages" in out and "epoch 2 in use, epoch 1 retired" in out
    assert old not in out + err and new not in out + err
    conn = turso_sync.connect(str(path), encryption_key=new, cipher="hardened")
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (200,)
    conn.close()


def test_no_option_takes_a_secret_on_the_command_line() -> None:
    for module in (rekey, passwd):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        options = {o for action in parser._actions for o in action.option_strings}
        assert options and all(
            o.endswith("-file") or o in ("-h", "--help", "-q", "--quiet", "--batch-pages") for o in options
        )


def test_without_a_file_or_terminal_the_secret_is_asked_for_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "app.db"
    key = secrets.token_hex(32)
    conn = turso_sync.connect(str(path), encryption_key=key, cipher="hardened")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    monkeypatch.delenv("TURSO_SYNC_ENCRYPTION_KEY", raising=False)
    monkeypatch.delenv("TURSO_SYNC_PASSPHRASE", raising=False)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    with pytest.raises(CommandError, match="no key given: pass it in a file"):
        rekey.run(parse(rekey, [str(path)]))


def test_turso_format_and_raw_keys_are_refused_with_the_reason(tmp_path: Path) -> None:
    turso = tmp_path / "turso.db"
    key = secrets.token_hex(32)
    conn = turso_sync.connect(str(turso), encryption_key=key)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(CommandError, match=r"Turso's format .* no key to rotate") as info:
        rekey.run(parse(rekey, [str(turso)]))
    assert info.value.code == ExitCode.ENCRYPTION_KEY
    hardened = tmp_path / "hardened.db"
    conn = turso_sync.connect(str(hardened), encryption_key=key, cipher="hardened")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(CommandError, match="encrypted with a key, not a passphrase"):
        passwd.run(parse(passwd, [str(hardened)]))


def test_passwd_from_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "pw.db"
    conn = turso_sync.connect(str(path), encryption_key="first passphrase", cipher="hardened-passphrase")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    conn.close()
    (tmp_path / "old").write_text("first passphrase\n")
    (tmp_path / "new").write_text("second passphrase\n")
    args = parse(
        passwd, [str(path), "--passphrase-file", str(tmp_path / "old"), "--new-passphrase-file", str(tmp_path / "new")]
    )
    assert passwd.run(args) == ExitCode.OK
    out, _ = capsys.readouterr()
    assert "passphrase changed" in out and "first passphrase" not in out and "second passphrase" not in out
    conn = turso_sync.connect(str(path), encryption_key="second passphrase", cipher="hardened-passphrase")
    assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
    conn.close()
    with pytest.raises(turso_sync.EncryptionError):
        turso_sync.connect(str(path), encryption_key="first passphrase", cipher="hardened-passphrase")
