# The compiled helper's functions (turso_sync/_speedups.c); each has a pure-Python twin beside its caller.

from collections.abc import Callable, Iterable
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
