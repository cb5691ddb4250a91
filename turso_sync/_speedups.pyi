# The compiled helper's functions (turso_sync/_speedups.c); each has a pure-Python twin beside its caller.

def wal_checksum(
    data: bytes | bytearray | memoryview, s1: int = 0, s2: int = 0, big_endian: bool = False
) -> tuple[int, int]: ...
