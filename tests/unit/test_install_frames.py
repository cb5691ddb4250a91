"""An install's frames, built by the compiled ``install_frames`` or its pure-Python twin, are the same bytes.

``append_transaction`` builds every frame of an installed transaction in one call: headers, the
checksum chain over the bytes as stored and, for an encrypted WAL whose frames are handed over to
WAL recovery, the chain over the plaintext and the handed frames.  The two builds must agree byte
for byte (the random nonces are drawn before, so they are the same input to both), and a WAL
either one writes must be read the same way by SQLite, by the walformat scanner and by the frame log.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from turso_sync import errors
from turso_sync._compiled import speedups
from turso_sync.crypto.page_codec import SQLITE_MAGIC, PageCodec, parse_key, seal_pages
from turso_sync.local import install
from turso_sync.local.engine import LocalDatabase
from turso_sync.local.vfs import HandedFrame, registry
from turso_sync.local.walformat import WalHeader, read_committed, wal_checksum_slow

KEY = "5a17" * 16
HANDED_FIELDS = ("disk", "salts", "prev_ct", "prev_pt", "ct", "pt", "given", "head", "plain")

_compiled = speedups()
BUILDS = [pytest.param(install._install_frames_py, id="python")]
if _compiled is not None:
    BUILDS.append(pytest.param(_compiled.install_frames, id="compiled"))


def _inputs(rng: random.Random, count: int, body_size: int, chained: bool, big: bool) -> tuple:
    pgnos = sorted(rng.sample(range(1, 10 * count), count))
    bodies = [rng.randbytes(body_size) for _ in pgnos]
    plain_size = 4096 if body_size == 4120 else body_size  # a slot larger than the page (the envelope layout)
    plains = [rng.randbytes(plain_size) for _ in pgnos] if chained else []
    salts = (rng.getrandbits(32), rng.getrandbits(32))
    cksum = (rng.getrandbits(32), rng.getrandbits(32))
    plain_chain = (rng.getrandbits(32), rng.getrandbits(32)) if chained else None
    return (pgnos, bodies, plains, 10 * count, salts, cksum, big, plain_chain, HandedFrame)


def _comparable(result: tuple) -> tuple:
    frames, cksum, plain_chain, handed = result
    shown = None if handed is None else [tuple(getattr(h, name) for name in HANDED_FIELDS) for h in handed]
    return frames, cksum, plain_chain, shown


@pytest.mark.skipif(_compiled is None, reason="the compiled helper is not built or refused")
@pytest.mark.parametrize("chained", [False, True])
@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("body_size", [8, 512, 4096, 4120])
def test_compiled_and_python_builds_are_byte_identical(chained: bool, big: bool, body_size: int) -> None:
    rng = random.Random(f"{chained}{big}{body_size}")
    for count in (1, 2, 7, 143):
        args = _inputs(rng, count, body_size, chained, big)
        assert _comparable(_compiled.install_frames(*args)) == _comparable(install._install_frames_py(*args))


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("big", [False, True])
def test_frames_carry_the_chain_the_scanner_checks(build, big: bool) -> None:
    """Both chains continue the WAL header's, frame by frame, as SQLite computes them (an independent
    checksum here); the last frame is the commit frame; a scanner reads every frame back."""
    rng = random.Random(7)
    salts = (rng.getrandbits(32), rng.getrandbits(32))
    header = WalHeader.build(4096, 0, *salts)
    if big:  # the same header with the big-endian magic, its own checksum re-computed
        head = (0x377F0683).to_bytes(4, "big") + header[4:24]
        header = head + b"".join(c.to_bytes(4, "big") for c in wal_checksum_slow(head, 0, 0, True))
    parsed = WalHeader.parse(header)
    assert parsed is not None and parsed.big_endian is big
    start = (parsed.cksum1, parsed.cksum2)
    pgnos = [1, 2, 5, 9]
    bodies = [rng.randbytes(4096) for _ in pgnos]
    plains = [rng.randbytes(4096) for _ in pgnos]
    frames, cksum, plain_chain, handed = build(pgnos, bodies, plains, 12, salts, start, big, start, HandedFrame)
    assert handed is not None
    ct = pt = start
    for n, frame in enumerate(frames):
        commit = 12 if n == len(frames) - 1 else 0
        assert frame[:16] == pgnos[n].to_bytes(4, "big") + commit.to_bytes(4, "big") + header[16:24]
        assert frame[24:] == bodies[n]
        assert (handed[n].prev_ct, handed[n].prev_pt) == (ct, pt)
        ct = wal_checksum_slow(frame[:8] + bodies[n], *ct, big_endian=big)
        pt = wal_checksum_slow(frame[:8] + plains[n], *pt, big_endian=big)
        assert frame[16:24] == ct[0].to_bytes(4, "big") + ct[1].to_bytes(4, "big")
        assert (handed[n].ct, handed[n].pt, handed[n].disk) == (ct, pt, frame)
        assert handed[n].given == frame[:16] + pt[0].to_bytes(4, "big") + pt[1].to_bytes(4, "big") + plains[n]
        assert handed[n].salts == salts
    assert (cksum, plain_chain) == (ct, pt)
    read_header, txns = read_committed(header + b"".join(frames))
    assert read_header is not None
    assert [(f.pgno, f.body) for f in txns[0].frames] == list(zip(pgnos, bodies, strict=True))
    assert (len(txns), txns[0].db_size, txns[0].cksum) == (1, 12, ct)


@pytest.mark.parametrize("build", BUILDS)
def test_without_a_plain_chain_nothing_is_handed_over(build) -> None:
    frames, cksum, plain_chain, handed = build([3], [bytes(64)], [], 3, (1, 2), (0, 0), False, None, HandedFrame)
    assert (len(frames), plain_chain, handed) == (1, None, None)
    assert cksum == wal_checksum_slow(frames[0][:8] + bytes(64))


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize(
    "pgnos, bodies, plains, chain",
    [
        ([], [], [], None),  # nothing to build
        ([1, 2], [bytes(64)], [], None),  # a body missing
        ([1, 2], [bytes(64), bytes(72)], [], None),  # bodies of two lengths
        ([1], [bytes(60)], [], None),  # not a multiple of 8
        ([1, 2], [bytes(64), bytes(64)], [bytes(64)], (0, 0)),  # a plaintext missing
    ],
)
def test_bad_input_is_refused(build, pgnos, bodies, plains, chain) -> None:
    with pytest.raises(ValueError, match="install_frames"):
        build(pgnos, bodies, plains, 2, (1, 2), (0, 0), False, chain, HandedFrame)


def test_the_install_uses_the_compiled_build_unless_refused() -> None:
    forced = os.environ.get("TURSO_SYNC_PURE_PYTHON", "") not in ("", "0")
    if forced or _compiled is None:
        assert install.install_frames is install._install_frames_py
        assert install.install_sealed_frames is install._install_sealed_frames_py
    else:
        assert install.install_frames is _compiled.install_frames
        assert install.install_sealed_frames is _compiled.install_sealed_frames


# --- pages sealed into their frames (an encrypted WAL in Turso's format) ------------------------------

SEALED_BUILDS = [pytest.param(install._install_sealed_frames_py, id="python")]
if _compiled is not None:
    SEALED_BUILDS.append(pytest.param(_compiled.install_sealed_frames, id="compiled"))


def _sealed_inputs(rng: random.Random, count: int, page_size: int, chained: bool, big: bool) -> tuple:
    codec = PageCodec(*parse_key(KEY, "aes256gcm"), page_size)
    aead, magic = codec.sealer()
    pgnos = sorted(rng.sample(range(1, 10 * count), count))
    if count > 2:
        pgnos[0] = 1  # page 1 keeps its header readable
    plains = []
    for pgno in pgnos:
        plain = rng.randbytes(page_size - codec.reserved) + bytes(codec.reserved)
        plains.append(SQLITE_MAGIC + plain[16:] if pgno == 1 else plain)
    nonces = rng.randbytes(12 * count)
    salts = (rng.getrandbits(32), rng.getrandbits(32))
    cksum = (rng.getrandbits(32), rng.getrandbits(32))
    plain_chain = (rng.getrandbits(32), rng.getrandbits(32)) if chained else None
    return (pgnos, plains, nonces, aead, magic, 10 * count, salts, cksum, big, plain_chain, HandedFrame)


def _sealed_comparable(result: tuple) -> tuple:
    frames, bodies, cksum, plain_chain, handed = result
    return (bodies, *_comparable((frames, cksum, plain_chain, handed)))


@pytest.mark.skipif(_compiled is None, reason="the compiled helper is not built or refused")
@pytest.mark.parametrize("chained", [False, True])
@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("page_size", [512, 4096, 8192])
def test_sealed_compiled_and_python_builds_are_byte_identical(chained: bool, big: bool, page_size: int) -> None:
    rng = random.Random(f"sealed{chained}{big}{page_size}")
    for count in (1, 2, 7, 143):
        args = _sealed_inputs(rng, count, page_size, chained, big)
        compiled = _compiled.install_sealed_frames(*args)
        assert _sealed_comparable(compiled) == _sealed_comparable(install._install_sealed_frames_py(*args))


@pytest.mark.parametrize("build", SEALED_BUILDS)
@pytest.mark.parametrize("chained", [False, True])
def test_sealed_frames_are_the_frames_of_the_sealed_pages(build, chained: bool) -> None:
    """What one pass gives is ``install_frames`` of ``seal_pages``' pages (the two it joins), and
    each body decrypts back to its plaintext."""
    rng = random.Random(f"joined{chained}")
    args = _sealed_inputs(rng, 9, 4096, chained, False)
    pgnos, plains, nonces, aead, magic, db_size, salts, cksum, big, plain_chain, handed_type = args
    frames, bodies, after, plain_after, handed = build(*args)
    assert bodies == seal_pages(list(zip(pgnos, plains, strict=True)), nonces, aead, magic, 4096)
    expected = install._install_frames_py(
        pgnos, bodies, plains if chained else [], db_size, salts, cksum, big, plain_chain, handed_type
    )
    assert _comparable((frames, after, plain_after, handed)) == _comparable(expected)
    codec = PageCodec(*parse_key(KEY, "aes256gcm"))
    assert [codec.decrypt(body, pgno, "WAL") for pgno, body in zip(pgnos, bodies, strict=True)] == plains
    assert [frame[24:] for frame in frames] == bodies


@pytest.mark.parametrize("build", SEALED_BUILDS)
@pytest.mark.parametrize(
    "change",
    [
        {"pgnos": [], "plains": []},  # nothing to build
        {"plains": [bytes(4096)]},  # a plaintext missing
        {"plains": [bytes(4096), bytes(4088)]},  # plaintexts of two lengths
        {"pgnos": [2], "plains": [bytes(4092)]},  # not a multiple of 8
        {"pgnos": [2], "plains": [bytes(256)]},  # too small for Turso's format
        {"nonces": bytes(12)},  # a nonce missing
    ],
)
def test_sealed_bad_input_is_refused(build, change: dict) -> None:
    args = dict(zip(("pgnos", "plains", "nonces"), ([2, 3], [bytes(4096), bytes(4096)], bytes(24)), strict=True))
    args.update(change)
    aead, magic = PageCodec(*parse_key(KEY, "aes256gcm")).sealer()
    with pytest.raises(ValueError, match="install_sealed_frames"):
        build(args["pgnos"], args["plains"], args["nonces"], aead, magic, 3, (1, 2), (0, 0), False, None, HandedFrame)


def _database(path: Path, encrypted: bool) -> LocalDatabase:
    db = LocalDatabase(path, encryption_key=KEY if encrypted else None)
    conn = db.connect()
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    for i in range(40):
        conn.execute("INSERT INTO t VALUES (?, ?)", (i, f"{i:04d}" + "x" * 900))
    conn.commit()
    conn.close()
    return db


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("encrypted", [False, True])
def test_an_install_either_build_writes_is_read_alike(tmp_path: Path, monkeypatch, build, encrypted: bool) -> None:
    """The same pages installed through either build: SQLite (an open connection and a new one),
    the walformat scanner and the frame log all see the same committed transaction."""
    source = _database(tmp_path / "source", encrypted)
    app = source.connect()
    app.execute("UPDATE t SET v = 'changed ' || id WHERE id % 3 = 0")
    app.commit()
    app.close()
    size = int(source.query("PRAGMA page_count")[0][0])
    read = source.page_reader()
    pages = {p: read(p) for p in range(1, size + 1)}
    want = source.query("SELECT id, v FROM t ORDER BY id")
    source.close()

    monkeypatch.setattr(install, "install_frames", build)
    # the same build seals an encrypted install's pages into their frames (Turso's format)
    python = build is install._install_frames_py
    sealed = install._install_sealed_frames_py if python else _compiled.install_sealed_frames
    calls: list[int] = []

    def sealing(*args):
        calls.append(len(args[0]))
        return sealed(*args)

    monkeypatch.setattr(install, "install_sealed_frames", sealing)
    db = _database(tmp_path / "db", encrypted)
    reader = db.connect()
    assert reader.execute("SELECT count(*) FROM t WHERE v LIKE 'changed%'").fetchone() == (0,)
    before = db.current_seq()
    with db.write_lock() as conn:
        seq = db.install_locked(conn, pages, size)
    assert seq == before + 1
    assert calls == ([len(pages)] if encrypted else [])
    if encrypted:  # the frames went to recovery through the hand-over
        state = registry.get(db.path)
        assert state is not None and len(state.handed) >= len(pages)
    assert db.query("SELECT id, v FROM t ORDER BY id") == want
    assert reader.execute("SELECT id, v FROM t ORDER BY id").fetchall() == want
    fresh = LocalDatabase(tmp_path / "db", encryption_key=KEY if encrypted else None)
    assert fresh.query("SELECT id, v FROM t ORDER BY id") == want
    assert fresh.query("PRAGMA integrity_check") == [("ok",)]
    fresh.close()
    raw = Path(str(db.path) + "-wal").read_bytes()
    _, txns = read_committed(raw, db.slot_size if db.slot_size != db.page_size else None)
    assert [f.pgno for f in txns[-1].frames] == sorted(pages)
    assert txns[-1].db_size == size
    codec = db.codec
    last = {f.pgno: f.body for f in txns[-1].frames}
    for pgno, image in pages.items():
        body = last[pgno]
        assert (codec.decrypt(body, pgno, "WAL") if codec is not None else body) == image
    (txn,) = list(db.history(before))
    assert (txn.seq, txn.db_size, txn.pages) == (seq, size, pages)  # the frame log's plaintext images
    reader.close()
    db.close()


def test_a_page_using_the_reserved_tail_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    db = _database(tmp_path / "db", True)
    before = db.current_seq()
    page1 = db.page_reader()(1)
    size = int(db.query("PRAGMA page_count")[0][0])
    spoiled = page1[:-1] + b"\x01"
    with pytest.raises(errors.DatabaseError, match="page 1 uses the bytes reserved for encryption"):
        db.install_pages({1: spoiled}, size)
    assert db.current_seq() == before
    assert db.query("SELECT count(*) FROM t") == [(40,)]
    db.close()
