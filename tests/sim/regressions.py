"""Named regression seeds: every bug the simulator found, replayed by the CI run.

``xfail`` names a bug someone is fixing: the CI test is ``xfail(strict=True)`` on it, so it
flips loudly (XPASS fails the run) the day the fix lands; then delete the ``xfail``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Regression:
    """One seed and how it is run; ``keep`` is the shrunk history (step indices), or None for all."""

    name: str
    seed: int
    steps: int
    keep: tuple[int, ...] | None = None
    replicas: int = 3
    check: str = ""  # the check it failed when found
    xfail: str | None = None  # the open bug, while it is open


REGRESSIONS: list[Regression] = []
