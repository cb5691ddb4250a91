"""Token file parsing and request authorization (401 / 403), without leaking tokens."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from turso_sync.primary.auth import Access, Authenticator, AuthError, TokenFileError, load_token_file, parse_token_file

WRITER = "writer-token-0123456789"
READER = "reader-token-abcdefghij"
HASHED = "hashed-token-zyxwvu"

TOKENS = f"""
# a comment line
{WRITER}   rw  *            # trailing comment
{READER}   r   default,orders
sha256:{hashlib.sha256(HASHED.encode()).hexdigest()}  rw  orders
"""


@pytest.fixture
def auth() -> Authenticator:
    return Authenticator(parse_token_file(TOKENS))


def test_rules_are_parsed(auth: Authenticator) -> None:
    rules = parse_token_file(TOKENS)
    assert [(r.access, r.databases, r.line) for r in rules] == [
        (Access.READ_WRITE, None, 3),
        (Access.READ, frozenset({"default", "orders"}), 4),
        (Access.READ_WRITE, frozenset({"orders"}), 5),
    ]
    assert not auth.dev_mode


def test_grants(auth: Authenticator) -> None:
    assert auth.check(f"Bearer {WRITER}", "anything").access is Access.READ_WRITE
    assert auth.check(f"bearer {READER}", "orders").read_only
    assert auth.check(f"Bearer {HASHED}", "orders").access is Access.READ_WRITE


@pytest.mark.parametrize(
    ("header", "database", "status"),
    [
        (None, "default", 401),
        ("", "default", 401),
        (f"Basic {WRITER}", "default", 401),
        (f"Bearer {WRITER}x", "default", 401),
        ("Bearer " + "sha256:" + hashlib.sha256(HASHED.encode()).hexdigest(), "orders", 401),  # the hash is no token
        (f"Bearer {READER}", "secret", 403),
        (f"Bearer {HASHED}", "default", 403),
    ],
)
def test_refusals(auth: Authenticator, header: str | None, database: str, status: int) -> None:
    with pytest.raises(AuthError) as info:
        auth.check(header, database)
    assert info.value.status == status
    assert WRITER not in str(info.value) and READER not in str(info.value) and HASHED not in str(info.value)


def test_dev_mode_accepts_anything() -> None:
    auth = Authenticator(None)
    assert auth.dev_mode
    assert auth.check(None, "x").access is Access.READ_WRITE
    assert auth.check("Bearer whatever", "y").access is Access.READ_WRITE


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("only-two-fields rw\n", "line 1: expected 3 fields"),
        ("\n\nsecret-token-123 write *\n", "line 3: access must be"),
        ("sha256:abcd rw *\n", "64 hex digits"),
        ("short rw *\n", "at least 8"),
        ("secret-token-123 rw ,\n", "at least one database"),
        ("# nothing here\n", "no tokens"),
    ],
)
def test_bad_token_files_name_the_line_not_the_token(text: str, match: str) -> None:
    with pytest.raises(TokenFileError, match=match) as info:
        parse_token_file(text)
    assert "secret-token-123" not in str(info.value)


def test_load_token_file_warns_about_loose_permissions(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(TOKENS)
    os.chmod(path, 0o644)
    rules, warnings = load_token_file(str(path))
    assert len(rules) == 3 and warnings and "chmod 600" in warnings[0]
    os.chmod(path, 0o600)
    assert load_token_file(str(path))[1] == []
    with pytest.raises(TokenFileError, match="cannot read"):
        load_token_file(str(tmp_path / "missing"))
