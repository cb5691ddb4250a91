"""A push that lands between a pull's fetch and its apply must not cost a pending change.

Found while building the daemon (issue 5).  ``Replica.pull()`` fetches without the sync lock
(so a long-poll does not block pushes) and applies under it.  If another agent pushes in
between, the push commits on the primary *after* the fetched revision and removes its changes
from the outbox; the pull then installs the older revision and replays an outbox that no
longer holds them.  The pushed changes disappear locally until the next pull, and any pending
change that depends on them (here a row of a table the push created) fails to replay and is
lost for good, silently: it never reaches the primary, is gone from the replica, and no
conflict is journaled.

Fixed: every removal of pushed changes from the outbox bumps ``forgotten`` in the state file
(under the sync lock), and ``pull()`` fetches again under the lock when it moved since the
fetch began.  (The daemon also fetches and applies under the lock, long-polling separately.)

The test makes the interleaving exact: the pull's transport, after fetching, runs a push and a
new local write from other processes (``turso-sync push`` / ``turso-sync exec``), then lets
the pull apply.
"""

from __future__ import annotations

import json

import turso_sync
from tests.integration.cli_harness import cli, fresh_url, running_primary
from turso_sync.sync.connection import SyncConnection
from turso_sync.sync.replica import Replica
from turso_sync.sync.transport import HttpResponse, HttpTransport


class PushDuringPull(HttpTransport):
    """After the first pull-updates answer arrives, let another process push and write."""

    def __init__(self, url: str, interleave) -> None:
        super().__init__(url)
        self.interleave = interleave

    def request(self, path: str, body: bytes, content_type: str, timeout: float, idempotent: bool) -> HttpResponse:
        response = super().request(path, body, content_type, timeout, idempotent)
        if path.endswith("/pull-updates") and self.interleave is not None:
            interleave, self.interleave = self.interleave, None
            interleave()
        return response


def test_a_push_between_fetch_and_apply_loses_no_pending_change(tmp_path):
    with running_primary(tmp_path / "p") as server:
        url = fresh_url(server)
        assert cli("clone", url, "b.db", "-q", cwd=tmp_path).code == 0
        writer = turso_sync.connect(tmp_path / "w.db", url)
        writer.execute("CREATE TABLE remote (id INTEGER PRIMARY KEY)")
        writer.commit()
        writer.push()  # revision 1: what b's pull will fetch
        writer.close()
        assert (
            cli(
                "exec", "b.db", "CREATE TABLE mine (id INTEGER PRIMARY KEY); INSERT INTO mine VALUES (1)", cwd=tmp_path
            ).code
            == 0
        )

        def push_then_write() -> None:
            assert cli("push", "b.db", cwd=tmp_path).code == 0  # revision 2: mine and its row 1
            assert cli("exec", "b.db", "INSERT INTO mine VALUES (2)", cwd=tmp_path).code == 0  # pending, needs mine

        path = str(tmp_path / "b.db")
        replica = Replica(path, None, transport=PushDuringPull(url, push_then_write))
        conn = SyncConnection(replica)
        try:
            conn.pull()  # applies revision 1 after the push of revision 2
            conn.pull()  # revision 2
            conn.push()
        finally:
            conn.close()
        rows = cli("exec", "b.db", "SELECT id FROM mine ORDER BY id", "--json", cwd=tmp_path)
        assert rows.code == 0, rows.err
        assert json.loads(rows.out) == [{"id": 1}, {"id": 2}]
