"""The pusher: outbox -> batch -> send -> record, exactly once, as a sans-IO step.

``push`` reads how far the remote got (``turso_sync_last_change_id``), forgets the rows it
already holds (a previous push committed and its answer was lost), cuts the rest into
requests of whole transactions (``outbox.chunk``), builds each batch (``push.py``: guarded,
all-or-nothing), sends it, and forgets the rows once the remote acknowledged them.  A batch
whose answer never came marks the replica ``push_in_doubt`` (the next pull fences it off).
When the remote refuses a change (a conflict or a constraint), ``push`` pulls (the rebase
settles it under the policy and journals it) and tries again, at most ``PUSH_ROUNDS`` times.
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
from .outbox import chunk, forget, read_pending, table_columns
from .pull import PullContext, pull
from .rebase import Conflict, OutboxRow, combine_pending
from .remote import fetch_pages, pipeline_body, remote_mark, run_batch, statement

PUSH_ROUNDS = 5  # conflict -> pull (rebase) -> push again, at most this many times per push()
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
        pending = read_pending(db)
        rows = pending.rows
        if not rows:
            return
        gen = pending.pull_gen
        remote_gen, remote_change = yield from remote_mark(state.client_id, replica.request_timeout)
        if remote_gen > gen:
            raise errors.SyncError(
                f"the remote records pull generation {remote_gen} for this client, newer than local {gen}"
            )
        if remote_gen == gen:
            done = [r for r in rows if r.gen == gen and r.id <= remote_change]
            if done:
                _forget(replica, done[-1].id)  # a previous push committed; its reply was lost
            rows = [r for r in rows if not (r.gen == gen and r.id <= remote_change)]
        if rows:
            yield from check_reserved_bytes(replica)
        combined = False
        parents = push_mod.local_parents(db.query)
        while rows:
            part = chunk(rows, max_changes_per_batch)
            streamed = False
            while True:
                batch = push_mod.build_batch(
                    part,
                    lambda table: table_columns(db, table),
                    state.client_id,
                    gen,
                    epoch=state.push_epoch,
                    parents=parents,
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
                    # task): it may still commit, now or later, so the next pull fences it off
                    state.push_in_doubt = True
                raise
            check_batch(result, batch)
            _forget(replica, batch.last_outbox_id)
            outcome.pushed += len(part)
            rows = rows[len(part) :]
        state.last_push = time.time()
        state.pushes += 1
    except errors.Error:
        state.errors += 1
        raise
    finally:
        replica.count_bytes()
        state.save(replica.path)


def _forget(replica: PullContext, last_id: int) -> None:
    forget(replica.db, last_id)
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
    if source.guard:
        # known by its step index: the remote row is no longer what this change was made on
        raise errors.PushConflictError(
            f"conflict on outbox #{source.outbox_id}: the remote changed a row this change touches "
            "since the last pull; it stays pending",
            source.outbox_id,
        )
    raise errors.PushRejectedError(
        f"the remote rejected a pending change (outbox #{source.outbox_id}): {message}; it stays pending",
        source.outbox_id,
        refusal=message,
    )
