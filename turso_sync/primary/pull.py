"""Which pages answer a /pull-updates request; pure logic over a page source.

* no ``client_revision``: every page (a bootstrap), filtered by the page selector;
* ``client_revision`` C: the current image of every page changed after C (selector applies);
  C older than the kept history: every page (clients accept a full resend);
  C newer than the database: 400 (the replica belongs to another database);
* ``server_revision`` R (a pinned read: chunked bootstraps, and partial replicas fetching
  pages lazily at their bootstrap revision): the images as of R, for any page, from the frame
  log's pre-images (``snapshot_at``), for as long as the history reaches back to R; R older
  than that is 409.  A page source without ``snapshot_at`` answers only when none of the
  asked-for pages (nor page 1, which carries the size) changed after R, else 409.

Page deltas (our extension, asked with ``page_deltas`` and zstd): ``delta_bases`` gives, for the
pages of an incremental answer, their images at the client's revision C, from the frame log's
pre-images; the sender then sends those pages as deltas against them.  Any other answer (a
bootstrap, a pinned read, selectors, C older than the history, more than ``MAX_DELTA_PAGES``
pages) has no bases: whole pages, as without the extension.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from typing import Protocol

from pyroaring import BitMap

from ..errors import DatabaseError, ProtocolError
from ..local.engine import RevisionGone, Snapshot
from ..wire.pull import PageEncoding, PullRequest, StreamKind
from .revision import parse_revision

#: Pages per slice of a bootstrap: the first bytes leave once one slice is read, not the whole database.
BOOTSTRAP_SLICE_PAGES = 1024

#: The most pages one answer sends as deltas (a delta costs about 5x the CPU of a whole zstd page,
#: its base read from the frame log included); a larger answer goes as whole pages.
MAX_DELTA_PAGES = 64


class RevisionUnavailable(Exception):  # noqa: N818 - reads as a state
    """A pinned revision can no longer be served exactly (HTTP 409)."""


class SnapshotMoved(Exception):  # noqa: N818 - reads as what happened
    """The database changed between two slices of one bootstrap (a writer outside this server)."""


class PageSource(Protocol):
    """Where page images come from: the local engine, or a fake in tests."""

    def current_seq(self) -> int:
        """The newest committed revision."""
        ...

    def page_count(self) -> int:
        """The database size in pages now."""
        ...

    def snapshot(self, since: int | None = None, pgnos: Iterable[int] | None = None) -> Snapshot:
        """Current images of the pages changed after ``since`` (all when None), 1-based ``pgnos``."""
        ...


def check_request(request: PullRequest) -> tuple[int | None, int | None]:
    """Validate what does not need the database: ``(client seq, pinned seq)``, each None if absent."""
    if request.stream_kind != StreamKind.PAGES:
        raise ProtocolError(
            "this server serves page streams only (stream_kind PAGES); MVCC logical logs are not available"
        )
    client = parse_revision(request.client_revision, "client_revision") if request.client_revision else None
    pinned = parse_revision(request.server_revision, "server_revision") if request.server_revision else None
    return client, pinned


def select_pages(source: PageSource, request: PullRequest) -> Snapshot:
    """The snapshot that answers ``request``: its revision, the size, and the pages to send.

    The common cases cost one engine snapshot; the current revision is asked for separately
    only for pinned reads and for revisions the history does not cover.
    """
    client, pinned = check_request(request)
    wanted = _wanted_pgnos(source, request.page_ids, request.query_selector)
    if pinned is not None:
        current = source.current_seq()
        _check_not_newer(client, current)
        return _pinned(source, pinned, current, client, wanted)
    if client is None:
        return source.snapshot(None, wanted)
    try:
        return source.snapshot(client, wanted)
    except RevisionGone:
        _check_not_newer(client, source.current_seq())
        return source.snapshot(None, wanted)  # history was pruned: resend everything


def select_slices(
    source: PageSource, request: PullRequest, slice_pages: int = BOOTSTRAP_SLICE_PAGES
) -> Generator[Snapshot, None, None]:
    """``select_pages`` in consecutive slices: a bootstrap is read ``slice_pages`` pages at a time.

    Every slice comes from the same committed state: the first slice's revision.  The caller may
    let other jobs (commits) run between two slices; a slice read after the database moved on is
    read as of that revision from the frame log's pre-images (``snapshot_at``).  Where that
    history is not available, SnapshotMoved.  Anything but a plain bootstrap is a single slice.
    """
    client, pinned = check_request(request)
    if client is not None or pinned is not None:
        yield select_pages(source, request)
        return
    wanted = _wanted_pgnos(source, request.page_ids, request.query_selector)
    if wanted is None:
        wanted = list(range(1, source.page_count() + 1))
    first: Snapshot | None = None
    for start in range(0, len(wanted), slice_pages) or [0]:
        pgnos = wanted[start : start + slice_pages]
        snap = source.snapshot(None, pgnos)
        if first is None:
            first = snap
        elif (snap.seq, snap.db_size) != (first.seq, first.db_size):
            snap = _slice_as_of(source, first, pgnos, snap.seq)
        yield snap


def wants_deltas(request: PullRequest) -> bool:
    """Whether an answer to ``request`` may hold deltas: the client asked for them, with zstd,
    for an incremental pull of the whole database (no pin, no selector)."""
    return (
        request.page_deltas
        and request.encoding == PageEncoding.ZSTD
        and bool(request.client_revision)
        and not request.server_revision
        and request.page_ids is None
        and not request.query_selector
    )


def delta_bases(source: PageSource, request: PullRequest, snap: Snapshot) -> dict[int, bytes]:
    """For the pages of ``snap`` (the answer to ``request``): their images at the client's revision.

    Empty unless ``wants_deltas(request)``, the answer is incremental with at most
    ``MAX_DELTA_PAGES`` pages, and the source keeps history back to the client's revision.  A page
    that did not exist then has no base (it goes whole).
    """
    if not wants_deltas(request) or not snap.pages or len(snap.pages) > MAX_DELTA_PAGES:
        return {}
    client = parse_revision(request.client_revision, "client_revision")
    snapshot_at = getattr(source, "snapshot_at", None)
    if snapshot_at is None or client >= snap.seq:
        return {}
    try:
        at_client: Snapshot = snapshot_at(client, sorted(snap.pages))
    except RevisionGone:  # a full resend: the history no longer reaches the client's revision
        return {}
    except DatabaseError:  # a pre-image the history cannot give: whole pages serve as well
        return {}
    return at_client.pages


def _slice_as_of(source: PageSource, first: Snapshot, pgnos: list[int], now: int) -> Snapshot:
    """The pages ``pgnos`` as of the bootstrap's first slice, after the database moved on to ``now``."""
    snapshot_at = getattr(source, "snapshot_at", None)
    moved = f"the database moved from revision {first.seq} to {now} during a bootstrap; pull again"
    if snapshot_at is None or now < first.seq:
        raise SnapshotMoved(moved)
    try:
        snap: Snapshot = snapshot_at(first.seq, [p for p in pgnos if p <= first.db_size])
    except RevisionGone:
        raise SnapshotMoved(moved) from None
    if (snap.seq, snap.db_size) != (first.seq, first.db_size):
        raise SnapshotMoved(moved)
    return snap


