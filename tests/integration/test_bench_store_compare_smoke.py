"""bench_store_compare measures real pushes and real bootstraps (tiny sizes, one run; no timing asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import bench_store_compare as bsc
from bench import run_all
from tests.integration.primary_harness import peers_installed

pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(not peers_installed(), reason="run `make peers` first"),
]


def test_pushes_to_three_servers_and_bootstraps_from_follower_and_writer(tmp_path: Path) -> None:
    sizes = bsc.Sizes(runs=1, pushes=5, seed_mb=2)
    fig = bsc.measure(sizes, tmp_path / "bench", log=lambda _line: None)

    assert set(fig.pushes) == set(bsc.KINDS)
    for kind, ((p50, p99),) in fig.pushes.items():
        assert p99 >= p50 > 0, kind
    assert fig.seeded_rows == 2000  # 2 MB of 1000-byte rows, counted on the writer
    assert set(fig.bootstrap) == {f"{c}:{n}" for c in ("turso_sync", "pyturso") for n in ("follower", "writer")}
    for key, (boot,) in fig.bootstrap.items():
        if key.startswith("turso_sync"):
            assert boot["rows"] == fig.seeded_rows, key  # the whole database arrived
        assert boot["received"] >= 2_000_000 and boot["pages"] * 4096 >= 2_000_000, key
    assert not (tmp_path / "bench").exists()  # its folder, weed's data included, is removed

    text = bsc.report(fig)
    for label in bsc.KINDS.values():
        assert f"| {label}" in text
    assert "(follower)" in text and "(writer)" in text and "p99 ms" in text


def test_run_all_finds_the_store_comparison() -> None:
    assert "store_compare" in run_all.discover()
