"""Roll a database of a running ``turso-sync serve`` back to a revision (an operator's action).

  turso-sync rollback URL [--db NAME] --to REVISION|TIMESTAMP [--auth-token-file F]

The server commits a NEW revision on top of the head whose content (tables, rows, indexes,
views, triggers, user_version) is that of revision REVISION; history stays linear and replicas
simply pull it.  The sync's own bookkeeping (``turso_sync_*`` tables: the replicas' change-id
marks and push fences) is not rolled back, so no replica pushes again what already landed.
``--to`` is a revision number or a UTC time (ISO 8601, ``2026-12-02T00:30:00Z``; a time needs
``serve --store``: the newest revision durable in the store by then).

The token must have ``admin`` access in the server's token file (``r`` and ``rw`` get 403); it
is read from ``--auth-token-file F`` or ``$TURSO_SYNC_AUTH_TOKEN`` and sent only in the
``Authorization`` header.  The library twin is the same request:
``POST URL/db/NAME/admin/rollback`` with ``{"revision": N}`` (``request_rollback`` here);
docs/object-storage.md, *Rolling back*.

Exit status 0 when the server rolled back (or found nothing to change), 2 for a revision it
cannot roll back to (newer than the head, or older than the history it keeps: the message
names the oldest), 3 when the server cannot be reached or fails, 4 when it refuses the token.
"""

from __future__ import annotations

import argparse
import datetime
import http
import json
from typing import Any

import urllib3
import urllib3.exceptions

from .exit_codes import CommandError, ExitCode
from .replica_args import AUTH_TOKEN_ENV, auth_token
from .restore import parse_at

HELP = "Roll a database of a running server back to a revision or time (a new revision; admin token)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``rollback``."""
    parser.add_argument("url", metavar="URL", help="the server (as replicas reach it), e.g. http://127.0.0.1:8080")
    parser.add_argument("--db", default="default", metavar="NAME", help="the database (default: default)")
    parser.add_argument(
        "--to",
        metavar="REVISION|TIMESTAMP",
        help="(required) a revision number, or a UTC time such as 2026-12-02T00:30:00Z (needs serve --store)",
    )
    token = parser.add_argument_group("credentials (never written anywhere)").add_mutually_exclusive_group()
    token.add_argument(
        "--auth-token-file", metavar="F", help=f"file holding an admin bearer token (or ${AUTH_TOKEN_ENV})"
    )
    token.add_argument("--auth-token", metavar="TOKEN", help=argparse.SUPPRESS)  # visible to `ps`: not advertised
    parser.add_argument("--timeout", type=float, default=300.0, metavar="S", help="seconds to wait (default 300)")


def request_body(at: int | float) -> dict[str, Any]:
    """The JSON body for a target from ``parse_at``: a revision, or a time (sent in UTC)."""
    if isinstance(at, int):
        return {"revision": at}
    when = datetime.datetime.fromtimestamp(at, datetime.UTC)
    return {"at": when.isoformat().replace("+00:00", "Z")}


def request_rollback(
    url: str, database: str, at: int | float, token: str | None, timeout: float = 300.0
) -> dict[str, Any]:
    """Ask the server at ``url`` to roll ``database`` back; its answer (see ``RollbackOutcome.to_json``).

    Raises CommandError with the exit status for a refusal or an unreachable server.
    """
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    target = f"{url.rstrip('/')}/db/{database}/admin/rollback"
    try:
        response = urllib3.request(
            "POST",
            target,
            body=json.dumps(request_body(at)).encode(),
            headers=headers,
            timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout),
            retries=False,
            redirect=False,
        )
    except (urllib3.exceptions.HTTPError, ValueError) as exc:
        raise CommandError(f"cannot reach the server at {url}: {exc}", ExitCode.NETWORK) from None
    status = response.status
    try:
        parsed = json.loads(response.data)
    except ValueError:
        parsed = None
    if status == 200 and isinstance(parsed, dict):
        return parsed
    message = str(parsed.get("error", "")) if isinstance(parsed, dict) else ""
    if not message and status in http.HTTPStatus.__members__.values():
        message = http.HTTPStatus(status).phrase
    if status in (401, 403):
        raise CommandError(
            f"the server refused the token (HTTP {status}): {message}; rollback needs a token with 'admin' access, "
            f"given with --auth-token-file F or ${AUTH_TOKEN_ENV}",
            ExitCode.AUTH,
        )
    if status in (400, 404, 409):
        raise CommandError(f"the server cannot roll database '{database}' back (HTTP {status}): {message}")
    raise CommandError(f"the server failed the rollback (HTTP {status}): {message}", ExitCode.NETWORK)


def run(args: argparse.Namespace) -> int:
    """Ask for the rollback and print what the server did."""
    if args.to is None:  # checked here rather than by argparse, like a missing token
        raise CommandError("rollback needs --to REVISION|TIMESTAMP: the revision (or time) to roll back to")
    at = parse_at(args.to)
    answer = request_rollback(args.url, args.db, at, auth_token(args), args.timeout)
    changes = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(answer.get("changes", {}).items()))
    if answer["revision"] == answer["previous_head"]:
        print(
            f"database '{answer['database']}' already has the content of revision {answer['target']}: "
            f"nothing changed (head {answer['revision']})"
        )
    else:
        print(
            f"rolled back database '{answer['database']}' to the content of revision {answer['target']}: "
            f"new revision {answer['revision']} (head was {answer['previous_head']}; read from the "
            f"{answer['source']}; {changes})"
        )
    return ExitCode.OK
