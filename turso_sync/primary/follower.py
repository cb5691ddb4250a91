"""A read-only node on the object store: databases rebuilt from the store and kept up with its log.

``StoreSettings(follow=True)`` (the ``--follow`` option of ``serve --store``): this server takes
no lease and writes nothing to the store.  Opening a database loads the store's newest state
(snapshot plus segments) into the local files, with the frame log based at the stored head,
so local revisions are store revisions as on the writer.  A background task then reads the
segments the writer appends (one listing per ``follow_poll`` seconds), installs each revision
as one local transaction (so local numbers keep matching), and wakes the long-polls.  Pulls,
bootstraps, partial fetches and read-only SQL are served from the local files; a statement
that writes is refused (``FollowerReadOnly``, 403), since only the writer may write.

Everything a follower serves is in the store (it only ever installs stored revisions), so it
never shows a revision that could be lost.  It lags the writer by up to one poll interval plus
a listing and the reads.  A revision it cannot install with the same number (an empty takeover
revision of an empty database), or a gap in the log (history compacted while it was far
behind), makes it rebuild the database from the store on the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from .durable import rebuild_files
from .objectstore.errors import CorruptObject, ObjectStoreError, RevisionNotStored
from .objectstore.restore import image_of
from .objectstore.revlog import RevisionLog
from .objectstore.segment import Revision

log = logging.getLogger("turso_sync.primary")

#: Seconds between two looks at a followed database's log.
DEFAULT_FOLLOW_POLL = 0.5


class FollowerReadOnly(Exception):  # noqa: N818 - reads as a state
    """A statement that writes, sent to a read-only follower (HTTP 403)."""


class NothingStored(ObjectStoreError):  # noqa: N818 - reads as a state
    """The store holds no content for the database yet: a follower has nothing to serve (HTTP 503)."""


class FollowedLog:
    """One database followed from the store: what is installed locally, and the task that keeps up."""

    def __init__(self, name: str, revlog: RevisionLog, head: int, poll: float) -> None:
        self.name = name
        self.revlog = revlog
        self.head = head
        self.poll = poll
        self.failed = False
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, revlog: RevisionLog, path: str, poll: float) -> FollowedLog:
        """Load the store's newest state into the local files at ``path``; NothingStored for an empty database."""
        state = await revlog.load()
        if state.head.db_size == 0:
            raise NothingStored(
                f"database '{revlog.keys.name}' has no content in the store yet; this follower serves it once "
                "its writer has stored a first write; try again shortly"
            )
        image = image_of(state)
        await asyncio.to_thread(rebuild_files, path, image.data, image.page_size, image.db_size, state.head.revision)
        log.info("database %s: following the store from revision %d", revlog.keys.name, state.head.revision)
        return cls(revlog.keys.name, revlog, state.head.revision, poll)

    @property
    def stored(self) -> int:
        """The newest revision installed locally (all of it is in the store)."""
        return self.head

    def start(self, install: Callable[[Revision], Awaitable[None]]) -> None:
        """Keep up with the log in the background, handing each new revision to ``install`` in order."""
        self._task = asyncio.get_running_loop().create_task(self._follow(install))

    async def _follow(self, install: Callable[[Revision], Awaitable[None]]) -> None:
        while not self.failed:
            await asyncio.sleep(self.poll)  # the writer is another process: nothing to wake us but time
            try:
                segments = await self.revlog.segments_after(self.head)
                for seg in segments:
                    for rev in seg.revisions:
                        await install(rev)
                        self.head = rev.number
            except (CorruptObject, RevisionNotStored, InstallMismatch) as exc:
                log.warning("database %s: the follower rebuilds from the store: %s", self.name, exc)
                self.failed = True
            except ObjectStoreError as exc:
                log.warning("database %s: the follower could not read the store: %s", self.name, exc)
            except RuntimeError:  # the database's worker stopped (closing)
                return

    async def close(self) -> None:
        """Stop following."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class InstallMismatch(Exception):  # noqa: N818 - reads as a state
    """A stored revision could not be installed as the same local revision number."""
