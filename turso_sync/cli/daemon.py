"""Keep one or more replicas in sync with their primary until SIGTERM or SIGINT.

  turso-sync daemon notes.db [more.db ...] [--metrics 127.0.0.1:9464]

The library twin is ``turso_sync.sync.daemon.SyncDaemon(paths, ...)``.  Per replica: pulls
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
import signal
import sys
from types import FrameType

from ..sync.daemon import SyncDaemon
from .exit_codes import ExitCode
from .metrics import MetricsServer, parse_address
from .replica_args import add_credential_arguments, add_sync_arguments, auth_token, encryption_key, existing_replica

HELP = "Keep replicas in sync in the background (long-poll pulls, prompt pushes, metrics)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``daemon``."""
    parser.add_argument("paths", metavar="PATH", nargs="+", help="replicas to keep in sync (made by `clone`)")
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
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="stderr log level"
    )
    add_credential_arguments(parser)
    add_sync_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Start, serve until a signal, stop cleanly."""
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
    paths = [existing_replica(p) for p in args.paths]
    address = parse_address(args.metrics) if args.metrics else None
    daemon = SyncDaemon(
        paths,
        auth_token=auth_token(args),
        encryption_key=encryption_key(args),
        cipher=args.cipher,
        conflict=args.conflict,
        long_poll=args.long_poll,
        interval=args.interval,
        max_backoff=args.max_backoff,
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
