"""What a replica remembers beside its database: ``<db>-sync`` (JSON) and, now and then, ``<db>-revert-<seq>``.

``<db>-sync`` holds no secret (no token, no key): the remote URL, this replica's client id, the
revision it last synced to and where that synced base sits in the local frame log.  It is
replaced atomically (write, fsync, rename, fsync the folder).

A save that may be lost in a power loss (``durable=False``: a push's mark and counters, a pull
that brought nothing) that changes none of the fields a power loss must not undo writes
``<db>-sync.volatile`` instead: those fields (``VOLATILE_FIELDS``), the ``epoch`` of the
``-sync`` file they extend and a checksum, overwritten in place with no sync at all.  ``load``
lays them over ``-sync`` only when the epoch is the file's and the checksum holds, so after a
power loss it returns the state of the last durable save or of a later save, never a torn one or
a mix (each save of ``-sync`` draws a new epoch, so an older volatile file is ignored).

The synced base is the remote's state at ``synced_revision``.  Locally, a pull installs that
state *with the pending local changes replayed on top* as one atomic transaction (seq
``synced_seq``), so the pure remote state is that transaction's result with some pages put back:
the *revert* of ``revert_seq`` keeps those pages, stored exactly as on disk (so encrypted with
the database's key).  It is page 1 (a replica's page 1 carries the outbox table's schema row,
which the remote's lacks) and the pages the rebase rewrote, so usually a few pages.  Up to
``INLINE_REVERT_PAGES`` of them travel inside ``<db>-sync`` (``revert_inline``: the bytes a
revert file would hold, base64, with their own checksum); a larger revert is a file of its own,
``<db>-revert-<seq>``, and ``revert_inline`` is null.  A state without the field (written before
it existed) names a revert file by ``revert_seq``, and is read as such.

Why a kill -9 (or a power loss) at any point leaves a consistent pair:

* an inline revert is part of the state file, which is replaced in one rename: the pair is the
  old state with its revert or the new one with its own;
* a revert file is written (its data synced) and renamed into place before the state that
  names it is renamed, and the one sync of the folder after both renames makes them durable
  (a file system that keeps the renames of one folder in order: ext4 and XFS journal them so;
  docs/consistency.md).  Until the new state's rename, nothing names the new file;
* the revert file the previous state named is removed only after the new state is durable
  (``drop_reverts``), so the state on disk never names a removed file.  A file that no state
  names (a crash between a revert file's rename and the state's, or between the state's save
  and the removal) is garbage: the next pull that writes or drops a revert file removes it, and
  so does the first pull of every process (``pull.py``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import secrets
import struct
import time
import zlib
from dataclasses import dataclass, field, fields

from .. import errors
from ..crypto.page_codec import PageCodec
from ..local.framelog import fsync_dir
from ..page import PAGE_SIZE

REVERT_MAGIC = b"TSREVRT1"
_REVERT_HEAD = 20  # magic (8) | seq (8) | count (4), then crc32 (4) of the head and the body

#: A revert of at most this many pages is kept inside ``<db>-sync`` (``revert_inline``) instead of
#: a file of its own: one durable file write per pull instead of two.  Each page adds its slot
#: (4 KiB, 4,128 bytes in the envelope layout) times 4/3 in base64 to the state, which every pull
#: (twice) and ``stats()`` read: 8 pages make a 44 KB state whose loads and decode cost ~0.4 ms
#: more per pull than a revert file's read, against ~1.1 ms saved by not writing the file.
#: Usually it is 1 or 2 pages (page 1 and the rebased ones).
INLINE_REVERT_PAGES = 8


#: ``SyncState.extra`` key: the push mark this replica believes the remote holds for it,
#: ``[pull_gen, change_id]`` (``[0, 0]``: none yet); see ``pusher.believed_mark``.
PUSH_MARK_KEY = "push_mark"

#: The fields a ``durable=False`` save may keep in ``<db>-sync.volatile`` (laid over ``-sync`` on
#: load): counters, and what a push changes, which is safe to lose in a power loss (``extra``
#: holds the push mark; ``pusher.push_once`` says why an older mark or ``forgotten`` is safe).
#: A save that changes any other field writes ``-sync`` itself.
VOLATILE_FIELDS = (
    "last_pull",
    "last_push",
    "pulls",
    "pushes",
    "bytes_sent",
    "bytes_received",
    "errors",
    "forgotten",
    "extra",
)
VOLATILE_SUFFIX = "-sync.volatile"
_VOLATILE_MAGIC = b"TSVOLAT1"

log = logging.getLogger("turso_sync.sync")


@dataclass
class SyncState:
    """The replica's sync bookkeeping."""

    remote_url: str
    client_id: str
    synced_revision: str = ""
    synced_seq: int = 0
    synced_db_size: int = 0
    revert_seq: int | None = None
    revert_inline: str | None = None  # the revert of revert_seq when small: a revert file's bytes, base64
    bootstrapping: bool = False
    zstd: bool | None = None
    last_pull: float | None = None
    last_push: float | None = None
    pulls: int = 0
    pushes: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    errors: int = 0
    forgotten: int = 0  # bumped whenever pushed changes leave the outbox (a pull compares it)
    push_epoch: int | None = None  # the push fence's epoch on the remote (see push.py)
    push_in_doubt: bool = False  # a push batch was sent and its answer never came
    partial: dict[str, object] | None = None  # PartialSync options of a partial replica
    extra: dict[str, object] = field(default_factory=dict)
    epoch: str | None = None  # drawn anew by each save of ``-sync``; a volatile file names the one it extends
    # the fields outside VOLATILE_FIELDS as the ``-sync`` file holds them (None: not read from it
    # nor saved to it by this object); not saved
    _durable: tuple[object, ...] | None = field(default=None, init=False, repr=False, compare=False)

    @staticmethod
    def path_for(db_path: str) -> str:
        return db_path + "-sync"

    @staticmethod
    def volatile_path_for(db_path: str) -> str:
        return db_path + VOLATILE_SUFFIX

    def _fixed(self) -> tuple[object, ...]:
        """The fields outside VOLATILE_FIELDS (a copy: a caller may change a dict in place later)."""
        return tuple(
            json.loads(json.dumps(value)) if isinstance(value, dict) else value
            for value in (getattr(self, name) for name in _FIXED_FIELDS)
        )

    @classmethod
    def load(cls, db_path: str) -> SyncState | None:
        """The saved state, or None when the database was never set up for sync.

        A file that is not the state this class saves (cut short, overwritten, edited into
        another shape) raises ``ReplicaDamagedError`` naming it and the remedy, never a JSON
        or Python error.  A ``-sync.volatile`` file is laid over it when it extends this very
        file (its epoch) and is whole (its checksum); otherwise it is ignored: it only ever holds
        what a power loss may undo.
        """
        path = cls.path_for(db_path)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        try:
            raw = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise _damaged(db_path, "it is not text (overwritten with other data)") from None
        except json.JSONDecodeError as exc:
            where = "it is empty" if not data.strip() else f"not valid JSON at line {exc.lineno}, column {exc.colno}"
            raise _damaged(db_path, f"{where} (cut short or overwritten)") from None
        if not isinstance(raw, dict):
            raise _damaged(db_path, f"it holds a JSON {type(raw).__name__}, not the state's object")
        values: dict[str, object] = {}
        for spec in _SAVED_FIELDS:
            if spec.name not in raw:
                if spec.name in _REQUIRED:
                    raise _damaged(db_path, f"the field {spec.name!r} is missing")
                continue
            value = raw[spec.name]
            if not _fits(spec.type, value):
                raise _damaged(db_path, f"the field {spec.name!r} holds {json.dumps(value)[:40]}, not {spec.type}")
            values[spec.name] = value
        if values.get("revert_inline") is not None and values.get("revert_seq") is None:
            raise _damaged(db_path, "it holds revert images (revert_inline) but no revert_seq they belong to")
        state = cls(**values)  # type: ignore[arg-type]
        state._durable = state._fixed()
        if state.epoch is not None:
            state._lay_volatile(db_path)
        return state

    def _lay_volatile(self, db_path: str) -> None:
        """Take the VOLATILE_FIELDS from ``-sync.volatile`` when it is whole and extends this state's epoch."""
        try:
            with open(self.volatile_path_for(db_path), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return
        head, _, body = data.partition(b"\n")
        parts = head.split(b" ")
        if len(parts) != 3 or parts[0] != _VOLATILE_MAGIC or parts[1].decode("ascii", "replace") != self.epoch:
            return  # another epoch's (an older save of -sync came after it), or not ours at all
        if parts[2] != b"%08x" % zlib.crc32(body, zlib.crc32(parts[1])):
            log.debug("%s: ignored a torn %s (a power loss while it was replaced)", db_path, VOLATILE_SUFFIX)
            return
        try:
            raw = json.loads(body)
        except ValueError:
            raw = None
        if not isinstance(raw, dict) or set(raw) != set(VOLATILE_FIELDS):
            log.warning("%s: ignored %s: whole, but not the fields it should hold", db_path, VOLATILE_SUFFIX)
            return
        for name in VOLATILE_FIELDS:
            if not _fits(_TYPES_BY_NAME[name], raw[name]):
                log.warning("%s: ignored %s: its field %r does not fit", db_path, VOLATILE_SUFFIX, name)
                return
        for name in VOLATILE_FIELDS:
            setattr(self, name, raw[name])

    def save(self, db_path: str, *, durable: bool = True) -> None:
        """Replace the state file atomically.

        The new file's data is synced before the rename, so after a crash the state is the old
        file or the new one, never a torn one.  ``durable=False`` is for saves whose every change
        is safe to lose in a power loss (see the callers: a successful push's mark and counters,
        a pull that brought nothing): when they changed nothing outside ``VOLATILE_FIELDS``
        they go to ``-sync.volatile`` with no sync at all (``load`` ignores that file when torn);
        otherwise ``-sync`` is written without the sync of the folder.  Either way other
        processes see the new state at once, a power loss may bring the previous one back, and
        the next durable save (or any other sync of the folder) makes it durable too.
        """
        if not durable and self.epoch is not None and self._durable == self._fixed():
            self._save_volatile(db_path)
            return
        path = self.path_for(db_path)
        tmp = path + ".tmp"
        epoch = secrets.token_hex(8)
        # one encoded string and one write (a text file fed by json.dump costs ~0.2 ms more); the
        # fields' values are JSON values already, so no deep copy (asdict) is needed
        values = {spec.name: getattr(self, spec.name) for spec in _SAVED_FIELDS}
        values["epoch"] = epoch
        data = json.dumps(values, indent=1, sort_keys=True)
        _write_whole(tmp, data.encode("utf-8"), sync=True)
        os.replace(tmp, path)
        self.epoch = epoch
        self._durable = self._fixed()
        if durable:
            fsync_dir(path)

    def _save_volatile(self, db_path: str) -> None:
        body = json.dumps({name: getattr(self, name) for name in VOLATILE_FIELDS}, sort_keys=True).encode("utf-8")
        epoch = str(self.epoch).encode("ascii")
        head = b"%s %s %08x\n" % (_VOLATILE_MAGIC, epoch, zlib.crc32(body, zlib.crc32(epoch)))
        # overwritten in place, no rename and no sync: on ext4 a rename over a file (or emptying
        # it) starts its writeback at once, ~150 us; this is ~20 us.  A power loss, a killed
        # process or a reader meeting the write half done finds it torn: ``load`` then reads
        # ``-sync`` alone (what matters is read under the sync lock, which every save holds)
        _overwrite(self.volatile_path_for(db_path), head + body)

    def touch_pull(self) -> None:
        self.last_pull = time.time()
        self.pulls += 1


_REQUIRED = ("remote_url", "client_id")

#: a field's annotation -> the JSON types its value may have, and whether it may be null
_FIELD_TYPES: dict[str, tuple[tuple[type, ...], bool]] = {
    "str": ((str,), False),
    "str | None": ((str,), True),
    "int": ((int,), False),
    "int | None": ((int,), True),
    "bool": ((bool,), False),
    "bool | None": ((bool,), True),
    "float | None": ((int, float), True),
    "dict[str, object] | None": ((dict,), True),
    "dict[str, object]": ((dict,), False),
}

#: the fields saved in ``-sync`` (not the snapshot ``_durable``), and those a power loss must not undo
_SAVED_FIELDS = tuple(spec for spec in fields(SyncState) if spec.init)
_FIXED_FIELDS = tuple(spec.name for spec in _SAVED_FIELDS if spec.name not in VOLATILE_FIELDS)
_TYPES_BY_NAME = {spec.name: str(spec.type) for spec in _SAVED_FIELDS}


def _fits(annotation: object, value: object) -> bool:
    """True when a JSON ``value`` may be stored in a field so annotated."""
    kinds, may_be_none = _FIELD_TYPES.get(str(annotation), ((object,), True))  # a new shape: unchecked
    if value is None:
        return may_be_none
    return isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds and object not in kinds)


