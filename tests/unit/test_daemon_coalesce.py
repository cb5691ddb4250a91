"""The daemon's puller waits ``coalesce`` seconds after a pull that brought changes, and only then."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.unit.test_cli_rough_edges import make_replica
from turso_sync.cli.main import build_parser
from turso_sync.sync import replica as replica_module
from turso_sync.sync.daemon import DEFAULT_COALESCE, SyncDaemon


class RecordingStop(threading.Event):
    """The daemon's stop event, noting how long each wait was asked to last."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[tuple[str, float | None]] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append((threading.current_thread().name, timeout))
        return super().wait(0 if timeout else timeout)  # never sleep: the test counts, it does not time


@pytest.mark.parametrize("coalesce", [0.25, 0.0])
def test_the_puller_waits_after_a_pull_that_brought_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, coalesce: float
) -> None:
    path = make_replica(tmp_path, rows=3)
    answers = iter([True, True, False, True])  # changed, changed, nothing new (answered at once), changed
    done = threading.Event()

    def pull(self: object, long_poll_timeout_ms: int | None = None) -> bool:
        try:
            return next(answers)
        except StopIteration:
            done.set()
            daemon._stop.set()
            return False

    monkeypatch.setattr(replica_module.Replica, "pull", pull)
    monkeypatch.setattr(replica_module.Replica, "push", lambda self, *a, **k: 0)
    daemon = SyncDaemon([str(path)], long_poll=5, coalesce=coalesce, interval=0.5, watch_interval=60)
    stop = RecordingStop()
    daemon._stop = stop
    daemon.start()
    try:
        assert done.wait(30)
    finally:
        daemon.stop()
        daemon.close()
    puller = [timeout for name, timeout in stop.waits if name.startswith("turso-sync puller")]
    if coalesce:
        # after each of the three changed pulls; the empty ones wait out the interval instead
        assert puller.count(coalesce) == 3, puller
    else:
        assert all(timeout is not None and timeout > 0.25 for timeout in puller), puller  # the interval only
    assert len([t for t in puller if t is not None and 0.25 < t <= 0.5]) == 2, puller  # the two empty pulls


def test_the_command_line_passes_coalesce_on() -> None:
    args = build_parser().parse_args(["daemon", "r.db", "--coalesce", "0.3"])
    assert args.coalesce == 0.3
    assert build_parser().parse_args(["daemon", "r.db"]).coalesce == DEFAULT_COALESCE
    assert build_parser().parse_args(["serve", "--data-dir", "d", "--no-page-deltas"]).no_page_deltas
