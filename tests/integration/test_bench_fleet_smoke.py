"""The fleet benchmark measures real traffic: three replicas per variant, a few seconds, one run.

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

    assert set(fig.samples) == set(bf.VARIANTS)
    for variant, (sample,) in fig.samples.items():
        assert sample.rows == TINY.rows and sample.pushes >= 1, variant
        assert sample.received_min > 0 and sample.received > sample.written, variant  # pages come back
        assert sample.pulls >= 1 and sample.errors == 0, variant
        if variant in bf.DAEMONS:  # every row's arrival in another replica was timed
            assert len(sample.delivery) == sample.rows, variant

    text = bf.report(fig)
    assert "**received / written**" in text
    for label in bf.VARIANT_LABELS.values():
        assert label in text


def test_run_all_finds_the_fleet_benchmark() -> None:
    assert "fleet" in run_all.discover()
