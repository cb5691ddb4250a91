"""The vectorised WAL checksum equals SQLite's word-by-word loop, and headers round-trip."""

import os
import random

from turso_sync.local.walformat import WalHeader, read_committed, wal_checksum, wal_checksum_slow


def test_checksum_matches_reference_loop():
    rnd = random.Random(7)
    for size in (8, 24, 4104, 65544):
        data = os.urandom(size)
        for _ in range(3):
            s1, s2 = rnd.getrandbits(32), rnd.getrandbits(32)
            assert wal_checksum(data, s1, s2) == wal_checksum_slow(data, s1, s2)
            assert wal_checksum(data, s1, s2, big_endian=True) == wal_checksum_slow(data, s1, s2, big_endian=True)


def test_header_build_parse_and_reject_corruption():
    raw = WalHeader.build(4096, 3, 0x11223344, 0x55667788)
    hdr = WalHeader.parse(raw)
    assert hdr is not None and hdr.page_size == 4096 and hdr.salts == (0x11223344, 0x55667788)
    bad = bytearray(raw)
    bad[9] ^= 1
    assert WalHeader.parse(bytes(bad)) is None
    assert read_committed(b"") == (None, [])


def test_checksum_wraps_modulo_2_32_on_the_largest_words():
    # every word 0xFFFFFFFF and both sums starting at their largest: each step overflows 32 bits
    for size in (8, 4104):
        data = b"\xff" * size
        top = 0xFFFFFFFF
        assert wal_checksum(data, top, top) == wal_checksum_slow(data, top, top)
        assert wal_checksum(data, top, top, big_endian=True) == wal_checksum_slow(data, top, top, big_endian=True)
