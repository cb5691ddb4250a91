"""The history a seed decides: replicas, their kinds and policies, and the list of steps.

Pure code: the same seed and options give the same history, whatever happens when it runs.
Every value a step writes is derived from the step's index, so a shrunk history (a subset of
the steps) writes the same values as the full one and a failure stays recognisable.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

POLICIES = ("last_push_wins", "remote_wins", "local_wins", "callable")
COUNTERS = ("c0", "c1", "c2")
KV_KEYS = ("k0", "k1", "k2", "k3")
#: Bytes the workload writes into payloads; an encrypted replica's files must never contain them.
MARKER = b"SIM-PLAINTEXT-MARKER"
#: The fault a transport request can meet (``None``: delivered normally).
FAULTS = ("drop_request", "drop_response", "duplicate", "delay")

SCHEMA = [
    "CREATE TABLE events (id TEXT PRIMARY KEY, txn TEXT NOT NULL, n INTEGER NOT NULL, replica TEXT, payload BLOB)",
    "CREATE INDEX events_txn ON events(txn)",
    "CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT, writer TEXT) WITHOUT ROWID",
    "CREATE TABLE counters (name TEXT PRIMARY KEY, v INTEGER NOT NULL)",
    "CREATE TABLE log (replica TEXT, seq INTEGER, note TEXT)",
    "CREATE TABLE tally (replica TEXT PRIMARY KEY, n INTEGER NOT NULL)",
    "CREATE TRIGGER events_tally AFTER INSERT ON events BEGIN "
    "INSERT INTO tally(replica, n) VALUES (NEW.replica, 1) ON CONFLICT(replica) DO UPDATE SET n = n + 1; END",
    *[f"INSERT INTO counters(name, v) VALUES ('{c}', 0)" for c in COUNTERS],
]


def schema_for(server: str) -> list[str]:
    """The schema a history starts with: tursodb (Turso's engine) refuses WITHOUT ROWID tables."""
    if server == "tursodb":
        return [sql.replace(" WITHOUT ROWID", "") for sql in SCHEMA]
    return list(SCHEMA)


@dataclass(frozen=True)
class ReplicaSpec:
    """One replica: how it is opened."""

    index: int
    encrypted: bool
    policy: str
    partial: bool = False  # joins later, bootstrapped from a prefix, every other page read lazily

    @property
    def name(self) -> str:
        """Its name in reports and in the rows it writes."""
        return f"r{self.index}"


@dataclass(frozen=True)
class Step:
    """One thing that happens: ``kind`` and its arguments (plain data, printable)."""

    index: int
    kind: str  # setup, txn, sync, crash, restart_primary, flush_delayed, ddl, join, quiet
    replica: int = -1
    args: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for a shrunk history."""
        who = f" r{self.replica}" if self.replica >= 0 else ""
        return f"#{self.index} {self.kind}{who} {self.args}" if self.args else f"#{self.index} {self.kind}{who}"


@dataclass
class History:
    """What a seed decides."""

    seed: int
    replicas: list[ReplicaSpec]
    steps: list[Step]
    server: str = "primary"


@dataclass(frozen=True)
class Options:
    """Knobs of a run (printed in the reproduction line when not the default)."""

    steps: int = 60
    replicas: int = 3
    faults: bool = True
    big: bool = False  # one transaction over 64 MiB (long campaign only)
    partial: bool = True
    #: ``primary`` (ours) or ``tursodb``; against tursodb every replica is plaintext (a default
    #: tursodb database reserves no page bytes for encryption)
    server: str = "primary"
    #: known bugs the workload steers around (names in ``KNOWN_BUGS``), so a campaign finds others
    avoid: frozenset[str] = frozenset()


#: Bugs the workload can steer around while they are open (``--avoid NAME,...``).
KNOWN_BUGS = {
    "savepoint_outermost": "a transaction opened by SAVEPOINT (no BEGIN) fails at RELEASE with IntegrityError",
    "cte_insert": "WITH RECURSIVE ... INSERT on a replica fails with IntegrityError",
}


def generate(seed: int, options: Options) -> History:
    """The history of ``seed``."""
    rnd = random.Random(seed)
    can_encrypt = options.server == "primary"
    specs = [
        ReplicaSpec(i, encrypted=rnd.random() < 0.5 and can_encrypt, policy=POLICIES[(seed + i) % len(POLICIES)])
        for i in range(options.replicas)
    ]
    join_at = -1
    if options.partial:
        encrypted = rnd.random() < 0.5 and can_encrypt
        specs.append(ReplicaSpec(len(specs), encrypted=encrypted, policy=rnd.choice(POLICIES), partial=True))
        join_at = max(3, options.steps // 3)
    live = [s.index for s in specs if not s.partial]
    steps: list[Step] = [Step(0, "setup", 0), Step(1, "quiet")]
    big_at = rnd.randrange(2, max(3, options.steps)) if options.big else -1
    for i in range(2, options.steps + 2):
        if i == join_at + 2:
            steps.append(Step(i, "join", specs[-1].index))
            live.append(specs[-1].index)
            continue
        if i == big_at:
            steps.append(Step(i, "txn", rnd.choice(live), {"ops": [{"op": "huge", "mib": 65}]}))
            continue
        roll = rnd.random()
        who = rnd.choice(live)
        if roll < 0.50:
            steps.append(Step(i, "txn", who, {"ops": _ops(rnd, options.avoid)}))
        elif roll < 0.78:
            faults = _faults(rnd) if options.faults else []
            steps.append(Step(i, "sync", who, {"how": rnd.choice(("sync", "sync", "push", "pull")), "faults": faults}))
        elif roll < 0.83:
            steps.append(Step(i, "crash", who))
        elif roll < 0.86 and options.faults:
            steps.append(Step(i, "restart_primary"))
        elif roll < 0.89 and options.faults:
            steps.append(Step(i, "flush_delayed"))
        elif roll < 0.92:
            what = rnd.choice(("add_column", "create_index"))
            steps.append(Step(i, "ddl", who, {"what": what}))
        else:
            steps.append(Step(i, "quiet"))
    steps.append(Step(options.steps + 2, "quiet"))
    return History(seed, specs, steps, options.server)


def _faults(rnd: random.Random) -> list[str | None]:
    """Faults for the first requests of a sync step (most requests get through)."""
    if rnd.random() < 0.4:
        return []
    return [rnd.choice(FAULTS) if rnd.random() < 0.5 else None for _ in range(rnd.randint(1, 4))]


def _ops(rnd: random.Random, avoid: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """One local transaction: a few operations of the kinds apps run."""
    out: list[dict[str, Any]] = []
    for _ in range(rnd.randint(1, 4)):
        kind = rnd.choices(
            ("events", "log", "counter", "kv_set", "kv_delete", "savepoint", "big_row"),
            weights=(5, 2, 4, 4, 1, 1, 1),
        )[0]
        if kind == "events":
            style = rnd.choice(("plain", "returning", "cte", "many"))
            if style == "cte" and "cte_insert" in avoid:
                style = "plain"
            out.append({"op": "events", "n": rnd.randint(2, 3), "style": style})
        elif kind == "log":
            out.append({"op": "log"})
        elif kind == "counter":
            out.append({"op": "counter", "name": rnd.choice(COUNTERS)})
        elif kind == "kv_set":
            out.append(
                {"op": "kv_set", "key": rnd.choice(KV_KEYS), "style": rnd.choice(("upsert", "replace", "update"))}
            )
        elif kind == "kv_delete":
            out.append({"op": "kv_delete", "key": rnd.choice(KV_KEYS)})
        elif kind == "savepoint":
            writes = any(o["op"] in ("events", "log", "big_row") for o in out)
            if not writes and "savepoint_outermost" in avoid:
                out.append({"op": "log"})  # a write first, so the savepoint nests in a transaction
            out.append({"op": "savepoint", "n": 2, "keep": rnd.random() < 0.5})
        else:
            out.append({"op": "big_row", "size": rnd.choice((20_000, 120_000, 400_000))})
    return out
