"""The conflict policy is checked when a replica is opened, against the one list of names."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

import turso_sync
from turso_sync.cli.replica_args import add_sync_arguments
from turso_sync.sync.rebase import POLICIES, check_policy

DOCS = Path(__file__).resolve().parents[2] / "docs"


class _RefusingTransport:
    """A transport that fails the test if anything reaches it."""

    def __init__(self) -> None:
        self.stats = turso_sync.sync.transport.TransferStats()

    def request(self, path: str, body: bytes, content_type: str, timeout: float, idempotent: bool):
        raise AssertionError(f"no request expected, got one for {path}")

    def close(self) -> None:
        pass


@pytest.mark.parametrize("policy", ["bogus", "Remote_Wins", "", 42, None, b"remote_wins"])
def test_an_unknown_policy_fails_at_connect_naming_every_accepted_policy(tmp_path, policy):
    path = tmp_path / "r.db"
    with pytest.raises(turso_sync.ProgrammingError) as caught:
        turso_sync.connect(path, "http://127.0.0.1:9", conflict=policy, transport=_RefusingTransport())
    message = str(caught.value)
    assert repr(policy) in message
    for name in POLICIES:
        assert repr(name) in message
    assert "callable" in message
    assert not list(tmp_path.iterdir()), "nothing is created for a refused policy"


@pytest.mark.parametrize("policy", [*POLICIES, lambda *args: "local"])
def test_every_named_policy_and_any_callable_is_accepted(policy):
    check_policy(policy)


def test_the_cli_offers_exactly_the_library_policies_with_the_library_default():
    parser = argparse.ArgumentParser()
    add_sync_arguments(parser)
    action = next(a for a in parser._actions if a.dest == "conflict")
    assert tuple(action.choices or ()) == POLICIES
    assert action.default == POLICIES[0]
    import inspect

    assert inspect.signature(turso_sync.connect).parameters["conflict"].default == POLICIES[0]


def test_the_docs_name_every_policy_and_no_other():
    text = (DOCS / "sync.md").read_text()
    named = set(re.findall(r"`([a-z_]+_wins)`", text)) | set(re.findall(r'"([a-z_]+_wins)"', text))
    assert named == set(POLICIES)
