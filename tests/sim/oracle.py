"""The oracle: what every committed local transaction promised, and the checks at quiet points.

The workload is built so each promise can be checked without knowing the order of pushes:

- events: rows with unique ids, written in groups sharing a transaction id and the group's size
  ``n``; every committed row arrives exactly once, no rolled-back row ever appears, and no reader
  anywhere sees part of a group (atomic visibility).
- log: a table without a primary key; every committed ``(replica, seq)`` exactly once.
- counters: ``v = v + 1``; the final value never exceeds the committed increments (none applied
  twice), and every increment missing from it is in some replica's conflict journal.
- kv: each write stores a unique token and notes the token it replaced (its predecessor).  A
  token that is not the final value must have been replaced by someone who saw it, or be in a
  conflict journal: no write is dropped silently, whatever the policy.
- tally: kept by a trigger on events; once converged it counts the events of each replica.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from turso_sync.sync.rebase import Conflict

from .history import COUNTERS


class SimFailure(Exception):
    """A check failed: ``check`` names it (shrinking keeps histories failing the same check)."""

    def __init__(self, check: str, message: str, step: int) -> None:
        super().__init__(f"[{check}] at step #{step}: {message}")
        self.check = check
        self.message = message
        self.step = step

    @property
    def signature(self) -> str:
        """The check and the message's shape (names, numbers and values left out): what shrinking keeps."""
        shape = re.sub(r"'[^']*'|\b[a-z]?\d[\w-]*|\[.*?\]|\{.*?\}", "_", self.message.split(": ", 1)[-1])
        return f"{self.check}: {shape[:80]}"


@dataclass
class KvWrite:
    """One committed write of a kv row: its token (None for a delete) and the token it replaced."""

    token: str | None
    predecessor: str | None
    replica: str
    step: int


@dataclass
class Oracle:
    """Every committed promise so far."""

    events: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (txn, n)
    rolled_back: set[str] = field(default_factory=set)  # event ids that must never appear
    log: set[tuple[str, int]] = field(default_factory=set)
    log_rolled_back: set[tuple[str, int]] = field(default_factory=set)
    increments: Counter[str] = field(default_factory=Counter)
    kv: dict[str, list[KvWrite]] = field(default_factory=lambda: defaultdict(list))
    revisions: dict[str, int] = field(default_factory=dict)

    def note_revision(self, replica: str, revision: str, step: int) -> None:
        """A replica's revision never goes back (our primary's revisions are decimal numbers)."""
        if not revision.isdigit():
            return
        value = int(revision)
        last = self.revisions.get(replica, -1)
        if value < last:
            raise SimFailure("monotonic_reads", f"{replica} went back from revision {last} to {value}", step)
        self.revisions[replica] = value

    # --- checks on a converged fleet ---------------------------------------------------------

    def check_events(self, rows: list[tuple[Any, ...]], where: str, step: int) -> None:
        """``rows`` are (id, txn, n) of the events table on ``where``."""
        seen = Counter(r[0] for r in rows)
        twice = [i for i, c in seen.items() if c > 1]
        if twice:
            raise SimFailure("applied_twice", f"{where}: events {twice[:5]} appear more than once", step)
        missing = sorted(set(self.events) - set(seen))
        if missing:
            raise SimFailure(
                "lost_commit", f"{where}: {len(missing)} committed events missing, e.g. {missing[:5]}", step
            )
        phantom = sorted(self.rolled_back & set(seen))
        if phantom:
            raise SimFailure("phantom_write", f"{where}: rolled-back events present: {phantom[:5]}", step)
        unknown = sorted(set(seen) - set(self.events) - self.rolled_back)
        if unknown:
            raise SimFailure("phantom_write", f"{where}: events nobody committed: {unknown[:5]}", step)
        for row in rows:
            if (row[1], row[2]) != self.events[row[0]]:
                raise SimFailure(
                    "wrong_value", f"{where}: event {row[0]} is {row[1:]}, committed {self.events[row[0]]}", step
                )

    def check_log(self, rows: list[tuple[Any, ...]], where: str, step: int) -> None:
        """``rows`` are (replica, seq) of the log table (no primary key) on ``where``."""
        seen = Counter((r[0], r[1]) for r in rows)
        twice = [k for k, c in seen.items() if c > 1]
        if twice:
            raise SimFailure("applied_twice", f"{where}: log rows {twice[:5]} appear more than once", step)
        missing = sorted(self.log - set(seen))
        if missing:
            raise SimFailure("lost_commit", f"{where}: committed log rows missing: {missing[:5]}", step)
        extra = sorted(set(seen) - self.log)
        if extra:
            raise SimFailure("phantom_write", f"{where}: log rows nobody committed: {extra[:5]}", step)

    def check_counters(self, final: dict[str, int], journals: list[Conflict], step: int) -> None:
        """Increments: never more than committed; every missing one in some journal entry (``_discarded``)."""
        for name in COUNTERS:
            committed = self.increments[name]
            value = final.get(name, 0)
            if value > committed:
                raise SimFailure(
                    "applied_twice", f"counter {name} is {value}, only {committed} increments committed", step
                )
            journaled = sum(_discarded(c) for c in journals if c.table == "counters" and c.pk.get("name") == name)
            if committed - value > journaled:
                raise SimFailure(
                    "silent_loss",
                    f"counter {name} is {value} after {committed} committed increments: {committed - value} lost, "
                    f"{journaled} journaled",
                    step,
                )

    def check_kv(self, final: dict[str, str | None], journals: list[Conflict], step: int) -> None:
        """No kv write disappears unless someone replaced it after seeing it, or a journal has it."""
        for key, writes in self.kv.items():
            replaced = {w.predecessor for w in writes if w.predecessor is not None}
            journaled: set[Any] = set()
            for c in journals:
                if c.table == "kv" and c.pk.get("k") == key:
                    for image in (c.base, c.local, c.remote, c.result):
                        if image:
                            journaled.add(image.get("v"))
            for w in writes:
                if w.token is None or w.token == final.get(key) or w.token in replaced or w.token in journaled:
                    continue
                raise SimFailure(
                    "silent_loss",
                    f"kv {key}: value {w.token} committed by {w.replica} at step #{w.step} vanished (final "
                    f"{final.get(key)!r}), nobody replaced it after seeing it and no journal records it",
                    step,
                )


def _discarded(c: Conflict) -> int:
    """Increments a counter clash's resolution left out: both sides' increments over the base, minus the result's.

    ``base`` 0, ``local`` 1, ``remote`` 2, result 1 (local wins): the remote's 2 increments are
    gone, and this one journal entry records them.
    """
    try:
        b, lo, r, x = (int(row["v"]) for row in (c.base, c.local, c.remote, c.result))  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return 1
    return max(0, (lo - b) + (r - b) - (x - b))


def check_policy(conflicts: list[Conflict], policy: str, where: str, step: int) -> None:
    """Journal entries of a plain update/update clash resolve the way the replica's policy says."""
    expected = {"remote_wins": "remote", "local_wins": "local", "last_push_wins": "local"}.get(policy)
    for c in conflicts:
        if c.kind != "update/update" or expected is None:
            continue
        if c.resolution != expected:
            raise SimFailure(
                "policy",
                f"{where} ({policy}): {c.table} {c.pk} update/update resolved {c.resolution}, expected {expected}",
                step,
            )
