"""Delta debugging over the step list: the shortest history that still fails the same check.

The setup step and the final quiet point (where the checks run) always stay; every other step
may go.  Each trial replays the candidate from scratch, so a budget bounds the time spent.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .history import History, Step


def keep_only(history: History, keep: set[int]) -> History:
    """``history`` with only the steps whose index is in ``keep`` (plus setup and the last quiet)."""
    last = history.steps[-1].index
    steps = [s for s in history.steps if s.index in keep or s.kind == "setup" or s.index == last]
    return History(history.seed, history.replicas, steps, history.server)


def shrink(
    history: History,
    still_fails: Callable[[History], bool],
    budget_seconds: float = 300.0,
    log: Callable[[str], None] = lambda _: None,
    upto: int | None = None,
) -> History:
    """ddmin: remove chunks of steps while ``still_fails``; stops at 1-minimal or out of budget."""
    deadline = time.monotonic() + budget_seconds
    last = history.steps[-1].index
    current: list[Step] = [s for s in history.steps if s.kind != "setup" and s.index != last]
    if upto is not None:  # first cut: nothing after the step where the check failed
        prefix = [s for s in current if s.index <= upto]
        if len(prefix) < len(current) and still_fails(keep_only(history, {s.index for s in prefix})):
            log(f"shrink: {len(current)} -> {len(prefix)} steps (cut after #{upto})")
            current = prefix
    chunks = 2
    while len(current) >= 1 and time.monotonic() < deadline:
        size = max(1, len(current) // chunks)
        removed = False
        for start in range(0, len(current), size):
            if time.monotonic() >= deadline:
                break
            candidate = current[:start] + current[start + size :]
            trial = keep_only(history, {s.index for s in candidate})
            if still_fails(trial):
                log(f"shrink: {len(current)} -> {len(candidate)} steps")
                current = candidate
                chunks = max(chunks - 1, 2)
                removed = True
                break
        if not removed:
            if size == 1:
                break
            chunks = min(len(current), chunks * 2)
    return keep_only(history, {s.index for s in current})
