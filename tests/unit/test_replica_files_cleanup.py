"""``ReplicaFiles`` is the one list of a replica's files: removal, and a failed creation that cleans up."""

from __future__ import annotations

import os

import pytest

import turso_sync
from turso_sync import NetworkError, RemoteError
from turso_sync.sync.files import ReplicaFiles
from turso_sync.sync.replica import Replica
from turso_sync.sync.state import SyncState
from turso_sync.testing import HttpResponse, MockTransport, pull_answer

URL = "https://remote.invalid"
ALL_SUFFIXES = (
    "",
    "-wal",
    "-shm",
    "-frames",
    "-sync",
    "-sync.lock",
    "-present",
    "-present.lock",
    ".bootstrap",
    "-frames.tmp",
    "-sync.tmp",
    "-revert-3",
    "-revert-4.tmp",
)


def make_files(path, suffixes=ALL_SUFFIXES) -> None:
    for suffix in suffixes:
        with open(f"{path}{suffix}", "wb") as f:
            f.write(b"x")


def test_existing_lists_every_kind_of_file_and_nothing_else(tmp_path):
    path = str(tmp_path / "a.db")
    make_files(path)
    make_files(str(tmp_path / "a.db2"))  # another database whose name starts alike
    (tmp_path / "unrelated").write_text("keep")
    files = ReplicaFiles(path)
    assert sorted(files.existing()) == sorted(path + s for s in ALL_SUFFIXES)


def test_remove_keeps_only_what_it_is_told_to(tmp_path):
    path = str(tmp_path / "a.db")
    make_files(path)
    files = ReplicaFiles(path)
    removed = files.remove(keep={files.sync_lock})
    assert sorted(removed) == sorted(path + s for s in ALL_SUFFIXES if s != "-sync.lock")
    assert sorted(os.listdir(tmp_path)) == ["a.db-sync.lock"]


def test_removed_on_failure_removes_only_what_the_block_created(tmp_path):
    path = str(tmp_path / "a.db")
    make_files(path, ["-wal"])  # a stray file that was there before
    files = ReplicaFiles(path)
    with pytest.raises(KeyboardInterrupt), files.removed_on_failure():
        make_files(path, ["", "-sync", "-frames", ".bootstrap"])
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == ["a.db-wal"]
    with files.removed_on_failure():
        make_files(path, [""])
    assert sorted(os.listdir(tmp_path)) == ["a.db", "a.db-wal"]


@pytest.mark.parametrize("failure", ["refused", "unreachable", "interrupted"])
def test_a_failed_connect_of_a_new_replica_leaves_nothing_behind(tmp_path, failure):
    (tmp_path / "other.db").write_bytes(b"an unrelated file")

    def handler(path: str, body: bytes, content_type: str) -> HttpResponse:
        if failure == "refused":
            return HttpResponse(403, b"read-only token")
        if failure == "unreachable":
            raise NetworkError("unreachable in the test")
        raise KeyboardInterrupt

    with pytest.raises((RemoteError, NetworkError, KeyboardInterrupt)):
        turso_sync.connect(tmp_path / "a.db", URL, transport=MockTransport(handler))
    assert os.listdir(tmp_path) == ["other.db"]


def test_a_failed_connect_after_the_bootstrap_also_cleans_up(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("failed after the bootstrap")

    monkeypatch.setattr(ReplicaFiles, "check_identity", broken)
    with pytest.raises(RuntimeError, match="after the bootstrap"):
        turso_sync.connect(tmp_path / "a.db", URL, transport=MockTransport(lambda *a: pull_answer("r1")))
    assert os.listdir(tmp_path) == []


def test_a_failed_connect_never_removes_an_existing_replica(tmp_path, monkeypatch):
    mock = MockTransport(lambda *a: pull_answer("r1"))
    turso_sync.connect(tmp_path / "a.db", URL, transport=mock).close()
    before = set(os.listdir(tmp_path))

    def broken(*args, **kwargs):
        raise RuntimeError("failed opening an existing replica")

    monkeypatch.setattr(ReplicaFiles, "check_identity", broken)
    with pytest.raises(RuntimeError, match="existing replica"):
        turso_sync.connect(tmp_path / "a.db", URL, transport=mock)
    with pytest.raises(RuntimeError, match="existing replica"):
        turso_sync.connect(tmp_path / "a.db", transport=mock)
    assert before <= set(os.listdir(tmp_path))


def test_an_unfinished_bootstrap_starts_over_through_replica_files(tmp_path):
    path = str(tmp_path / "a.db")
    make_files(path)
    state = SyncState(remote_url=URL, client_id="c-1")
    state.bootstrapping = True
    state.save(path)
    replica = Replica(path, URL, transport=MockTransport(lambda *a: pull_answer("r1")))
    try:
        assert replica.state.synced_revision == "r1" and not replica.state.bootstrapping
        left = set(os.listdir(tmp_path))
        assert not left & {"a.db.bootstrap", "a.db-frames.tmp", "a.db-sync.tmp", "a.db-revert-3", "a.db-revert-4.tmp"}
    finally:
        replica.close()
