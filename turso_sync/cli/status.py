"""Show where the replica at PATH stands, without touching the network.

  turso-sync status notes.db [--json]

The library twin is ``conn.stats()`` (plus the saved remote URL): the synced revision, pending
local changes, last pull and push, bytes sent and received, conflicts journaled.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from ..sync.results import SyncStats
from .progress import human_bytes
from .replica_args import add_credential_arguments, add_path_argument, open_replica

HELP = "Show the replica's revision, pending changes, last pull and push, bytes and conflicts."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``status``."""
    add_path_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_credential_arguments(parser)


def _when(unix_time: float | None) -> str:
    if unix_time is None:
        return "never"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix_time))
    return f"{stamp} ({_ago(time.time() - unix_time)})"


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{max(0, round(seconds))}s ago"
    if seconds < 5400:
        return f"{round(seconds / 60)} min ago"
    if seconds < 129600:
        return f"{round(seconds / 3600)} h ago"
    return f"{round(seconds / 86400)} days ago"


def status_rows(stats: SyncStats, path: str, remote_url: str, encrypted: bool) -> list[tuple[str, str]]:
    """The lines ``status`` prints (and the shell's ``.status``): name and value, dates readable."""
    rows = [
        ("replica", path),
        ("remote", remote_url),
        ("encrypted", "yes" if encrypted else "no"),
        ("revision", stats.revision or "(never pulled)"),
        ("pending changes", str(stats.pending_changes)),
        ("last pull", _when(stats.last_pull_unix_time)),
        ("last push", _when(stats.last_push_unix_time)),
        ("pulls / pushes", f"{stats.pulls} / {stats.pushes}"),
        ("bytes sent", human_bytes(stats.network_sent_bytes)),
        ("bytes received", human_bytes(stats.network_received_bytes)),
        ("conflicts", str(stats.conflicts)),
    ]
    if stats.pages_total is not None:  # a partial replica (docs/partial.md)
        local = stats.pages_local if stats.pages_local is not None else stats.pages_present
        fetched = f"{stats.lazy_pages_fetched} fetched on read in {stats.lazy_requests} request(s)"
        rows.append(("pages local / total", f"{local} / {stats.pages_total} (partial; {fetched})"))
    return rows


def print_rows(rows: list[tuple[str, str]]) -> None:
    """``name  value`` lines, the names aligned."""
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def run(args: argparse.Namespace) -> int:
    """Print the replica's stats."""
    conn = open_replica(args, args.path)
    try:
        stats = conn.stats()
        path = conn.replica.path
        remote_url = conn.replica.state.remote_url
        encrypted = bool(conn.encrypted)
    finally:
        conn.close()
    if args.json:
        report = {"path": path, "remote_url": remote_url, "encrypted": encrypted, **dataclasses.asdict(stats)}
        print(json.dumps(report, indent=1))
        return 0
    print_rows(status_rows(stats, path, remote_url, encrypted))
    return 0
