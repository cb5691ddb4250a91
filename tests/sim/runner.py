"""Plays a history against the real primary and real replicas, checking the oracle as it goes.

Replica "crashes" are in-process: the connection objects are abandoned without ``close()`` and
the replica is reopened from its files (the multi-process mode, ``multiproc.py``, kills real
processes).  Every step runs to completion before the next starts, so a run is repeatable.
"""

from __future__ import annotations

import gc
import glob
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import turso_sync
from turso_sync.sync import pull as _pull
from turso_sync.sync.rebase import Conflict
from turso_sync.sync.transport import HttpTransport

from .faults import FaultLog, FaultyTransport, Held, deliver_delayed
from .history import MARKER, History, ReplicaSpec, Step, schema_for
from .oracle import KvWrite, Oracle, SimFailure, check_policy
from .primary import InProcessPrimary, TursodbServer

# every pull of a partial replica tries to move its pin (the revision its missing pages are
# fetched at): a run lasts seconds, so the library's once-a-minute pace would never exercise it
_pull.REPIN_INTERVAL = 0.0

KEY = "5a" * 32
#: User tables the oracle knows; the dump compares every user table whatever its name.
INTERNAL = ("_turso_sync", "turso_sync_", "sqlite_")
QUIET_ROUNDS = 5
# rows per query when dumping a table: 1 MiB rows (a transaction over 64 MiB), quoted to 2 MiB
# each, stay under the primary's 32 MiB bound on one response
DUMP_PAGE = 8


def merge_resolver(table: str, pk: dict[str, Any], base: Any, local: Any, remote: Any, kind: str) -> Any:
    """The callable policy: counters add both sides' increments; everything else keeps local."""
    if table == "counters" and kind == "update/update" and base and local and remote:
        return {**remote, "v": remote["v"] + local["v"] - base["v"]}
    return "local"


@dataclass
class Live:
    """One open replica."""

    spec: ReplicaSpec
    path: Path
    conn: Any
    transport: FaultyTransport


@dataclass
class RunResult:
    """What a run did."""

    failure: SimFailure | None
    steps_run: int
    faults: list[str] = field(default_factory=list)
    syncs: int = 0
    tolerated: list[SimFailure] = field(default_factory=list)


