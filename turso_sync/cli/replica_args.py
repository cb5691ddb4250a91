"""How every replica command names and opens its replica: path, token, key, conflict policy.

The token and the key come from an option, a file, or the environment, in that order; they are
handed to the library in memory and never written anywhere (the library stores neither).
"""

from __future__ import annotations

import argparse
import os
import urllib.parse
from typing import Any

from .. import connect as connect_database
from ..crypto.page_codec import (
    CIPHERS,
    ENCRYPTION_FORMATS,
    SQLITE_MAGIC,
    TURSO_MAGIC_PREFIX,
    encryption_options,
    parse_key,
)
from ..sync.connection import SyncConnection
from ..sync.partial import PartialSync
from ..sync.rebase import DEFAULT_POLICY, POLICIES
from ..sync.state import SyncState
from ..sync.transport import HttpTransport, Progress
from .exit_codes import CommandError, ExitCode

AUTH_TOKEN_ENV = "TURSO_SYNC_AUTH_TOKEN"  # noqa: S105 - the name of a variable, not a token
ENCRYPTION_KEY_ENV = "TURSO_SYNC_ENCRYPTION_KEY"
PASSPHRASE_ENV = "TURSO_SYNC_PASSPHRASE"  # noqa: S105 - the name of a variable, not a passphrase


def add_path_argument(parser: argparse.ArgumentParser) -> None:
    """The positional PATH of an existing replica."""
    parser.add_argument("path", metavar="PATH", help="the local replica (a database file made by `clone`)")


def add_credential_arguments(parser: argparse.ArgumentParser) -> None:
    """``--auth-token[-file]``, ``--encryption-key[-file]`` and ``--cipher``."""
    group = parser.add_argument_group("credentials (never written to disk)")
    token = group.add_mutually_exclusive_group()
    token.add_argument(
        "--auth-token",
        metavar="TOKEN",
        help=f"bearer token for the primary (visible to `ps`: prefer ${AUTH_TOKEN_ENV} or --auth-token-file)",
    )
    token.add_argument("--auth-token-file", metavar="F", help="file holding the bearer token")
    key = group.add_mutually_exclusive_group()
    key.add_argument(
        "--encryption-key",
        metavar="HEX",
        help=f"the replica's encryption key in hex (prefer ${ENCRYPTION_KEY_ENV} or --encryption-key-file)",
    )
    key.add_argument("--encryption-key-file", metavar="F", help="file holding the encryption key (hex)")
    key.add_argument(
        "--passphrase-file",
        metavar="F",
        help=f"file holding a passphrase instead of a key (hardened format; or ${PASSPHRASE_ENV})",
    )
    group.add_argument("--cipher", default="aes256gcm", help="cipher of the key: aes256gcm (default) or aes128gcm")
    group.add_argument(
        "--encryption-format",
        choices=ENCRYPTION_FORMATS,
        default="turso",
        help="format of a new encrypted replica: turso (default; pyturso opens it) or hardened (pages bound to "
        "their place, AES-256-GCM-SIV; docs/encryption.md). An existing replica's file says its own",
    )


def add_sync_arguments(parser: argparse.ArgumentParser) -> None:
    """``--conflict``: the policy a pull's rebase applies to conflicting pending changes."""
    parser.add_argument(
        "--conflict",
        choices=POLICIES,
        default=DEFAULT_POLICY,
        help=f"how a pull settles a local change to a row that changed remotely (default {DEFAULT_POLICY})",
    )


def add_quiet_argument(parser: argparse.ArgumentParser) -> None:
    """``--quiet``: no progress, no summary; errors still go to stderr."""
    parser.add_argument("-q", "--quiet", action="store_true", help="print no progress or summary (errors still)")


def _secret(args: argparse.Namespace, option: str, env: str, what: str) -> str | None:
    value = getattr(args, option, None)
    file_name = getattr(args, f"{option}_file", None)
    if file_name:
        try:
            with open(file_name, encoding="utf-8") as f:
                value = f.read().strip()
        except OSError as exc:
            raise CommandError(f"cannot read {what} file {file_name}: {exc.strerror or exc}") from None
        if not value:
            raise CommandError(f"{what} file {file_name} is empty")
    elif value is None:
        value = os.environ.get(env) or None
    return value.strip() if value is not None else None


