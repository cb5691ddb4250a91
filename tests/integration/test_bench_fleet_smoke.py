"""The fleet benchmark measures real traffic: three replicas under the daemon, a few seconds, one run.

No timing or ratio is asserted: only that rows were written, that every replica received bytes
(the benchmark itself waits until every replica holds every row), and that its table appears.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import bench_fleet as bf
from bench import run_all

pytestmark = pytest.mark.peers

TINY = bf.Sizes(replicas=3, seconds=2.0, period=1.0, long_poll=5.0)


def test_a_small_fleet_receives_what_it_wrote(tmp_path: Path) -> None:
    fig = bf.measure(TINY, 1, tmp_path / "work", log=lambda _line: None)

    (sample,) = fig.samples
    assert sample.rows >= TINY.replicas and sample.pushes >= 1
    assert sample.received_min > 0 and sample.received > sample.written  # pages, not rows, come back
    assert sample.pulls >= 1 and sample.errors == 0

    text = bf.report(fig)
    assert "**received / written**" in text and "turso_sync daemon on our primary" in text


def test_run_all_finds_the_fleet_benchmark() -> None:
    assert "fleet" in run_all.discover()
