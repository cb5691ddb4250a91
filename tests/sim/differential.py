"""Differential checks: the same seeded workload through different clients and servers.

One writer, so the model says every path must end in the state stdlib ``sqlite3`` reaches by
running the same transactions (the referee: neither client grades itself):

- ``ours@primary``: turso_sync against our primary;
- ``pyturso@primary``: Turso's client (pyturso 0.8.3, in a child process) against our primary;
- ``ours@tursodb``: turso_sync against ``tursodb --sync-server``.

Each client's transactions that its engine refuses are reported and left out of its referee
run (a refused transaction is a difference in what the engine supports, not a sync bug); then
the server's tables must equal the referee's, and our replica's local tables must equal its
server's.  ``python -m tests.sim.differential --seed S`` prints every difference.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

import turso_sync

from .history import MARKER, SCHEMA
from .primary import InProcessPrimary, hrana_query
from .runner import _diff, _dump

Txn = list[tuple[str, list[Any]]]

_PYTURSO = textwrap.dedent(
    """
    import json, sys
    import turso.sync

    path, url, txns_file = sys.argv[1:4]
    txns = json.load(open(txns_file))
    conn = turso.sync.connect(path, url, client_name="sim-differential")
    failed = []
    for i, txn in enumerate(txns):
        try:
            for sql, args in txn:
                # fetch the rows: pyturso runs INSERT ... RETURNING only as far as its rows are read
                conn.execute(sql, tuple(bytes.fromhex(a[4:]) if isinstance(a, str) and a.startswith("hex:") else a
                                        for a in args)).fetchall()
            conn.commit()
        except Exception as exc:
            failed.append([i, type(exc).__name__ + ": " + str(exc)[:200]])
            try:
                conn.rollback()
            except Exception:
                pass
    conn.push()
    conn.pull()
    print("RESULT " + json.dumps(failed), flush=True)
    conn.close()
    """
)


@dataclass
class PathResult:
    """One client x server path."""

    name: str
    refused: list[tuple[int, str]] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)


def workload(seed: int, txns: int = 30) -> list[Txn]:
    """Transactions of the kinds apps run (one writer: the outcome is SQLite's)."""
    rnd = random.Random(seed)
    # pyturso 0.8.3's engine refuses WITHOUT ROWID ("an experimental feature"): the differential
    # workload keeps the tables both engines take, so a difference is about sync, not dialect
    out: list[Txn] = [[(sql.replace(" WITHOUT ROWID", ""), []) for sql in SCHEMA]]
    for t in range(1, txns + 1):
        txn: Txn = []
        for i in range(rnd.randint(1, 4)):
            tag = f"{t}-{i}"
            payload = _blob(tag, rnd.choice((16, 16, 5000, 70000)))
            kind = rnd.choice(("events", "returning", "cte", "log", "counter", "upsert", "replace", "update", "delete"))
            ins = "INSERT INTO events(id, txn, n, replica, payload) VALUES (?, ?, 2, 'd', ?)"
            if kind == "events":
                txn += [(ins, [f"e{tag}-{j}", f"t{tag}", payload]) for j in range(2)]
            elif kind == "returning":
                txn += [(ins + " RETURNING id", [f"e{tag}-{j}", f"t{tag}", payload]) for j in range(2)]
            elif kind == "cte":
                txn.append(
                    (
                        "WITH RECURSIVE s(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM s WHERE j < 1) "
                        "INSERT INTO events(id, txn, n, replica, payload) SELECT ? || '-' || j, ?, 2, 'd', ? FROM s",
                        [f"e{tag}", f"t{tag}", payload],
                    )
                )
            elif kind == "log":
                txn.append(("INSERT INTO log(replica, seq, note) VALUES ('d', ?, ?)", [t * 10 + i, tag]))
            elif kind == "counter":
                txn.append(("UPDATE counters SET v = v + 1 WHERE name = ?", [rnd.choice(("c0", "c1"))]))
            elif kind == "upsert":
                txn.append(
                    (
                        "INSERT INTO kv(k, v, writer) VALUES (?, ?, 'd') ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                        [rnd.choice(("k0", "k1", "k2")), f"v{tag}"],
                    )
                )
            elif kind == "replace":
                txn.append(
                    (
                        "INSERT OR REPLACE INTO kv(k, v, writer) VALUES (?, ?, 'd')",
                        [rnd.choice(("k0", "k1")), f"v{tag}"],
                    )
                )
            elif kind == "update":
                txn.append(("UPDATE kv SET v = ? WHERE k = ?", [f"v{tag}", rnd.choice(("k0", "k1", "k2"))]))
            else:
                txn.append(("DELETE FROM kv WHERE k = ?", [rnd.choice(("k0", "k1", "k2"))]))
        if t % 7 == 3:  # a savepoint inside the transaction, rolled back or released
            keep = t % 2 == 0
            txn += [("SAVEPOINT sp", []), (ins_log := "INSERT INTO log(replica, seq, note) VALUES ('sp', ?, 'x')", [t])]
            txn.append(("RELEASE sp", []) if keep else ("ROLLBACK TO sp", []))
            if not keep:
                txn.append(("RELEASE sp", []))
            del ins_log
        if t == txns // 2:
            txn.append(("ALTER TABLE kv ADD COLUMN note TEXT", []))
            txn.append(("CREATE INDEX kv_by_v ON kv(v)", []))
        out.append(txn)
    return out


def _blob(tag: str, size: int) -> str:
    unit = MARKER + tag.encode() + b"|"
    return "hex:" + ((unit * (size // len(unit) + 1))[:size]).hex()


def _args(args: list[Any]) -> tuple[Any, ...]:
    return tuple(bytes.fromhex(a[4:]) if isinstance(a, str) and a.startswith("hex:") else a for a in args)


def referee(txns: list[Txn], skip: set[int]) -> dict[str, Any]:
    """The state stdlib sqlite3 reaches running ``txns`` (except ``skip``)."""
    db = sqlite3.connect(":memory:")  # DB-API defaults, as both clients claim to follow
    for i, txn in enumerate(txns):
        if i in skip:
            continue
        for sql, args in txn:
            db.execute(sql, _args(args)).fetchall()
        db.commit()
    return _dump(lambda sql: [list(r) for r in db.execute(sql).fetchall()])


def run_ours(path: Path, url: str, txns: list[Txn]) -> tuple[list[tuple[int, str]], dict[str, Any]]:
    """turso_sync writes ``txns`` (pushing after each), syncs; returns refusals and its local tables."""
    conn = turso_sync.connect(path, url)
    refused: list[tuple[int, str]] = []
    try:
        for i, txn in enumerate(txns):
            try:
                for sql, args in txn:
                    conn.execute(sql, _args(args)).fetchall()
                conn.commit()
            except turso_sync.Error as exc:
                refused.append((i, f"{type(exc).__name__}: {exc}"[:200]))
                conn.rollback()
            conn.push()
        conn.sync()
        local = _dump(lambda sql: [list(r) for r in conn.execute(sql).fetchall()])
    finally:
        conn.close()
    return refused, local


def run_pyturso(path: Path, url: str, txns: list[Txn]) -> list[tuple[int, str]]:
    """pyturso writes ``txns`` in a child process and pushes; returns what its engine refused."""
    spec = path.with_suffix(".json")
    spec.write_text(json.dumps(txns))
    proc = subprocess.run(
        [sys.executable, "-c", _PYTURSO, str(path), url, str(spec)], capture_output=True, text=True, timeout=600
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"pyturso child failed ({proc.returncode}): {proc.stderr[-1500:]}")
    return [(int(i), msg) for i, msg in json.loads(lines[-1][len("RESULT ") :])]


def server_tables(url: str) -> dict[str, Any]:
    """Every user table of a server, through Hrana."""
    with httpx.Client(timeout=120) as http:
        return _dump(lambda sql: hrana_query(http, url, sql))


def compare(name: str, refused: list[tuple[int, str]], txns: list[Txn], server: dict[str, Any]) -> PathResult:
    """The server's tables against the referee's run of the transactions this client accepted."""
    result = PathResult(name, refused)
    expected = referee(txns, {i for i, _ in refused})
    if server != expected:
        result.differences.append(f"server vs sqlite3 referee: {_diff(expected, server)}")
    return result


def run_differential(seed: int, txns: int = 30, workdir: Path | None = None, tursodb: bool = True) -> list[PathResult]:
    """All paths for one seed."""
    root = Path(workdir or tempfile.mkdtemp(prefix=f"simdiff-{seed}-"))
    try:
        return _run_paths(seed, txns, root, tursodb)
    finally:
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)


def _run_paths(seed: int, txns: int, root: Path, tursodb: bool) -> list[PathResult]:
    work = workload(seed, txns)
    results: list[PathResult] = []
    for name in ("ours@primary", "pyturso@primary"):
        primary = InProcessPrimary(root / name)
        try:
            url = primary.start()
            if name.startswith("ours"):
                refused, local = run_ours(root / "ours.db", url, work)
            else:
                refused, local = run_pyturso(root / "pyturso.db", url, work), None
            server = server_tables(url)
            result = compare(name, refused, work, server)
            if local is not None and local != server:
                result.differences.append(f"local replica vs its server: {_diff(server, local)}")
            results.append(result)
        finally:
            primary.close()
    if tursodb:
        from tests.servers import tursodb as tursodb_server

        with tursodb_server(root / "tursodb") as url:
            refused, local = run_ours(root / "ours-t.db", url, work)
            server = server_tables(url)
            result = compare("ours@tursodb", refused, work, server)
            if local != server:
                result.differences.append(f"local replica vs its server: {_diff(server, local)}")
            results.append(result)
    return results


@dataclass
class MixedResult:
    """Two writers, pyturso and turso_sync, on one database of our primary."""

    differences: list[str] = field(default_factory=list)
    increments: int = 0
    counter: int = 0
    conflicts: int = 0


def run_mixed(seed: int, rounds: int = 20, workdir: Path | None = None) -> MixedResult:
    """pyturso and turso_sync write to one database of our primary, each pushing and pulling.

    Events (disjoint ids, two rows per statement) must all arrive exactly once on both sides
    and the primary; both local views must equal the primary's once synced.  Counters both
    increment: the lost increments (and our journal entries) are reported, not judged, since
    pyturso's documented behaviour is last-push-wins.
    """
    from tests.integration.primary_harness import Peer

    rnd = random.Random(seed)
    root = Path(workdir or tempfile.mkdtemp(prefix=f"simmixed-{seed}-"))
    result = MixedResult()
    primary = InProcessPrimary(root / "primary")
    url = primary.start()
    ours = turso_sync.connect(root / "ours.db", url)
    peer = Peer("pyturso")
    try:
        for sql in SCHEMA:
            ours.execute(sql.replace(" WITHOUT ROWID", ""))
        ours.commit()
        ours.push()
        peer.call("connect", path=str(root / "peer.db"), url=url)
        cte = (
            "WITH RECURSIVE s(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM s WHERE j < 1) "
            "INSERT INTO events(id, txn, n, replica, payload) SELECT ? || '-' || j, ?, 2, ?, x'00' FROM s"
        )
        expected: set[str] = set()
        for r in range(rounds):
            who = rnd.choice(("ours", "peer"))
            tag = f"{who}{r}"
            if who == "ours":
                ours.execute(cte, (tag, tag, who))
                ours.execute("UPDATE counters SET v = v + 1 WHERE name = 'c0'")
                ours.commit()
            else:
                peer.call("exec", sql=cte, args=[tag, tag, who])
                peer.call("exec", sql="UPDATE counters SET v = v + 1 WHERE name = 'c0'")
            expected |= {f"{tag}-0", f"{tag}-1"}
            result.increments += 1
            action = rnd.choice(("none", "ours_sync", "peer_push", "peer_pull", "peer_both"))
            if action == "ours_sync":
                ours.sync()
            elif action in ("peer_push", "peer_both"):
                peer.call("push")
            if action in ("peer_pull", "peer_both"):
                peer.call("pull")
        ours.sync()
        peer.call("push")
        peer.call("pull")
        ours.sync()
        peer.call("pull")
        server_ids = {r[0] for r in primary.query("SELECT id FROM events")}
        ours_ids = {r[0] for r in ours.execute("SELECT id FROM events").fetchall()}
        peer_ids = {r[0] for r in peer.call("query", sql="SELECT id FROM events")}
        for name, ids in (("primary", server_ids), ("turso_sync", ours_ids), ("pyturso", peer_ids)):
            if ids != expected:
                result.differences.append(
                    f"{name}: events missing {sorted(expected - ids)[:4]}, unexpected {sorted(ids - expected)[:4]}"
                )
        result.counter = primary.query("SELECT v FROM counters WHERE name = 'c0'")[0][0]
        ours_counter = ours.execute("SELECT v FROM counters WHERE name = 'c0'").fetchone()[0]
        peer_counter = peer.call("query", sql="SELECT v FROM counters WHERE name = 'c0'")[0][0]
        if not result.counter == ours_counter == peer_counter:
            result.differences.append(
                f"counter c0 differs: primary {result.counter}, turso_sync {ours_counter}, pyturso {peer_counter}"
            )
        result.conflicts = len(ours.conflicts())
    finally:
        peer.close()
        ours.close()
        primary.close()
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    return result


def main() -> int:
    """``python -m tests.sim.differential --seed S``: print each path's refusals and differences."""
    parser = argparse.ArgumentParser(prog="python -m tests.sim.differential")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--txns", type=int, default=30)
    parser.add_argument("--no-tursodb", action="store_true")
    args = parser.parse_args()
    bad = 0
    for seed in range(args.seed, args.seed + args.seeds):
        for r in run_differential(seed, args.txns, tursodb=not args.no_tursodb):
            status = "same as sqlite3" if not r.differences else "DIFFERENT"
            print(f"seed {seed} {r.name}: {status}; refused {len(r.refused)} transactions")
            for i, msg in r.refused[:5]:
                print(f"    refused txn {i}: {msg}")
            for d in r.differences:
                print(f"    {d}")
            bad += bool(r.differences)
        mixed = run_mixed(seed)
        print(
            f"seed {seed} pyturso+ours on one database: {'converged' if not mixed.differences else 'DIFFERENT'}; "
            f"counter {mixed.counter} after {mixed.increments} increments, {mixed.conflicts} journaled by turso_sync"
        )
        for d in mixed.differences:
            print(f"    {d}")
        bad += bool(mixed.differences)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
