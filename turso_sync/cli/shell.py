"""An interactive SQL prompt on the local replica at PATH.

  turso-sync shell notes.db
  echo "SELECT count(*) FROM notes;" | turso-sync shell notes.db

Each statement commits by itself unless you open a transaction (BEGIN ... COMMIT); every
commit is captured for push.  End statements with ';'.  Dot commands call the library:

  .pull  .push  .sync   conn.pull(), conn.push(), conn.sync()
  .status               conn.stats()
  .conflicts            conn.conflicts()
  .tables  .schema [T]  the tables, the schema
  .json on|off          print rows as JSON
  .help  .quit

Reading from a pipe, no prompt is shown and the exit status is 1 if any statement failed.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from typing import Any

from .. import errors
from ..local.capture import is_internal
from ..sync.connection import SyncConnection
from .exit_codes import Terminated
from .replica_args import add_credential_arguments, add_path_argument, add_sync_arguments, open_replica
from .rows import print_json, print_table, rows_as_objects
from .status import print_rows, status_rows

HELP = "An interactive SQL prompt on the local replica (dot commands pull, push, sync)."

_DOT_HELP = """\
.pull             pull the primary's new commits
.push             push pending local changes
.sync             push, then pull
.status           revision, pending changes, bytes, conflicts
.conflicts        the conflict journal
.tables           list tables
.schema [TABLE]   show CREATE statements
.json on|off      print rows as JSON arrays of objects
.quit             leave (an open transaction is rolled back)"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``shell``."""
    add_path_argument(parser)
    add_credential_arguments(parser)
    add_sync_arguments(parser)


class Shell:
    """Reads statements and dot commands, runs them on one connection, prints results."""

    def __init__(self, conn: SyncConnection, name: str, interactive: bool) -> None:
        self.conn = conn
        self.name = name
        self.interactive = interactive
        self.json = False
        self.failures = 0

    def read_line(self, continuation: bool) -> str | None:
        """The next line of input, or None at end of input."""
        if not self.interactive:
            line = sys.stdin.readline()
            return line if line else None
        prompt = "   ...> " if continuation else f"{self.name}> "
        try:
            return input(prompt) + "\n"
        except EOFError:
            print()
            return None

    def loop(self) -> None:
        """Until end of input or .quit."""
        buffer = ""
        while True:
            try:
                line = self.read_line(bool(buffer.strip()))
            except Terminated:
                raise  # SIGTERM ends the shell (an open transaction is rolled back by closing)
            except KeyboardInterrupt:
                print("^C" if self.interactive else "", file=sys.stderr)
                buffer = ""
                continue
            if line is None:
                break
            if not buffer.strip() and line.lstrip().startswith("."):
                if not self.dot(line.strip()):
                    break
                continue
            buffer += line
            if sqlite3.complete_statement(buffer):
                self.guarded(self.sql, buffer.strip())
                buffer = ""
        if buffer.strip():
            self.guarded(self.sql, buffer.strip())  # a last statement without ';'
        if self.conn.in_transaction:
            print("rolling back the open transaction", file=sys.stderr)
            self.conn.rollback()

    def guarded(self, action: Any, *args: Any) -> None:
        """Run one input; a failure prints one line and the shell goes on."""
        try:
            action(*args)
        except errors.Error as exc:
            self.failures += 1
            print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)

    def sql(self, text: str) -> None:
        """Run one statement and print its rows."""
        cursor = self.conn.execute(text)
        if cursor.description is None:
            return
        self.show([d[0] for d in cursor.description], cursor.fetchall())

    def show(self, columns: list[str], rows: list[Any]) -> None:
        """Rows as a table, or as JSON after ``.json on``."""
        if self.json:
            print_json(rows_as_objects(columns, rows), sys.stdout)
        else:
            print_table(columns, rows, sys.stdout)
        sys.stdout.flush()

    def dot(self, line: str) -> bool:
        """Run a dot command; False to leave the shell."""
        word, _, rest = line.partition(" ")
        rest = rest.strip()
        if word in (".quit", ".exit", ".q"):
            return False
        if word == ".help":
            print(_DOT_HELP)
        elif word == ".pull":
            self.guarded(lambda: print("pulled new commits" if self.conn.pull() else "already up to date"))
        elif word == ".push":
            self.guarded(lambda: print(f"pushed {self.conn.push()} transaction(s)"))
        elif word == ".sync":
            self.guarded(lambda: print("pulled new commits" if self.conn.sync() else "synced; nothing new"))
        elif word == ".status":
            self.guarded(self.status)
        elif word == ".conflicts":
            self.guarded(self.conflicts)
        elif word == ".tables":
            self.guarded(self.tables)
        elif word == ".schema":
            self.guarded(self.schema, rest)
        elif word == ".json":
            self.json = rest.lower() in ("on", "1", "yes", "")
        else:
            self.failures += 1
            print(f"error: unknown command {word}; .help lists them", file=sys.stderr)
        sys.stdout.flush()
        return True

    def tables(self) -> None:
        """The application's tables: the ones sync keeps for itself (``is_internal``) are left out."""
        names = self.conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name").fetchall()
        self.show(["name"], [(name,) for (name,) in names if not is_internal(name)])

    def schema(self, table: str) -> None:
        """The CREATE statements (of one table and its indexes, with a name), internal tables left out."""
        sql = "SELECT tbl_name, sql FROM sqlite_schema WHERE sql IS NOT NULL"
        params: tuple[str, ...] = ()
        if table:
            sql += " AND tbl_name = ?"
            params = (table,)
        for owner, text in self.conn.execute(sql + " ORDER BY rowid", params).fetchall():
            if not is_internal(owner):
                print(f"{text};")

    def status(self) -> None:
        """What ``turso-sync status`` prints, dates and sizes readable."""
        stats = self.conn.stats()
        replica = self.conn.replica
        rows = status_rows(stats, replica.path, replica.state.remote_url, bool(self.conn.encrypted))
        if self.json:
            print_json([{"field": name, "value": value} for name, value in rows], sys.stdout)
        else:
            print_rows(rows)

    def conflicts(self) -> None:
        """The conflict journal as rows."""
        items = self.conn.conflicts()
        columns = ["id", "table", "pk", "kind", "resolution"]
        self.show(columns, [(c.id, c.table, c.pk, c.kind, c.resolution) for c in items])


def run(args: argparse.Namespace) -> int:
    """Open the replica in autocommit mode and read statements until end of input."""
    interactive = sys.stdin.isatty()
    if interactive:
        import readline  # noqa: F401 - line editing and history for input()
    conn = open_replica(args, args.path, isolation_level=None)
    try:
        shell = Shell(conn, args.path, interactive)
        if interactive:
            stats = conn.stats()
            print(f"turso-sync shell on {args.path} (revision {stats.revision}, {stats.pending_changes} pending)")
            print("end statements with ';'; .help for commands, .quit to leave")
        shell.loop()
    finally:
        conn.close()
    return 1 if shell.failures and not interactive else 0