def _overwrite(path: str, data: bytes) -> None:
    """Write ``data`` over ``path`` from its start (creating it) and cut what is left after it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
    try:
        view = memoryview(data)
        done = 0
        while done < len(data):
            done += os.pwrite(fd, view[done:], done)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def _write_whole(path: str, data: bytes, *, sync: bool) -> None:
    """Create (or empty) ``path`` and write ``data`` in it; with ``sync``, wait for the disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def remedy(db_path: str) -> str:
    """The one-line remedy every damage report ends with."""
    return (
        f"run `turso-sync verify --repair {db_path}` to re-clone it from the remote, keeping pending "
        "changes when the database is readable (damaged files are kept as *.damaged)"
    )


def lost_state_remedy(db_path: str) -> str:
    """The remedy when the ``-sync`` file, and with it the remote's URL, cannot be read."""
    return (
        f"run `turso-sync verify --repair {db_path} --remote URL` to re-clone it from the primary at URL, "
        "keeping pending changes when the database is readable (damaged files are kept as *.damaged)"
    )


def _damaged(db_path: str, what: str) -> errors.ReplicaDamagedError:
    return errors.ReplicaDamagedError(SyncState.path_for(db_path), what, lost_state_remedy(db_path))


def revert_path(db_path: str, seq: int) -> str:
    return f"{db_path}-revert-{seq}"


