"""The scale benchmarks of issue 10 (soak, long-polls, many databases) in their ``--quick`` sizes.

Each runs against a real primary that it starts and stops itself.  No timing is asserted: only that
every figure the report needs is there and sane (requests were answered, memory and descriptors
were read from the live server, the server holds exactly the rows the pushes sent), and that the
report's tables appear.
"""

from __future__ import annotations

from pathlib import Path

from bench import bench_soak, run_all


def test_soak_samples_every_interval_of_a_real_load(tmp_path: Path) -> None:
    fig = bench_soak.measure(bench_soak.QUICK, tmp_path / "work", log=lambda _line: None)

    expected = round(bench_soak.QUICK.minutes * 60 / bench_soak.QUICK.interval)
    assert len(fig.intervals) == expected
    assert fig.rows_pushed > 0 and fig.rows_on_server == fig.rows_pushed
    for iv in fig.intervals:
        assert iv.pushes > 0 and iv.pulls > 0
        assert iv.push_p99_ms >= iv.push_p50_ms > 0 and iv.pull_p99_ms >= iv.pull_p50_ms > 0
        assert iv.rss_bytes > 10 * 2**20 and iv.fds > 3
        assert iv.frames_bytes > 0 and iv.db_bytes > 0
        assert iv.server_cpu_s > 0 and iv.cpu_ms_per_request > 0
    assert [iv.end_s for iv in fig.intervals] == sorted(iv.end_s for iv in fig.intervals)

    text = bench_soak.report(fig)
    assert "| measure (median of the intervals)" in text and "first third" in text and "last / first" in text
    assert text.count("\n|") >= len(fig.intervals) + 2 + 11


def test_run_all_finds_the_scale_benchmarks() -> None:
    assert {"soak"} <= set(run_all.discover())
