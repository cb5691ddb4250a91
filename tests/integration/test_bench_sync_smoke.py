"""The sync benchmark measures real work: every client, every scenario, tiny sizes, our primary, one run.

No timing is asserted: only that each measurement exists, that the rows each scenario wrote were
found again (read back, pulled, and on the server), and that bytes really crossed the wire, so a
benchmark that silently did nothing would fail here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import bench_sync as bs
from bench import profile_sync, run_all

pytestmark = pytest.mark.peers

TINY = bs.Sizes(inserts=12, cycles=5, pull_rows=300, updates=8, backlog=15)


def test_every_client_runs_every_scenario_on_real_rows(tmp_path: Path) -> None:
    fig = bs.measure(TINY, 1, tmp_path / "work", log=lambda _line: None, server_keys=("ours",))

    clients = [bs.PYTURSO, bs.OURS, bs.OURS_ENCRYPTED]
    assert set(fig.samples) == {("ours", c, s) for c in clients for s in bs.ALL_SCENARIOS}
    for (_server, client, scenario), samples in fig.samples.items():
        (sample,) = samples
        assert sample.rows == TINY.work(scenario), (client, scenario)
        assert sample.seconds > 0
        assert sample.received > 0, (client, scenario)
        if scenario != "pull":
            assert sample.sent > 0, (client, scenario)
    # our client asks for zstd pages and our primary sends them: fewer bytes than pyturso's raw pages
    pulled = {c: fig.samples[("ours", c, "pull")][0].received for c in clients}
    assert pulled[bs.OURS] < pulled[bs.PYTURSO]
    # every client's requests were counted: one push of the backlog makes at least one request
    for client in clients:
        assert fig.samples[("ours", client, "backlog")][0].requests >= 1, client
        assert fig.samples[("ours", client, "update_each")][0].requests >= TINY.updates, client

    text = bs.report(fig)
    assert "turso-sync primary" in text and "tursodb --sync-server" not in text.split("**Ratios**")[1]
    assert "encrypted / plaintext" in text and "**Offline backlog**" in text and "HTTP requests" in text
    for scenario in bs.ALL_SCENARIOS:
        assert TINY.describe(scenario) in text


def test_profile_times_the_push_and_pull_paths(tmp_path: Path) -> None:
    text = profile_sync.profile(TINY, tmp_path / "profile", cprofile=False, log=lambda _line: None)
    for row in ("| push()", "| pull()", "HTTP exchange", "timed loop, turso_sync", "pyturso, same server"):
        assert row in text


def test_ledger_restores_what_it_wrapped() -> None:
    class Thing:
        def work(self, x: int) -> int:
            return x + 1

    class Child(Thing):
        pass

    ledger = profile_sync.Ledger()
    ledger.wrap(Thing, "work", "outer")
    ledger.wrap(Child, "work", "inner")
    ledger.wrap(Thing, "gone", "a name the code no longer has")
    assert Child().work(1) == 2 and not ledger.seconds  # inactive: nothing recorded
    ledger.start()
    assert Child().work(1) == 2
    ledger.stop()
    assert ledger.calls == {("inner",): 1, ("inner", "outer"): 1}
    assert ledger.missing == ["Thing.gone"]
    ledger.restore()
    assert "work" not in Child.__dict__ and Thing.work.__name__ == "work" and Thing().work(2) == 3


def test_run_all_finds_the_sync_benchmark() -> None:
    assert "sync" in run_all.discover()
    assert "profile_sync" not in run_all.discover()
