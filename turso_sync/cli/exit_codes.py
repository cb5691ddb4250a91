"""Exit statuses of ``turso-sync`` commands, and the one line each failure prints.

A script can tell what went wrong from the status alone; the line on stderr says what to do.
docs/cli.md lists the same table.
"""

from __future__ import annotations

import os
import re
from enum import IntEnum

from .. import errors


class ExitCode(IntEnum):
    """Every status a command exits with."""

    OK = 0
    ERROR = 1  # anything else: an SQL error, a damaged file, a bug
    USAGE = 2  # bad options, a missing file, a path that is not a replica (argparse uses 2 too)
    NETWORK = 3  # the primary could not be reached or answered with an error
    AUTH = 4  # the primary refused the auth token (HTTP 401 or 403)
    ENCRYPTION_KEY = 5  # the key is wrong, missing, malformed or not needed
    REJECTED = 6  # the primary refused a pending change (it stays pending)
    VERIFY_FAILED = 7  # the local replica is damaged (its files, or SQLite's integrity check)
    REPLICA_DAMAGED = 7  # the same status, by the name commands other than `verify` raise it under
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it
    TERMINATED = 143  # SIGTERM (128 + 15): cleaned up as after Ctrl-C


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: raised where the command was, so it unwinds (and cleans up) as Ctrl-C does.

    A subclass of ``KeyboardInterrupt`` so every clean-up written for Ctrl-C runs; code that
    swallows Ctrl-C to go on (the shell's prompt) must let this one through.
    """


class CommandError(Exception):
    """A failure the command describes itself (bad options, wrong path): message and status."""

    def __init__(self, message: str, code: ExitCode = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.code = code


_KEY_ENV = "TURSO_SYNC_ENCRYPTION_KEY"

_HINTS = {
    ExitCode.NETWORK: "check the URL and that the primary is running; local reads and writes keep working",
    ExitCode.AUTH: "give a valid token with --auth-token-file F or TURSO_SYNC_AUTH_TOKEN",
    ExitCode.ENCRYPTION_KEY: "give the replica's key with --encryption-key-file F or TURSO_SYNC_ENCRYPTION_KEY",
    ExitCode.REJECTED: "the change stays pending; `turso-sync sync PATH` pulls, settles the conflict and retries",
}  # a damaged replica's message carries its own remedy (errors.ReplicaDamagedError)


def as_damage(exc: BaseException, opened: str | None) -> BaseException:
    """After the replica at ``opened`` was opened with its key, a page that fails authentication
    (``EncryptionError``) or that SQLite cannot parse (a plain ``DatabaseError``: corrupt, not a
    database) is damage on disk: a ``ReplicaDamagedError`` naming it, with verify's remedy."""
    if opened is None or not (isinstance(exc, errors.EncryptionError) or type(exc) is errors.DatabaseError):
        return exc
    remedy = f"run `turso-sync verify {opened}` to see the damage, then `turso-sync verify --repair {opened}`"
    return errors.ReplicaDamagedError(opened, damage_text(exc, opened), remedy)


def damage_text(exc: BaseException, path: str) -> str:
    """What a page error read after the key opened the replica at ``path`` says, as damage."""
    what = in_cli_terms(" ".join(str(exc).split())).removeprefix(f"{os.path.realpath(path)}: ")
    if isinstance(exc, errors.EncryptionError):  # wording only: the key is known to be right here
        what = what.replace("; the key is wrong or the file was changed on disk", "")
        what += ": the key opened the replica, so the page was changed on disk"
    return what


def classify(exc: BaseException) -> ExitCode:
    """The exit status for an exception a command let through."""
    if isinstance(exc, CommandError):
        return exc.code
    if isinstance(exc, errors.RemoteError):
        return ExitCode.AUTH if exc.status in (401, 403) else ExitCode.NETWORK
    if isinstance(exc, errors.NetworkError | errors.ProtocolError):
        return ExitCode.NETWORK
    if isinstance(exc, errors.PushRejectedError):
        return ExitCode.REJECTED
    if isinstance(exc, errors.ReplicaDamagedError):
        return ExitCode.REPLICA_DAMAGED
    if isinstance(exc, errors.EncryptionError):
        return ExitCode.ENCRYPTION_KEY
    return ExitCode.ERROR


#: the library's messages name its arguments; on the command line the user knows the flags
_FLAG_NAMES = [
    (re.compile(r"\bpass encryption_key \(and cipher\)"), f"give its key (--encryption-key-file F or ${_KEY_ENV})"),
    (re.compile(r"\bopen it without encryption_key\b"), f"drop the key (--encryption-key[-file], ${_KEY_ENV})"),
    (re.compile(r"\bwithout encryption_key\b"), "without a key"),
    (re.compile(r"turso_sync\.connect\(path, (?:remote_)?url\)"), "`turso-sync clone URL PATH`"),
    (re.compile(r"\bPartialSync\.prefix_bytes\b"), "--prefix-bytes"),
    (re.compile(r"\bPartialSync\.segment_size\b"), "--segment-size"),
    (re.compile(r"\bencryption_key\b"), "--encryption-key"),
    (re.compile(r"\bauth_token\b"), "--auth-token"),
    (re.compile(r"\bremote_url\b"), "the URL"),
    (re.compile(r"\bcipher="), "--cipher "),
]


def in_cli_terms(message: str) -> str:
    """A library message with its argument names replaced by the CLI's flags (wording only)."""
    for pattern, flag in _FLAG_NAMES:
        message = pattern.sub(flag, message)
    return message


def describe(exc: BaseException, code: ExitCode) -> str:
    """The one line printed for a failure: what happened, and what to do next where we know."""
    if isinstance(exc, errors.RemoteError) and code == ExitCode.AUTH:
        message = f"the primary refused the auth token (HTTP {exc.status})"
    elif isinstance(exc, errors.ReplicaDamagedError):
        what = exc.what.removeprefix(f"{exc.file}: ")
        message = f"{exc.file} is damaged ({what}); {exc.remedy}"
    else:
        message = in_cli_terms(str(exc) or type(exc).__name__)
    message = " ".join(message.split())  # one line, whatever the library's message holds
    # a CommandError says what to do itself, as does a message that already names the key's flags
    hint = None if isinstance(exc, CommandError) or "--encryption-key" in message else _HINTS.get(code)
    return f"{message} ({hint})" if hint else message
