"""The oracle's checks fail when they must: each is fed a state that breaks its promise."""

from __future__ import annotations

from pathlib import Path

import pytest

from turso_sync.sync.rebase import Conflict

from .faults import FaultLog, FaultyTransport, Held, deliver_delayed
from .history import MARKER, Options, generate
from .oracle import KvWrite, Oracle, SimFailure, check_policy
from .runner import _check_no_plaintext
from .shrink import shrink


def _oracle() -> Oracle:
    o = Oracle()
    o.events = {"e1": ("t1", 2), "e2": ("t1", 2)}
    o.rolled_back = {"e9"}
    o.log = {("r0", 1)}
    o.increments.update(["c0", "c0", "c0"])
    o.kv["k0"] += [KvWrite("a", None, "r0", 1), KvWrite("b", None, "r1", 2)]
    return o


def test_events_lost_twice_phantom_and_wrong_group() -> None:
    o = _oracle()
    o.check_events([("e1", "t1", 2), ("e2", "t1", 2)], "p", 0)
    for rows, check in [
        ([("e1", "t1", 2)], "lost_commit"),
        ([("e1", "t1", 2), ("e1", "t1", 2), ("e2", "t1", 2)], "applied_twice"),
        ([("e1", "t1", 2), ("e2", "t1", 2), ("e9", "t9", 2)], "phantom_write"),
        ([("e1", "t1", 2), ("e2", "t1", 2), ("zz", "t9", 2)], "phantom_write"),
        ([("e1", "t1", 2), ("e2", "t2", 2)], "wrong_value"),
    ]:
        with pytest.raises(SimFailure) as info:
            o.check_events(rows, "p", 0)
        assert info.value.check == check


def test_log_rows_without_a_key_exactly_once() -> None:
    o = _oracle()
    o.check_log([("r0", 1)], "p", 0)
    for rows in ([], [("r0", 1), ("r0", 1)], [("r0", 1), ("r1", 5)]):
        with pytest.raises(SimFailure):
            o.check_log(rows, "p", 0)


def test_counters_lost_increment_must_be_journaled() -> None:
    o = _oracle()
    o.check_counters({"c0": 3}, [], 0)
    with pytest.raises(SimFailure, match="applied_twice"):
        o.check_counters({"c0": 4}, [], 0)
    with pytest.raises(SimFailure, match="silent_loss"):
        o.check_counters({"c0": 2}, [], 0)
    journal = [Conflict("counters", {"name": "c0"}, "update/update", "local", {"v": 1}, {"v": 2}, {"v": 2}, {"v": 2})]
    o.check_counters({"c0": 2}, journal, 0)  # both sides wrote 2 from base 1: one increment left out
    # local_wins: base 0, local 1, remote 2 (two increments) -> 1: one entry records two increments
    two = [Conflict("counters", {"name": "c0"}, "update/update", "local", {"v": 0}, {"v": 1}, {"v": 2}, {"v": 1})]
    o.check_counters({"c0": 1}, two, 0)
    with pytest.raises(SimFailure, match="silent_loss"):
        o.check_counters({"c0": 0}, two, 0)


def test_kv_write_vanishing_unseen_and_unjournaled() -> None:
    o = _oracle()
    with pytest.raises(SimFailure, match="silent_loss"):
        o.check_kv({"k0": "b"}, [], 0)  # "a" was never seen by "b"'s writer
    journal = [Conflict("kv", {"k": "k0"}, "update/update", "remote", None, {"v": "a"}, {"v": "b"}, {"v": "b"})]
    o.check_kv({"k0": "b"}, journal, 0)
    o.kv["k0"].append(KvWrite("c", "b", "r1", 3))  # a later write replaced "b" after seeing it
    o.check_kv({"k0": "c"}, journal, 0)
    with pytest.raises(SimFailure, match="silent_loss"):
        o.check_kv({"k0": "c"}, [], 0)  # but "a" still needs its journal entry


