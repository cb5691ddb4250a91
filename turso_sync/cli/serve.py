"""``turso-sync serve``: run the remote primary (see docs/primary.md).

turso-sync serve --data-dir DIR --listen 127.0.0.1:8080 [--token-file F]
                 [--encryption-key-file F] [--max-body-bytes N] [--max-long-poll-ms N] [--no-page-deltas]
                 [--idle-timeout S] [--body-timeout S] [--send-timeout S]
                 [--max-requests-per-client N] [--max-connections N]
                 [--max-databases-per-token N] [--max-open-databases N]
                 [--stream-idle-timeout S] [--max-stream-seconds S] [--max-streams-per-client N]
                 [--max-streams N] [--max-stream-bytes N] [--stream-lock-wait S] [--access-log]
                 [--history-seconds S] [--history-bytes N]
                 [--store s3://BUCKET/PREFIX [--s3-endpoint URL] [--s3-region R] [--lease-ttl S]
                  [--follow] [--snapshot-every N] [--retention-days D]]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from .. import errors
from ..primary import ConfigError, Limits, ServerConfig, run_until_signalled
from ..primary.auth import TokenFileError
from ..primary.durable import DEFAULT_LEASE_TTL, DEFAULT_RETENTION_S, DEFAULT_SNAPSHOT_EVERY, StoreSettings
from ..primary.revision import DEFAULT_HISTORY_BYTES, DEFAULT_HISTORY_SECONDS, HistoryBounds
from ..primary.server import parse_listen
from ..primary.sql_policy import SERVE_SQLITE_HEAP_BYTES, SqlLimits
from ..primary.store import DataDirBusy
from ..primary.streams import StreamLimits

HELP = "Run the primary server that Turso's sync clients pull from and push to."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``serve``."""
    defaults = Limits()
    parser.add_argument("--data-dir", required=True, help="folder holding the databases (created if missing)")
    parser.add_argument(
        "--listen", default="127.0.0.1:8080", help="HOST:PORT to listen on (default 127.0.0.1:8080; port 0 = any free)"
    )
    parser.add_argument("--token-file", help="bearer tokens and their scopes; without it: development mode")
    parser.add_argument("--encryption-key-file", help="file holding the at-rest key (hex) for every database")
    parser.add_argument("--cipher", default="aes256gcm", help="cipher of the at-rest key (default aes256gcm)")
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=defaults.max_body_bytes,
        help=f"largest request body accepted; larger gets 413 (default {defaults.max_body_bytes})",
    )
    parser.add_argument(
        "--max-long-poll-ms",
        type=int,
        default=defaults.max_long_poll_ms,
        help=f"longest a pull may wait for a new revision (default {defaults.max_long_poll_ms})",
    )
    parser.add_argument(
        "--no-page-deltas",
        action="store_true",
        help="send changed pages whole even to clients that ask for deltas (our extension, docs/protocol.md)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=defaults.idle_timeout_s,
        metavar="S",
        help="seconds a connection may sit idle or take to send a request's headers "
        f"(default {defaults.idle_timeout_s:g})",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=defaults.body_timeout_s,
        metavar="S",
        help=f"seconds a request body may take to arrive; slower gets 408 (default {defaults.body_timeout_s:g})",
    )
    parser.add_argument(
        "--send-timeout",
        type=float,
        default=defaults.send_timeout_s,
        metavar="S",
        help="seconds a client may leave each MiB of an answer unread before it is cut off "
        f"(default {defaults.send_timeout_s:g})",
    )
    parser.add_argument(
        "--max-requests-per-client",
        type=int,
        default=defaults.max_requests_per_client,
        help="requests in flight per token and address, long-polls included; more get 429 "
        f"(default {defaults.max_requests_per_client})",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=defaults.max_connections,
        help=f"open connections per process; more are answered 503 and closed (default {defaults.max_connections})",
    )
    parser.add_argument(
        "--max-databases-per-token",
        type=int,
        default=defaults.max_databases_per_token,
        help=f"databases one token may create; more get 403 (default {defaults.max_databases_per_token})",
    )
    parser.add_argument(
        "--max-open-databases",
        type=int,
        default=defaults.max_open_databases,
        help="databases open at once, one worker thread each; idle ones are closed to make room "
        f"(default {defaults.max_open_databases})",
    )
    sql = defaults.sql
    parser.add_argument(
        "--max-statement-seconds",
        type=float,
        default=sql.max_statement_seconds,
        metavar="S",
        help=f"run time of one SQL statement before it is interrupted (default {sql.max_statement_seconds:g})",
    )
    parser.add_argument(
        "--max-pipeline-seconds",
        type=float,
        default=sql.max_pipeline_seconds,
        metavar="S",
        help=f"run time of one /v2/pipeline request's statements (default {sql.max_pipeline_seconds:g})",
    )
    parser.add_argument(
        "--max-rows", type=int, default=sql.max_rows, help=f"rows one statement may return (default {sql.max_rows})"
    )
    parser.add_argument(
        "--max-response-bytes",
        type=int,
        default=sql.max_response_bytes,
        help=f"rows and columns of one pipeline answer (default {sql.max_response_bytes})",
    )
    parser.add_argument(
        "--max-value-bytes",
        type=int,
        default=sql.max_value_bytes,
        help=f"one string or blob, stored or computed (default {sql.max_value_bytes})",
    )
    parser.add_argument(
        "--max-sql-bytes", type=int, default=sql.max_sql_bytes, help=f"one SQL text (default {sql.max_sql_bytes})"
    )
    parser.add_argument(
        "--sqlite-heap-bytes",
        type=int,
        default=SERVE_SQLITE_HEAP_BYTES,
        help=f"SQLite's memory in the whole process; 0: no limit (default {SERVE_SQLITE_HEAP_BYTES})",
    )
    streams = defaults.streams
    parser.add_argument(
        "--stream-idle-timeout",
        type=float,
        default=streams.idle_timeout_s,
        metavar="S",
        help="a transaction kept open between requests (a Hrana stream) is rolled back after this many "
        f"seconds without a request (default {streams.idle_timeout_s:g})",
    )
    parser.add_argument(
        "--max-stream-seconds",
        type=float,
        default=streams.max_age_s,
        metavar="S",
        help=f"a stream's transaction open longer than this is rolled back (default {streams.max_age_s:g})",
    )
    parser.add_argument(
        "--max-streams-per-client",
        type=int,
        default=streams.max_per_client,
        help=f"streams one token may hold open; more get 429 (default {streams.max_per_client})",
    )
    parser.add_argument(
        "--max-streams",
        type=int,
        default=streams.max_total,
        help=f"streams open in all, one SQLite connection each; more get 503 (default {streams.max_total})",
    )
    parser.add_argument(
        "--max-stream-bytes",
        type=int,
        default=streams.max_bytes,
        help="request bytes (SQL and arguments) one stream's transaction may take in; more get 413 and "
        f"the transaction is rolled back (default {streams.max_bytes})",
    )
    parser.add_argument(
        "--stream-lock-wait",
        type=float,
        default=streams.lock_wait_s,
        metavar="S",
        help="how long another writer waits for a stream holding the write lock before a 503 "
        f"(default {streams.lock_wait_s:g})",
    )
    parser.add_argument(
        "--access-log", action="store_true", help="log one line per request at INFO (default: at DEBUG only)"
    )
    parser.add_argument(
        "--history-seconds",
        type=float,
        default=DEFAULT_HISTORY_SECONDS,
        metavar="S",
        help="each database's frame log keeps at least the revisions of the last S seconds (unless "
        "--history-bytes is reached first): replicas behind it get every page again, and a partial "
        f"replica pinned before it bootstraps again (default {DEFAULT_HISTORY_SECONDS:g})",
    )
    parser.add_argument(
        "--history-bytes",
        type=int,
        default=DEFAULT_HISTORY_BYTES,
        metavar="N",
        help="each database's frame log holds at most about N bytes: past it, the oldest history is "
        "pruned down to N/2 (with --store, never what is not stored yet) "
        f"(default {DEFAULT_HISTORY_BYTES} = {DEFAULT_HISTORY_BYTES >> 20} MiB)",
    )
    parser.add_argument(
        "--store",
        metavar="s3://BUCKET/PREFIX",
        help="keep every database in this S3 bucket (credentials from the standard AWS environment "
        "variables and files); a push is answered once stored there, and --data-dir becomes a cache",
    )
    parser.add_argument("--s3-endpoint", metavar="URL", help="S3 endpoint of --store (default: AWS)")
    parser.add_argument("--s3-region", metavar="R", help="S3 region of --store (default us-east-1)")
    parser.add_argument(
        "--lease-ttl",
        type=float,
        default=DEFAULT_LEASE_TTL,
        metavar="S",
        help="with --store: seconds a database's writer lease lasts unrenewed; another server takes a "
        f"database over at most about 1.5 x this after its writer dies (default {DEFAULT_LEASE_TTL:g})",
    )
    parser.add_argument(
        "--follow",
        action="store_true",
        help="with --store: a read-only node that follows the store and serves bootstraps, pulls and "
        "long-polls (writes get 403); point replicas at it for reads while the writer serves pushes",
    )
    parser.add_argument(
        "--snapshot-every",
        type=int,
        default=DEFAULT_SNAPSHOT_EVERY,
        metavar="N",
        help=f"with --store: write a snapshot every N revisions (default {DEFAULT_SNAPSHOT_EVERY})",
    )
    parser.add_argument(
        "--retention-days",
        type=float,
        default=DEFAULT_RETENTION_S / 86400,
        metavar="D",
        help="with --store: history older than D days that no later revision needs is deleted after a "
        f"snapshot (default {DEFAULT_RETENTION_S / 86400:g})",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def limits_from(args: argparse.Namespace) -> Limits:
    """The ``Limits`` the options ask for; raises ConfigError naming the option that cannot be used."""
    for option, value in (
        ("--max-body-bytes", args.max_body_bytes),
        ("--idle-timeout", args.idle_timeout),
        ("--body-timeout", args.body_timeout),
        ("--send-timeout", args.send_timeout),
        ("--max-requests-per-client", args.max_requests_per_client),
        ("--max-connections", args.max_connections),
        ("--max-open-databases", args.max_open_databases),
        ("--max-statement-seconds", args.max_statement_seconds),
        ("--max-pipeline-seconds", args.max_pipeline_seconds),
        ("--max-rows", args.max_rows),
        ("--max-response-bytes", args.max_response_bytes),
        ("--max-value-bytes", args.max_value_bytes),
        ("--max-sql-bytes", args.max_sql_bytes),
        ("--stream-idle-timeout", args.stream_idle_timeout),
        ("--max-stream-seconds", args.max_stream_seconds),
        ("--max-streams-per-client", args.max_streams_per_client),
        ("--max-streams", args.max_streams),
        ("--max-stream-bytes", args.max_stream_bytes),
    ):
        if not value > 0:
            raise ConfigError(f"{option} must be positive (got {value})")
    if args.max_databases_per_token < 0:
        raise ConfigError("--max-databases-per-token must be 0 (no token creates databases) or more")
    if args.sqlite_heap_bytes < 0:
        raise ConfigError("--sqlite-heap-bytes must be 0 (no limit) or more")
    if args.stream_lock_wait < 0:
        raise ConfigError("--stream-lock-wait must be 0 (no wait) or more")
    return Limits(
        max_body_bytes=args.max_body_bytes,
        max_long_poll_ms=max(0, args.max_long_poll_ms),
        page_deltas=not args.no_page_deltas,
        idle_timeout_s=args.idle_timeout,
        body_timeout_s=args.body_timeout,
        send_timeout_s=args.send_timeout,
        max_requests_per_client=args.max_requests_per_client,
        max_connections=args.max_connections,
        max_databases_per_token=args.max_databases_per_token,
        max_open_databases=args.max_open_databases,
        sql=SqlLimits(
            max_statement_seconds=args.max_statement_seconds,
            max_pipeline_seconds=args.max_pipeline_seconds,
            max_rows=args.max_rows,
            max_response_bytes=args.max_response_bytes,
            max_value_bytes=args.max_value_bytes,
            max_sql_bytes=args.max_sql_bytes,
            sqlite_heap_bytes=args.sqlite_heap_bytes or None,
        ),
        streams=StreamLimits(
            idle_timeout_s=args.stream_idle_timeout,
            max_age_s=args.max_stream_seconds,
            max_per_client=args.max_streams_per_client,
            max_total=args.max_streams,
            max_bytes=args.max_stream_bytes,
            lock_wait_s=args.stream_lock_wait,
        ),
    )


def history_from(args: argparse.Namespace) -> HistoryBounds:
    """The ``HistoryBounds`` the options ask for; raises ConfigError naming the option that cannot be used."""
    if not args.history_seconds >= 0:
        raise ConfigError(f"--history-seconds must be 0 or more (got {args.history_seconds:g})")
    if args.history_bytes < 1:
        raise ConfigError(f"--history-bytes must be positive (got {args.history_bytes})")
    return HistoryBounds(seconds=args.history_seconds, max_bytes=args.history_bytes)


def check_store_options(args: argparse.Namespace) -> None:
    """The object-store options: only with ``--store``, and in range (ConfigError names the option)."""
    if not args.store:
        given = [
            flag
            for flag, value, default in (
                ("--follow", args.follow, False),
                ("--snapshot-every", args.snapshot_every, DEFAULT_SNAPSHOT_EVERY),
                ("--retention-days", args.retention_days, DEFAULT_RETENTION_S / 86400),
                ("--s3-endpoint", args.s3_endpoint, None),
                ("--s3-region", args.s3_region, None),
            )
            if value != default
        ]
        if given:
            raise ConfigError(f"{', '.join(given)} only apply with --store s3://BUCKET/PREFIX")
        return
    if args.snapshot_every < 1:
        raise ConfigError(f"--snapshot-every must be 1 or more (got {args.snapshot_every})")
    if args.retention_days < 0:
        raise ConfigError(f"--retention-days must be 0 or more (got {args.retention_days:g})")
    if args.lease_ttl <= 0:
        raise ConfigError(f"--lease-ttl must be positive (got {args.lease_ttl:g})")


#: Descriptors one open database holds (its file, WAL and shared memory, for each of the three
#: SQLite connections the server keeps on it: measured 9 with ``/proc/PID/fd``), and a margin for
#: the process itself (listening socket, token file, logs, the data dir's lock, the store's pool).
FDS_PER_OPEN_DATABASE = 9
FDS_MARGIN = 128


def ensure_descriptors(limits: Limits) -> int:
    """Make room for the descriptors the bounds allow: raise the soft ``RLIMIT_NOFILE`` as far as
    needed (never past the hard limit), or refuse the bounds, naming them.  Returns the soft limit.

    With the defaults (1,024 connections, 64 open databases) the server may hold about 1,700
    descriptors, above the common soft limit of 1,024: without this it could run out of them
    before reaching either bound.
    """
    import resource  # POSIX only, like the server

    needed = limits.max_connections + FDS_PER_OPEN_DATABASE * limits.max_open_databases + FDS_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ConfigError(
            f"--max-connections {limits.max_connections} and --max-open-databases {limits.max_open_databases} "
            f"may need {needed} open files, but this process may open at most {hard} (ulimit -Hn): lower "
            "them, or raise the hard limit"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return needed


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; exit status 2 for a configuration the server cannot use."""
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if os.path.exists(args.data_dir) and not os.path.isdir(args.data_dir):
            raise ConfigError(
                f"--data-dir {args.data_dir} is a file, not a folder: give a folder (it is created if missing)"
            )
        host, port = parse_listen(args.listen)
        limits = limits_from(args)
        ensure_descriptors(limits)
        check_store_options(args)
        config = ServerConfig(
            data_dir=args.data_dir,
            host=host,
            port=port,
            token_file=args.token_file,
            encryption_key_file=args.encryption_key_file,
            cipher=args.cipher,
            limits=limits,
            access_log=args.access_log,
            history=history_from(args),
            store=StoreSettings(
                args.store,
                args.s3_endpoint,
                args.s3_region,
                args.lease_ttl,
                snapshot_every=args.snapshot_every,
                retention_s=args.retention_days * 86400,
                follow=args.follow,
            )
            if args.store
            else None,
        )
        asyncio.run(run_until_signalled(config))
    except (ConfigError, TokenFileError, DataDirBusy, errors.Error) as exc:
        print(f"turso-sync serve: {exc}", file=sys.stderr)
        return 2
    return 0
