"""The envelope layout without a server: the codec, the VFS's slot mapping, the engine's page paths.

An envelope database holds SQLite pages that reserve no bytes; each is stored encrypted in a slot
of ``P + 32`` bytes (``crypto/envelope.py``).  A random workload against a plaintext twin checks
that the logical content is the same and that no row's plaintext reaches any file.
"""

from __future__ import annotations

import os
import random
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import KEY128, KEY256
from turso_sync import errors
from turso_sync.crypto.envelope import EnvelopeCodec, disk_size, envelope_cipher, is_envelope, pages_on_disk
from turso_sync.crypto.hardened import HardenedAuthError
from turso_sync.crypto.page_codec import PageCodec, parse_key
from turso_sync.local.connection import Connection
from turso_sync.local.engine import LocalDatabase
from turso_sync.local.walindex import committed_wal, disk_slot_size
from turso_sync.sync.bootstrap import KeyOptions, bootstrap, wal_mode_page
from turso_sync.sync.partial import PartialSync
from turso_sync.sync.state import SyncState
from turso_sync.testing import pull_answer

P = 4096
S = P + 32
MARKER = "envelope-plaintext-marker"


def sqlite_pages(path: Path, script: str) -> list[bytes]:
    """The pages of a database stdlib sqlite3 writes with no reserved bytes (a default tursodb's kind)."""
    db = sqlite3.connect(path)
    db.executescript(script)
    db.close()
    raw = path.read_bytes()
    assert raw[20] == 0
    return [raw[i : i + P] for i in range(0, len(raw), P)]


def remote_pages(path: Path, script: str) -> dict[int, bytes]:
    """A remote's pages, 1-based, as a default tursodb would send them (no reserved bytes)."""
    return {n + 1: page for n, page in enumerate(sqlite_pages(path, script))}


def envelope_codec(key: str = KEY256) -> PageCodec:
    return PageCodec(*parse_key(key, "envelope"))


def test_a_whole_page_goes_into_a_slot_and_comes_back(tmp_path: Path) -> None:
    pages = sqlite_pages(tmp_path / "plain.db", f"CREATE TABLE t (x); INSERT INTO t VALUES ('{MARKER}');")
    codec = envelope_codec()
    assert isinstance(codec, EnvelopeCodec) and (codec.page_size, codec.slot_size, codec.reserved) == (P, S, 0)
    slots = [codec.encrypt(page, n + 1) for n, page in enumerate(pages)]
    assert all(len(slot) == S for slot in slots)
    assert is_envelope(slots[0]) and slots[0][16:72] == pages[0][16:72]  # the header stays readable
    assert all(MARKER.encode() not in slot for slot in slots)
    # a reopen needs only the key: a codec for Turso's format or the hardened one switches to the file's
    for cipher in ("aes256gcm", "hardened"):
        reader = PageCodec(*parse_key(KEY256, cipher)).for_file(slots[0])
        assert isinstance(reader, EnvelopeCodec)
        assert [reader.decrypt(slot, n + 1) for n, slot in enumerate(slots)] == pages


def test_a_slot_in_another_place_or_with_a_changed_tail_is_refused(tmp_path: Path) -> None:
    pages = sqlite_pages(tmp_path / "plain.db", "CREATE TABLE t (x); CREATE TABLE u (y);")
    codec = envelope_codec()
    slots = [codec.encrypt(page, n + 1) for n, page in enumerate(pages)]
    reader = envelope_codec().for_file(slots[0])
    reader.decrypt(slots[0], 1)
    with pytest.raises(HardenedAuthError, match="page 3 of the database"):
        reader.decrypt(slots[1], 3)  # page 2's slot put where page 3 goes
    with pytest.raises(HardenedAuthError, match="WAL"):
        reader.decrypt(codec.encrypt(pages[1], 2, "WAL"), 2)  # a WAL image copied into the database
    changed = slots[1][:-1] + b"\x01"
    with pytest.raises(HardenedAuthError, match="not an envelope slot"):
        reader.decrypt(changed, 2)
    with pytest.raises(HardenedAuthError):
        reader.decrypt(slots[1][: P + 28], 2)  # a slot of Turso's size


