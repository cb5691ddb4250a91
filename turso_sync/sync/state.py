"""What a replica remembers beside its database: ``<db>-sync`` (JSON) and ``<db>-revert-<seq>``.

``<db>-sync`` holds no secret (no token, no key): the remote URL, this replica's client id, the
revision it last synced to and where that synced base sits in the local frame log.  It is
replaced atomically (write, fsync, rename).

The synced base is the remote's state at ``synced_revision``.  Locally, a pull installs that
state *with the pending local changes replayed on top* as one atomic transaction (seq
``synced_seq``), so the pure remote state is that transaction's result with some pages put back:
``<db>-revert-<seq>`` keeps those pages, stored exactly as on disk (so encrypted with the
database's key).  Files are named by seq and the old one is removed only after the JSON points
at the new one, so a crash at any point leaves a consistent pair.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import time
import zlib
from dataclasses import asdict, dataclass, field, fields

from .. import errors
from ..crypto.page_codec import PageCodec
from ..local.framelog import fsync_dir
from ..page import PAGE_SIZE

REVERT_MAGIC = b"TSREVRT1"


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
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(asdict(self), f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
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


def write_revert(
    db_path: str, seq: int, pages: dict[int, bytes], codec: PageCodec | None, *, sync_folder: bool = True
) -> None:
    """Store the synced base's images of ``pages`` (plaintext in, as-on-disk out) for ``seq``.

    The file's data is synced before its rename, always.  ``sync_folder=False`` leaves the sync of
    the rename to the caller, who must sync the same folder (a durable ``SyncState.save``) before
    anything refers to the file: a pull saves the state that names it right after, and that one
    sync of the folder makes both renames durable (the revert file's comes first).
    """
    body = bytearray()
    ordered = sorted(pages)
    images = codec.encrypt_pages([(pgno, pages[pgno]) for pgno in ordered]) if codec is not None else None
    for n, pgno in enumerate(ordered):
        body += struct.pack(">I", pgno) + (images[n] if images is not None else pages[pgno])
    head = REVERT_MAGIC + struct.pack(">QI", seq, len(pages))
    crc = zlib.crc32(bytes(body), zlib.crc32(head))
    path = revert_path(db_path, seq)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(head + struct.pack(">I", crc) + bytes(body))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync_folder:
        fsync_dir(path)


def read_revert(db_path: str, seq: int, codec: PageCodec | None) -> dict[int, bytes]:
    """The plaintext base images stored for ``seq``.

    Images are stored as on disk, so each takes the codec's slot (the page size, or more in the
    envelope layout).
    """
    with open(revert_path(db_path, seq), "rb") as f:
        data = f.read()
    head = data[:20]
    if head[:8] != REVERT_MAGIC:
        raise OSError(f"{revert_path(db_path, seq)}: not a revert file")
    seq_stored, count = struct.unpack_from(">QI", head, 8)
    (crc,) = struct.unpack_from(">I", data, 20)
    body = data[24:]
    if seq_stored != seq or zlib.crc32(body, zlib.crc32(head)) != crc:
        raise OSError(f"{revert_path(db_path, seq)}: damaged (checksum mismatch)")
    pages: dict[int, bytes] = {}
    step = 4 + (codec.slot_size if codec is not None else PAGE_SIZE)
    for i in range(count):
        (pgno,) = struct.unpack_from(">I", body, i * step)
        raw = body[i * step + 4 : (i + 1) * step]
        pages[pgno] = codec.decrypt(raw, pgno, "revert file") if codec is not None else raw
    return pages


def drop_reverts(db_path: str, keep: int | None) -> None:
    """Remove every revert file except the one for ``keep``."""
    folder = os.path.dirname(db_path) or "."
    prefix = os.path.basename(db_path) + "-revert-"
    for name in os.listdir(folder):
        if name.startswith(prefix) and name != os.path.basename(revert_path(db_path, keep or -1)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, name))
