"""The remote primary: an aiohttp server speaking Turso's sync protocol to Turso's own clients.

``POST /pull-updates`` serves pages (protobuf), ``POST /v2/pipeline`` runs Hrana requests
(JSON); each database is a local-engine database whose frame log numbers the revisions.
Start it with ``turso-sync serve`` or ``PrimaryServer(ServerConfig(...)).start()``.
"""

from .app import Limits, create_app
from .server import ConfigError, PrimaryServer, ServerConfig, run_until_signalled

__all__ = ["ConfigError", "Limits", "PrimaryServer", "ServerConfig", "create_app", "run_until_signalled"]
