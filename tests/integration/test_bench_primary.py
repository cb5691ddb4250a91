"""The primary benchmark measures real work against both servers (tiny sizes, one run; no timing asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import bench_primary as bp
from tests.integration.primary_harness import peers_installed

pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(not peers_installed(), reason="run `make peers` first"),
]


def test_every_measurement_runs_against_both_servers(tmp_path: Path) -> None:
    sizes = bp.Sizes(seed_mb=2, delta_rows=300, rounds=3)
    fig = bp.measure(sizes, runs=1, workdir=tmp_path / "bench", log=lambda line: None)
    assert [s.key for s in fig.servers] == ["ours", "tursodb"]
    for key in ("ours", "tursodb"):
        (boot,) = fig.bootstrap[key]
        assert boot["seconds"] > 0 and boot["pages"] * 4096 >= 2_000_000  # the whole seed arrived
        assert boot["received"] >= 2_000_000
        (inc,) = fig.incremental[key]
        assert inc["changed"] and 30_000 <= inc["received"] < 1_000_000  # 300 rows of 100 bytes, not the seed
        assert len(fig.wake_ms[key]) == 3
    assert fig.poll_calls["ours"] == [1, 1, 1]  # our server held each poll until the commit
    text = bp.report(fig)
    assert "| bootstrap, 2 MB database" in text and "p99" in text