class Simulation:
    """One run of a history in a fresh temporary directory."""

    def __init__(
        self,
        history: History,
        workdir: Path | None = None,
        verbose: bool = False,
        tolerate: frozenset[str] = frozenset(),
    ) -> None:
        self.history = history
        self.tolerate = tolerate  # checks whose failures are noted, not fatal (known open bugs)
        self.tolerated: list[SimFailure] = []
        self.own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix=f"sim-{history.seed}-"))
        self.verbose = verbose
        self.oracle = Oracle()
        self.backlog: list[Held] = []
        self.fault_log = FaultLog()
        self.live: dict[int, Live] = {}
        self.primary: InProcessPrimary | TursodbServer = (
            TursodbServer(self.dir / "tursodb")
            if history.server == "tursodb"
            else InProcessPrimary(self.dir / "primary")
        )
        self.syncs = 0
        self.huge_pending: dict[str, str] = {}  # replica -> txn id of its pending transaction over 64 MiB

    # --- replicas -------------------------------------------------------------------------------

    def _open(self, spec: ReplicaSpec, create: bool) -> Live:
        path = self.dir / f"{spec.name}.db"
        kwargs: dict[str, Any] = {
            "conflict": merge_resolver if spec.policy == "callable" else spec.policy,
            "encryption_key": KEY if spec.encrypted else None,
        }
        if spec.encrypted and create and spec.index % 2 == 1 and self.history.server != "tursodb":
            # every other encrypted replica of our primary in the hardened format (bound pages, a page map);
            # chosen without drawing from the history's randomness, so every seed's history stays the same.
            # (On tursodb, whose pages reserve no bytes, an encrypted replica is in the envelope layout.)
            kwargs["cipher"] = "hardened"
        if spec.partial and create:
            kwargs["partial"] = turso_sync.PartialSync(prefix_bytes=2 * 4096, segment_size=4096, prefetch=False)
        # the public seam: the fault-injecting transport wraps a real client of the primary and is
        # given to connect, so the bootstrap and every later request meet the planned faults
        faulty = FaultyTransport(HttpTransport(self.primary.url), self.backlog, self.fault_log)
        conn = turso_sync.connect(path, self.primary.url if create else None, transport=faulty, **kwargs)
        return Live(spec, path, conn, faulty)

    def _log(self, text: str) -> None:
        if self.verbose:
            print(text, flush=True)

    # --- the run --------------------------------------------------------------------------------

    def run(self) -> RunResult:
        """Play every step; the first failed check ends the run."""
        done = 0
        try:
            self.primary.start()
            for spec in self.history.replicas:
                if not spec.partial:
                    self.live[spec.index] = self._open(spec, create=True)
            for step in self.history.steps:
                self._log(step.describe())
                try:
                    self._step(step)
                except SimFailure as failure:
                    if failure.check not in self.tolerate:
                        raise
                    self.tolerated.append(failure)
                except Exception as exc:  # anything the product raised where the model says it must not
                    raise SimFailure(
                        f"exception:{type(exc).__name__}", f"{step.describe()}: {exc}", step.index
                    ) from exc
                done += 1
            return RunResult(None, done, self.fault_log.events, self.syncs, self.tolerated)
        except SimFailure as failure:
            return RunResult(failure, done, self.fault_log.events, self.syncs, self.tolerated)
        finally:
            self.close()

    def close(self) -> None:
        """Close everything this run opened; remove its directory."""
        for live in self.live.values():
            try:
                live.conn.close()
            except Exception:
                pass
        self.live.clear()
        gc.collect()
        self.primary.close()
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _step(self, step: Step) -> None:
        kind = step.kind
        if kind == "setup":
            conn = self.live[step.replica].conn
            for sql in schema_for(self.history.server):
                conn.execute(sql)
            conn.commit()
        elif kind == "txn":
            self._txn(step)
        elif kind == "sync":
            self._sync(step)
        elif kind == "crash":
            live = self.live.pop(step.replica, None)
            if live is not None:
                spec = live.spec
                del live  # abandoned, never closed: its objects go as a dead process's would
                gc.collect()
                self.live[step.replica] = self._open(spec, create=False)
        elif kind == "restart_primary":
            self.primary.restart()
        elif kind == "flush_delayed":
            self._flush()
        elif kind == "ddl":
            conn = self.live[step.replica].conn
            if step.args["what"] == "add_column":
                conn.execute(f"ALTER TABLE kv ADD COLUMN x{step.index} TEXT")
            else:
                conn.execute(f"CREATE INDEX IF NOT EXISTS kv_v{step.index} ON kv(v)")
            conn.commit()
        elif kind == "join":
            spec = self.history.replicas[step.replica]
            self.live[spec.index] = self._open(spec, create=True)
        elif kind == "quiet":
            self._quiet(step)
        else:
            raise ValueError(f"unknown step kind {kind}")

    def _flush(self) -> None:
        transport = HttpTransport(self.primary.url)
        try:
            deliver_delayed(self.backlog, transport, self.fault_log)
        finally:
            transport.close()

    # --- local transactions ---------------------------------------------------------------------

    def _txn(self, step: Step) -> None:
        live = self.live[step.replica]
        conn = live.conn
        name = live.spec.name
        events: dict[str, tuple[str, int]] = {}
        rolled: set[str] = set()
        logs: set[tuple[str, int]] = set()
        incs: list[str] = []
        kv: list[tuple[str, KvWrite]] = []
        try:
            for i, op in enumerate(step.args["ops"]):
                tag = f"{step.index}-{i}"
                kind = op["op"]
                if kind in ("events", "savepoint", "big_row", "huge"):
                    self._events(conn, op, tag, name, events, rolled)
                elif kind == "log":
                    conn.execute(
                        "INSERT INTO log(replica, seq, note) VALUES (?, ?, ?)", (name, step.index * 100 + i, tag)
                    )
                    logs.add((name, step.index * 100 + i))
                elif kind == "counter":
                    cur = conn.execute("UPDATE counters SET v = v + 1 WHERE name = ?", (op["name"],))
                    if cur.rowcount == 1:
                        incs.append(op["name"])
                elif kind in ("kv_set", "kv_delete"):
                    key = op["key"]
                    row = conn.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
                    pred = row[0] if row else None
                    token = f"v{tag}"
                    if kind == "kv_delete":
                        conn.execute("DELETE FROM kv WHERE k = ?", (key,))
                        if pred is not None:
                            kv.append((key, KvWrite(None, pred, name, step.index)))
                        continue
                    style = op["style"]
                    if style == "upsert":
                        conn.execute(
                            "INSERT INTO kv(k, v, writer) VALUES (?, ?, ?) "
                            "ON CONFLICT(k) DO UPDATE SET v = excluded.v, writer = excluded.writer",
                            (key, token, name),
                        )
                    elif style == "replace":
                        conn.execute("INSERT OR REPLACE INTO kv(k, v, writer) VALUES (?, ?, ?)", (key, token, name))
                    elif pred is not None:
                        conn.execute("UPDATE kv SET v = ?, writer = ? WHERE k = ?", (token, name, key))
                    else:
                        continue
                    kv.append((key, KvWrite(token, pred, name, step.index)))
            conn.commit()
        except turso_sync.Error as exc:
            try:
                conn.rollback()
            finally:
                self.oracle.rolled_back.update(events)
                self.oracle.rolled_back.update(rolled)
                if self.huge_pending.get(name) in {t for t, _n in events.values()}:
                    del self.huge_pending[name]
                self.oracle.log_rolled_back.update(logs)
            raise SimFailure(
                "local_sql", f"{name}: a local transaction failed: {type(exc).__name__}: {exc}", step.index
            ) from exc
        self.oracle.events.update(events)
        self.oracle.rolled_back.update(rolled)
        self.oracle.log.update(logs)
        self.oracle.increments.update(incs)
        for key, write in kv:
            self.oracle.kv[key].append(write)

    def _events(
        self, conn: Any, op: dict[str, Any], tag: str, name: str, events: dict[str, tuple[str, int]], rolled: set[str]
    ) -> None:
        kind = op["op"]
        txn = f"t{tag}"
        insert = "INSERT INTO events(id, txn, n, replica, payload) VALUES (?, ?, ?, ?, ?)"
        if kind == "huge":  # one transaction over 64 MiB: rows of 1 MiB
            n = op["mib"]
            self.huge_pending[name] = txn  # noted now; dropped from the oracle if the transaction fails
            for j in range(n):
                conn.execute(insert, (f"e{tag}-{j}", txn, n, name, _payload(f"{tag}-{j}", 1 << 20)))
                events[f"e{tag}-{j}"] = (txn, n)
            return
        if kind == "big_row":
            conn.execute(insert, (f"e{tag}-0", txn, 1, name, _payload(tag, op["size"])))
            events[f"e{tag}-0"] = (txn, 1)
            return
        n = op["n"]
        ids = [f"e{tag}-{j}" for j in range(n)]
        if kind == "savepoint":
            conn.execute("SAVEPOINT sim")
            for i in ids:
                conn.execute(insert, (i, txn, n, name, _payload(i, 64)))
            if op["keep"]:
                conn.execute("RELEASE sim")
                events.update(dict.fromkeys(ids, (txn, n)))
            else:
                conn.execute("ROLLBACK TO sim")
                conn.execute("RELEASE sim")
                rolled.update(ids)
            return
        style = op["style"]
        if style == "cte":
            conn.execute(
                "WITH RECURSIVE s(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM s WHERE j + 1 < ?) "
                "INSERT INTO events(id, txn, n, replica, payload) "
                "SELECT ? || '-' || j, ?, ?, ?, ? FROM s",
                (n, f"e{tag}", txn, n, name, _payload(tag, 64)),
            )
        elif style == "many":
            conn.executemany(insert, [(i, txn, n, name, _payload(i, 64)) for i in ids])
        else:
            for i in ids:
                cur = conn.execute(
                    insert + (" RETURNING id" if style == "returning" else ""), (i, txn, n, name, _payload(i, 64))
                )
                if style == "returning":
                    got = cur.fetchone()
                    if got is None or got[0] != i:
                        raise SimFailure("wrong_value", f"{name}: INSERT ... RETURNING id gave {got}, expected {i}", -1)
        events.update(dict.fromkeys(ids, (txn, n)))

    # --- sync -----------------------------------------------------------------------------------

    def _sync(self, step: Step) -> None:
        live = self.live[step.replica]
        live.transport.plan = list(step.args["faults"])
        how = step.args["how"]
        try:
            getattr(live.conn, how)()
            self.syncs += 1
        except turso_sync.Error as exc:
            if not step.args["faults"]:
                raise SimFailure(
                    "sync_failed", f"{live.spec.name}.{how}() without a fault: {type(exc).__name__}: {exc}", step.index
                ) from exc
            self.fault_log.events.append(f"{live.spec.name}.{how}() -> {type(exc).__name__}")
        finally:
            live.transport.plan = []
        self._check_replica_reads(live, step.index)

    def _check_replica_reads(self, live: Live, step: int) -> None:
        """Between any two steps: revision monotonic, no half-visible transaction."""
        self.oracle.note_revision(live.spec.name, live.conn.stats().revision, step)
        torn = (
            live.conn.execute(
                "SELECT txn, n, count(*) FROM events GROUP BY txn HAVING count(*) != n LIMIT 3"
            ).fetchall()
            if _has_table(live.conn, "events")
            else []
        )
        if torn:
            raise SimFailure("atomic_visibility", f"{live.spec.name} sees part of transactions: {torn}", step)

    # --- quiet points ---------------------------------------------------------------------------

    def _quiet(self, step: Step) -> None:
        self._flush()
        for _round in range(QUIET_ROUNDS):
            changed = False
            for live in self.live.values():
                try:
                    changed |= bool(live.conn.sync())
                except turso_sync.PushRejectedError as exc:
                    if not self._settle_oversized(live, exc, step.index):
                        raise SimFailure(
                            "sync_failed",
                            f"{live.spec.name}.sync() at a quiet point: {type(exc).__name__}: {exc}",
                            step.index,
                        ) from exc
                    changed = True
                except turso_sync.Error as exc:
                    raise SimFailure(
                        "sync_failed",
                        f"{live.spec.name}.sync() at a quiet point: {type(exc).__name__}: {exc}",
                        step.index,
                    ) from exc
                self.syncs += 1
                self._check_replica_reads(live, step.index)
            pending = [live.conn.stats().pending_changes for live in self.live.values()]
            if not changed and not any(pending):
                break
        else:
            raise SimFailure(
                "no_convergence", f"still changing after {QUIET_ROUNDS} rounds of sync (pending {pending})", step.index
            )
        self._check_converged(step.index)

    def _settle_oversized(self, live: Live, exc: Exception, step: int) -> bool:
        """The model's outcome for a transaction over 64 MiB to a server without streams: refused,
        pending; the remedy it names works.

        docs/consistency.md: our primary keeps a transaction open across requests (Hrana batons),
        so such a push goes as a stream of requests and commits all at once, like any other (no
        exception reaches here).  A server that keeps no stream (``tursodb``) gets none of it:
        ``PushRejectedError`` before anything is sent, and the transaction stays pending.  The
        remedy the error names: delete it locally (the next rebase combines both into nothing) and
        redo it in parts (not needed here).
        """
        txn = self.huge_pending.pop(live.spec.name, None)
        if txn is None or "64 MiB" not in str(exc):
            return False
        self.fault_log.events.append(f"{live.spec.name}: oversized push refused as documented; deleted locally")
        live.conn.execute("DELETE FROM events WHERE txn = ?", (txn,))
        live.conn.commit()
        gone = [i for i, (t, _n) in self.oracle.events.items() if t == txn]
        for i in gone:
            del self.oracle.events[i]
        self.oracle.rolled_back.update(gone)
        try:
            live.conn.sync()
        except turso_sync.Error as again:
            raise SimFailure(
                "sync_failed",
                f"{live.spec.name}: after deleting the oversized transaction locally, as the error advises, "
                f"sync() still fails: {type(again).__name__}: {again}",
                step,
            ) from again
        return True

    def _check_converged(self, step: int) -> None:
        primary_ok = self.primary.query("PRAGMA integrity_check")
        if primary_ok != [["ok"]]:
            raise SimFailure("integrity", f"primary: {primary_ok[:3]}", step)
        expected = _dump_primary(self.primary)
        journals: list[Conflict] = []
        for live in self.live.values():
            name = live.spec.name
            ok = live.conn.execute("PRAGMA integrity_check").fetchall()
            if ok != [("ok",)]:
                raise SimFailure("integrity", f"{name}: {ok[:3]}", step)
            got = _dump(lambda sql: [list(r) for r in live.conn.execute(sql).fetchall()])
            if got != expected:
                raise SimFailure("convergence", f"{name} differs from the primary: {_diff(expected, got)}", step)
            conflicts = live.conn.conflicts()
            check_policy(conflicts, live.spec.policy, name, step)
            journals.extend(conflicts)
            if live.spec.encrypted:
                _check_no_plaintext(live.path, step)
        if "events" not in expected["tables"]:
            return
        query = self.primary.query
        events = [tuple(r) for r in query("SELECT id, txn, n FROM events")]
        counters = {r[0]: r[1] for r in query("SELECT name, v FROM counters")}
        kv = {r[0]: r[1] for r in query("SELECT k, v FROM kv")}
        self._checked(lambda: self.oracle.check_events(events, "primary", step))
        self._checked(
            lambda: self.oracle.check_log([tuple(r) for r in query("SELECT replica, seq FROM log")], "primary", step)
        )
        self._checked(lambda: self.oracle.check_counters(counters, journals, step))
        self._checked(lambda: self.oracle.check_kv(kv, journals, step))
        tally = {r[0]: r[1] for r in query("SELECT replica, n FROM tally")}
        per = {r[0]: r[1] for r in query("SELECT replica, count(*) FROM events GROUP BY replica")}
        if tally != per:
            self._checked(
                lambda: _fail("trigger", f"tally (kept by a trigger) {tally} != events per replica {per}", step)
            )

    def _checked(self, check: Any) -> None:
        """Run one check; a tolerated failure is noted and the other checks still run."""
        try:
            check()
        except SimFailure as failure:
            if failure.check not in self.tolerate:
                raise
            self.tolerated.append(failure)


