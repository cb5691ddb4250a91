"""Where a database's objects live in the store, and how their keys sort.

::

    ROOT/databases/NAME/lease                       the writer lease (JSON, replaced with If-Match)
    ROOT/databases/NAME/log/<FIRST, 20 digits>      revisions FIRST..LAST, one immutable segment object
    ROOT/databases/NAME/snapshots/<REV, 20 digits>  the whole database at revision REV

Revision numbers are zero-padded to 20 digits (any 64-bit number), so listing returns the
log and the snapshots in revision order.  A segment's key is its first revision number and
is written with ``If-None-Match: *``; the next segment starts at the previous one's last
revision plus one, so a revision number can be written at most once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .client import check_key

_DIGITS = 20
_SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,128}")


def _segment(part: str, what: str) -> str:
    if not _SEGMENT.fullmatch(part) or part in (".", ".."):
        raise ValueError(f"{what} {part!r} cannot be part of an object key (use 1-128 of A-Z a-z 0-9 . _ -)")
    return part


@dataclass(frozen=True)
class DatabaseKeys:
    """The keys of one database under a store root (``root`` may be empty)."""

    root: str
    name: str

    def __post_init__(self) -> None:
        if self.root:
            check_key(self.root)
        _segment(self.name, "database name")

    @property
    def base(self) -> str:
        """The prefix every key of this database starts with (ends in ``/``)."""
        head = f"{self.root.strip('/')}/" if self.root else ""
        return f"{head}databases/{self.name}/"

    @property
    def lease(self) -> str:
        """The writer lease."""
        return self.base + "lease"

    @property
    def log_prefix(self) -> str:
        """The prefix of every revision segment."""
        return self.base + "log/"

    @property
    def snapshot_prefix(self) -> str:
        """The prefix of every snapshot."""
        return self.base + "snapshots/"

    def segment(self, first: int) -> str:
        """The key of the segment whose first revision is ``first``."""
        return self.log_prefix + _number(first)

    def snapshot(self, revision: int) -> str:
        """The key of the snapshot at ``revision``."""
        return self.snapshot_prefix + _number(revision)

    def segment_number(self, key: str) -> int:
        """The first revision of the segment at ``key``; ValueError if ``key`` is not one."""
        return _parse(key, self.log_prefix)

    def snapshot_number(self, key: str) -> int:
        """The revision of the snapshot at ``key``; ValueError if ``key`` is not one."""
        return _parse(key, self.snapshot_prefix)


def _number(n: int) -> str:
    if not 0 <= n < 1 << 64:
        raise ValueError(f"revision {n} is outside 0..2**64-1")
    return f"{n:0{_DIGITS}d}"


def _parse(key: str, prefix: str) -> int:
    tail = key[len(prefix) :] if key.startswith(prefix) else ""
    if len(tail) != _DIGITS or not tail.isascii() or not tail.isdigit():
        raise ValueError(f"object {key!r} is not named like a revision under {prefix!r}")
    return int(tail)
