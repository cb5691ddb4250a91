"""Named regression seeds: every bug the simulator found, replayed by the CI run.

``xfail`` names a bug someone is fixing: the CI test is ``xfail(strict=True)`` on it, so it
flips loudly (XPASS fails the run) the day the fix lands; then delete the ``xfail``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .history import Options


@dataclass(frozen=True)
class Regression:
    """One seed and how it is run; ``keep`` is the shrunk history (step indices), or None for all."""

    name: str
    seed: int
    steps: int
    keep: tuple[int, ...] | None = None
    replicas: int = 3
    avoid: frozenset[str] = frozenset()
    partial: bool = True
    faults: bool = True
    big: bool = False  # a transaction over 64 MiB: replayed by the long campaign, not by CI
    check: str = ""  # the check it failed when found
    xfail: str | None = None  # the open bug, while it is open


#: Checks a general CI seed notes instead of failing on, while the bug behind them is open (each
#: such bug has an xfail regression below that flips when it is fixed).
TOLERATED_WHILE_OPEN: frozenset[str] = frozenset()  # was {"silent_loss"} until a55ef40

LOST_INCREMENT = (
    "concurrent `UPDATE counters SET v = v + 1` on two replicas: both push v=1, one increment is lost "
    "and no journal records it (issue 9 section 2: same-value clash is not treated as a conflict)"
)

REGRESSIONS: list[Regression] = [
    Regression(
        "schema_then_quiet",
        seed=1,
        steps=30,
        keep=(0, 1),
        check="sync_failed",
        # found on the work tree at 21:10 (push.py in progress): CREATE TABLE + CREATE INDEX in one
        # transaction was refused by the primary ("no such table: main.events"); passes at HEAD
    ),
    Regression(
        "savepoint_opens_the_transaction",
        seed=1,
        steps=30,
        keep=(0, 1, 4, 32),
        check="local_sql",
        # found at 3bf92ed: SAVEPOINT without BEGIN, then RELEASE, failed with IntegrityError
        # (the commit hook refused the commit); fixed by f55e233
    ),
    Regression(
        "cte_led_insert",
        seed=0,
        steps=40,
        keep=(0, 1, 10, 42),
        check="local_sql",
        # found at 3bf92ed: WITH RECURSIVE ... INSERT on a replica failed with IntegrityError; fixed by f55e233
    ),
    # found at 3bf92ed and fe93197 (LOST_INCREMENT); fixed by a55ef40 (equal updates from one base are journaled)
    Regression("lost_increment", seed=2, steps=40, keep=(0, 6, 10, 17, 42), check="silent_loss"),
    Regression(
        "lost_increment_partial_replica",
        seed=0,
        steps=40,
        keep=(0, 3, 15, 16, 20, 42),
        check="silent_loss",
    ),
    Regression(
        "update_lost_to_concurrent_delete",
        seed=9,
        steps=40,
        keep=(0, 3, 12, 13, 15, 33, 35, 42),
        check="silent_loss",
        # found at fe93197: a replica (last_push_wins) replaces kv k0 while another (remote_wins)
        # deletes it; the row stayed deleted and no journal recorded the update; fixed by 4eaf226
    ),
    Regression(
        "delayed_push_applied_twice",
        seed=1015,
        steps=200,
        keep=(0, 32, 68, 98, 99, 100, 114, 131, 202),
        check="applied_twice",
        # found at fe93197: r0's push batch is delayed in the network (the client times out), r0
        # pulls (new pull_gen), then the old batch reaches the primary; the re-push did not
        # recognise it and the row of a table without a primary key was inserted twice; fixed by 29ae773
    ),
    Regression(
        "stale_base_after_push_without_pull",
        seed=2001,
        steps=200,
        keep=(0, 36, 68, 98, 108, 109, 111, 115, 128, 132, 150, 202),
        check="silent_loss",
        # found at 3fa7554: r3 pushes (no pull after), so the remote moves past r3's synced base;
        # r3 then runs v = v + 1 (1 -> 2) while r0 does the same; the rebase journaled base 2 (the
        # stale synced base) instead of 1, hiding an increment (a callable adding remote + local -
        # base would lose it); fixed by 49e5cbb
    ),
    Regression(
        "callable_counts_an_increment_twice",
        seed=3114,
        steps=200,
        keep=(0, 1, 5, 40, 43, 46, 50, 59, 202),
        check="applied_twice",
        # found at 9683fc9 by the campaign: r1 (callable: remote + local - base) ends c0 at 4 after
        # 3 committed increments (a stale base after a push without a pull); fixed by 49e5cbb
    ),
    Regression(
        "push_of_a_transaction_over_64_mib",
        seed=3,
        steps=12,
        faults=False,
        big=True,
        check="exception:NoMemError",
        # found at fe93197: its push was answered 413 by our primary (body over 64 MiB); at 3ea39d9
        # sync() raised apsw.NoMemError from the rebase, outside turso_sync.Error; fixed by 8bf8a5f
        # and 3fa7554: refused with PushRejectedError before anything is sent (docs/consistency.md).
        # At 29ae773 the remedy (delete the transaction locally) failed with "out of memory": the
        # in-process primary had set SQLite's process-wide heap limit (256 MiB) for the replicas too;
        # since d9c52ed+1 only `turso-sync serve` sets it (docs/primary.md). Since the push path
        # streams a transaction over one request (Hrana batons), it lands on our primary instead.
    ),
]


def options_of(reg: Regression) -> Options:
    """The history options a regression was found with."""
    return Options(reg.steps, reg.replicas, faults=reg.faults, big=reg.big, partial=reg.partial, avoid=reg.avoid)
