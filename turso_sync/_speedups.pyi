# The compiled helper's functions (turso_sync/_speedups.c); each has a pure-Python twin beside its caller.

from collections.abc import Callable, Iterable, Sequence
from typing import Any

def wal_checksum(
    data: bytes | bytearray | memoryview, s1: int = 0, s2: int = 0, big_endian: bool = False
) -> tuple[int, int]: ...

class FileControlRouter:
    """router(op, ptr): hook(file, op, ptr) for the handled ops, base(file, op, ptr) for the others."""

    def __call__(self, op: int, ptr: int) -> bool: ...

def file_control_router(
    file: object, handled: Iterable[int], hook: Callable[[Any, int, int], bool], base: Callable[[Any, int, int], bool]
) -> FileControlRouter: ...

# cursor (session 10): the compiled bases of local.connection.Cursor and Connection
class CursorBase:
    """The DB-API Cursor's state as members, and the common path of execute and fetchone."""

    def execute(self, sql: str, parameters: Any = ()) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...

class ConnectionBase:
    """The common path of the DB-API Connection's execute."""

    def execute(self, sql: str, parameters: Any = ()) -> Any: ...

def cursor_setup(
    cursor_class: type[CursorBase],
    unread: object,
    unshared: int,
    run_errors: tuple[type[BaseException], ...],
    fetch_errors: type[BaseException] | tuple[type[BaseException], ...],
    statement_class: type,
) -> None: ...

# install (session 11): the frames of one installed WAL transaction (local/install.py's twin: _install_frames_py)
def install_frames(
    pgnos: list[int],
    bodies: list[bytes],
    plains: list[bytes],
    db_size: int,
    salts: tuple[int, int],
    cksum: tuple[int, int],
    big_endian: bool,
    plain_chain: tuple[int, int] | None,
    handed_type: type[Any],
) -> tuple[list[bytes], tuple[int, int], tuple[int, int] | None, list[Any] | None]: ...

# walwrite (session 11): an encrypted WAL's new frames written without a Python frame
class WalFrameWriter:
    """writer(data, offset): a new frame's header and body written here, base(file, data, offset) otherwise."""

    def __call__(self, data: bytes, offset: int) -> None: ...

def wal_frame_writer(
    file: object,
    base: Callable[[Any, bytes, int], None],
    pending: dict[int, bytes],
    chain: dict[Any, Any],
    page_size: int,
    plain: bytearray,
    frame: bytearray,
    encrypt: Callable[[], object],
    base_read: Callable[[Any, int, int], bytes],
    base_write: Callable[[Any, Any, int], None],
) -> WalFrameWriter: ...

# encinst (session 12): pages sealed in Turso's format straight into their bytes
def seal_pages(
    pages: Sequence[tuple[int, bytes]], nonces: bytes, aead: Any, magic: bytes, page_size: int
) -> list[bytes]: ...