def _check_not_newer(client: int | None, current: int) -> None:
    if client is not None and client > current:
        raise ProtocolError(
            f"client_revision {client} is newer than this database's latest revision {current}: "
            "the replica was made from another database (or a wiped one); bootstrap a new replica"
        )


def _pinned(source: PageSource, pinned: int, current: int, client: int | None, wanted: list[int] | None) -> Snapshot:
    if pinned > current:
        raise ProtocolError(f"server_revision {pinned} is newer than this database's latest revision {current}")
    snapshot_at = getattr(source, "snapshot_at", None)
    if pinned < current and snapshot_at is not None:
        try:
            snap: Snapshot = snapshot_at(pinned, wanted, client)
        except RevisionGone:
            raise RevisionUnavailable(
                f"revision {pinned} is older than the history this server keeps; "
                "a partial replica pinned to it must be bootstrapped again"
            ) from None
        return snap
    if pinned < current:
        probe = None if wanted is None else {1, *wanted}
        try:
            moved = source.snapshot(pinned, probe)
        except RevisionGone:
            raise RevisionUnavailable(f"revision {pinned} is older than the history this server keeps") from None
        if moved.pages:
            raise RevisionUnavailable(
                f"pages asked for changed after revision {pinned} (latest is {moved.seq}); restart the bootstrap"
            )
    try:
        snap = source.snapshot(client, wanted)
    except RevisionGone:
        snap = source.snapshot(None, wanted)
    return Snapshot(pinned, snap.db_size, snap.pages)


def _wanted_pgnos(source: PageSource, page_ids: BitMap | None, query: str = "") -> list[int] | None:
    """1-based page numbers picked by the selectors, limited to the database (None: all).

    A query selector picks the pages the query reads (a superset: see ``query_pages`` of the
    engine's page source); with a page selector too, the union.
    """
    if page_ids is None and not query:
        return None
    picked = BitMap() if page_ids is None else BitMap(page_ids)
    if query:
        query_pages = getattr(source, "query_pages", None)
        if query_pages is None:
            raise ProtocolError("this server does not answer server_query_selector")
        picked |= BitMap(p - 1 for p in query_pages(query))
    limit = BitMap()
    limit.add_range(0, source.page_count())
    return [page_id + 1 for page_id in picked & limit]