def test_the_padded_size_always_maps_back_to_the_number_of_slots() -> None:
    for pages in [*range(0, 300), 1023, 1024, 1025, 100_000]:
        size = disk_size(pages, P, S)
        assert size % P == 0 and size - pages * S < P
        assert pages_on_disk(size, S) == pages


def test_the_envelope_needs_a_256_bit_key() -> None:
    assert envelope_cipher("aes-256-gcm") == "envelope" and envelope_cipher("hardened-passphrase") == (
        "envelope-passphrase"
    )
    with pytest.raises(ValueError, match="64-hex-digit key"):
        envelope_cipher("aes128gcm")
    head = envelope_codec().encrypt(bytes(16) + P.to_bytes(2, "big") + bytes(P - 18), 1)
    with pytest.raises(ValueError, match=r"envelope layout .* 64-hex-digit key"):
        PageCodec(*parse_key(KEY128, "aes128gcm")).for_file(head)


def test_a_database_in_the_envelope_layout_reopens_with_only_its_key(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    conn = Connection(path, encryption_key=KEY256, cipher="envelope")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"{MARKER} {i} " + "x" * 300) for i in range(500)])
    conn.commit()
    assert conn.execute("PRAGMA page_size").fetchone() == (P,)
    wal = committed_wal(str(path))
    assert wal.txns and all(len(frame.body) == S for txn in wal.txns for frame in txn.frames)
    conn.apsw_connection.wal_checkpoint(mode=3)  # TRUNCATE: every page into the database file
    conn.close()
    raw = path.read_bytes()
    assert is_envelope(raw) and raw[20] == 0 and len(raw) % P == 0
    pages = int.from_bytes(raw[28:32], "big")
    assert pages_on_disk(len(raw), S) == pages and len(raw) == disk_size(pages, P, S)
    assert disk_slot_size(str(path)) == S
    conn = Connection(path, encryption_key=KEY256)  # the default cipher: the file says envelope
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert conn.execute("SELECT count(*), sum(id) FROM t").fetchone() == (500, sum(range(500)))
    conn.close()
    with pytest.raises(errors.EncryptionError, match="wrong encryption key"):
        Connection(path, encryption_key="ff" * 32)
    with pytest.raises(errors.EncryptionError, match="is encrypted; pass encryption_key"):
        Connection(path)
    with pytest.raises(errors.EncryptionError, match="envelope layout"):
        Connection(path, encryption_key=KEY128, cipher="aes128gcm")
    assert path.read_bytes() == raw  # refused opens change nothing


def test_engine_reads_installs_and_undoes_in_slots(tmp_path: Path) -> None:
    db = LocalDatabase(tmp_path / "e.db", encryption_key=KEY256, cipher="envelope")
    assert (db.page_size, db.slot_size) == (P, S)
    conn = db.connect()
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"row {i} " + "z" * 200) for i in range(300)])
    conn.commit()
    watermark = db.current_seq()
    before = db.snapshot()
    db.checkpoint()
    assert db.snapshot().pages == before.pages  # the same images from the database file's slots
    conn.execute("DELETE FROM t WHERE id % 2 = 0")
    conn.commit()
    seq = db.install_pages({2: before.pages[2]}, db.snapshot().db_size)  # appended after committed frames
    assert seq == db.current_seq()
    db.discard_after(watermark)
    assert db.snapshot().pages == before.pages
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (300,)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    history = list(db.history(0))
    assert history and all(len(image) == P for txn in history for image in txn.pages.values())
    conn.close()
    db.close()


# --- random SQL against a plaintext twin ------------------------------------------------------

OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), st.integers(0, 400), st.integers(0, 3000)),
        st.tuples(st.just("update"), st.integers(0, 400), st.integers(0, 3000)),
        st.tuples(st.just("delete"), st.integers(0, 400), st.integers(1, 50)),
        st.tuples(st.just("blob"), st.integers(0, 400), st.integers(5000, 40000)),
        st.tuples(st.just("rollback"), st.integers(0, 400), st.integers(0, 100)),
        st.tuples(st.just("checkpoint"), st.just(0), st.just(0)),
        st.tuples(st.just("vacuum"), st.just(0), st.just(0)),
        st.tuples(st.just("reopen"), st.just(0), st.just(0)),
        st.tuples(st.just("index"), st.integers(0, 1), st.just(0)),
        st.tuples(st.just("spill"), st.integers(0, 400), st.integers(50, 400)),
    ),
    min_size=5,
    max_size=40,
)


def _apply(conn: Connection, op: tuple[str, int, int], rnd: random.Random) -> None:
    kind, a, b = op
    if kind == "insert":
        conn.execute("INSERT OR REPLACE INTO t VALUES (?, ?, ?)", (a, f"{MARKER} {a} " + "v" * b, None))
    elif kind == "update":
        conn.execute("UPDATE t SET body = ? WHERE id >= ? AND id < ?", (f"{MARKER} u{b}", a, a + 20))
    elif kind == "delete":
        conn.execute("DELETE FROM t WHERE id >= ? AND id < ?", (a, a + b))
    elif kind == "blob":
        conn.execute("INSERT OR REPLACE INTO t VALUES (?, ?, ?)", (a, MARKER, rnd.randbytes(b)))
    elif kind == "rollback":
        conn.execute("INSERT OR REPLACE INTO t VALUES (?, ?, NULL)", (a, f"{MARKER} rolled back {b}"))
        conn.rollback()
        return
    elif kind == "checkpoint":
        conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return
    elif kind == "vacuum":
        conn.commit()
        conn.execute("VACUUM")
        return
    elif kind == "spill":
        # a page cache of 10 pages: SQLite writes uncommitted pages into the WAL, overwrites some of
        # them in place and rewrites the frame headers at commit (placeholder frames in between)
        conn.execute("PRAGMA cache_size=10")
        for row in range(b):
            conn.execute("INSERT OR REPLACE INTO t VALUES (?, ?, NULL)", (a + row, f"{MARKER} spill " + "s" * 700))
            if row % 7 == 0:
                conn.execute("UPDATE t SET body = body || 'x' WHERE id = ?", (a,))
        conn.commit()
        conn.execute("PRAGMA cache_size=2000")
        return
    elif kind == "index":
        name = "t_body" if a else "t_blob"
        conn.execute(f"CREATE INDEX IF NOT EXISTS {name} ON t({'body' if a else 'blob'})")
    conn.commit()


def _content(conn: Connection) -> list[tuple[object, ...]]:
    return conn.execute("SELECT id, body, blob FROM t ORDER BY id").fetchall()


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPERATIONS, seed=st.integers(0, 2**32 - 1))
def test_random_sql_gives_the_plaintext_twins_content_and_no_plaintext_on_disk(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int, int]], seed: int
) -> None:
    folder = tmp_path_factory.mktemp("twins")
    enc_path, plain_path = folder / "enc.db", folder / "plain.db"
    enc = Connection(enc_path, encryption_key=KEY256, cipher="envelope")
    plain = Connection(plain_path)
    for conn in (enc, plain):
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT, blob BLOB)")
        conn.commit()
    rnd_enc, rnd_plain = random.Random(seed), random.Random(seed)
    for op in ops:
        if op[0] == "reopen":
            enc.close()
            plain.close()
            enc = Connection(enc_path, encryption_key=KEY256)
            plain = Connection(plain_path)
            continue
        _apply(enc, op, rnd_enc)
        _apply(plain, op, rnd_plain)
        assert _content(enc) == _content(plain)
    assert enc.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    enc.close()
    plain.close()
    for name in os.listdir(folder):
        if name.startswith("enc.db"):
            assert MARKER.encode() not in (folder / name).read_bytes(), name


