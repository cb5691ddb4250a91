"""``turso_sync.connect``'s return type follows ``remote_url``: no ``Any`` for a user's type checker."""

from __future__ import annotations

import inspect
import os
import textwrap
import typing

import pytest

import turso_sync
from turso_sync.local.connection import Connection
from turso_sync.sync.connection import SyncConnection


def test_the_overloads_name_the_connection_types_and_never_any():
    overloads = typing.get_overloads(turso_sync.connect)
    assert len(overloads) == 3
    signatures = [inspect.signature(each) for each in overloads]
    returns = {sig.parameters["remote_url"].annotation: sig.return_annotation for sig in signatures}
    assert returns == {
        "str": "SyncConnection",
        "None": "Connection | SyncConnection",
        "str | None": "Connection | SyncConnection",  # a URL only known at run time
    }
    assert inspect.signature(turso_sync.connect).return_annotation == "Connection | SyncConnection"


def test_sync_connection_is_exported_lazily_and_is_the_real_class():
    assert turso_sync.SyncConnection is SyncConnection
    assert "SyncConnection" in turso_sync.__all__
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        turso_sync.Nope


def test_a_local_path_gives_a_plain_connection(tmp_path):
    conn = turso_sync.connect(tmp_path / "local.db")
    try:
        assert type(conn) is Connection
    finally:
        conn.close()


def test_a_type_checker_sees_the_overloads(tmp_path):
    api = pytest.importorskip("mypy.api")
    snippet = tmp_path / "uses_connect.py"
    snippet.write_text(
        textwrap.dedent(
            """
            from typing import assert_type

            import turso_sync
            from turso_sync.local.connection import Connection
            from turso_sync.sync.connection import SyncConnection

            def remote(url: str) -> None:
                assert_type(turso_sync.connect("r.db", url), SyncConnection)
                assert_type(turso_sync.connect("r.db", remote_url=url), SyncConnection)

            def local() -> None:
                assert_type(turso_sync.connect("l.db"), Connection | SyncConnection)
                assert_type(turso_sync.connect("l.db", None), Connection | SyncConnection)

            def either(url: str | None) -> None:
                assert_type(turso_sync.connect("x.db", url), Connection | SyncConnection)
            """
        )
    )
    out, err, status = api.run(["--no-incremental", "--cache-dir", os.devnull, "--follow-imports=silent", str(snippet)])
    assert status == 0, out + err
