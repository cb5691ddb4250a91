"""``turso-sync serve``: run the remote primary (see docs/primary.md).

turso-sync serve --data-dir DIR --listen 127.0.0.1:8080 [--token-file F]
                 [--encryption-key-file F] [--max-body-bytes N]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from .. import errors
from ..primary import ConfigError, Limits, ServerConfig, run_until_signalled
from ..primary.auth import TokenFileError
from ..primary.server import parse_listen
from ..primary.store import DataDirBusy

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
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; exit status 2 for a configuration the server cannot use."""
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        host, port = parse_listen(args.listen)
        if args.max_body_bytes <= 0:
            raise ConfigError("--max-body-bytes must be positive")
        config = ServerConfig(
            data_dir=args.data_dir,
            host=host,
            port=port,
            token_file=args.token_file,
            encryption_key_file=args.encryption_key_file,
            cipher=args.cipher,
            limits=Limits(max_body_bytes=args.max_body_bytes, max_long_poll_ms=max(0, args.max_long_poll_ms)),
        )
        asyncio.run(run_until_signalled(config))
    except (ConfigError, TokenFileError, DataDirBusy, errors.Error) as exc:
        print(f"turso-sync serve: {exc}", file=sys.stderr)
        return 2
    return 0
