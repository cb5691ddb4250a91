"""The pusher: outbox -> batch -> send -> record, exactly once, as a sans-IO step.

``push`` cuts the pending rows into requests of whole transactions (``outbox.chunk``), builds
each batch (``push.py``: guarded, all-or-nothing), sends it, and forgets the rows once the
remote acknowledged them.  A batch whose answer never came marks the replica ``push_in_doubt``
(the next pull fences it off).  When the remote refuses a change (a conflict or a constraint),
``push`` pulls (the rebase settles it under the policy and journals it) and tries again, at
most ``PUSH_ROUNDS`` times.

One request per batch: each batch is built on the push mark (``turso_sync_last_change_id``)
the replica believes the remote holds for it, the last one the remote acknowledged, kept in
the replica's state (``believed_mark``), and commits only if the remote holds that mark
(``push.MARK_MOVE``).  The mark is read first (``remote.remote_mark``, a request of its own)
only when the belief may be wrong before anything is sent: when the state has none (a first
push), and on the first push after one whose answer was lost (which may still commit: the mark
read, and every later batch's compare-and-set, see it if it does).  A batch built on a wrong
belief (a copy of the replica restored from an old backup, a previous push that committed as
its process died) fails as a whole at its mark step; then the mark is read, what the remote
already holds is forgotten, and the rest is pushed again.  Any belief is safe: one that is
wrong costs a request, never a change applied twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pyroaring import BitMap

from .. import errors
from ..page import RESERVED_BYTES
from ..wire.hrana import BatchResult
from . import push as push_mod
from . import stream
from .exchange import Steps
from .outbox import chunk, forget, read_outbox, table_columns
from .pull import PullContext, pull
from .rebase import Conflict, OutboxRow, combine_pending
from .remote import fetch_pages, pipeline_body, remote_mark, run_batch, statement
from .state import PUSH_MARK_KEY, SyncState

PUSH_ROUNDS = 5  # conflict -> pull (rebase) -> push again, at most this many times per push()
MARK_ROUNDS = 3  # batches met a mark other than believed -> read it -> push again, at most this often
MARK_KEY = PUSH_MARK_KEY  # the push mark the remote last acknowledged to this replica
DEFAULT_CHANGES_PER_BATCH = 2000


@dataclass
class PushOutcome:
    """What one push did: transactions sent, and what the pulls it made to settle conflicts brought."""

    pushed: int = 0
    pulled: bool = False
    pages_received: int = 0
    conflicts: list[Conflict] = field(default_factory=list)


def push(replica: PullContext, max_changes_per_batch: int = DEFAULT_CHANGES_PER_BATCH) -> Steps[PushOutcome]:
    """Send every pending local change, exactly once (the caller holds the sync lock)."""
    outcome = PushOutcome()
    last: errors.PushRejectedError | None = None
    for _round in range(PUSH_ROUNDS):
        try:
            yield from push_once(replica, max_changes_per_batch, outcome)
            return outcome
        except errors.PushRejectedError as exc:
            if exc.refusal is not None and last is not None and exc.refusal == last.refusal:
                raise  # the same refusal after a pull: the rebase cannot settle it
            last = exc
            pulled = yield from pull(replica, 0)
            outcome.pulled = True
            outcome.pages_received += pulled.pages_received
            outcome.conflicts += pulled.conflicts
    assert last is not None
    raise type(last)(
        f"{last} (still refused after {PUSH_ROUNDS} pull-and-retry rounds: the remote keeps changing "
        "these rows; every change not pushed stays pending, run sync again)",
        last.outbox_id,
    )


def push_once(replica: PullContext, max_changes_per_batch: int, outcome: PushOutcome) -> Steps[None]:
    """One attempt: every pending change in batches; ``outcome.pushed`` counts what the remote took."""
    state, db = replica.state, replica.db
    try:
        rows, gen = read_outbox(db)
        if not rows:
            return
        mark = believed_mark(state, gen)
        if mark is None:
            mark = yield from _read_mark(replica, gen)
        for _round in range(MARK_ROUNDS):
            try:
                yield from _push_rows(replica, rows, gen, mark, max_changes_per_batch, outcome)
                break
            except _MarkMovedError as moved:
                mark = moved.mark
                rows, gen = read_outbox(db)
        else:
            raise errors.SyncError(
                f"{replica.path}: the remote's push mark for client {state.client_id} moved during each of "
                f"{MARK_ROUNDS} pushes in a row: another replica pushes under the same client id (a copy of "
                "this one?); nothing more was pushed and every change not pushed stays pending"
            )
        state.last_push = time.time()
        state.pushes += 1
    except errors.Error:
        state.errors += 1
        raise
    finally:
        replica.count_bytes()
        # what a push changes here (the believed mark, ``forgotten``, counters) may come back
        # older after a power loss, which is safe: a stale mark fails a batch at its mark step
        # and the mark is read again, and rows the remote holds are dropped by it (``_forget``).
        # A push left in doubt is not: the next pull must fence it off, so that state reaches
        # the disk before anything else is sent.
        state.save(replica.path, durable=state.push_in_doubt)


class _MarkMovedError(Exception):
    """A batch met a push mark other than the one it was built on; ``mark`` is the one read since."""

    def __init__(self, mark: push_mod.Mark) -> None:
        super().__init__(f"the push mark is {mark}")
        self.mark = mark


def believed_mark(state: SyncState, gen: int) -> push_mod.Mark | None:
    """The push mark this replica believes the remote holds, or None when it must be read first:
    when the state keeps none (a push whose answer was lost drops it: that push may have
    committed, now or later), and when the one it keeps is from a later pull generation than
    the outbox's (files that do not belong together: the read tells)."""
    value = state.extra.get(MARK_KEY)
    if not isinstance(value, list) or len(value) != 2:
        return None
    mark_gen, change_id = value
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return None
    return (mark_gen, change_id) if mark_gen <= gen else None


