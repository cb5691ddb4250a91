"""What a sync call reports: ``stats()``, and the results of ``pull``, ``push`` and ``sync``.

``Replica.pull/push/sync`` return ``PullResult``, ``PushResult`` and ``SyncResult``.  For the
pyturso-shaped ``SyncConnection`` methods (``pull() -> bool``, ``push() -> int``,
``sync() -> bool``) the results also behave as those values: a ``PullResult`` or ``SyncResult`` is
true when remote changes arrived, a ``PushResult`` is an ``int``, its count of transactions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .rebase import Conflict


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
    pages_total: int | None = None  # partial replicas: pages of the bootstrap revision (None: a full replica)
    lazy_requests: int = 0  # partial replicas: requests made to fetch missing pages
    lazy_pages_fetched: int = 0
    lazy_bytes_fetched: int = 0
    pages_local: int | None = None  # partial replicas: pages held locally now (None: a full replica)


@dataclass
class PullResult:
    """One ``pull``: whether remote changes arrived, where the replica stands, what it cost."""

    changed: bool
    revision: str
    pages_received: int = 0
    bytes_sent: int = 0  # request and response bodies of this call (retries not counted)
    bytes_received: int = 0
    new_conflicts: list[Conflict] = field(default_factory=list)
    pending_changes: int = 0  # local transactions still to push after it

    def __bool__(self) -> bool:
        """True when remote changes arrived (``SyncConnection.pull()``'s answer)."""
        return self.changed


class PushResult(int):
    """One ``push``: the number of local transactions sent (it is that ``int``), with details.

    ``revision`` is where the replica stands after (``pending_changes`` still to push),
    ``pulled`` says the push met an unseen remote change and pulled to settle it
    (``pages_received`` and ``new_conflicts`` come from those pulls), ``bytes_sent`` and
    ``bytes_received`` are this call's bodies (retries not counted).
    """

    revision: str
    pulled: bool
    pages_received: int
    bytes_sent: int
    bytes_received: int
    new_conflicts: list[Conflict]
    pending_changes: int

    def __new__(
        cls,
        pushed: int,
        revision: str = "",
        pulled: bool = False,
        pages_received: int = 0,
        bytes_sent: int = 0,
        bytes_received: int = 0,
        new_conflicts: list[Conflict] | None = None,
        pending_changes: int = 0,
    ) -> PushResult:
        result = super().__new__(cls, pushed)
        result.revision = revision
        result.pulled = pulled
        result.pages_received = pages_received
        result.bytes_sent = bytes_sent
        result.bytes_received = bytes_received
        result.new_conflicts = list(new_conflicts or [])
        result.pending_changes = pending_changes
        return result

    @property
    def pushed(self) -> int:
        """Local transactions the remote took."""
        return int(self)

    def __repr__(self) -> str:
        return (
            f"PushResult(pushed={int(self)}, revision={self.revision!r}, pulled={self.pulled}, "
            f"pages_received={self.pages_received}, bytes_sent={self.bytes_sent}, "
            f"bytes_received={self.bytes_received}, new_conflicts={len(self.new_conflicts)}, "
            f"pending_changes={self.pending_changes})"
        )


@dataclass
class SyncResult:
    """One ``sync``: its push, then its pull."""

    push: PushResult
    pull: PullResult

    @property
    def changed(self) -> bool:
        """Remote changes arrived, in the pull or in a pull the push made to settle a conflict."""
        return self.pull.changed or self.push.pulled

    @property
    def revision(self) -> str:
        return self.pull.revision

    @property
    def pushed(self) -> int:
        return self.push.pushed

    @property
    def pending_changes(self) -> int:
        return self.pull.pending_changes

    @property
    def pages_received(self) -> int:
        return self.push.pages_received + self.pull.pages_received

    @property
    def bytes_sent(self) -> int:
        return self.push.bytes_sent + self.pull.bytes_sent

    @property
    def bytes_received(self) -> int:
        return self.push.bytes_received + self.pull.bytes_received

    @property
    def new_conflicts(self) -> list[Conflict]:
        return [*self.push.new_conflicts, *self.pull.new_conflicts]

    def __bool__(self) -> bool:
        """True when remote changes arrived (``SyncConnection.sync()``'s answer)."""
        return self.changed
