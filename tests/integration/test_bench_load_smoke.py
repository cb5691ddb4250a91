"""The primary throughput benchmark measures real pushes: tiny levels, a second each, both servers, one run.

No timing is asserted: only that every measurement pushed rows (the benchmark itself checks the
server holds exactly the rows the successful pushes sent) and that its table appears.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import bench_load as bl
from bench import run_all

pytestmark = pytest.mark.peers

TINY = bl.Sizes(seconds=1.0, levels=(1, 3), procs=2)


def test_every_level_pushes_real_rows_on_both_servers(tmp_path: Path) -> None:
    fig = bl.measure(TINY, 1, tmp_path / "work", log=lambda _line: None)

    assert set(fig.samples) == {(s, n) for s in ("ours", "tursodb") for n in TINY.levels}
    for (_server, n), (sample,) in fig.samples.items():
        assert sample.pushes > 0 and sample.seconds > 0 and sample.p99_ms >= sample.p50_ms > 0
        assert sample.processes == min(n, TINY.procs)
        assert sample.server_cpu > 0 and sample.client_cpu > 0

    text = bl.report(fig)
    assert "| replicas | server" in text and "pushes/s ours / tursodb" in text
    assert "turso-sync primary" in text and "tursodb --sync-server" in text


def test_run_all_finds_the_load_benchmark() -> None:
    assert "load" in run_all.discover()