def _believe(state: SyncState, mark: push_mod.Mark | None) -> None:
    if mark is None:
        state.extra.pop(MARK_KEY, None)
    else:
        state.extra[MARK_KEY] = [mark[0], mark[1]]


def _read_mark(replica: PullContext, gen: int) -> Steps[push_mod.Mark]:
    """Read the remote's push mark for this replica (one request) and believe it."""
    remote_gen, remote_change = yield from remote_mark(replica.state.client_id, replica.request_timeout)
    if remote_gen > gen:
        raise errors.SyncError(
            f"the remote records pull generation {remote_gen} for this client, newer than local {gen}"
        )
    mark = (remote_gen, remote_change)
    _believe(replica.state, mark)
    return mark


def _push_rows(
    replica: PullContext,
    rows: list[OutboxRow],
    gen: int,
    mark: push_mod.Mark,
    max_changes_per_batch: int,
    outcome: PushOutcome,
) -> Steps[None]:
    """Push ``rows`` in batches, each built on ``mark``, the remote's push mark as believed.

    Raises ``_MarkMovedError`` when a batch met another mark (nothing of it committed)."""
    state, db = replica.state, replica.db
    remote_gen, remote_change = mark
    if remote_gen == gen:
        done = [r for r in rows if r.gen == gen and r.id <= remote_change]
        if done:
            _forget(replica, done[-1].id)  # a previous push committed; its reply was lost
        rows = [r for r in rows if not (r.gen == gen and r.id <= remote_change)]
    if rows:
        yield from check_reserved_bytes(replica)
    combined = False
    parents = push_mod.local_parents(db.query)
    # one PRAGMA per table and push, not per row change (a backlog holds thousands of changes);
    # the rows were all captured before the push began, under the schema read here or an older one
    known: dict[str, list[tuple[str, int]]] = {}

    def columns(table: str) -> list[tuple[str, int]]:
        if table not in known:
            known[table] = table_columns(db, table)
        return known[table]

    while rows:
        part = chunk(rows, max_changes_per_batch)
        streamed = False
        while True:
            batch = push_mod.build_batch(
                part,
                columns,
                state.client_id,
                gen,
                epoch=state.push_epoch,
                parents=parents,
                mark=mark,
                fold=True,
            )
            body = push_mod.pipeline_body([batch.request])
            if len(body) <= push_mod.MAX_PUSH_BODY:
                break
            if len(part) == 1 and len(rows) > 1 and not combined:
                # later transactions may shrink it (it was deleted locally, say): push them
                # all as one remote transaction, as a rebase would have combined them
                combined = True
                rows = part = combine_pending(rows)
                if len(rows) == 1 and not rows[0].changeset and not rows[0].ddl:
                    _forget(replica, rows[0].id)  # they cancel out: nothing to send
                    rows = []
                    break
                continue
            if len(part) == 1:
                # one transaction bigger than a request: a remote that keeps a transaction
                # open between requests (Hrana batons) takes it as a chain of requests
                if not (yield from stream.probe_steps(replica.request_timeout)):
                    raise _too_big(replica.path, part[0], len(body))
                streamed = True
                # a stream may end a request between any two steps: no folded inserts (``push.fold_steps``)
                batch = push_mod.build_batch(
                    part,
                    columns,
                    state.client_id,
                    gen,
                    epoch=state.push_epoch,
                    parents=parents,
                    mark=mark,
                    fold=False,
                )
                break
            part = part[: len(part) // 2]  # fewer whole transactions per request
        if not rows:
            break
        try:
            if streamed:
                result = yield from stream.push_steps(
                    batch,
                    replica.request_timeout,
                    max_body=min(stream.STREAM_REQUEST_BYTES, push_mod.MAX_PUSH_BODY),
                )
            else:
                result = yield from pipeline_body(body, replica.request_timeout)
        except BaseException as exc:
            if not (isinstance(exc, errors.RemoteError) and exc.status < 500):
                # sent, and no answer (a network error, a 5xx, an interrupt, a cancelled
                # task): it may still commit, now or later, so the next pull fences it off,
                # and the next push reads the mark before it believes anything
                state.push_in_doubt = True
                _believe(state, None)
            raise
        failure = push_mod.batch_failure(result, batch)
        if failure is not None and failure[0] is not None and failure[0].mark:
            # nothing committed: the remote's mark, or its push epoch, is not what the batch expected
            seen = yield from _read_mark(replica, gen)
            if seen != mark:
                raise _MarkMovedError(seen)  # not a conflict: forget what the remote holds, push the rest
            # the mark is as believed, so the push epoch moved: a fence this replica does not know
            # of (its files restored from before it).  The pull push() makes next fences anew,
            # so the retry builds on an epoch the remote holds
            state.push_in_doubt = True
            raise errors.PushConflictError(
                f"{replica.path}: the remote's push fence for client {state.client_id} is not at the epoch "
                f"this replica last set ({state.push_epoch}); every change stays pending (outbox #{rows[0].id} on)",
                failure[0].outbox_id,
            )
        check_batch(result, batch)
        _forget(replica, batch.last_outbox_id)
        mark = (gen, batch.last_outbox_id)
        _believe(state, mark)
        outcome.pushed += len(part)
        rows = rows[len(part) :]


def _forget(replica: PullContext, last_id: int) -> None:
    """Drop the outbox rows up to ``last_id``, in a commit that does not wait for the disk.

    The DELETE commits atomically (WAL) but without syncing the WAL (``synchronous=NORMAL`` for
    this one commit; the next commit on the database syncs it along).  A power loss may bring
    the rows back, which is safe: every reader of the outbox drops rows the remote's push mark
    covers, the pusher (``_push_rows``: by the mark it believes, or by the one it reads when a
    batch fails its mark step) and the rebase of a pull (by the mark in the pulled image); until
    then they only count as pending.  A process that dies loses nothing (the WAL is written).
    """
    db = replica.db
    (level,) = db.query("PRAGMA synchronous")[0]
    db.query("PRAGMA synchronous=NORMAL")
    try:
        forget(db, last_id)
    finally:
        db.query(f"PRAGMA synchronous={int(level)}")
    replica.state.forgotten += 1  # saved with the push's state, under the sync lock


def _too_big(path: str, row: OutboxRow, size: int) -> errors.PushRejectedError:
    """A fixed refusal: ``push`` pulls once (the rebase combines pending transactions, so one
    deleted locally since cancels out) and raises it if it is still too big."""
    return errors.PushRejectedError(
        f"{path}: local transaction (outbox #{row.id}) makes a push of "
        f"{size / (1 << 20):.1f} MiB, over the {push_mod.MAX_PUSH_BODY / (1 << 20):g} "
        "MiB a sync server accepts in one request; a remote transaction cannot span requests, "
        "so it stays pending: split it into smaller transactions (delete it locally and redo "
        "it in parts)",
        row.id,
        refusal="over the push size limit",
    )


def check_reserved_bytes(replica: PullContext) -> Steps[None]:
    """Refuse to push from an encrypted replica into a remote database it could never pull.

    An encrypted page needs ``codec.reserved`` bytes at its end; a remote created without
    them (a default ``tursodb``) would take the push and then send pages this replica
    cannot hold.  When the remote was empty at the last pull, create its database first
    with our bookkeeping table only (no user data), read its page 1, and refuse if it
    reserves the wrong number of bytes.
    """
    state = replica.state
    codec = replica.db.codec
    if codec is None or state.synced_db_size > 0 or state.extra.get("remote_reserved") == codec.reserved:
        return
    yield from run_batch([statement(push_mod.LAST_CHANGE_TABLE, [])], replica.request_timeout)
    fetched = yield from fetch_pages(state, "", replica.request_timeout, page_ids=BitMap([0]))
    page1 = fetched.pages.get(1)
    reserved = page1[20] if page1 is not None else None
    if reserved != codec.reserved:
        raise errors.EncryptionError(
            f"{replica.path}: the remote database at {state.remote_url} reserves {reserved} bytes per page; "
            f"this encrypted replica needs {codec.reserved}, so it could push but never pull again. Nothing "
            f"was pushed and every change stays pending: use a remote created with {RESERVED_BYTES} reserved "
            "bytes (turso-sync serve does this), or a replica without encryption_key"
        )
    state.extra["remote_reserved"] = reserved


def check_batch(result: BatchResult, batch: push_mod.PushBatch) -> None:
    """Raise the error that says why a push batch did not commit (nothing when it did)."""
    failure = push_mod.batch_failure(result, batch)
    if failure is None:
        return
    source, message = failure
    if source is None:
        raise errors.PushRejectedError(
            f"the remote did not commit the push batch ({message}); every change stays pending", refusal=message
        )
    where = f"outbox #{source.outbox_id}"
    if source.outbox_last is not None and source.outbox_last != source.outbox_id:
        where = f"outbox #{source.outbox_id} to #{source.outbox_last} (inserts sent as one statement)"
    if source.guard:
        # known by its step index: the remote row is no longer what this change was made on (a
        # folded guard: one of the rows it covers; the pull that follows settles each row)
        raise errors.PushConflictError(
            f"conflict on {where}: the remote changed a row this change touches since the last pull; it stays pending",
            source.outbox_id,
        )
    raise errors.PushRejectedError(
        f"the remote rejected a pending change ({where}): {message}; it stays pending",
        source.outbox_id,
        refusal=message,
    )
