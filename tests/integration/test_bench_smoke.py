"""The local-engine benchmark measures real work: every engine, tiny sizes, one run, counts checked.

No timing is asserted: only that each measurement exists, and that the rows each workload wrote or
read back are the rows it was given, so a benchmark that silently did nothing would fail here.
"""

from __future__ import annotations

import inspect
import sqlite3
from pathlib import Path

import pytest

import turso_sync
from bench import bench_hardened, profile_local, run_all
from bench import bench_local as bl
from bench.report import write_section

SIZES = bl.Sizes(rows=200, txns=20, reads=50)


def test_every_engine_runs_every_workload_on_the_real_rows(tmp_path: Path) -> None:
    data = bl.Data.build(SIZES)
    engines = bl.engines()
    samples = bl.run_round(engines, data, tmp_path)

    names = [w.name for w in bl.workloads(SIZES)]
    assert set(samples) == {(w, e.key) for w in names for e in engines}
    expected = {"insert_bulk": 200, "insert_autocommit": 20, "scan_cold": 200, "read_points": 50}
    for (workload, _key), sample in samples.items():
        assert sample.rows == expected[workload]
        assert sample.seconds > 0
    # the autocommit files are gone, the bulk files stay for the next round to replace
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".db")) == sorted(
        f"{e.key}-bulk.db" for e in engines
    )


def test_the_engines_are_the_ones_the_issue_names() -> None:
    keys = [e.key for e in bl.engines()]
    assert {"sqlite3", "apsw", "sqlcipher", "turso_sync", "pyturso"} <= set(keys)
    two_turso_rows = "record_frames" in inspect.signature(turso_sync.connect).parameters
    assert ("turso_sync_nolog" in keys) == two_turso_rows
    assert ("turso_sync_hardened" in keys) == ("encryption_format" in inspect.signature(turso_sync.connect).parameters)


@pytest.mark.parametrize(("key", "cipher_id"), [("turso_sync_hardened", 0x80), ("turso_sync_envelope", 0x81)])
def test_the_hardened_contenders_write_their_layout(tmp_path: Path, key: str, cipher_id: int) -> None:
    (engine,) = [e for e in bl.engines() if e.key == key]
    path = tmp_path / "h.db"
    bl.insert_bulk(engine, path, bl.Data.build(SIZES).rows)
    head = path.read_bytes()[:7]
    assert head[:5] == b"Turso" and head[6] == cipher_id  # not Turso's AES-GCM (2)


def test_the_execute_loop_inserts_every_row_for_every_engine(tmp_path: Path) -> None:
    data = bl.Data.build(SIZES)
    engines = bl.select_engines("turso_sync_hardened,sqlcipher")
    assert [e.key for e in engines] == ["turso_sync_hardened", bl.BASELINE, "sqlcipher"]
    samples = bl.run_round(engines, data, tmp_path, insert_loop=True)
    assert {w for w, _key in samples} == {w.name for w in bl.workloads(SIZES, insert_loop=True)}
    assert all(samples["insert_loop", e.key].rows == 200 for e in engines)
    assert not list(tmp_path.glob("*-loop.db*"))  # removed after each run
    with pytest.raises(ValueError, match="no engine nosuch"):
        bl.select_engines("nosuch")


def test_encrypted_engines_leave_no_plaintext_and_plain_ones_do(tmp_path: Path) -> None:
    data = bl.Data.build(SIZES)
    marker = data.rows[7][3].encode()
    for engine in bl.engines():
        path = tmp_path / f"{engine.key}.db"
        bl.insert_bulk(engine, path, data.rows)
        assert (marker in path.read_bytes()) != engine.encrypted, engine.key


def test_settings_are_read_back_identical(tmp_path: Path) -> None:
    engines = bl.engines()
    probe = bl.probe(engines, tmp_path)
    for e in engines:
        expected = {k: v for k, v in bl.SETTINGS.items() if k not in e.unreported}
        assert probe.settings[e.key] == expected, e.key
    assert probe.cipher["cipher_version"].startswith("4.")


def test_a_short_miscount_is_refused(tmp_path: Path) -> None:
    data = bl.Data.build(SIZES)
    data.ids.append(SIZES.rows + 1)  # a key that is not in the table: one point read misses
    with pytest.raises(bl.WrongCount, match="read_points"):
        bl.run_round([e for e in bl.engines() if e.key == bl.BASELINE], data, tmp_path)


def test_figures_and_report(tmp_path: Path) -> None:
    fig = bl.measure(SIZES, 2, tmp_path, log=lambda _line: None)
    assert all(len(times) == 2 for times in fig.samples.values())
    assert fig.ratio("scan_cold", bl.BASELINE) == fig.paired_ratio("read_points", bl.BASELINE) == 1.0
    text = bl.report(fig)
    for engine in fig.engines:
        assert engine.label in text
    assert f"stdlib sqlite3's SQLite: {sqlite3.sqlite_version}" in text
    assert "synchronous=2" in text and "above 1.0x is faster" in text


def test_profile_groups_time_and_counts_pages(tmp_path: Path) -> None:
    default = next(e for e in bl.engines() if e.key == "turso_sync")
    profiles = profile_local.profile_workloads(default, bl.Data.build(SIZES), tmp_path)
    assert set(profiles) == {w.name for w in bl.workloads(SIZES)}
    counts = profile_local.call_counts(profiles["scan_cold"][1])
    assert counts["pages decrypted"] > 0
    # the VFS's bound page decrypter is visible to the profile: AES-GCM's time is not charged to the VFS
    assert profile_local.categorize(profiles["scan_cold"][1])[profile_local.AES] > 0
    shares = profile_local.categorize(profiles["insert_bulk"][1])
    assert shares[profile_local.SQLITE] > 0 and set(shares) == set(profile_local.CATEGORIES)


def test_write_section_replaces_only_its_block(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    write_section("## Local engine (issue 2)", "local", "first figures", doc)
    text = doc.read_text()
    assert text.startswith("# Benchmarks") and "first figures" in text
    doc.write_text(text + "\nHand-written reading.\n\n## Sync (issue 3)\n\nOther figures.\n")
    write_section("## Local engine (issue 2)", "local", "second figures", doc)
    write_section("## Local engine (issue 2)", "local-profile", "profile", doc)
    text = doc.read_text()
    assert "first figures" not in text and "second figures" in text
    assert text.index("second figures") < text.index("Hand-written reading.") < text.index("profile")
    assert text.index("profile") < text.index("## Sync (issue 3)") < text.index("Other figures.")


def test_run_all_finds_the_local_benchmark() -> None:
    assert "local" in run_all.discover()
    assert run_all.main(["no-such-benchmark"]) == 2


def test_the_hardened_benchmark_runs_every_contender(tmp_path: Path) -> None:
    codecs = bench_hardened.codec_contenders(5)
    assert {"Turso's format (AES-256-GCM)", "hardened (AES-256-GCM-SIV)"} <= set(codecs)
    assert "envelope (AES-256-GCM-SIV, whole page)" in codecs
    engines = bench_hardened.engine_contenders(tmp_path, 50)
    assert "envelope (AES-256-GCM-SIV slots)" in engines
    times = bench_hardened.measure({**codecs, **engines}, 1)  # each engine run counts its rows back
    assert all(len(values) == 1 for values in times.values())
    assert (tmp_path / "envelope.db").read_bytes()[6] == 0x81  # the envelope contender made an envelope file
