"""serve makes room for the descriptors its bounds allow, or refuses the bounds, naming them."""

from __future__ import annotations

import resource

import pytest

from turso_sync.cli import serve
from turso_sync.cli.serve import ConfigError, ensure_descriptors
from turso_sync.primary import Limits


def _limits(connections: int = 1024, databases: int = 64) -> Limits:
    return Limits(max_connections=connections, max_open_databases=databases)


def test_the_soft_limit_is_raised_to_what_the_bounds_need(monkeypatch: pytest.MonkeyPatch) -> None:
    set_to: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda _what: (1024, 4096))
    monkeypatch.setattr(resource, "setrlimit", lambda _what, value: set_to.append(value))
    needed = 1024 + serve.FDS_PER_OPEN_DATABASE * 64 + serve.FDS_MARGIN
    assert ensure_descriptors(_limits()) == needed
    assert set_to == [(needed, 4096)]


def test_a_soft_limit_that_suffices_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _what: (20000, 20000))
    monkeypatch.setattr(resource, "setrlimit", lambda *_a: pytest.fail("nothing to raise"))
    assert ensure_descriptors(_limits()) == 20000


def test_bounds_past_the_hard_limit_are_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _what: (1024, 1024))
    monkeypatch.setattr(resource, "setrlimit", lambda *_a: pytest.fail("must not raise past the hard limit"))
    with pytest.raises(ConfigError, match=r"--max-connections 1024 and --max-open-databases 64 .* at most 1024"):
        ensure_descriptors(_limits())