def _fail(check: str, message: str, step: int) -> None:
    raise SimFailure(check, message, step)


def _payload(tag: str, size: int) -> bytes:
    unit = MARKER + tag.encode() + b"|"
    return (unit * (size // len(unit) + 1))[:size]


def _has_table(conn: Any, name: str) -> bool:
    return bool(conn.execute("SELECT 1 FROM sqlite_schema WHERE type='table' AND name=?", (name,)).fetchall())


def _dump(run: Any) -> dict[str, Any]:
    """Every user table: its columns and its rows as a sorted multiset (rowids left out)."""
    tables = sorted(
        r[0]
        for r in run("SELECT name FROM sqlite_schema WHERE type='table'")
        if not str(r[0]).lower().startswith(INTERNAL)
    )
    out: dict[str, Any] = {"tables": tables}
    for table in tables:
        cols = [r[1] for r in run(f'PRAGMA table_info("{table}")')]
        select = ", ".join(f'quote("{c}")' for c in cols)
        order = ", ".join(str(i + 1) for i in range(len(cols)))
        rows: list[Any] = []
        while True:  # in pages: a server bounds the bytes of one response
            page = run(f'SELECT {select} FROM "{table}" ORDER BY {order} LIMIT {DUMP_PAGE} OFFSET {len(rows)}')
            rows.extend(page)
            if len(page) < DUMP_PAGE:
                break
        out[table] = (cols, rows)
    return out


def _dump_primary(primary: InProcessPrimary) -> dict[str, Any]:
    return _dump(primary.query)


def _diff(expected: dict[str, Any], got: dict[str, Any]) -> str:
    if expected["tables"] != got["tables"]:
        return f"tables {got['tables']} vs primary {expected['tables']}"
    for table in expected["tables"]:
        e_cols, e_rows = expected[table]
        g_cols, g_rows = got[table]
        if e_cols != g_cols:
            return f"{table} columns {g_cols} vs primary {e_cols}"
        if e_rows != g_rows:
            e = {tuple(r) for r in e_rows}
            g = {tuple(r) for r in g_rows}
            only_p = [_short(r) for r in sorted(e - g)][:3]
            only_r = [_short(r) for r in sorted(g - e)][:3]
            return f"{table}: {len(g_rows)} rows vs {len(e_rows)}; only on the primary {only_p}; only here {only_r}"
    return "?"


def _short(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(v[:40] + "..." if isinstance(v, str) and len(v) > 40 else v for v in row)


def _check_no_plaintext(path: Path, step: int) -> None:
    for file in glob.glob(str(path) + "*"):
        if not os.path.isfile(file) or file.endswith(("-sync", ".lock")):
            continue
        with open(file, "rb") as f:
            if MARKER in f.read():
                raise SimFailure("plaintext", f"{file} holds plaintext the workload wrote", step)