def encode_revert(seq: int, pages: dict[int, bytes], codec: PageCodec | None) -> bytes:
    """A revert's bytes (plaintext images in, as-on-disk out): head, checksum, then each page number and image."""
    ordered = sorted(pages)
    images = codec.encrypt_pages([(pgno, pages[pgno]) for pgno in ordered]) if codec is not None else None
    body = b"".join(
        struct.pack(">I", pgno) + (images[n] if images is not None else pages[pgno]) for n, pgno in enumerate(ordered)
    )
    head = REVERT_MAGIC + struct.pack(">QI", seq, len(pages))
    return head + struct.pack(">I", zlib.crc32(body, zlib.crc32(head))) + body


def decode_revert(data: bytes, seq: int, codec: PageCodec | None, where: str) -> dict[int, bytes]:
    """The plaintext images of a revert's bytes; ``ValueError`` saying what is wrong when they are not
    the revert of ``seq``.  ``where`` names the place in a failed page's ``PageAuthError``.

    Images are stored as on disk, so each takes the codec's slot (the page size, or more in the
    envelope layout).
    """
    if data[:8] != REVERT_MAGIC or len(data) < _REVERT_HEAD + 4:
        raise ValueError("not a revert (no revert header)")
    seq_stored, count = struct.unpack_from(">QI", data, 8)
    (crc,) = struct.unpack_from(">I", data, _REVERT_HEAD)
    body = data[_REVERT_HEAD + 4 :]
    step = 4 + (codec.slot_size if codec is not None else PAGE_SIZE)
    if zlib.crc32(body, zlib.crc32(data[:_REVERT_HEAD])) != crc or len(body) != count * step:
        raise ValueError("damaged (checksum mismatch)")
    if seq_stored != seq:
        raise ValueError(f"it is the revert of transaction {seq_stored}, not {seq}")
    pages: dict[int, bytes] = {}
    for i in range(count):
        (pgno,) = struct.unpack_from(">I", body, i * step)
        raw = body[i * step + 4 : (i + 1) * step]
        pages[pgno] = codec.decrypt(raw, pgno, where) if codec is not None else raw
    return pages


