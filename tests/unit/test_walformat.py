"""The WAL checksum, compiled and numpy, equals SQLite's word-by-word loop, and headers round-trip."""

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turso_sync.local import walformat
from turso_sync.local.walformat import (
    WalHeader,
    read_committed,
    wal_checksum,
    wal_checksum_numpy,
    wal_checksum_slow,
)

try:
    from turso_sync import _speedups
except ImportError:  # not built here (no C compiler at install): its tests are skipped, visibly
    _speedups = None

needs_compiled = pytest.mark.skipif(_speedups is None, reason="turso_sync._speedups was not built (no C compiler?)")

#: the implementations under test: the one in use (compiled or numpy), numpy, and C when built
IMPLEMENTATIONS = [
    pytest.param(wal_checksum, id="in-use"),
    pytest.param(wal_checksum_numpy, id="numpy"),
    pytest.param(getattr(_speedups, "wal_checksum", None), id="c", marks=needs_compiled),
]

TOP = 0xFFFFFFFF


@pytest.mark.parametrize("checksum", IMPLEMENTATIONS)
def test_checksum_matches_reference_loop(checksum):
    rnd = random.Random(7)
    # empty, one pair, a WAL header's 24 bytes, a 4 KiB frame (+8 header bytes), 64 KiB pages
    for size in (0, 8, 24, 4096, 4104, 65536, 65544):
        data = os.urandom(size)
        seeds = [(0, 0), (1, 0), (0, 1), (TOP, TOP), (TOP, 1), (0x80000001, 0x7FFFFFFF)]
        seeds += [(rnd.getrandbits(32) | 1, rnd.getrandbits(32) | 1) for _ in range(3)]  # odd seeds
        for s1, s2 in seeds:
            for big in (False, True):
                assert checksum(data, s1, s2, big) == wal_checksum_slow(data, s1, s2, big), (size, s1, s2, big)


@settings(max_examples=200, deadline=None)
@given(
    # up to 600 pairs: past a 4 KiB frame, and short enough for the reference loop
    data=st.integers(0, 600).flatmap(lambda n: st.binary(min_size=8 * n, max_size=8 * n)),
    s1=st.integers(0, TOP),
    s2=st.integers(0, TOP),
    big=st.booleans(),
)
def test_checksum_equals_reference_on_random_inputs(data, s1, s2, big):
    expected = wal_checksum_slow(data, s1, s2, big)
    assert wal_checksum_numpy(data, s1, s2, big) == expected
    if _speedups is not None:
        assert _speedups.wal_checksum(data, s1, s2, big) == expected


@pytest.mark.parametrize("checksum", IMPLEMENTATIONS)
def test_checksum_continues_a_chain_and_takes_any_buffer(checksum):
    data = os.urandom(4104)
    whole = wal_checksum_slow(data, 5, 7, True)
    # a chain split anywhere on a pair boundary gives the checksum of the whole
    assert checksum(data[8:], *checksum(data[:8], 5, 7, True), True) == whole
    assert checksum(data[4096:], *checksum(data[:4096], 5, 7, True), True) == whole
    # bytearray and memoryview, including a slice that starts off any word alignment
    assert checksum(bytearray(data), 5, 7, True) == whole
    odd = bytearray(b"x" + data)
    assert checksum(memoryview(odd)[1:], 5, 7, True) == whole
    # keywords, and the defaults (s1 = s2 = 0, little-endian words)
    assert checksum(data, s1=5, s2=7, big_endian=True) == whole
    assert checksum(data) == wal_checksum_slow(data)
    assert checksum(data, big_endian=False) == wal_checksum_slow(data, 0, 0, False)


@pytest.mark.parametrize("checksum", IMPLEMENTATIONS)
def test_checksum_refuses_a_length_that_is_not_whole_word_pairs(checksum):
    for size in (1, 4, 12, 4100):
        with pytest.raises(ValueError):
            checksum(b"\0" * size)


@needs_compiled
def test_compiled_checksum_argument_errors_name_the_argument():
    c = _speedups.wal_checksum
    with pytest.raises(ValueError, match="multiple of 8 bytes, not 12"):
        c(b"\0" * 12)
    with pytest.raises(TypeError, match="missing required argument 'data'"):
        c()
    with pytest.raises(TypeError, match="at most 4 arguments"):
        c(b"", 0, 0, False, 1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'salt'"):
        c(b"", salt=1)
    with pytest.raises(TypeError, match="multiple values for argument 's1'"):
        c(b"", 1, s1=2)
    with pytest.raises(TypeError, match="'s2' must be int"):
        c(b"", 0, 1.5)
    with pytest.raises(TypeError):
        c("not bytes")
    # seeds are taken modulo 2**32, as the Python versions do
    assert c(b"12345678", -1, 1 << 40) == wal_checksum_slow(b"12345678", TOP, 0)


def test_the_implementation_in_use_is_the_one_announced():
    forced = os.environ.get("TURSO_SYNC_PURE_PYTHON", "") not in ("", "0")
    if forced or _speedups is None:
        assert walformat.CHECKSUM_IMPLEMENTATION == "numpy"
        assert wal_checksum is wal_checksum_numpy
    else:
        assert walformat.CHECKSUM_IMPLEMENTATION == "c"
        assert wal_checksum is _speedups.wal_checksum


def test_header_build_parse_and_reject_corruption():
    raw = WalHeader.build(4096, 3, 0x11223344, 0x55667788)
    hdr = WalHeader.parse(raw)
    assert hdr is not None and hdr.page_size == 4096 and hdr.salts == (0x11223344, 0x55667788)
    bad = bytearray(raw)
    bad[9] ^= 1
    assert WalHeader.parse(bytes(bad)) is None
    assert read_committed(b"") == (None, [])


@pytest.mark.parametrize("checksum", IMPLEMENTATIONS)
def test_checksum_wraps_modulo_2_32_on_the_largest_words(checksum):
    # every word 0xFFFFFFFF and both sums starting at their largest: each step overflows 32 bits
    for size in (8, 4104):
        data = b"\xff" * size
        assert checksum(data, TOP, TOP) == wal_checksum_slow(data, TOP, TOP)
        assert checksum(data, TOP, TOP, big_endian=True) == wal_checksum_slow(data, TOP, TOP, big_endian=True)