def key_source(args: argparse.Namespace) -> str:
    """Where the key came from, as the user gave it (for a message; never the key itself)."""
    if getattr(args, "encryption_key", None) is not None:
        return "--encryption-key"
    if getattr(args, "encryption_key_file", None):
        return f"--encryption-key-file {args.encryption_key_file}"
    return f"${ENCRYPTION_KEY_ENV}"


def auth_token(args: argparse.Namespace) -> str | None:
    """The bearer token: ``--auth-token``, ``--auth-token-file`` or ``$TURSO_SYNC_AUTH_TOKEN``."""
    return _secret(args, "auth_token", AUTH_TOKEN_ENV, "auth token")


def encryption_key(args: argparse.Namespace) -> str | None:
    """The key, checked against ``--cipher`` (the error never repeats the key)."""
    key = _secret(args, "encryption_key", ENCRYPTION_KEY_ENV, "encryption key")
    if key is not None:
        try:
            parse_key(key, args.cipher)
        except (ValueError, TypeError) as exc:
            what = str(exc).replace("encryption_key", "the key")
            raise CommandError(
                f"the encryption key ({key_source(args)}) is not usable: {what}; give the replica's key in hex",
                ExitCode.ENCRYPTION_KEY,
            ) from None
    return key


def passphrase(args: argparse.Namespace) -> str | None:
    """The passphrase: ``--passphrase-file`` or ``$TURSO_SYNC_PASSPHRASE`` (never an argv value)."""
    return _secret(args, "passphrase", PASSPHRASE_ENV, "passphrase")


def encryption(args: argparse.Namespace) -> tuple[str | None, str]:
    """The ``(key, cipher)`` pair the library opens a replica with: the key or the passphrase, and
    the format (``--encryption-format``) carried by the cipher name (the error never repeats a secret)."""
    key = encryption_key(args)
    secret = passphrase(args)
    if key is not None and secret is not None:
        raise CommandError(
            f"give an encryption key ({key_source(args)}) or a passphrase, not both", ExitCode.ENCRYPTION_KEY
        )
    try:
        return encryption_options(key, args.cipher, getattr(args, "encryption_format", "turso"), secret)
    except (ValueError, TypeError) as exc:
        reason = (
            str(exc)
            .replace("encryption_format=", "--encryption-format ")
            .replace("encryption_key", "--encryption-key-file")
            .replace("cipher ", "--cipher ")
        )
        raise CommandError(f"the encryption options do not fit: {reason}", ExitCode.ENCRYPTION_KEY) from None