def write_revert(
    db_path: str, seq: int, pages: dict[int, bytes], codec: PageCodec | None, *, sync_folder: bool = True
) -> None:
    """Store the synced base's images of ``pages`` (plaintext in, as-on-disk out) for ``seq`` in a file.

    The file's data is synced before its rename, always.  ``sync_folder=False`` leaves the sync of
    the rename to the caller, who must sync the same folder (a durable ``SyncState.save``) before
    anything refers to the file: a pull saves the state that names it right after, and that one
    sync of the folder makes both renames durable (the revert file's comes first).
    """
    path = revert_path(db_path, seq)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(encode_revert(seq, pages, codec))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync_folder:
        fsync_dir(path)


def read_revert(db_path: str, seq: int, codec: PageCodec | None) -> dict[int, bytes]:
    """The plaintext base images the revert file of ``seq`` holds (``OSError`` when it is damaged)."""
    path = revert_path(db_path, seq)
    with open(path, "rb") as f:
        data = f.read()
    try:
        return decode_revert(data, seq, codec, "revert file")
    except ValueError as exc:
        raise OSError(f"{path}: {exc}") from None


def inline_revert(seq: int, pages: dict[int, bytes], codec: PageCodec | None) -> str:
    """``revert_inline``'s value for these images of ``seq``: a revert file's bytes, base64."""
    return base64.b64encode(encode_revert(seq, pages, codec)).decode("ascii")


