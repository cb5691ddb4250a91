"""Stream pushes against ``tursodb --sync-server``: it keeps no stream per client, so none is tried.

What we saw it do with batons is in docs/protocol.md (*Streams spanning requests*).  Here: the
probe our client sends before a push over one request is refused without running anything, and
leaves the server as it was (no transaction open on its one connection).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.servers import TURSODB, tursodb
from turso_sync.sync import stream
from turso_sync.sync.transport import HttpTransport

pytestmark = pytest.mark.skipif(not TURSODB.exists(), reason="tursodb is not installed (make peers)")


def test_the_probe_finds_no_streams_and_runs_nothing(tmp_path: Path) -> None:
    with tursodb(tmp_path / "tursodb") as url:
        transport = HttpTransport(url, attempts=1)
        try:
            assert stream.supports_streams(transport, 10.0) is False
        finally:
            transport.close()
        steps = [{"stmt": {"sql": s}} for s in ("BEGIN IMMEDIATE", "CREATE TABLE t (x)", "COMMIT")]
        body = {"baton": None, "requests": [{"type": "batch", "batch": {"steps": steps}}]}
        resp = httpx.post(url + "/v2/pipeline", json=body, timeout=30)
        assert resp.status_code == 200, resp.text
        errors = resp.json()["results"][0]["response"]["result"]["step_errors"]
        assert errors == [None, None, None], "a transaction was left open by the probe"
