"""Differential checks in CI: one seeded workload through pyturso and turso_sync, against our
primary and against ``tursodb --sync-server``, each graded by stdlib sqlite3 (tests/sim/differential.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .differential import run_differential, run_mixed

pytestmark = pytest.mark.peers


@pytest.mark.parametrize("seed", [0, 1])
def test_every_path_ends_where_sqlite_does(seed: int, tmp_path: Path) -> None:
    """ours@primary, pyturso@primary and ours@tursodb: no refusal, server and replica equal the referee."""
    results = run_differential(seed, 30, tmp_path)
    assert [r.name for r in results] == ["ours@primary", "pyturso@primary", "ours@tursodb"]
    for r in results:
        assert r.refused == [], f"{r.name} refused {r.refused}"
        assert r.differences == [], f"{r.name}: {r.differences}"


def test_pyturso_and_turso_sync_on_one_database_converge(tmp_path: Path) -> None:
    """Every event from either client arrives exactly once everywhere; all three views agree."""
    result = run_mixed(0, 20, tmp_path)
    assert result.differences == []
    assert 0 < result.counter <= result.increments


@pytest.mark.parametrize("seed", [0, 1])
def test_the_simulation_against_tursodb(seed: int) -> None:
    """The seeded history (faults, crashes, kill -9 of the server) with tursodb as the remote: every check."""
    from .history import Options, generate
    from .runner import Simulation

    result = Simulation(generate(seed, Options(60, server="tursodb"))).run()
    assert result.failure is None, (
        f"{result.failure}\n  repro: .venv/bin/python -m tests.sim --seed {seed} --server tursodb"
    )
    assert result.syncs > 0
