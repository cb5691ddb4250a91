"""Keep one or more replicas in sync with their primary until SIGTERM or SIGINT.

  turso-sync daemon notes.db [more.db ...] [--metrics 127.0.0.1:9464]
  turso-sync daemon --config replicas.toml      # a key file per replica, or none (plaintext)

The library twin is ``turso_sync.sync.daemon.SyncDaemon(paths, ...)`` (with
``DaemonReplica(path, encryption_key, cipher)`` entries for per-replica keys).  The PATHs on the
command line share ``--encryption-key[-file]``; each replica of ``--config`` has its own:

  [[replica]]
  path = "/var/lib/app/notes.db"
  encryption_key_file = "/etc/turso-sync/notes.key"   # a file holding the hex key
  cipher = "aes256gcm"                                 # the default

  [[replica]]
  path = "/var/lib/app/cache.db"                       # no key file: a plaintext replica

Relative paths in the file are relative to the file's folder.  Per replica: pulls
long-poll the primary, so its commits arrive within a second; local commits, made by any
process writing the database, are pushed within about 100 ms.  When the primary goes away the
daemon retries with exponential backoff and jitter (at most --max-backoff seconds apart); local
reads and writes keep working and it catches up when the primary returns.  SIGTERM or SIGINT:
the step in flight is finished (or, for a pull still waiting on the network, abandoned before
it wrote anything) and the daemon exits 0.  A token the primary refuses before it was ever
reached exits 4.  See docs/daemon.md (running beside an app, systemd, metrics).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tomllib
from types import FrameType

from ..sync.daemon import DEFAULT_COALESCE, DaemonReplica, SyncDaemon
from .exit_codes import CommandError, ExitCode
from .metrics import MetricsServer, parse_address
from .replica_args import (
    add_credential_arguments,
    add_sync_arguments,
    auth_token,
    check_key_fits,
    encryption,
    existing_replica,
    read_key_file,
)

HELP = "Keep replicas in sync in the background (long-poll pulls, prompt pushes, metrics)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``daemon``."""
    parser.add_argument(
        "paths", metavar="PATH", nargs="*", help="replicas to keep in sync (made by `clone`); they share the key"
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="a TOML file listing replicas ([[replica]] path = ..., encryption_key_file = ...), each with its own key",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="least time between two pulls that came back empty at once, as from a primary without long-poll "
        "(default 1)",
    )
    parser.add_argument(
        "--long-poll",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long each pull may wait on the primary for a new commit (default 10)",
    )
    parser.add_argument(
        "--coalesce",
        type=float,
        default=DEFAULT_COALESCE,
        metavar="SECONDS",
        help="after a pull that brought changes, wait this long before the next one, so revisions committed "
        f"meanwhile come in one pull (default {DEFAULT_COALESCE:g}; 0: pull again at once)",
    )
    parser.add_argument(
        "--max-backoff",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="longest wait between retries while the primary is unreachable (default 10)",
    )
    parser.add_argument(
        "--metrics", metavar="HOST:PORT", help="serve Prometheus /metrics and /health on this loopback address"
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="stderr log level; info logs start, stop, failures and recoveries, debug every pull and push",
    )
    parser.add_argument(
        "--access-log", action="store_true", help="log each pull that brought something and each push at info level"
    )
    add_credential_arguments(parser)
    add_sync_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Start, serve until a signal, stop cleanly."""
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    replicas = _replicas(args)
    paths = [r.path for r in replicas]
    address = parse_address(args.metrics) if args.metrics else None
    daemon = SyncDaemon(
        replicas,
        auth_token=auth_token(args),
        conflict=args.conflict,
        long_poll=args.long_poll,
        coalesce=args.coalesce,
        interval=args.interval,
        max_backoff=args.max_backoff,
        log_steps=args.access_log,
    )
    signalled: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        signalled.append(signum)  # the main loop notices within 0.2 s; nothing else is safe here

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    metrics: MetricsServer | None = None
    try:
        daemon.start()
        if address is not None:
            metrics = MetricsServer(daemon, *address)
            metrics.start()
        where = f"; metrics on {metrics.url}/metrics" if metrics else ""
        print(f"turso-sync daemon: syncing {len(paths)} replica(s){where}", flush=True)
        while not signalled and not daemon.wait(0.2):
            pass
        if signalled:
            daemon.request_stop()
            logging.getLogger("turso_sync.daemon").info(
                "%s received: finishing the step in flight", signal.Signals(signalled[0]).name
            )
        abandoned = daemon.stop()
        for path in abandoned:
            logging.getLogger("turso_sync.daemon").info("%s: long-poll abandoned (nothing written)", path)
        # The sync locks stay held until this process exits, so an abandoned long-poll that
        # answers now can never start applying a pull: no daemon.close() here, by design.
    finally:
        if metrics is not None:
            metrics.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if daemon.fatal is not None:
        raise daemon.fatal
    print("turso-sync daemon: stopped", flush=True)
    return ExitCode.OK


_CONFIG_KEYS = {"path", "encryption_key_file", "cipher"}


def _replicas(args: argparse.Namespace) -> list[DaemonReplica]:
    """The PATHs (sharing the key of the options) and the replicas of ``--config`` (each with its own)."""
    if not args.paths and not args.config:
        raise CommandError("name the replicas to keep in sync: PATH ... or --config FILE")
    replicas = []
    if args.paths:
        key, cipher = encryption(args)
        for path in args.paths:
            real = existing_replica(path)
            check_key_fits(args, path, key, cipher=cipher)
            replicas.append(DaemonReplica(real, key, cipher))
    if args.config:
        replicas += _from_config(args, args.config)
    return replicas


def _from_config(args: argparse.Namespace, file_name: str) -> list[DaemonReplica]:
    """The ``[[replica]]`` tables of a TOML file; keys only ever come from key files."""
    try:
        with open(file_name, "rb") as f:
            config = tomllib.load(f)
    except OSError as exc:
        raise CommandError(f"cannot read --config {file_name}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CommandError(f"--config {file_name} is not valid TOML: {exc}") from None
    entries = config.get("replica")
    unknown = set(config) - {"replica"}
    if unknown or not isinstance(entries, list) or not entries:
        raise CommandError(
            f"--config {file_name}: list replicas as [[replica]] tables (path = ..., and optionally "
            "encryption_key_file = ..., cipher = ...)"
        )
    folder = os.path.dirname(os.path.abspath(file_name))
    replicas = []
    for number, entry in enumerate(entries, 1):
        where = f"--config {file_name}, replica {number}"
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise CommandError(f'{where}: give its path (path = "/var/lib/app/notes.db")')
        if "encryption_key" in entry:
            raise CommandError(
                f"{where}: a key is never written in the config; put it in a file and name the "
                "file with encryption_key_file"
            )
        extra = set(entry) - _CONFIG_KEYS
        if extra:
            raise CommandError(
                f"{where}: unknown setting(s) {', '.join(sorted(extra))}; known: {', '.join(sorted(_CONFIG_KEYS))}"
            )
        path = os.path.join(folder, entry["path"])
        cipher = str(entry.get("cipher", "aes256gcm"))
        key_file = entry.get("encryption_key_file")
        key = None
        if key_file is not None:
            key_file = os.path.join(folder, str(key_file))
            key = read_key_file(key_file, cipher, f"{where} ({entry['path']})")
        real = existing_replica(path)
        source = f"encryption_key_file of replica {number} in {file_name}"
        check_key_fits(args, path, key, cipher=cipher, source=source if key else f"encryption_key_file in {file_name}")
        replicas.append(DaemonReplica(real, key, cipher))
    return replicas
