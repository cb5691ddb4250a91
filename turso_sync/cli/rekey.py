"""Rotate the key of the hardened (or envelope) database at PATH while other processes keep using it.

  turso-sync rekey notes.db --encryption-key-file old.key --new-key-file new.key
  turso-sync rekey notes.db --passphrase-file pw.txt     # a passphrase file: a new random data key
  turso-sync rekey notes.db                              # asks for what it needs (no echo)

New writes use the new key as soon as the rotation starts; the command then re-encrypts every
page still under the old key (database file, WAL, frame log, revert files) in small
transactions, and retires the old key when nothing uses it: from then on the old key opens
nothing.  Interrupted (Ctrl-C, a kill, a crash), it resumes where it stopped when run again,
with either key; the new key must then be the one it started with.  During a rotation the
database needs ``PATH-rekey`` beside it: keep the two together.  Turso's format keeps one key
for the life of a file: only the hardened format rotates, and the envelope layout (an
encrypted replica of a remote whose pages reserve no bytes), which uses its cipher.

Keys and passphrases come from files (``--encryption-key-file``, ``--new-key-file``,
``--passphrase-file``), the current ones also from $TURSO_SYNC_ENCRYPTION_KEY or
$TURSO_SYNC_PASSPHRASE, or from a prompt: never from the command line.  The library twin is
``turso_sync.local.rekey.rekey(path, encryption_key=, passphrase=, new_key=, progress=)``.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from ..crypto.envelope import is_envelope
from ..crypto.hardened import FileParams, is_hardened
from ..local.rekey import RekeyProgress, rekey
from .exit_codes import CommandError, ExitCode

HELP = "Rotate a hardened (or envelope) database's key (resumable; readers and writers keep going)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``rekey``."""
    parser.add_argument("path", metavar="PATH", help="the hardened (or envelope) database")
    parser.add_argument(
        "--encryption-key-file",
        metavar="F",
        help="file holding the current key (64 hex digits; or $TURSO_SYNC_ENCRYPTION_KEY)",
    )
    parser.add_argument("--new-key-file", metavar="F", help="file holding the key to rotate to (64 hex digits)")
    parser.add_argument(
        "--passphrase-file", metavar="F", help="file holding the passphrase (or $TURSO_SYNC_PASSPHRASE)"
    )
    parser.add_argument("--batch-pages", type=int, default=64, metavar="N", help="pages per transaction (64)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print no progress (errors still)")


def file_kind(path: str) -> str:
    """ "passphrase" or "key": what page 1 of the hardened (or envelope) database at ``path`` asks for."""
    try:
        with open(path, "rb") as f:
            head = f.read(100)
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not is_hardened(head) and not is_envelope(head):
        raise CommandError(
            f"{path} does not use the hardened encryption format: Turso's format (and a plaintext file) "
            "keeps one key for the life of the file, so there is no key to rotate or passphrase to change",
            ExitCode.ENCRYPTION_KEY,
        )
    return "passphrase" if FileParams.of_page1(head).argon2 is not None else "key"


def read_secret(file_name: str | None, prompt: str, what: str, *, env: str | None = None, confirm: bool = False) -> str:
    """A key or passphrase from ``file_name``, else ``$env``, else a prompt without echo (twice with
    ``confirm``).  Errors name the file, never the secret."""
    if file_name:
        try:
            with open(file_name, encoding="utf-8") as f:
                value = f.read().strip()
        except OSError as exc:
            raise CommandError(f"cannot read the {what} file {file_name}: {exc.strerror or exc}") from None
        if not value:
            raise CommandError(f"the {what} file {file_name} is empty")
        return value
    if env and os.environ.get(env):
        return os.environ[env].strip()
    if not sys.stdin.isatty():
        raise CommandError(f"no {what} given: pass it in a file (the option ending in -file), or run in a terminal")
    value = getpass.getpass(prompt).strip()
    if not value:
        raise CommandError(f"no {what} given")
    if confirm and getpass.getpass("Again: ").strip() != value:
        raise CommandError(f"the two {what}s differ; nothing changed")
    return value


class _Lines:
    """One line per phase, and page counts every tenth of the way."""

    def __init__(self, path: str, quiet: bool) -> None:
        self.path = path
        self.quiet = quiet
        self.last: tuple[str, int] | None = None

    def __call__(self, p: RekeyProgress) -> None:
        if self.quiet:
            return
        tenth = p.done * 10 // p.total if p.total else 0
        if self.last == (p.phase, tenth):
            return
        self.last = (p.phase, tenth)
        counts = f" {p.done}/{p.total}" if p.total > 1 else ""
        print(f"rekey {self.path}: epoch {p.old_epoch} -> {p.new_epoch}: {p.phase}{counts}", flush=True)


def run(args: argparse.Namespace) -> int:
    """Start or resume the rotation; print where it stands."""
    kind = file_kind(args.path)
    if kind == "passphrase":
        passphrase = read_secret(
            args.passphrase_file, f"Passphrase for {args.path}: ", "passphrase", env="TURSO_SYNC_PASSPHRASE"
        )
        key = new_key = None
    else:
        passphrase = None
        key = read_secret(
            args.encryption_key_file, f"Current key of {args.path} (hex): ", "key", env="TURSO_SYNC_ENCRYPTION_KEY"
        )
        new_key = read_secret(args.new_key_file, f"New key for {args.path} (hex): ", "new key")
    result = rekey(
        args.path,
        encryption_key=key,
        passphrase=passphrase,
        new_key=new_key,
        batch_pages=args.batch_pages,
        progress=_Lines(args.path, args.quiet),
    )
    if not args.quiet:
        how = "resumed and finished" if result.resumed else "finished"
        print(
            f"rekey {args.path}: {how}: key epoch {result.new_epoch} in use, epoch {result.old_epoch} retired "
            f"({result.pages_rewritten} pages and {result.copies_rewritten} copies re-encrypted)",
            file=sys.stdout,
        )
    return ExitCode.OK
