"""``daemon --metrics``: Prometheus metrics and a health check over HTTP, on loopback only.

``GET /metrics``: one series per replica, labelled ``replica="<path>"``, written by
``prometheus-client`` from the daemon's own registry (read at scrape time, so the numbers are
never older than the request); the Prometheus text format, or OpenMetrics when the scraper asks.
``GET /health``: 200 ``{"status": "ok" | "degraded", "replicas": [...]}`` while every sync
thread runs ("degraded": some replica cannot reach its primary right now; local reads and
writes are unaffected), 503 once the daemon is stopping.
"""

from __future__ import annotations

import json
import math
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from ..primary.server import is_loopback
from ..sync.daemon import ReplicaStatus, SyncDaemon
from .exit_codes import CommandError

#: name, type, help, value
SERIES: list[tuple[str, str, str, Callable[[ReplicaStatus], float | None]]] = [
    (
        "turso_sync_lag_seconds",
        "gauge",
        "Seconds since the replica last had the primary's latest revision (0 while a healthy long-poll is open).",
        lambda s: s.lag_seconds,
    ),
    ("turso_sync_pending_changes", "gauge", "Local transactions waiting to be pushed.", lambda s: s.pending_changes),
    ("turso_sync_bytes_sent_total", "counter", "Bytes sent to the primary (request bodies).", lambda s: s.bytes_sent),
    (
        "turso_sync_bytes_received_total",
        "counter",
        "Bytes received from the primary (response bodies).",
        lambda s: s.bytes_received,
    ),
    ("turso_sync_pulls_total", "counter", "Completed pulls (by any agent of the replica).", lambda s: s.pulls),
    ("turso_sync_pushes_total", "counter", "Completed pushes (by any agent of the replica).", lambda s: s.pushes),
    (
        "turso_sync_errors_total",
        "counter",
        "Failed pull and push attempts since the daemon started.",
        lambda s: s.errors,
    ),
    ("turso_sync_conflicts_total", "counter", "Conflicts in the replica's journal.", lambda s: s.conflicts),
    (
        "turso_sync_up",
        "gauge",
        "1 if the last exchange with the primary succeeded, else 0.",
        lambda s: int(s.connected),
    ),
]


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` on a loopback address (the metrics are not for the network at large)."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise CommandError(f"--metrics {text!r}: expected HOST:PORT, for example 127.0.0.1:9464")
    if not is_loopback(host):
        raise CommandError(f"--metrics {text!r}: the metrics listen on loopback only (127.0.0.1, ::1, localhost)")
    return host, int(port)


class ReplicaCollector:
    """A ``prometheus-client`` collector: the ``SERIES`` of every replica, read when scraped."""

    def __init__(self, statuses: Callable[[], list[ReplicaStatus]]) -> None:
        self.statuses = statuses

    def describe(self) -> Iterator[Metric]:
        """The metric families without samples (lets the registry refuse a duplicate name)."""
        for name, kind, text, _value in SERIES:
            yield _family(name, kind, text)

    def collect(self) -> Iterator[Metric]:
        """One family per series, one sample per replica (``NaN`` when a value is unknown)."""
        statuses = self.statuses()
        for name, kind, text, value in SERIES:
            family = _family(name, kind, text)
            for status in statuses:
                number = value(status)
                family.add_metric([status.path], math.nan if number is None else float(number))
            yield family


def _family(name: str, kind: str, text: str) -> GaugeMetricFamily | CounterMetricFamily:
    if kind == "counter":
        return CounterMetricFamily(name, text, labels=["replica"])
    return GaugeMetricFamily(name, text, labels=["replica"])


def registry_for(statuses: Callable[[], list[ReplicaStatus]]) -> CollectorRegistry:
    """A registry of its own (not the process-wide default), so two daemons in one process never collide."""
    registry = CollectorRegistry()
    registry.register(ReplicaCollector(statuses))
    return registry


def render(statuses: list[ReplicaStatus]) -> str:
    """The Prometheus text exposition format (version 0.0.4) of these statuses."""
    return generate_latest(registry_for(lambda: statuses)).decode()


def health(daemon: SyncDaemon) -> tuple[int, dict[str, object]]:
    """Status code and body of ``/health``."""
    statuses = daemon.status()
    if not daemon.healthy():
        state = "stopping"
    elif all(s.connected for s in statuses):
        state = "ok"
    else:
        state = "degraded"
    body: dict[str, object] = {
        "status": state,
        "replicas": [
            {
                "path": s.path,
                "connected": s.connected,
                "revision": s.revision,
                "pending_changes": s.pending_changes,
                "lag_seconds": s.lag_seconds,
                "last_error": s.last_error,
            }
            for s in statuses
        ],
    }
    return (503 if state == "stopping" else 200), body


class MetricsServer:
    """The HTTP endpoint, served from a background thread."""

    def __init__(self, daemon: SyncDaemon, host: str, port: int) -> None:
        owner = daemon
        self.registry = registry = registry_for(daemon.status)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    encode, content_type = choose_encoder(self.headers.get("Accept", ""))
                    self._send(200, content_type, encode(registry))
                elif path == "/health":
                    status, body = health(owner)
                    self._send(status, "application/json", json.dumps(body))
                else:
                    self._send(404, "text/plain; charset=utf-8", "not found: try /metrics or /health\n")

            def _send(self, status: int, content_type: str, body: str | bytes) -> None:
                data = body.encode() if isinstance(body, str) else body
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass  # scrapes every few seconds would flood the log

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            daemon_threads = True

        try:
            self.httpd = Server((host, port), Handler)
        except OSError as exc:
            raise CommandError(f"--metrics {host}:{port}: cannot listen: {exc.strerror or exc}") from None
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="turso-sync metrics", daemon=True)

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` actually bound (port 0 picks a free one)."""
        address = self.httpd.server_address
        host, port = str(address[0]), int(address[1])
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> None:
        """Serve in the background."""
        self.thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()