def check_key_fits(
    args: argparse.Namespace, path: str, key: str | None, *, cipher: str | None = None, source: str | None = None
) -> None:
    """At ``path`` (as the user wrote it): refuse a key for a plaintext database, no key for an
    encrypted one, or the wrong ``--cipher``, naming the flag to change (the library checks the
    key itself when it opens the file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(100)
    except OSError:
        return  # missing or unreadable: the replica checks say what is wrong
    if len(head) < 100:
        return
    cipher = cipher or args.cipher
    if head.startswith(SQLITE_MAGIC) and key is not None:
        given = source or key_source(args)
        raise CommandError(f"{path} is not encrypted: drop the key ({given})", ExitCode.ENCRYPTION_KEY)
    if head.startswith(TURSO_MAGIC_PREFIX):
        if key is None:
            give = source or f"--encryption-key-file F or ${ENCRYPTION_KEY_ENV}"
            raise CommandError(f"{path} is encrypted: give its key with {give}", ExitCode.ENCRYPTION_KEY)
        names = {spec.cipher_id: name for name, spec in CIPHERS.items()}
        found = names.get(head[6])
        if found is None or cipher.startswith("hardened"):
            return  # the hardened format: the file says its own parameters, the library checks them
        try:
            asked = parse_key(key, cipher)[0].name
        except (ValueError, TypeError):
            return  # the key itself is refused by encryption_key() or the library, with its reason
        if found is not None and found != asked:
            raise CommandError(f"{path} is encrypted with {found}: give --cipher {found}", ExitCode.ENCRYPTION_KEY)


def read_key_file(file_name: str, cipher: str, what: str) -> str:
    """The hex key held in ``file_name``, checked against ``cipher``; errors name ``what`` (never the key)."""
    try:
        with open(file_name, encoding="utf-8") as f:
            key = f.read().strip()
    except OSError as exc:
        raise CommandError(f"{what}: cannot read key file {file_name}: {exc.strerror or exc}") from None
    if not key:
        raise CommandError(f"{what}: key file {file_name} is empty")
    try:
        parse_key(key, cipher)
    except (ValueError, TypeError) as exc:
        reason = str(exc).replace("encryption_key", "the key")
        raise CommandError(f"{what}: the key in {file_name} is not usable: {reason}", ExitCode.ENCRYPTION_KEY) from None
    return key


_URL_SCHEMES = ("http", "https", "libsql", "turso")


def check_remote_url(url: str, what: str = "URL") -> None:
    """Refuse, before any network, a URL that cannot name a primary (no scheme, no host, another scheme)."""
    parts = urllib.parse.urlsplit(url)
    example = "http://HOST:PORT/db/NAME, https://... or libsql://..."
    if parts.scheme.lower() not in _URL_SCHEMES:
        said = f"{parts.scheme}://" if parts.scheme else "no scheme"
        raise CommandError(f"{what} {url!r} is not a primary's URL ({said}): give {example}")
    try:
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        bad_port = f"{what} {url!r} is not a primary's URL (its port is not a number)"
        raise CommandError(f"{bad_port}: give {example}") from None
    if not host:
        raise CommandError(f"{what} {url!r} names no host: give {example}")


def existing_replica(path: str) -> str:
    """The real path of a replica made by ``clone``; a clear error for anything else."""
    real = os.path.realpath(path)
    if SyncState.load(real) is None:
        if os.path.exists(real):
            raise CommandError(f"{path} is not a replica (no {os.path.basename(real)}-sync beside it)")
        raise CommandError(f"{path} does not exist; create it with `turso-sync clone URL {path}`")
    return real


def open_replica(
    args: argparse.Namespace,
    path: str,
    *,
    remote_url: str | None = None,
    progress: Progress | None = None,
    partial: PartialSync | None = None,
    **connection_options: Any,
) -> SyncConnection:
    """What ``turso_sync.connect(path, remote_url, ...)`` returns, with a progress hook on its transport.

    Without ``remote_url`` the path must already be a replica (its saved URL is used); with it,
    a new path is bootstrapped (``clone``).
    """
    token = auth_token(args)
    key, cipher = encryption(args)
    real = os.path.realpath(path)
    if remote_url is None:
        real = existing_replica(path)
        state = SyncState.load(real)
        assert state is not None
        url = state.remote_url
        check_key_fits(args, path, key, cipher=cipher)
    else:
        check_remote_url(remote_url)
        url = remote_url
    transport = HttpTransport(url, auth_token=token, client_name="turso-sync", progress=progress)
    try:
        # the library refuses a damaged replica before opening it, and removes what a failed
        # clone created (connect's contract): nothing of either is repeated here
        conn = connect_database(
            real,
            remote_url,
            auth_token=token,
            encryption_key=key,
            cipher=cipher,
            conflict=getattr(args, "conflict", DEFAULT_POLICY),
            transport=transport,
            partial=partial,
            **connection_options,
        )
    except BaseException:
        transport.close()
        raise
    if not isinstance(conn, SyncConnection):  # pragma: no cover - remote_url or a -sync file make a replica
        conn.close()
        raise CommandError(f"{path} is not a replica")
    # from here on the key has opened page 1: a page that fails authentication later was changed
    # on disk (main() reports it as damage, not as a key problem)
    args.opened_replica = path
    return conn
