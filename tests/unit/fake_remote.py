"""A remote as a function, for the sync parts' unit tests: real SQLite pages, scripted Hrana answers.

``sqlite_pages`` makes the pages of a real database (stdlib ``sqlite3``); ``FakeRemote`` answers
``/pull-updates`` with them and ``/v2/pipeline`` from a script, and records what it was sent.
No socket is opened anywhere.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from turso_sync.sync.push import LAST_CHANGE_SELECT
from turso_sync.testing import HttpResponse, MockTransport, pull_answer
from turso_sync.wire.pull import PullHeader, PullRequest, encode_page

P = 4096


def sqlite_pages(path: Path, script: str, *, start_from: Path | None = None) -> dict[int, bytes]:
    """Run ``script`` on a database at ``path`` (a copy of ``start_from`` if given); its pages, 1-based."""
    if start_from is not None:
        shutil.copyfile(start_from, path)
    db = sqlite3.connect(path)
    db.execute("PRAGMA page_size=4096")
    db.executescript(script)
    db.commit()
    db.close()
    data = path.read_bytes()
    return {i // P + 1: data[i : i + P] for i in range(0, len(data), P)}


def batch_response(result: dict[str, Any]) -> HttpResponse:
    """A ``/v2/pipeline`` answer carrying one batch result."""
    body = {
        "baton": None,
        "base_url": None,
        "results": [{"type": "ok", "response": {"type": "batch", "result": result}}],
    }
    return HttpResponse(200, json.dumps(body).encode())


def committed(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Every step succeeded (the last, the ROLLBACK, was skipped)."""
    ok = {"cols": [], "rows": [], "affected_row_count": 0, "last_insert_rowid": None}
    return {"step_results": [ok] * (len(steps) - 1) + [None], "step_errors": [None] * len(steps)}


def mark_result(mark: tuple[int, int] | None) -> dict[str, Any]:
    """The answer to the last-change query: ``(pull_gen, change_id)``, or no such table."""
    if mark is None:
        error = {"message": "SQLite error: no such table: turso_sync_last_change_id", "code": "SQLITE_ERROR"}
        return {"step_results": [None], "step_errors": [error]}
    row = [{"type": "integer", "value": str(mark[0])}, {"type": "integer", "value": str(mark[1])}]
    return {"step_results": [{"cols": [], "rows": [row]}], "step_errors": [None]}


class FakeRemote:
    """``/pull-updates`` from ``pages`` at ``revision``; ``/v2/pipeline`` from ``mark`` and ``answer``."""

    def __init__(self, revision: str = "r1", pages: dict[int, bytes] | None = None) -> None:
        self.revision = revision
        self.pages = dict(pages or {})
        self.mark: tuple[int, int] | None = None
        self.answer: Callable[[list[dict[str, Any]]], HttpResponse] = lambda steps: batch_response(committed(steps))
        self.pulls: list[PullRequest] = []
        self.batches: list[list[dict[str, Any]]] = []
        self.paths: list[str] = []

    def __call__(self, path: str, body: bytes, content_type: str) -> HttpResponse:
        self.paths.append(path)
        if path == "/pull-updates":
            request = PullRequest.from_bytes(body)
            self.pulls.append(request)
            if request.client_revision == self.revision:
                return pull_answer(self.revision, {})  # nothing new (no long poll here)
            if request.page_ids is not None:
                # the pages asked for; the header gives the whole database's size, as a server does
                wanted = sorted(i + 1 for i in request.page_ids if i + 1 in self.pages)
                body = PullHeader(self.revision, max(self.pages, default=0)).to_bytes()
                body += b"".join(encode_page(p - 1, self.pages[p]) for p in wanted)
                return HttpResponse(200, body)
            return pull_answer(self.revision, self.pages)
        steps = json.loads(body)["requests"][0]["batch"]["steps"]
        if steps[0]["stmt"]["sql"] == LAST_CHANGE_SELECT:
            return batch_response(mark_result(self.mark))
        self.batches.append(steps)
        return self.answer(steps)

    def transport(self) -> MockTransport:
        """A mock transport whose remote is this one."""
        return MockTransport(self)
