"""Partial sync options: what a partial replica bootstraps, and how it fetches the rest.

``PartialSync(bootstrap="prefix", prefix_bytes=...)`` bootstraps the first ``prefix_bytes`` of
the database; ``PartialSync(bootstrap="query", query=SQL)`` the pages the server says the query
reads (``server_query_selector``).  Every other page is fetched on first read, pinned to the
bootstrap revision (see ``turso_sync/local/lazy.py``): the aligned ``segment_size`` bytes around
it in one request, and with ``prefetch`` the children of a B-tree interior page in one more.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pyroaring import BitMap

from .. import errors
from ..page import PAGE_SIZE


@dataclass(frozen=True)
class PartialSync:
    """How a new replica is bootstrapped partially and how missing pages are fetched."""

    bootstrap: str = "prefix"
    prefix_bytes: int = 256 * 1024
    query: str | None = None
    segment_size: int = 128 * 1024
    prefetch: bool = True

    def __post_init__(self) -> None:
        if self.bootstrap not in ("prefix", "query"):
            raise errors.ProgrammingError(f"PartialSync.bootstrap is 'prefix' or 'query', not {self.bootstrap!r}")
        if self.bootstrap == "query" and not self.query:
            raise errors.ProgrammingError("PartialSync(bootstrap='query') needs query='SELECT ...'")
        if self.bootstrap == "prefix" and self.prefix_bytes < PAGE_SIZE:
            raise errors.ProgrammingError(
                f"PartialSync.prefix_bytes must be at least one page ({PAGE_SIZE}), not {self.prefix_bytes}"
            )
        if self.segment_size < PAGE_SIZE or self.segment_size % PAGE_SIZE:
            raise errors.ProgrammingError(
                f"PartialSync.segment_size must be a positive multiple of {PAGE_SIZE}, not {self.segment_size}"
            )

    @property
    def segment_pages(self) -> int:
        """Pages per segment."""
        return self.segment_size // PAGE_SIZE

    def page_selector(self) -> BitMap | None:
        """The 0-based page ids a prefix bootstrap asks for (None for a query bootstrap)."""
        if self.bootstrap != "prefix":
            return None
        selector = BitMap()
        selector.add_range(0, max(1, self.prefix_bytes // PAGE_SIZE))
        return selector

    def to_json(self) -> dict[str, Any]:
        """For ``<db>-sync``."""
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> PartialSync:
        """From ``<db>-sync``."""
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})
