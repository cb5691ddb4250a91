"""The scale benchmarks of issue 10 (soak, long-polls, many databases) in their ``--quick`` sizes.

Each runs against a real primary that it starts and stops itself.  No timing is asserted: only that
every figure the report needs is there and sane (requests were answered, memory and descriptors
were read from the live server, the server holds exactly the rows the pushes sent), and that the
report's tables appear.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import bench_longpoll, bench_manydb, bench_soak, run_all


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
        assert iv.server_cpu_s > 0 and iv.cpu_ms_per_request > 0 and iv.client_cpu_s > 0
    assert [iv.end_s for iv in fig.intervals] == sorted(iv.end_s for iv in fig.intervals)

    text = bench_soak.report(fig)
    assert "| measure (median of the intervals)" in text and "first third" in text and "last / first" in text
    assert text.count("\n|") >= len(fig.intervals) + 2 + 11
    # a saved run prints the same report again (--json, then --report)
    assert bench_soak.report(bench_soak.from_json(json.loads(json.dumps(bench_soak.to_json(fig))))) == text


def _check_longpoll(fig: bench_longpoll.Figures, key: str) -> None:
    (run,) = [r for r in fig.runs if r.key == key]
    sizes = bench_longpoll.QUICK
    assert run.clients == sizes.clients and len(run.rounds) == sizes.rounds
    for rd in run.rounds:
        assert len(rd.lag_ack_ms) == len(rd.lag_sent_ms) == sizes.clients  # every poller was answered
        # sent <= acked, so each poller's lag after sending is its lag after the ack plus the push's time
        assert all(s >= a for s, a in zip(rd.lag_sent_ms, rd.lag_ack_ms, strict=True))
        assert min(rd.lag_sent_ms) > 0 and rd.push_ms > 0
        assert rd.requests >= sizes.clients
    assert min(run.rss_before, run.rss_while, run.rss_after) > 10 * 2**20
    assert run.fds_while >= run.fds_before


def test_longpoll_answers_every_poller_of_our_primary_and_its_follower(tmp_path: Path) -> None:
    fig = bench_longpoll.measure(bench_longpoll.QUICK, ("ours", "follower"), tmp_path / "work", log=lambda _l: None)

    assert not fig.skipped
    for key in ("ours", "follower"):
        _check_longpoll(fig, key)
        (run,) = [r for r in fig.runs if r.key == key]
        # our servers hold the polls: one request per poller per push, and a descriptor per held poll
        assert all(rd.requests == bench_longpoll.QUICK.clients for rd in run.rounds)
        assert run.fds_while >= run.fds_before + bench_longpoll.QUICK.clients
    text = bench_longpoll.report(fig)
    assert "| server (polls held by)" in text and "| server (polled process)" in text
    assert bench_longpoll.SERVER_LABELS["follower"] in text


@pytest.mark.peers
def test_longpoll_runs_the_same_pollers_against_tursodb(tmp_path: Path) -> None:
    fig = bench_longpoll.measure(bench_longpoll.QUICK, ("tursodb",), tmp_path / "work", log=lambda _l: None)

    _check_longpoll(fig, "tursodb")
    assert bench_longpoll.SERVER_LABELS["tursodb"] in bench_longpoll.report(fig)


def test_manydb_creates_every_database_and_probes_closed_ones(tmp_path: Path) -> None:
    sizes = bench_manydb.QUICK
    fig = bench_manydb.measure(sizes, tmp_path / "work", log=lambda _l: None)

    assert [cp.databases for cp in fig.checkpoints] == list(sizes.checkpoints)
    assert sum(cp.created for cp in fig.checkpoints) == sizes.databases
    folders = list((tmp_path / "work" / "server" / "databases").iterdir())
    assert len(folders) == sizes.databases and all((f / "db").exists() for f in folders)
    assert fig.rss_empty > 10 * 2**20 and fig.fds_empty > 3
    for cp in fig.checkpoints:
        assert cp.create_p99_ms >= cp.create_p50_ms > 0 and cp.disk_bytes > 0
        assert cp.rss_bytes > fig.rss_empty // 2 and cp.fds > fig.fds_empty and cp.threads > 1
        assert 0 < cp.open_databases <= 64  # the server's default bound
        for series in (cp.probe.cold_read_ms, cp.probe.warm_read_ms, cp.probe.cold_pull_ms, cp.probe.warm_pull_ms):
            assert series and min(series) > 0
    assert fig.restart is not None
    assert fig.restart.start_seconds > 0 and fig.restart.rss_bytes > 10 * 2**20 and fig.restart.probe.cold_read_ms
    text = bench_manydb.report(fig)
    assert "| databases" in text and "cold read p50 / p99 ms" in text and "after a restart" in text


def test_run_all_finds_the_scale_benchmarks() -> None:
    assert {"soak", "longpoll", "manydb"} <= set(run_all.discover())
