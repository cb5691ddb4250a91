"""``turso-sync``: the command-line entry point; each subcommand is a module of this package.

A command module provides ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
To add a command, write its module and list it in ``COMMANDS``.

A failure a command lets through becomes one line on stderr and an exit status from
``exit_codes.ExitCode`` (``--debug`` adds the traceback); see docs/cli.md.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import signal
import sys
import traceback
from collections.abc import Sequence
from types import FrameType

from .exit_codes import ExitCode, Terminated, as_damage, classify, describe

#: command name -> module (only the module of the command that runs is imported, so each stays light)
COMMANDS: dict[str, str] = {
    "serve": "turso_sync.cli.serve",
    "clone": "turso_sync.cli.clone",
    "pull": "turso_sync.cli.pull",
    "push": "turso_sync.cli.push",
    "sync": "turso_sync.cli.sync",
    "status": "turso_sync.cli.status",
    "exec": "turso_sync.cli.execute",
    "shell": "turso_sync.cli.shell",
    "conflicts": "turso_sync.cli.conflicts",
    "verify": "turso_sync.cli.verify",
    "daemon": "turso_sync.cli.daemon",
    "restore": "turso_sync.cli.restore",
    "rollback": "turso_sync.cli.rollback",
    "rekey": "turso_sync.cli.rekey",
    "passwd": "turso_sync.cli.passwd",
}


def installed_version() -> str:
    """The version of the installed ``turso-sync`` distribution (its metadata, not a copy in the code)."""
    try:
        return importlib.metadata.version("turso-sync")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser for every command (or, with ``only``, for that one command alone)."""
    parser = argparse.ArgumentParser(
        prog="turso-sync",
        description="Encrypted, offline-first SQLite replicas that sync with a Turso primary.",
        epilog="`turso-sync COMMAND --help` explains a command; docs/cli.md has exit codes and examples.",
    )
    parser.add_argument("--version", action="version", version=f"turso-sync {installed_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        if only is not None and name != only:
            continue
        module = importlib.import_module(module_name)
        command = sub.add_parser(
            name,
            help=module.HELP,
            description=(module.__doc__ or module.HELP).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(command)
        command.add_argument("--debug", action="store_true", help="print the traceback of a failure")
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(first if first in COMMANDS else None).parse_args(argv)
    # SIGTERM unwinds like Ctrl-C (a failed clone removes what it created); `daemon` and
    # `serve` put their own handlers in place for a graceful stop
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args._run(args))
    except Terminated:
        print(f"turso-sync {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return ExitCode.TERMINATED
    except KeyboardInterrupt:
        print(f"turso-sync {args.command}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except Exception as caught:
        exc = as_damage(caught, getattr(args, "opened_replica", None))
        code = classify(exc)
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"turso-sync {args.command}: {describe(exc, code)}", file=sys.stderr)
        return code
    finally:
        signal.signal(signal.SIGTERM, previous)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


if __name__ == "__main__":
    sys.exit(main())