def read_inline_revert(db_path: str, state: SyncState, codec: PageCodec | None) -> dict[int, bytes]:
    """The plaintext base images ``state.revert_inline`` holds.

    ``ReplicaDamagedError`` naming the state file when they are not the revert of ``revert_seq``
    (edited, cut, or another replica's); a page that fails authentication raises ``PageAuthError``,
    as from a revert file.
    """
    assert state.revert_inline is not None and state.revert_seq is not None
    try:
        data = base64.b64decode(state.revert_inline, validate=True)
        return decode_revert(data, state.revert_seq, codec, "sync state's revert")
    except binascii.Error:
        what = "not base64"
    except ValueError as exc:
        what = str(exc)
    raise _damaged_revert(db_path, what)


#: How damage to ``revert_inline`` is reported (against the state file, whose URL is still readable).
INLINE_REVERT_DAMAGED = "the revert images of the last pull it keeps are damaged"


def _damaged_revert(db_path: str, what: str) -> errors.ReplicaDamagedError:
    return errors.ReplicaDamagedError(SyncState.path_for(db_path), f"{INLINE_REVERT_DAMAGED}: {what}", remedy(db_path))


#: Replicas (real paths) on which this process has removed the revert files no state names (what a
#: killed process may leave): a pull looks for them once per process (or when it drops a file
#: anyway), a bootstrap when it creates the replica.
swept_reverts: set[str] = set()


def drop_reverts(db_path: str, keep: int | None) -> None:
    """Remove every revert file (and an interrupted write's ``.tmp``) except the one for ``keep``."""
    folder = os.path.dirname(db_path) or "."
    prefix = os.path.basename(db_path) + "-revert-"
    kept = os.path.basename(revert_path(db_path, keep)) if keep is not None else None
    for name in os.listdir(folder):
        if name.startswith(prefix) and name != kept:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, name))
