"""The sync agent: bootstrap, pull, push and rebase for one local replica.

Pull is physical (pages, Turso's protocol), push is logical (Hrana batches).  A pull with
pending local changes: under the write lock, rebuild the synced base (frame log + revert
pages), apply the pulled pages, replay the outbox on top in memory (``rebase.py``), and install
the page difference as one atomic transaction.  Readers keep reading throughout; a failure at
any step before the install leaves the database untouched.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import apsw
from google.protobuf.message import DecodeError
from pyroaring import BitMap

from .. import errors
from ..crypto.page_codec import PageCodec
from ..local.capture import CONFLICTS_TABLE, META_TABLE, OUTBOX_TABLE, SCHEMA
from ..local.connection import Connection
from ..local.engine import LocalDatabase
from ..local.lazy import clear_fetcher, set_fetcher
from ..local.presence import PresenceMap
from ..local.vfs import realpath
from ..wire import pull_updates_pb2 as pb
from ..wire.delimited import DelimitedDecoder
from ..wire.hrana import encode_value
from ..wire.pull import PageEncoding, PullHeader, PullRequest, decode_zstd_page
from . import push as push_mod
from .files import ReplicaFiles
from .overlay import OverlayImage
from .partial import PartialSync
from .rebase import Conflict, OutboxRow, Rebaser, Resolver, check_policy, combine_pending, row_from_json
from .state import SyncState, drop_reverts, read_revert, write_revert
from .transport import HttpxTransport, Transport

P = 4096
PUSH_ROUNDS = 5  # conflict -> pull (rebase) -> push again, at most this many times per push()
SCHEMA_COOKIE = 40  # header offset of the schema cookie


@dataclass
class SyncStats:
    """What ``stats()`` reports."""

    revision: str
    pending_changes: int
    network_sent_bytes: int
    network_received_bytes: int
    last_pull_unix_time: float | None
    last_push_unix_time: float | None
    conflicts: int
    pulls: int
    pushes: int
    pages_present: int | None = None  # partial replicas: bootstrap pages held locally
    pages_total: int | None = None  # partial replicas: pages of the bootstrap revision
    lazy_requests: int = 0  # partial replicas: requests made to fetch missing pages
    lazy_pages_fetched: int = 0
    lazy_bytes_fetched: int = 0


@dataclass
class PullResult:
    revision: str
    db_size: int
    pages: dict[int, bytes]


class Replica:
    """One local replica and its remote."""

    def __init__(
        self,
        path: str,
        remote_url: str | None,
        *,
        auth_token: str | None = None,
        client_name: str | None = None,
        long_poll_timeout_ms: int | None = None,
        bootstrap_if_empty: bool = True,
        encryption_key: str | None = None,
        cipher: str = "aes256gcm",
        conflict: str | Resolver = "last_push_wins",
        transport: Transport | None = None,
        request_timeout: float = 30.0,
        partial: PartialSync | None = None,
    ) -> None:
        check_policy(conflict)
        self.path = realpath(path)
        self._mutex = threading.RLock()
        self._lock_fd: int | None = None
        self._lock_depth = 0
        self.policy = conflict
        self._pulled_in_push = False  # the last push() pulled to settle a conflict
        self._pushed_in_round = 0
        self.long_poll_timeout_ms = long_poll_timeout_ms or 0
        self.request_timeout = request_timeout
        self._key: dict[str, Any] = {"encryption_key": encryption_key, "cipher": cipher}
        state = SyncState.load(self.path)
        if state is not None and state.bootstrapping:
            self._remove_local_files()  # a bootstrap that never finished: start it over
            state = None
        if state is None:
            if remote_url is None:
                raise errors.ProgrammingError(f"{self.path} is not a replica yet: pass remote_url to create it")
            name = client_name or "turso-sync"
            state = SyncState(remote_url=remote_url, client_id=f"{name}-{uuid.uuid4()}")
        elif remote_url is not None and remote_url != state.remote_url:
            state.remote_url = remote_url
        self.state = state
        self.transport: Transport = transport or HttpxTransport(
            state.remote_url, auth_token=auth_token, client_name=client_name or "turso-sync"
        )
        # missing pages of a partial replica are fetched through this replica's transport
        set_fetcher(self.path, self._fetch_pinned)
        try:
            if not os.path.exists(self.path) or not os.path.exists(SyncState.path_for(self.path)):
                if os.path.exists(self.path):
                    raise errors.ProgrammingError(
                        f"{self.path} exists but is not a replica; choose a new path to bootstrap into"
                    )
                if partial is not None and bootstrap_if_empty:
                    self._bootstrap_partial(partial)
                elif bootstrap_if_empty:
                    self._bootstrap()
                else:
                    self._create_deferred()
            self.db = LocalDatabase(self.path, **self._key)
            self._configure_lazy()
            self._ensure_sync_tables()
        except BaseException:
            clear_fetcher(self.path, self._fetch_pinned)
            raise

    def _configure_lazy(self) -> None:
        lazy = self.db._conn._state.lazy
        if lazy is None or self.state.partial is None:
            return
        options = PartialSync.from_json(self.state.partial)
        lazy.segment_pages = options.segment_pages
        lazy.prefetch = options.prefetch

    # --- files --------------------------------------------------------------------------------

    def _remove_local_files(self) -> None:
        """Every file of an unfinished bootstrap, but the sync lock another process may hold."""
        files = ReplicaFiles(self.path)
        files.remove(keep={files.sync_lock})

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the replica's sync lock (across processes) with the state freshly read.

        Two agents on one replica (an app and the daemon, say) never push the same change
        twice or rebuild from a base another one already moved.
        """
        with self._mutex:
            if self._lock_depth == 0:
                fd = os.open(self.path + "-sync.lock", os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self._lock_fd = fd
                fresh = SyncState.load(self.path)
                if fresh is not None and not fresh.bootstrapping:
                    fresh.remote_url = self.state.remote_url
                    self.state = fresh
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0 and self._lock_fd is not None:
                    os.close(self._lock_fd)  # drops the flock
                    self._lock_fd = None

    def _codec(self) -> PageCodec | None:
        return self.db.codec

    def close(self) -> None:
        clear_fetcher(self.path, self._fetch_pinned)
        self.db.close()
        self.transport.close()

    # --- bootstrap -----------------------------------------------------------------------------

    def _bootstrap(self) -> None:
        state = self.state
        state.bootstrapping = True
        state.save(self.path)
        result = self._fetch("")
        if result.db_size == 0 and not result.pages:
            self._create_deferred()  # the remote database is still empty
            state.synced_revision = result.revision
            state.bootstrapping = False
            state.touch_pull()
            self._count_bytes()
            state.save(self.path)
            return
        if 1 not in result.pages:
            raise errors.SyncError(f"the remote at {state.remote_url} sent no database (size {result.db_size})")
        missing = [p for p in range(1, result.db_size + 1) if p not in result.pages]
        if missing:
            raise errors.SyncError(f"bootstrap is missing {len(missing)} pages (first: {missing[0]}); nothing written")
        page1 = result.pages[1]
        if int.from_bytes(page1[16:18], "big") != P:
            raise errors.SyncError("the remote database does not use 4096-byte pages")
        codec = self._new_codec()
        if codec is not None and page1[20] != codec.reserved:
            raise errors.EncryptionError(
                f"the remote database reserves {page1[20]} bytes per page; an encrypted replica needs "
                f"{codec.reserved} (create the primary database with 28 reserved bytes, as turso-sync serve does)"
            )
        tmp = self.path + ".bootstrap"
        with open(tmp, "wb") as f:
            for pgno in range(1, result.db_size + 1):
                page = _wal_mode_page(result.pages[pgno], pgno)
                f.write(codec.encrypt(page, pgno) if codec is not None else page)
            f.flush()
            os.fsync(f.fileno())
        for suffix in ("-wal", "-shm", "-frames"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path + suffix)
        os.replace(tmp, self.path)
        self._finish_bootstrap(result)

    def _finish_bootstrap(self, result: PullResult) -> None:
        """The file is in place: start its frame log (seq 0 = the remote state), then record the sync."""
        db = LocalDatabase(self.path, **self._key)
        db.close()
        state = self.state
        state.synced_revision = result.revision
        state.synced_seq = 0
        state.synced_db_size = result.db_size
        state.revert_seq = None
        state.bootstrapping = False
        state.touch_pull()
        self._count_bytes()
        state.save(self.path)

    def _bootstrap_partial(self, options: PartialSync) -> None:
        """Bootstrap a prefix (or a query's pages); every other page is fetched on first read.

        The database file is created at full size, the received pages written, and the
        presence bitmap (with the bootstrap revision every later fetch is pinned to) saved
        before the file takes its name.  Holes are never trusted, only the bitmap.
        """
        state = self.state
        state.bootstrapping = True
        state.save(self.path)
        result = self._fetch("", page_ids=options.page_selector(), query=options.query or "")
        if result.db_size == 0 and not result.pages:
            self._create_deferred()  # the remote database is still empty: nothing to be partial about
            state.synced_revision = result.revision
            state.bootstrapping = False
            state.touch_pull()
            self._count_bytes()
            state.save(self.path)
            return
        if 1 not in result.pages:
            raise errors.SyncError(f"the remote at {state.remote_url} sent no page 1 (size {result.db_size})")
        codec = self._new_codec()
        self._check_page1(result.pages[1], codec)
        tmp = self.path + ".bootstrap"
        with open(tmp, "wb") as f:
            f.truncate(result.db_size * P)
            for pgno in sorted(result.pages):
                if pgno > result.db_size:
                    continue
                page = _wal_mode_page(result.pages[pgno], pgno)
                os.pwrite(f.fileno(), codec.encrypt(page, pgno) if codec is not None else page, (pgno - 1) * P)
            f.flush()
            os.fsync(f.fileno())
        for suffix in ("-wal", "-shm", "-frames", "-present.lock"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path + suffix)
        present = BitMap(p for p in result.pages if p <= result.db_size)
        PresenceMap(result.db_size, result.revision, present).save(self.path)
        os.replace(tmp, self.path)
        state.partial = options.to_json()
        self._finish_bootstrap(result)

    def _check_page1(self, page1: bytes, codec: PageCodec | None) -> None:
        if int.from_bytes(page1[16:18], "big") != P:
            raise errors.SyncError("the remote database does not use 4096-byte pages")
        if codec is not None and page1[20] != codec.reserved:
            raise errors.EncryptionError(
                f"the remote database reserves {page1[20]} bytes per page; an encrypted replica needs "
                f"{codec.reserved} (create the primary database with 28 reserved bytes, as turso-sync serve does)"
            )

    def _fetch_pinned(self, pgnos: list[int], revision: str) -> dict[int, bytes]:
        """Images of ``pgnos`` (1-based) at ``revision``: a partial replica's lazy fetch."""
        try:
            result = self._fetch("", server_revision=revision, page_ids=BitMap(p - 1 for p in pgnos))
        except errors.RemoteError as exc:
            if exc.status in (409, 410):
                raise errors.SyncError(
                    f"the remote no longer serves revision {revision}, which this partial replica was "
                    f"bootstrapped from ({exc}); bootstrap a new replica (pages already local keep working)"
                ) from None
            raise
        return {p: _wal_mode_page(page, p) for p, page in result.pages.items() if p in set(pgnos)}

    def _create_deferred(self) -> None:
        """A local-only replica that has never talked to the remote (bootstrap_if_empty=False)."""
        db = LocalDatabase(self.path, reserved_bytes=28, **self._key)
        self.state.synced_revision = ""
        self.state.synced_seq = 0
        self.state.synced_db_size = 0  # the remote has no pages yet
        db.close()
        self.state.save(self.path)

    def _new_codec(self) -> PageCodec | None:
        if self._key["encryption_key"] is None:
            return None
        from ..crypto.page_codec import parse_key

        spec, key = parse_key(self._key["encryption_key"], self._key["cipher"] or "aes256gcm")
        return PageCodec(spec, key)

    def _ensure_sync_tables(self) -> None:
        conn = self.db._conn.apsw_connection
        if conn.execute("SELECT 1 FROM sqlite_schema WHERE name=?", (META_TABLE,)).fetchall():
            return
        conn.execute("BEGIN IMMEDIATE")
        for statement in SCHEMA:
            conn.execute(statement)
        conn.execute(f"INSERT OR IGNORE INTO {META_TABLE}(key, value) VALUES ('client_id', ?)", (self.state.client_id,))
        conn.execute(f"INSERT OR IGNORE INTO {META_TABLE}(key, value) VALUES ('pull_gen', 0)")
        conn.execute("COMMIT")
        self.db._conn.enable_capture()

    def connect(self, **kwargs: Any) -> Connection:
        """A DB-API connection to the replica (its writes are captured for push)."""
        return self.db.connect(**kwargs)

    # --- network ------------------------------------------------------------------------------

    def _fetch(
        self,
        client_revision: str,
        long_poll_ms: int = 0,
        *,
        server_revision: str = "",
        page_ids: BitMap | None = None,
        query: str = "",
    ) -> PullResult:
        want_zstd = self.state.zstd is not False
        request = PullRequest(
            encoding=PageEncoding.ZSTD if want_zstd else PageEncoding.RAW,
            server_revision=server_revision,
            client_revision=client_revision,
            long_poll_timeout_ms=long_poll_ms,
            page_ids=page_ids,
            query_selector=query,
        )
        timeout = self.request_timeout + long_poll_ms / 1000
        try:
            response = self.transport.request(
                "/pull-updates", request.to_bytes(), "application/protobuf", timeout, True
            )
        except errors.RemoteError as exc:
            if want_zstd and exc.status in (400, 415, 422, 500, 501):
                self.state.zstd = False  # a server without our zstd extension: speak raw
                return self._fetch(
                    client_revision, long_poll_ms, server_revision=server_revision, page_ids=page_ids, query=query
                )
            raise
        return self._decode_pull(response.body)

    def _decode_pull(self, body: bytes) -> PullResult:
        decoder = DelimitedDecoder(max_message=1 << 20)
        messages = decoder.feed(body)
        if decoder.pending:
            raise errors.NetworkError("pull-updates response ended in the middle of a message")
        if not messages:
            raise errors.NetworkError("pull-updates response carried no header")
        header = PullHeader.from_message(messages[0])
        if self.state.zstd is None:
            self.state.zstd = header.encoding == PageEncoding.ZSTD
        pages: dict[int, bytes] = {}
        for raw in messages[1:]:
            msg = pb.PageData()
            try:
                msg.ParseFromString(raw)
            except DecodeError as exc:
                raise errors.ProtocolError(f"pull-updates response holds a malformed page record: {exc}") from None
            page = msg.encoded_page
            if header.encoding == PageEncoding.ZSTD:
                page = decode_zstd_page(page)
            if len(page) != P:
                raise errors.ProtocolError(f"page {msg.page_id + 1} is {len(page)} bytes, not {P}")
            pages[msg.page_id + 1] = page
        return PullResult(header.server_revision, header.db_size, pages)

    def _pipeline(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self._pipeline_body(push_mod.pipeline_body(requests))

    def _pipeline_body(self, body: bytes) -> list[dict[str, Any]]:
        response = self.transport.request("/v2/pipeline", body, "application/json", self.request_timeout, False)
        try:
            results = json.loads(response.body)["results"]
        except (ValueError, KeyError, TypeError):
            raise errors.ProtocolError("pipeline response is not Hrana JSON") from None
        return list(results)

    def _count_bytes(self) -> None:
        stats = self.transport.stats
        self.state.bytes_sent += stats.sent
        self.state.bytes_received += stats.received
        stats.sent = stats.received = 0

    # --- pull ---------------------------------------------------------------------------------

    def pull(self, long_poll_timeout_ms: int | None = None) -> bool:
        """Fetch remote changes and apply them under the pending local ones; True if any arrived.

        The network wait (long poll) happens without the sync lock; applying takes it.
        """
        wait = self.long_poll_timeout_ms if long_poll_timeout_ms is None else long_poll_timeout_ms
        fresh = SyncState.load(self.path) or self.state
        since, forgotten = fresh.synced_revision, fresh.forgotten
        try:
            result = self._fetch(since, wait if since else 0)
        except errors.Error:
            with self.exclusive():
                self.state.errors += 1
                self._count_bytes()
                self.state.save(self.path)
            raise
        with self.exclusive():
            if self.state.push_in_doubt:
                # a push batch may still be on its way: fence it off, then fetch what it left
                self._fence_pushes()
                since = ""
            if self.state.synced_revision != since or self.state.forgotten != forgotten:
                # another agent pulled, or pushed (so the outbox lost changes the fetched revision
                # may not hold yet): fetch again, now under the lock
                result = self._fetch(self.state.synced_revision, 0)
            if result.revision == self.state.synced_revision and not result.pages:
                self.state.touch_pull()
                self._count_bytes()
                self.state.save(self.path)
                return False
            self._apply(result)
            self._bound_wal()
            return True

    def _bound_wal(self, limit: int = 1 << 20) -> None:
        """Checkpoint once the WAL passes ``limit`` bytes.

        Every pull reads the committed WAL (to rebuild the synced base and to install), and a
        replica that only pulls small changes never reaches SQLite's autocheckpoint, so without
        this each pull would cost more than the last.  Busy readers just postpone it.
        """
        try:
            size = os.path.getsize(self.path + "-wal")
        except FileNotFoundError:
            return
        if size > limit:
            with contextlib.suppress(errors.OperationalError):
                self.db.checkpoint()

    def _apply(self, result: PullResult) -> None:
        state = self.state
        codec = self._codec()
        page1 = result.pages.get(1)
        if codec is not None and page1 is not None and page1[20] != codec.reserved:
            raise errors.EncryptionError(
                f"the remote database reserves {page1[20]} bytes per page; an encrypted replica needs {codec.reserved}"
            )
        with self.db.write_lock() as conn:
            current = self.db.page_reader()
            current_size = int(conn.execute("PRAGMA page_count").fetchall()[0][0])  # type: ignore[arg-type]
            base_pages, base_size = self._synced_base_pages()
            pulled = {p: _wal_mode_page(v, p) for p, v in result.pages.items()}

            def remote_page(pgno: int) -> bytes:
                page = pulled.get(pgno) or base_pages.get(pgno)
                return page if page is not None else current(pgno)

            def base_image() -> OverlayImage:
                return OverlayImage(lambda p: base_pages.get(p) or current(p), base_size)

            rows, meta, old_conflicts = _read_sync_tables(conn)
            remote = OverlayImage(remote_page, result.db_size)
            rebaser = Rebaser(
                remote,
                client_id=state.client_id,
                policy=self.policy,
                revision=result.revision,
                base_image=base_image,
                reserved=current(1)[20] if current_size else 0,
            )
            outcome = rebaser.run(rows, meta, old_conflicts)
            final = outcome.image
            final_size = final.size

            def final_page(pgno: int) -> bytes:
                written = final.written.get(pgno)
                return _wal_mode_page(written, pgno) if written is not None else remote_page(pgno)

            changed: dict[int, bytes] = {}
            for pgno in sorted({1, *pulled, *base_pages, *final.written}):
                if pgno > final_size:
                    continue
                image = final_page(pgno)
                if pgno == 1:
                    # a new schema cookie makes every other connection re-read the schema
                    cookie = max(_u32(current(1), SCHEMA_COOKIE) if current_size else 0, _u32(image, SCHEMA_COOKIE))
                    image = image[:SCHEMA_COOKIE] + (cookie + 1).to_bytes(4, "big") + image[SCHEMA_COOKIE + 4 :]
                if pgno > current_size or image != current(pgno):
                    changed[pgno] = image
            seq = self.db.install_locked(conn, changed, final_size)

            def installed(pgno: int) -> bytes:
                return changed.get(pgno) or final_page(pgno)

            # the pure remote state = what was installed, with these pages put back
            revert = {
                pgno: remote_page(pgno)
                for pgno in sorted({1, *final.written, *range(final_size + 1, result.db_size + 1)})
                if pgno <= result.db_size and (pgno > final_size or installed(pgno) != remote_page(pgno))
            }
            write_revert(self.path, seq, revert, self._codec())
            state.synced_revision = result.revision
            state.synced_seq = seq
            state.synced_db_size = result.db_size
            state.revert_seq = seq
            state.touch_pull()
            self._count_bytes()
            state.save(self.path)
            drop_reverts(self.path, seq)
        self.db.prune_history(seq)  # nothing before the new synced base is needed any more
        self.last_conflicts = outcome.conflicts

    def _synced_base_pages(self) -> tuple[dict[int, bytes], int]:
        """Images that turn the current state back into the synced remote state, and its size."""
        pages, _size = self.db.images_at(self.state.synced_seq)
        if self.state.revert_seq is not None:
            pages.update(read_revert(self.path, self.state.revert_seq, self._codec()))
        return pages, self.state.synced_db_size

    # --- push ---------------------------------------------------------------------------------

    def push(self, max_changes_per_batch: int = 2000) -> int:
        """Send every pending local change, exactly once; return how many transactions were pushed.

        Each change is conditional on the remote row still holding the values it was made
        against (compare-and-set, see ``push.py``).  When a remote change it has not seen is in
        the way (a conflict), or the remote refuses a change (a constraint its state breaks),
        push pulls: the rebase settles the clash under the conflict policy and journals it, and
        push tries again, at most ``PUSH_ROUNDS`` times.  Then it raises, and every change not
        yet pushed stays pending.
        """
        with self.exclusive():
            self._pulled_in_push = False
            pushed = 0
            last: errors.PushRejectedError | None = None
            for _round in range(PUSH_ROUNDS):
                self._pushed_in_round = 0
                try:
                    return pushed + self._push_once(max_changes_per_batch)
                except errors.PushRejectedError as exc:
                    pushed += self._pushed_in_round
                    if exc.refusal is not None and last is not None and exc.refusal == last.refusal:
                        raise  # the same refusal after a pull: the rebase cannot settle it
                    last = exc
                    self.pull(0)
                    self._pulled_in_push = True
            assert last is not None
            raise type(last)(
                f"{last} (still refused after {PUSH_ROUNDS} pull-and-retry rounds: the remote keeps changing "
                "these rows; every change not pushed stays pending, run sync again)",
                last.outbox_id,
            )

    def _push_once(self, max_changes_per_batch: int) -> int:
        conn = self.db._conn.apsw_connection
        rows, meta, _ = _read_sync_tables(conn)
        pushed = 0
        try:
            if not rows:
                return 0
            gen = int(meta.get("pull_gen", 0))
            remote_gen, remote_change = self._remote_mark()
            if remote_gen > gen:
                raise errors.SyncError(
                    f"the remote records pull generation {remote_gen} for this client, newer than local {gen}"
                )
            if remote_gen == gen:
                done = [r for r in rows if r.gen == gen and r.id <= remote_change]
                if done:
                    self._forget_pushed(done[-1].id)  # a previous push committed; its reply was lost
                rows = [r for r in rows if not (r.gen == gen and r.id <= remote_change)]
            if rows:
                self._check_reserved_bytes()
            combined = False
            while rows:
                chunk = _chunk(rows, max_changes_per_batch)
                while True:
                    batch = push_mod.build_batch(
                        chunk, self._columns, self.state.client_id, gen, encode_value, self.state.push_epoch
                    )
                    body = push_mod.pipeline_body([push_mod.batch_request(batch.steps)])
                    if len(body) <= push_mod.MAX_PUSH_BODY:
                        break
                    if len(chunk) == 1 and len(rows) > 1 and not combined:
                        # later transactions may shrink it (it was deleted locally, say): push them
                        # all as one remote transaction, as a rebase would have combined them
                        combined = True
                        rows = chunk = combine_pending(rows)
                        if len(rows) == 1 and not rows[0].changeset and not rows[0].ddl:
                            self._forget_pushed(rows[0].id)  # they cancel out: nothing to send
                            rows = []
                            break
                        continue
                    if len(chunk) == 1:
                        # a fixed refusal: push() pulls once (the rebase combines pending transactions,
                        # so one deleted locally since cancels out) and raises if it is still too big
                        raise errors.PushRejectedError(
                            f"{self.path}: local transaction (outbox #{chunk[0].id}) makes a push of "
                            f"{len(body) / (1 << 20):.1f} MiB, over the {push_mod.MAX_PUSH_BODY / (1 << 20):g} "
                            "MiB a sync server accepts in one request; a remote transaction cannot span requests, "
                            "so it stays pending: split it into smaller transactions (delete it locally and redo "
                            "it in parts)",
                            chunk[0].id,
                            refusal="over the push size limit",
                        )
                    chunk = chunk[: len(chunk) // 2]  # fewer whole transactions per request
                if not rows:
                    break
                try:
                    results = self._pipeline_body(body)
                except (errors.NetworkError, errors.RemoteError) as exc:
                    if isinstance(exc, errors.NetworkError) or exc.status >= 500:
                        # it may still commit, now or later: the next pull fences it off first
                        self.state.push_in_doubt = True
                    raise
                self._check_batch(results, batch)
                self._forget_pushed(batch.last_outbox_id)
                pushed += len(chunk)
                self._pushed_in_round = pushed
                rows = rows[len(chunk) :]
            self.state.last_push = time.time()
            self.state.pushes += 1
            return pushed
        except errors.Error:
            self.state.errors += 1
            raise
        finally:
            self._count_bytes()
            self.state.save(self.path)

    def _fence_pushes(self) -> None:
        """Move the push epoch on, so no push batch sent before can commit any more.

        A rebase replays every pending change the remote has not recorded; a batch that was
        sent, whose answer never came, and that commits after the rebase, would put those
        changes there a second time.  Once the remote holds the new epoch, such a batch fails
        its fence guard; and whatever it committed before is in the state the pull fetches next.
        """
        epoch = (self.state.push_epoch or 0) + 1
        steps = push_mod.fence_batch(self.state.client_id, epoch, encode_value)
        try:
            result = _batch_result(self._pipeline([push_mod.batch_request(steps)]))
        finally:
            self._count_bytes()
        if any(error is not None for error in result["step_errors"][:-1]):
            raise errors.SyncError(
                f"{self.path}: the remote refused to record the push fence ({result['step_errors']}); "
                "nothing was pulled, try again"
            )
        self.state.push_epoch = epoch
        self.state.push_in_doubt = False
        self.state.save(self.path)

    def _check_reserved_bytes(self) -> None:
        """Refuse to push from an encrypted replica into a remote database it could never pull.

        An encrypted page needs ``codec.reserved`` bytes at its end; a remote created without
        them (a default ``tursodb``) would take the push and then send pages this replica
        cannot hold.  When the remote was empty at the last pull, create its database first
        with our bookkeeping table only (no user data), read its page 1, and refuse if it
        reserves the wrong number of bytes.
        """
        codec = self._codec()
        if codec is None or self.state.synced_db_size > 0 or self.state.extra.get("remote_reserved") == codec.reserved:
            return
        step = push_mod._step(push_mod.LAST_CHANGE_TABLE, [], None, encode_value)
        _batch_result(self._pipeline([push_mod.batch_request([step])]))
        page1 = self._fetch("", 0, page_ids=BitMap([0])).pages.get(1)
        reserved = page1[20] if page1 is not None else None
        if reserved != codec.reserved:
            raise errors.EncryptionError(
                f"{self.path}: the remote database at {self.state.remote_url} reserves {reserved} bytes per page; "
                f"this encrypted replica needs {codec.reserved}, so it could push but never pull again. Nothing "
                "was pushed and every change stays pending: use a remote created with 28 reserved bytes (turso-sync "
                "serve does this), or a replica without encryption_key"
            )
        self.state.extra["remote_reserved"] = reserved

    def _columns(self, table: str) -> list[tuple[str, int]]:
        conn = self.db._conn.apsw_connection
        return [(r[1], r[5]) for r in conn.execute(f"PRAGMA main.table_info({push_mod.quote(table)})")]

    def _remote_mark(self) -> tuple[int, int]:
        step = push_mod._step(push_mod.LAST_CHANGE_SELECT, [self.state.client_id], None, encode_value)
        step["stmt"]["want_rows"] = True
        results = self._pipeline([push_mod.batch_request([step])])
        batch = _batch_result(results)
        error = batch["step_errors"][0]
        if error:
            # the one reading of a message: a remote that never took a push has no mark table, and
            # SQLite reports that as the generic SQLITE_ERROR (no code of its own to test instead)
            if "no such table" in str(error.get("message", "")):
                return 0, 0
            raise errors.RemoteError(200, json.dumps(error).encode(), "/v2/pipeline")
        rows = batch["step_results"][0]["rows"]
        if not rows:
            return 0, 0
        return int(rows[0][0]["value"]), int(rows[0][1]["value"])

    def _check_batch(self, results: list[dict[str, Any]], batch: push_mod.PushBatch) -> None:
        failure = push_mod.batch_failure(_batch_result(results), batch)
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

    def _forget_pushed(self, last_id: int) -> None:
        conn = self.db._conn.apsw_connection
        conn.execute(f"DELETE FROM {OUTBOX_TABLE} WHERE id <= ?", (last_id,))
        self.state.forgotten += 1  # saved with the push's state, under the sync lock

    # --- the rest -----------------------------------------------------------------------------

    def sync(self) -> bool:
        """Push, then pull; True if remote changes arrived.

        A push that meets a remote change it has not seen pulls first (the rebase settles the
        conflict under the policy and journals it) and pushes again, so ``sync()``, ``push()``
        and ``pull()`` reach the same outcome for the same history.
        """
        with self.exclusive():
            self.push()
            pulled_in_push = self._pulled_in_push
            return self.pull(0) or pulled_in_push

    def stats(self) -> SyncStats:
        conn = self.db._conn.apsw_connection
        pending = int(conn.execute(f"SELECT count(*) FROM {OUTBOX_TABLE}").fetchall()[0][0] or 0)
        conflicts = int(conn.execute(f"SELECT count(*) FROM {CONFLICTS_TABLE}").fetchall()[0][0] or 0)
        s = SyncState.load(self.path) or self.state  # another agent may have synced meanwhile
        partial: dict[str, Any] = {}
        lazy = self.db._conn._state.lazy
        if lazy is not None:
            with lazy.locked():
                m = lazy.map
                partial = {
                    "pages_present": m.present_count(),
                    "pages_total": m.boot_size,
                    "lazy_requests": m.requests,
                    "lazy_pages_fetched": m.pages_fetched,
                    "lazy_bytes_fetched": m.bytes_fetched,
                }
        return SyncStats(
            s.synced_revision,
            pending,
            s.bytes_sent,
            s.bytes_received,
            s.last_pull,
            s.last_push,
            conflicts,
            s.pulls,
            s.pushes,
            **partial,
        )

    def conflicts(self) -> list[Conflict]:
        """The conflict journal, oldest first."""
        conn = self.db._conn.apsw_connection
        out = []
        for row in conn.execute(
            f"SELECT id, at, revision, tbl, pk, kind, resolution, base, local, remote, result "
            f"FROM {CONFLICTS_TABLE} ORDER BY id"
        ):
            cid, at, revision, table, pk, kind, resolution, base, local, remote, result = row
            out.append(
                Conflict(
                    table,
                    row_from_json(pk) or {},
                    kind,
                    resolution,
                    row_from_json(base),
                    row_from_json(local),
                    row_from_json(remote),
                    row_from_json(result),
                    revision or "",
                    at,
                    cid,
                )
            )
        return out

    def checkpoint(self) -> None:
        self.db.checkpoint()


def _chunk(rows: list[OutboxRow], limit: int) -> list[OutboxRow]:
    """Whole transactions, at least one, up to about ``limit`` row changes."""
    out: list[OutboxRow] = []
    total = 0
    for row in rows:
        size = max(1, len(row.changeset) // 64)
        if out and total + size > limit:
            break
        out.append(row)
        total += size
    return out


def _batch_result(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The result of the first (batch) request; RemoteError if it failed, ProtocolError if malformed."""
    try:
        if not results or results[0].get("type") != "ok":
            error = results[0].get("error", {}) if results else {}
            raise errors.RemoteError(200, json.dumps(error).encode(), "/v2/pipeline")
        result = dict(results[0]["response"]["result"])
        if not isinstance(result.get("step_results"), list) or not isinstance(result.get("step_errors"), list):
            raise TypeError("step_results and step_errors must be lists")
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise errors.ProtocolError(
            f"the /v2/pipeline response is not a Hrana batch result ({exc}); is the remote a Turso sync server?"
        ) from None
    return result


def _read_sync_tables(conn: apsw.Connection) -> tuple[list[OutboxRow], dict[str, Any], list[tuple[Any, ...]]]:
    rows = [
        OutboxRow(r[0], r[1], json.loads(r[2]), r[3])
        for r in conn.execute(f"SELECT id, gen, ddl, changeset FROM {OUTBOX_TABLE} ORDER BY id")
    ]
    meta: dict[str, Any] = {str(k): v for k, v in conn.execute(f"SELECT key, value FROM {META_TABLE}")}
    conflicts = list(conn.execute(f"SELECT * FROM {CONFLICTS_TABLE} ORDER BY id"))
    return rows, meta, conflicts


def _wal_mode_page(page: bytes, pgno: int) -> bytes:
    """Page 1 with the header's read/write versions set to WAL (2), as every replica runs in WAL."""
    if pgno != 1 or page[18:20] == b"\x02\x02":
        return page
    return page[:18] + b"\x02\x02" + page[20:]


def _u32(image: bytes | bytearray, offset: int) -> int:
    return int.from_bytes(image[offset : offset + 4], "big")