# --- bootstrap: which layout a new replica gets ------------------------------------------------


def _bootstrap(path: Path, key: KeyOptions, pages: dict[int, bytes], partial: PartialSync | None = None) -> SyncState:
    state = SyncState(remote_url="https://remote.invalid", client_id="test-client")
    steps = bootstrap(str(path), state, key, 5.0, partial)
    next(steps)
    with pytest.raises(StopIteration):
        steps.send(pull_answer("rev-1", pages))
    return state


def test_a_remote_without_reserved_bytes_bootstraps_an_envelope_replica(tmp_path: Path) -> None:
    pages = remote_pages(tmp_path / "remote.db", f"CREATE TABLE t (x); INSERT INTO t VALUES ('{MARKER}');")
    assert pages[1][20] == 0
    path = tmp_path / "a.db"
    _bootstrap(path, KeyOptions(KEY256), pages)
    raw = path.read_bytes()
    assert is_envelope(raw) and len(raw) == disk_size(len(pages), P, S) and MARKER.encode() not in raw
    db = KeyOptions(KEY256).open(str(path))
    try:
        assert db.page_size == P and db.slot_size == S
        assert db.query("SELECT x FROM t") == [(MARKER,)]
    finally:
        db.close()
    with pytest.raises(errors.EncryptionError, match="envelope layout"):
        _bootstrap(tmp_path / "b.db", KeyOptions(KEY128, "aes128gcm"), pages)  # AES-256-GCM-SIV needs 256 bits
    assert not (tmp_path / "b.db").exists()


def test_a_partial_bootstrap_puts_each_slot_at_its_place(tmp_path: Path) -> None:
    pages = remote_pages(
        tmp_path / "remote.db",
        "CREATE TABLE t (x); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200) "
        "INSERT INTO t SELECT randomblob(500) FROM n;",
    )
    path = tmp_path / "p.db"
    held = {p: pages[p] for p in (1, 2, len(pages))}
    _bootstrap(path, KeyOptions(KEY256), held, PartialSync(prefix_bytes=2 * P))
    raw = path.read_bytes()
    assert len(raw) == disk_size(len(pages), P, S)
    reader = envelope_codec().for_file(raw)
    for pgno in held:
        assert reader.decrypt(raw[(pgno - 1) * S : pgno * S], pgno) == wal_mode_page(pages[pgno], pgno)


def test_an_empty_remote_gives_an_encrypted_replica_the_envelope_layout(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    _bootstrap(path, KeyOptions(KEY256), {})
    assert is_envelope(path.read_bytes())
    plain = tmp_path / "plain.db"
    _bootstrap(plain, KeyOptions(), {})
    assert plain.read_bytes()[20] == 28  # a plaintext replica keeps the room Turso's format needs


def test_a_slot_from_another_envelope_file_under_the_same_key_is_refused(tmp_path: Path) -> None:
    paths = [tmp_path / "one.db", tmp_path / "two.db"]
    for path in paths:
        conn = Connection(path, encryption_key=KEY256, cipher="envelope")
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES ('same row')")
        conn.commit()
        conn.apsw_connection.wal_checkpoint(mode=3)
        conn.close()
    one, two = (bytearray(p.read_bytes()) for p in paths)
    one[S : 2 * S] = two[S : 2 * S]  # page 2 of the other file: same key, same page number
    paths[0].write_bytes(bytes(one))
    conn = Connection(paths[0], encryption_key=KEY256)
    try:
        with pytest.raises(errors.EncryptionError, match="page 2 of the database failed authentication"):
            conn.execute("SELECT x FROM t").fetchall()
    finally:
        conn.close()