def test_revisions_never_go_back() -> None:
    o = Oracle()
    o.note_revision("r0", "5", 0)
    o.note_revision("r0", "5", 1)
    with pytest.raises(SimFailure, match="monotonic_reads"):
        o.note_revision("r0", "4", 2)


def test_policy_resolution() -> None:
    clash = Conflict("kv", {"k": "k0"}, "update/update", "local", None, None, None, None)
    check_policy([clash], "local_wins", "r0", 0)
    with pytest.raises(SimFailure, match="policy"):
        check_policy([clash], "remote_wins", "r0", 0)


def test_plaintext_is_found_in_any_file_of_a_replica(tmp_path: Path) -> None:
    (tmp_path / "r.db").write_bytes(b"\0" * 100)
    (tmp_path / "r.db-frames").write_bytes(b"xx" + MARKER + b"yy")
    with pytest.raises(SimFailure, match="plaintext"):
        _check_no_plaintext(tmp_path / "r.db", 0)


def test_a_seed_decides_the_history() -> None:
    a, b = generate(5, Options(40)), generate(5, Options(40))
    assert a.steps == b.steps and a.replicas == b.replicas
    assert generate(6, Options(40)).steps != a.steps


def test_shrink_finds_the_two_steps_that_matter() -> None:
    history = generate(3, Options(40))
    needed = {history.steps[5].index, history.steps[17].index}

    def fails(candidate):  # type: ignore[no-untyped-def]
        return needed <= {s.index for s in candidate.steps}

    small = shrink(history, fails)
    assert {s.index for s in small.steps} - {history.steps[0].index, history.steps[-1].index} == needed


class _Echo:
    def __init__(self) -> None:
        from turso_sync.sync.transport import TransferStats

        self.stats = TransferStats()
        self.calls: list[str] = []

    def request(self, path, body, content_type, timeout, idempotent):  # type: ignore[no-untyped-def]
        from turso_sync.sync.transport import HttpResponse

        self.calls.append(path)
        return HttpResponse(200, body)

    def close(self) -> None:
        pass


def test_faulty_transport_meets_each_fault() -> None:
    from turso_sync.errors import NetworkError

    real, backlog, log = _Echo(), [], FaultLog()
    t = FaultyTransport(real, backlog, log)
    t.plan = ["drop_request", "drop_response", "duplicate", "delay", None]
    with pytest.raises(NetworkError):
        t.request("/a", b"1", "x", 1, False)
    assert real.calls == []
    with pytest.raises(NetworkError):
        t.request("/b", b"2", "x", 1, False)
    assert real.calls == ["/b"]  # the server got it; the answer was lost
    assert t.request("/c", b"3", "x", 1, False).body == b"3"
    assert real.calls == ["/b", "/c", "/c"]
    with pytest.raises(NetworkError):
        t.request("/d", b"4", "x", 1, False)
    assert backlog == [Held("/d", b"4", "x", False)]
    t.request("/e", b"5", "x", 1, False)
    assert deliver_delayed(backlog, real, log) == 1
    assert real.calls[-2:] == ["/e", "/d"]  # delivered after a later request: reordered


def test_multiproc_journal_finds_torn_reads_and_damage(tmp_path: Path) -> None:
    from .multiproc import MultiResult, _read_journal

    journal = tmp_path / "journal"
    journal.write_text(
        "attempt a-1\nacked a-1\nattempt a-2\n"
        "error sync NetworkError: cannot reach\n"
        "error sync DatabaseError: database disk image is malformed\n"
        "torn r0 [('a-3', 1)]\n"
    )
    result = MultiResult()
    attempted, acked = _read_journal(str(journal), result)
    assert attempted == {"a-1", "a-2"} and acked == {"a-1"}
    assert len(result.findings) == 2  # the torn read and the damaged database, not the network error
    assert result.errors["NetworkError"] == 1
