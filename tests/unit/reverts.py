"""A replica's revert as a pull leaves it, kept either way (``sync/state.py``): in a file of its
own (``<db>-revert-<seq>``), or inside the sync state (``revert_inline``)."""

from __future__ import annotations

import base64
from pathlib import Path

from turso_sync.crypto.page_codec import PageCodec
from turso_sync.sync.state import (
    SyncState,
    inline_revert,
    read_inline_revert,
    read_revert,
    revert_path,
    write_revert,
)

KEPT = ("file", "inline")  # a test's parameter: where the revert is kept


def keep_revert(db_path: str, seq: int, pages: dict[int, bytes], codec: PageCodec | None, kept: str) -> None:
    """Store the synced base's images of ``pages`` for ``seq`` as a pull would."""
    if kept == "file":
        write_revert(db_path, seq, pages, codec)
    else:
        revert = inline_revert(seq, pages, codec)
        SyncState("https://remote.invalid", "client", revert_seq=seq, revert_inline=revert).save(db_path)


def stored_revert(db_path: str, seq: int, kept: str) -> bytes:
    """The revert's bytes as stored (a revert file's layout either way)."""
    if kept == "file":
        return Path(revert_path(db_path, seq)).read_bytes()
    state = SyncState.load(db_path)
    assert state is not None and state.revert_seq == seq and state.revert_inline is not None
    return base64.b64decode(state.revert_inline)


def read_kept_revert(db_path: str, seq: int, codec: PageCodec | None, kept: str) -> dict[int, bytes]:
    """The plaintext images, read back as a pull reads them."""
    if kept == "file":
        return read_revert(db_path, seq, codec)
    state = SyncState.load(db_path)
    assert state is not None and state.revert_seq == seq
    return read_inline_revert(db_path, state, codec)
