"""Run SQL on the local replica at PATH and print the rows; no network.

  turso-sync exec notes.db "SELECT * FROM notes WHERE id > 10"
  turso-sync exec notes.db "INSERT INTO notes(body) VALUES ('from the shell')"
  turso-sync exec notes.db --json "SELECT * FROM notes"     # one JSON array of objects per query

The library twin is ``conn.execute(SQL)`` then ``conn.commit()``.  Several statements separated
by ';' run in order in one transaction: all commit or none do.  Writes are captured for push
(`turso-sync push` or the daemon sends them).
"""

from __future__ import annotations

import argparse
import sys

from ..local.connection import split_statements
from .replica_args import add_credential_arguments, add_path_argument, add_quiet_argument, open_replica
from .rows import print_json, print_table, rows_as_objects

HELP = "Run SQL on the local replica and print the rows (no network)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``exec``."""
    add_path_argument(parser)
    parser.add_argument("sql", metavar="SQL", help="one or more SQL statements separated by ';'")
    parser.add_argument("--json", action="store_true", help="print each query's rows as a JSON array of objects")
    add_credential_arguments(parser)
    add_quiet_argument(parser)


_TRANSACTION_WORDS = {"BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE"}


def _controls_transaction(statement: str) -> bool:
    words = statement.split(None, 1)
    return bool(words) and words[0].upper().rstrip(";") in _TRANSACTION_WORDS


def run(args: argparse.Namespace) -> int:
    """Run every statement in one transaction; print rows as they come."""
    statements = split_statements(args.sql)
    if not statements:
        print("turso-sync exec: no SQL to run", file=sys.stderr)
        return 2
    conn = open_replica(args, args.path)
    try:
        changed = 0
        try:
            if len(statements) > 1 and not any(_controls_transaction(s) for s in statements):
                conn.execute("BEGIN")  # schema statements too: all or nothing
            for statement in statements:
                cursor = conn.execute(statement)
                if cursor.description is not None:
                    columns = [d[0] for d in cursor.description]
                    rows = cursor.fetchall()
                    if args.json:
                        print_json(rows_as_objects(columns, rows), sys.stdout)
                    else:
                        print_table(columns, rows, sys.stdout)
                elif cursor.rowcount > 0:
                    changed += cursor.rowcount
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        if changed and not args.quiet:
            pending = conn.stats().pending_changes
            print(f"{changed} row(s) changed; {pending} transaction(s) waiting to be pushed", file=sys.stderr)
    finally:
        conn.close()
    return 0
