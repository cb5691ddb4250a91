"""One process of the multi-process mode: an app writing a replica, a syncer, or both.

    python -m tests.sim.worker --path R --role app|sync|both --name r0 --seed S --journal J [--key HEX]

Runs until ``<journal>.stop`` exists (or it is killed).  Before each commit it appends
``attempt TXN`` to the journal and after the commit returns ``acked TXN``, so the controller
knows, even after ``kill -9``, which transactions were acknowledged (must arrive exactly once,
whole) and which may or may not have committed.  Errors are appended as ``error ...`` lines;
a reader that sees part of a transaction appends ``torn ...``.
"""

from __future__ import annotations

import argparse
import os
import random
import time

import turso_sync

from .history import MARKER


def _journal(path: str, line: str) -> None:
    # O_APPEND, one write per line: a kill -9 leaves whole lines (the OS keeps what was written)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def main() -> None:
    """Write and/or sync until told to stop."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--path", required=True)
    parser.add_argument("--role", choices=("app", "sync", "both"), required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--journal", required=True)
    parser.add_argument("--key")
    parser.add_argument("--pace", type=float, default=0.02, help="seconds between two operations (CPU share)")
    args = parser.parse_args()
    rnd = random.Random(args.seed * 7919 + os.getpid())
    conn = turso_sync.connect(args.path, encryption_key=args.key)
    stop = args.journal + ".stop"
    seq = 0
    syncs = 0
    tag = f"{args.name}-{args.role}-{os.getpid()}"
    while not os.path.exists(stop):
        try:
            if args.role in ("app", "both") and (args.role == "app" or rnd.random() < 0.6):
                seq += 1
                txn = f"{tag}-{seq}"
                _journal(args.journal, f"attempt {txn}")
                for j in range(2):
                    size = rnd.choice((50, 50, 3000, 30000))
                    payload = (MARKER + txn.encode()) * (size // (len(MARKER) + len(txn)) + 1)
                    conn.execute(
                        "INSERT INTO events(id, txn, n, replica, payload) VALUES (?, ?, 2, ?, ?)",
                        (f"{txn}-{j}", txn, args.name, payload[:size]),
                    )
                conn.execute("INSERT INTO log(replica, seq, note) VALUES (?, ?, ?)", (tag, seq, txn))
                conn.commit()
                _journal(args.journal, f"acked {txn}")
            else:
                conn.sync()
                syncs += 1
                torn = conn.execute("SELECT txn, count(*) FROM events GROUP BY txn HAVING count(*) != 2").fetchall()
                if torn:
                    _journal(args.journal, f"torn {args.name} {torn[:3]}")
                if syncs % 20 == 0:  # now and then: when did the file go bad, if it does
                    check = conn.execute("PRAGMA quick_check").fetchall()
                    if check != [("ok",)]:
                        _journal(args.journal, f"error {args.role} integrity after {syncs} syncs: {check[:2]}")
        except turso_sync.Error as exc:
            _journal(args.journal, f"error {args.role} {type(exc).__name__}: {str(exc)[:200]}")
            try:
                conn.rollback()
            except turso_sync.Error:
                pass
        time.sleep(args.pace)  # pacing to share the CPU, not waiting for anything
    conn.close()


if __name__ == "__main__":
    main()
