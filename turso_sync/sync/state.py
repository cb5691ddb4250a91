"""What a replica remembers beside its database: ``<db>-sync`` (JSON) and, now and then, ``<db>-revert-<seq>``.

``<db>-sync`` holds no secret (no token, no key): the remote URL, this replica's client id, the
revision it last synced to and where that synced base sits in the local frame log.  It is
replaced atomically (write, fsync, rename, fsync the folder).

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
import os
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

    @staticmethod
    def path_for(db_path: str) -> str:
        return db_path + "-sync"

    @classmethod
    def load(cls, db_path: str) -> SyncState | None:
        """The saved state, or None when the database was never set up for sync.

        A file that is not the state this class saves (cut short, overwritten, edited into
        another shape) raises ``ReplicaDamagedError`` naming it and the remedy, never a JSON
        or Python error.
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
        for spec in fields(cls):
            if spec.name not in raw:
                if spec.name in _REQUIRED:
                    raise _damaged(db_path, f"the field {spec.name!r} is missing")
                continue
            value = raw[spec.name]
            kinds, may_be_none = _FIELD_TYPES.get(str(spec.type), ((object,), True))  # a new shape: unchecked
            if not (isinstance(value, kinds) or (value is None and may_be_none)) or (
                isinstance(value, bool) and bool not in kinds and object not in kinds
            ):
                raise _damaged(db_path, f"the field {spec.name!r} holds {json.dumps(value)[:40]}, not {spec.type}")
            values[spec.name] = value
        if values.get("revert_inline") is not None and values.get("revert_seq") is None:
            raise _damaged(db_path, "it holds revert images (revert_inline) but no revert_seq they belong to")
        return cls(**values)  # type: ignore[arg-type]

    def save(self, db_path: str, *, durable: bool = True) -> None:
        """Replace the state file atomically.

        The new file's data is always synced before the rename, so after a crash the state is
        the old file or the new one, never a torn one.  ``durable=False`` leaves out the sync of
        the folder: other processes see the new state at once, but a power loss may bring the
        previous one back.  Only for saves whose every change is safe to lose that way (see the
        callers: a successful push's mark and counters, a pull that brought nothing); the next
        durable save, or any other sync of the folder, makes it durable too.
        """
        path = self.path_for(db_path)
        tmp = path + ".tmp"
        # one encoded string and one write (a text file fed by json.dump costs ~0.2 ms more); the
        # fields' values are JSON values already, so no deep copy (asdict) is needed
        data = json.dumps({spec.name: getattr(self, spec.name) for spec in fields(self)}, indent=1, sort_keys=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            view = memoryview(data.encode("utf-8"))
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if durable:
            fsync_dir(path)

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
