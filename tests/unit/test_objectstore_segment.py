"""Segment and snapshot encoding, object keys (pure code, no store)."""

from __future__ import annotations

import pytest

from turso_sync.primary.objectstore.client import check_key
from turso_sync.primary.objectstore.errors import CorruptObject
from turso_sync.primary.objectstore.layout import DatabaseKeys
from turso_sync.primary.objectstore.segment import (
    Revision,
    Segment,
    SnapshotImage,
    decode_segment,
    decode_snapshot,
    encode_segment,
    encode_snapshot,
)

P = 512


def page(tag: int) -> bytes:
    return bytes([tag % 256]) * P


def test_segment_round_trip() -> None:
    seg = Segment(7, P, [Revision(5, 3, {1: page(1), 3: page(3)}), Revision(6, 3, {}), Revision(7, 1, {1: page(9)})])
    back = decode_segment("k", encode_segment(seg))
    assert (back.epoch, back.page_size, back.first, back.last, back.takeover) == (7, P, 5, 7, False)
    assert [(r.number, r.db_size, r.pages) for r in back.revisions] == [
        (5, 3, {1: page(1), 3: page(3)}),
        (6, 3, {}),
        (7, 1, {1: page(9)}),
    ]


def test_takeover_flag_survives() -> None:
    assert decode_segment("k", encode_segment(Segment(2, P, [Revision(9, 4)], takeover=True))).takeover


def test_pages_cut_off_by_the_commit_are_dropped() -> None:
    back = decode_segment("k", encode_segment(Segment(1, P, [Revision(1, 2, {1: page(1), 2: page(2), 5: page(5)})])))
    assert sorted(back.revisions[0].pages) == [1, 2]


def test_non_consecutive_revisions_are_refused() -> None:
    with pytest.raises(ValueError, match="consecutive"):
        encode_segment(Segment(1, P, [Revision(1, 1, {1: page(1)}), Revision(3, 1, {1: page(1)})]))


def test_wrong_page_size_is_refused() -> None:
    with pytest.raises(ValueError, match="page 1 has 3 bytes"):
        encode_segment(Segment(1, P, [Revision(1, 1, {1: b"abc"})]))


@pytest.mark.parametrize("where", ["magic", "header", "body", "truncated"])
def test_damaged_segment_names_its_key(where: str) -> None:
    data = bytearray(encode_segment(Segment(1, P, [Revision(1, 2, {1: page(1), 2: page(2)})])))
    if where == "magic":
        data[0] ^= 1
    elif where == "header":
        data[20] ^= 1
    elif where == "body":
        data[-6] ^= 0xFF
    else:
        del data[-10:]
    with pytest.raises(CorruptObject, match="db/log/1"):
        decode_segment("db/log/1", bytes(data))


def test_snapshot_round_trip_and_checks() -> None:
    image = page(1) + page(2) + page(3)
    snap = decode_snapshot("s", encode_snapshot(SnapshotImage(42, P, 3, image)))
    assert (snap.revision, snap.page_size, snap.db_size, snap.data) == (42, P, 3, image)
    with pytest.raises(ValueError, match="not 2 pages"):
        encode_snapshot(SnapshotImage(1, P, 2, image))
    blob = bytearray(encode_snapshot(SnapshotImage(1, P, 3, image)))
    blob[-5] ^= 0xFF
    with pytest.raises(CorruptObject, match="'snap/1'"):
        decode_snapshot("snap/1", bytes(blob))


def test_keys_sort_in_revision_order_and_parse_back() -> None:
    keys = DatabaseKeys("root/prefix", "orders")
    assert keys.segment(7) == "root/prefix/databases/orders/log/00000000000000000007"
    numbers = [0, 1, 9, 10, 99, 100, 12345, 2**63]
    assert sorted(keys.segment(n) for n in numbers) == [keys.segment(n) for n in sorted(numbers)]
    assert keys.segment_number(keys.segment(12345)) == 12345
    assert keys.snapshot_number(keys.snapshot(77)) == 77
    assert DatabaseKeys("", "db").lease == "databases/db/lease"
    with pytest.raises(ValueError, match="not named like a revision"):
        keys.segment_number(keys.snapshot(1))


@pytest.mark.parametrize("bad", ["", "/a", "a//b", "x" * 1025])
def test_unusable_keys_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not usable"):
        check_key(bad)


@pytest.mark.parametrize("name", ["a/b", "", "..", "a b"])
def test_database_names_that_would_break_keys_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="database name"):
        DatabaseKeys("root", name)
