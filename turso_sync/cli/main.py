"""``turso-sync``: the command-line entry point; each subcommand is a module of this package.

A command module provides ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
To add a command, write its module and list it in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: command name -> module (imported only when that command runs, so each stays light)
COMMANDS: dict[str, str] = {
    "serve": "turso_sync.cli.serve",
}


def build_parser() -> argparse.ArgumentParser:
    """The parser for every command."""
    parser = argparse.ArgumentParser(prog="turso-sync", description="Encrypted, offline-first SQLite sync.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the command; returns the exit status."""
    args = build_parser().parse_args(argv)
    return int(args._run(args))


if __name__ == "__main__":
    sys.exit(main())
