"""The token file's ``admin`` access: the operator's actions (``/admin/...``) need it; ``r`` and ``rw`` get 403."""

from __future__ import annotations

import hashlib

import pytest

from turso_sync.primary.auth import Access, Authenticator, AuthError, TokenFileError, parse_token_file

ADMIN = "operator-token-0123456789"
WRITER = "writer-token-0123456789"
READER = "reader-token-abcdefghij"
SCOPED = "scoped-admin-token-abc"

TOKENS = f"""
{ADMIN}    admin  *
{WRITER}   rw     *
{READER}   r      *
sha256:{hashlib.sha256(SCOPED.encode()).hexdigest()}  admin  orders
"""


@pytest.fixture
def auth() -> Authenticator:
    return Authenticator(parse_token_file(TOKENS))


def test_admin_is_parsed_and_may_read_and_write(auth: Authenticator) -> None:
    grant = auth.check(f"Bearer {ADMIN}", "anything")
    assert grant.access is Access.ADMIN and grant.admin and not grant.read_only
    assert auth.check_admin(f"Bearer {ADMIN}", "anything", "rolling back").admin
    assert auth.check_admin(f"Bearer {SCOPED}", "orders", "rolling back").admin


@pytest.mark.parametrize("token", [WRITER, READER])
def test_r_and_rw_tokens_get_403_on_admin_actions(auth: Authenticator, token: str) -> None:
    assert not auth.check(f"Bearer {token}", "default").admin
    with pytest.raises(AuthError) as caught:
        auth.check_admin(f"Bearer {token}", "default", "rolling a database back")
    assert caught.value.status == 403
    assert "admin" in str(caught.value) and token not in str(caught.value)


@pytest.mark.parametrize(
    ("header", "database", "status"),
    [(None, "default", 401), ("Bearer not-a-known-token", "default", 401), (f"Bearer {SCOPED}", "default", 403)],
)
def test_admin_actions_check_the_token_like_every_route(
    auth: Authenticator, header: str | None, database: str, status: int
) -> None:
    with pytest.raises(AuthError) as caught:
        auth.check_admin(header, database, "rolling a database back")
    assert caught.value.status == status


def test_development_mode_allows_admin_actions() -> None:
    assert Authenticator(None).check_admin(None, "default", "rolling back").access is Access.READ_WRITE


def test_a_wrong_access_names_admin_among_the_choices() -> None:
    with pytest.raises(TokenFileError, match="'r', 'rw' or 'admin'"):
        parse_token_file(f"{ADMIN} root *\n")
