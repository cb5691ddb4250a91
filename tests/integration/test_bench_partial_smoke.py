"""The partial sync benchmark measures real work: every client, tiny database, our primary, one run.

No timing is asserted: only that every cold start answered its queries as the seeded database does
(``measure`` checks a digest of every answer), that pages were really fetched lazily, and that the
report has its tables, so a benchmark that silently did nothing would fail here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import bench_partial as bp
from bench import run_all

pytestmark = pytest.mark.peers


def test_every_client_cold_starts_and_fetches_lazily(tmp_path: Path) -> None:
    fig = bp.measure(2, 5, 1, tmp_path / "work", log=lambda _line: None)

    assert set(fig.samples) == {c.key for c in bp.CONFIGS}
    assert fig.db_bytes > 1_000_000
    for config in bp.CONFIGS:
        (sample,) = fig.samples[config.key]
        first = sample.steps["first"]
        assert first.seconds > 0 and first.received > 0 and first.requests >= 1, config.key
        if config.client == bp.OURS_FULL:
            assert first.received >= fig.db_bytes / 3  # the whole database (zstd: hex text is 2:1)
            assert sample.steps["scan"].requests == 0
        else:
            # a 256 KiB prefix of a 2 MB database: the rest of the pages come lazily
            lazy = sample.steps["points"].received + sample.steps["scan"].received
            assert lazy > 0 and sample.steps["points"].requests + sample.steps["scan"].requests > 0, config.key
        if config.client == bp.OURS:
            assert sample.pages_total is not None and sample.pages_present == sample.pages_total  # after the scan
            assert sample.steps["points"].lazy_requests == sample.steps["points"].requests

    text = bp.report(fig)
    assert "pyturso, prefetch off" in text and "Against the issue's aims" in text


def test_run_all_finds_the_partial_benchmark() -> None:
    assert "partial" in run_all.discover()


def test_the_seeded_answers_are_what_a_client_checks(tmp_path: Path) -> None:
    size = bp.seed(tmp_path / "server", 100)
    db = tmp_path / "server" / "databases" / "default" / "db"
    assert size == db.stat().st_size > 100 * bp.ROW_CHARS
    assert bp.expected_digest(db, 1, [2, 3]) == bp.expected_digest(db, 1, [2, 3])
    assert bp.expected_digest(db, 1, [2, 3]) != bp.expected_digest(db, 1, [3, 2])
