"""Bearer tokens: the token file, and deciding who may read or write which database.

Token file: one token per line, three whitespace-separated fields; ``#`` starts a comment::

    # token (or sha256:<64 hex digits>)   access   databases
    sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08   rw   *
    reader-7Qm2p                                                           r    default,orders
    operator-Xk39sLq0                                                      admin   *

``access`` is ``r`` (pull, and pipelines whose statements only read), ``rw`` (pull, push, any
SQL) or ``admin`` (what ``rw`` may, plus the operator's actions under ``/admin/``: rolling a
database back to an earlier revision; ``r`` and ``rw`` tokens get 403 there);
``databases`` is ``*`` or a comma-separated list of database names.  A field starting with ``#``
begins a comment, so tokens cannot start with ``#``.  A ``sha256:`` entry holds
the SHA-256 of the token instead of the token itself, so the file need not contain secrets.

Every presented token is hashed and compared against every entry in constant time.  Tokens
never appear in logs or error messages; errors about the file name the line, not its contents.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import re
import stat
from dataclasses import dataclass

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +(\S+) *")


class Access(enum.Enum):
    """What a token allows on its databases."""

    READ = "r"
    READ_WRITE = "rw"
    ADMIN = "admin"  # read-write, plus the operator's actions (``/admin/...``: rollback)


class TokenFileError(Exception):
    """The token file cannot be used; the message names the file and line."""


class AuthError(Exception):
    """A request is not allowed: ``status`` is 401 (who are you?) or 403 (not for you)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class TokenRule:
    """One line of the token file, with the token reduced to its SHA-256."""

    digest: bytes
    access: Access
    databases: frozenset[str] | None  # None: every database
    line: int

    def covers(self, database: str) -> bool:
        """True if this token applies to ``database``."""
        return self.databases is None or database in self.databases


#: The client identity of every request in development mode (there are no tokens to tell clients apart).
DEV_CLIENT = "dev"


@dataclass(frozen=True)
class Grant:
    """What an authenticated request may do on the database it addressed, and who asks.

    ``client`` names the token for per-client bounds (open requests, databases created): a
    one-way hash of the token's SHA-256, so it can be logged and stored but leads back to
    neither the token nor its line in the token file; ``DEV_CLIENT`` in development mode.
    """

    access: Access
    client: str = DEV_CLIENT

    @property
    def read_only(self) -> bool:
        return self.access is Access.READ

    @property
    def admin(self) -> bool:
        """True if the token may take the operator's actions (``/admin/...``) on the database."""
        return self.access is Access.ADMIN


def token_digest(token: str) -> bytes:
    """The SHA-256 of a token, as stored in ``sha256:`` entries."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def client_id(digest: bytes) -> str:
    """The client identity (32 hex digits) of a token whose SHA-256 is ``digest``."""
    return hashlib.sha256(b"turso-sync client\x00" + digest).hexdigest()[:32]


def parse_token_file(text: str, source: str = "token file") -> list[TokenRule]:
    """The rules of a token file; raises TokenFileError naming the line at fault."""
    rules: list[TokenRule] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        for i, item in enumerate(fields):
            if item.startswith("#"):  # a comment runs to the end of the line
                fields = fields[:i]
                break
        if not fields:
            continue
        if len(fields) != 3:
            raise TokenFileError(
                f"{source}, line {lineno}: expected 3 fields (token, access r|rw|admin, databases), found {len(fields)}"
            )
        secret, access_text, dbs_text = fields
        if secret.startswith("sha256:"):
            hexpart = secret[len("sha256:") :]
            if not _HEX64.fullmatch(hexpart):
                raise TokenFileError(f"{source}, line {lineno}: a sha256: entry needs exactly 64 hex digits")
            digest = bytes.fromhex(hexpart)
        else:
            if len(secret) < 8:
                raise TokenFileError(f"{source}, line {lineno}: tokens must be at least 8 characters long")
            digest = token_digest(secret)
        try:
            access = Access(access_text)
        except ValueError:
            raise TokenFileError(f"{source}, line {lineno}: access must be 'r', 'rw' or 'admin'") from None
        databases: frozenset[str] | None
        if dbs_text == "*":
            databases = None
        else:
            names = [n for n in dbs_text.split(",") if n]
            if not names:
                raise TokenFileError(f"{source}, line {lineno}: list at least one database, or '*'")
            databases = frozenset(names)
        rules.append(TokenRule(digest, access, databases, lineno))
    if not rules:
        raise TokenFileError(f"{source}: no tokens (every request would be refused)")
    return rules


def load_token_file(path: str) -> tuple[list[TokenRule], list[str]]:
    """Rules from a token file, and warnings (for example, a file other users can read)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise TokenFileError(f"cannot read token file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise TokenFileError(f"token file {path} is not UTF-8 text") from None
    warnings = []
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        warnings.append(f"token file {path} is readable by other users; consider chmod 600")
    return parse_token_file(text, f"token file {path}"), warnings


class Authenticator:
    """Checks the ``Authorization`` header of each request against the token rules.

    Without rules it is in development mode: any token (or none) may read and write, and take
    the operator's actions (there is nobody to tell apart).
    """

    def __init__(self, rules: list[TokenRule] | None) -> None:
        self._rules = list(rules) if rules is not None else None

    @property
    def dev_mode(self) -> bool:
        """True when no token file was given."""
        return self._rules is None

    def check(self, authorization: str | None, database: str) -> Grant:
        """The grant for this request on ``database``; raises AuthError (401 or 403)."""
        if self._rules is None:
            return Grant(Access.READ_WRITE)
        token = _bearer(authorization)
        if token is None:
            raise AuthError(401, "missing bearer token: send 'Authorization: Bearer <token>'")
        rule = self._match(token)
        if rule is None:
            raise AuthError(401, "invalid token")
        if not rule.covers(database):
            raise AuthError(403, f"this token has no access to database '{database}'")
        return Grant(rule.access, client_id(rule.digest))

    def check_admin(self, authorization: str | None, database: str, action: str) -> Grant:
        """The grant of an operator's ``action`` on ``database``: as ``check``, and 403 unless the
        token's access is ``admin`` (development mode allows it, as it allows everything)."""
        grant = self.check(authorization, database)
        if self._rules is not None and not grant.admin:
            raise AuthError(
                403,
                f"{action} is an operator's action: it needs a token whose access is 'admin' in the "
                f"server's token file, and this one's is '{grant.access.value}'",
            )
        return grant

    def _match(self, token: str) -> TokenRule | None:
        digest = token_digest(token)
        found: TokenRule | None = None
        for rule in self._rules or ():
            # compare against every rule, so timing does not tell which (or whether one) matched
            if hmac.compare_digest(digest, rule.digest) and found is None:
                found = rule
        return found


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    match = _BEARER.fullmatch(header.strip())
    return match.group(1) if match else None
