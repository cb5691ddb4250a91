"""The simulator's CI set: named regression seeds (shrunk histories) and a fixed set of seeds.

``make test`` runs this file; ``python -m tests.sim --seeds N`` runs a long campaign.  A
regression whose bug is open is ``xfail(strict=True)``: it turns into a failure (XPASS) the day
the bug is fixed, so the marker is removed then.  General seeds note (and print) the checks of
open bugs instead of failing on them (``TOLERATED_WHILE_OPEN``); every other check must pass.
"""

from __future__ import annotations

import pytest

from .history import KNOWN_BUGS, Options, generate
from .regressions import REGRESSIONS, TOLERATED_WHILE_OPEN, Regression, options_of
from .runner import Simulation
from .shrink import keep_only

#: Seeds x steps of the CI set (measured: see docs/simulator.md).
CI_SEEDS = range(100, 116)
CI_STEPS = 60


def _regression_params() -> list[object]:
    out = []
    for reg in REGRESSIONS:
        if reg.big:
            continue  # over 64 MiB: `python -m tests.sim --regressions` replays it
        marks = [pytest.mark.xfail(strict=True, reason=reg.xfail)] if reg.xfail else []
        out.append(pytest.param(reg, id=reg.name, marks=marks))
    return out


@pytest.mark.parametrize("reg", _regression_params())
def test_regression_seed(reg: Regression) -> None:
    """A named seed replays its (shrunk) history with every check on."""
    history = generate(reg.seed, options_of(reg))
    if reg.keep is not None:
        history = keep_only(history, set(reg.keep))
    result = Simulation(history).run()
    assert result.failure is None, f"{reg.name}: {result.failure}"


@pytest.mark.parametrize("seed", list(CI_SEEDS))
def test_seed(seed: int, capsys: pytest.CaptureFixture[str]) -> None:
    """A fixed seed: faults, crashes, restarts and every check but those of open bugs."""
    history = generate(seed, Options(CI_STEPS))
    result = Simulation(history, tolerate=TOLERATED_WHILE_OPEN).run()
    with capsys.disabled():
        for note in result.tolerated[:2]:
            print(f"\n  seed {seed} (open bug, tolerated): {note}")
    repro = f".venv/bin/python -m tests.sim --seed {seed} --steps {CI_STEPS}"
    assert result.failure is None, f"{result.failure}\n  repro: {repro}"
    assert result.syncs > 0


def test_known_bug_names_are_documented() -> None:
    """Every bug the workload can steer around says what it is."""
    assert all(KNOWN_BUGS.values())
