"""Change the passphrase of the hardened (or envelope) database at PATH: page 1 alone is rewritten.

  turso-sync passwd notes.db --passphrase-file old.txt --new-passphrase-file new.txt
  turso-sync passwd notes.db                       # asks for both (the new one twice, no echo)

The data key is re-wrapped under the new passphrase; no other page changes (the copies of
page 1 in the frame log and revert files are re-encrypted with it), and the old passphrase
opens nothing afterwards.  The database must not be open in another process (each
one keeps its own copy of page 1's parameters).  Someone who had the old passphrase and a copy
of the file could already unwrap the data key: after a leak, run ``turso-sync rekey`` too.

Passphrases come from files (the current one also from $TURSO_SYNC_PASSPHRASE) or from a
prompt, never from the command line.  The library twin
is ``turso_sync.local.rekey.change_passphrase(path, passphrase, new_passphrase)``.
"""

from __future__ import annotations

import argparse

from ..local.rekey import change_passphrase
from .exit_codes import CommandError, ExitCode
from .rekey import file_kind, read_secret

HELP = "Change a hardened (or envelope) database's passphrase (rewrites page 1 only)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``passwd``."""
    parser.add_argument("path", metavar="PATH", help="the hardened (or envelope) database protected by a passphrase")
    parser.add_argument(
        "--passphrase-file", metavar="F", help="file holding the current passphrase (or $TURSO_SYNC_PASSPHRASE)"
    )
    parser.add_argument("--new-passphrase-file", metavar="F", help="file holding the new passphrase")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")


def run(args: argparse.Namespace) -> int:
    """Re-wrap the data key under the new passphrase."""
    if file_kind(args.path) != "passphrase":
        raise CommandError(
            f"{args.path} is encrypted with a key, not a passphrase: there is no passphrase to change "
            "(`turso-sync rekey` changes keys)",
            ExitCode.ENCRYPTION_KEY,
        )
    old = read_secret(
        args.passphrase_file, f"Current passphrase for {args.path}: ", "passphrase", env="TURSO_SYNC_PASSPHRASE"
    )
    new = read_secret(args.new_passphrase_file, f"New passphrase for {args.path}: ", "new passphrase", confirm=True)
    if new == old:
        raise CommandError("the new passphrase is the current one; nothing to change")
    change_passphrase(args.path, old, new)
    if not args.quiet:
        print(f"passwd {args.path}: passphrase changed (page 1 rewritten; the old passphrase opens nothing now)")
    return ExitCode.OK
