"""Replicas in the hardened format sync with a real primary: key and passphrase, reopen, verify.

``turso_sync.connect(..., encryption_format="hardened")`` (or ``passphrase=``) creates the
replica in the hardened format; every pulled page is installed through it (database and WAL
frames bound to their place), and a reopen needs only the key or passphrase.
"""

from __future__ import annotations

import glob
from pathlib import Path

import pytest

import turso_sync
from tests.conftest import KEY256
from tests.servers import primary
from turso_sync.sync.files import ReplicaFiles

MARKER = "plaintext-marker-7d1c"


def files_of(path: Path) -> list[str]:
    return [f for f in glob.glob(f"{path}*") if Path(f).is_file()]


def test_hardened_replicas_by_key_and_by_passphrase_sync_both_ways(tmp_path: Path) -> None:
    with primary(tmp_path / "srv") as url:
        remote = f"{url}/db/hardened"
        a = turso_sync.connect(tmp_path / "a.db", remote, encryption_key=KEY256, encryption_format="hardened")
        a.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        a.executemany("INSERT INTO notes VALUES (?, ?)", [(i, f"{MARKER} a{i}") for i in range(200)])
        a.commit()
        assert a.push() == 2  # the CREATE TABLE, then the inserts

        b = turso_sync.connect(tmp_path / "b.db", remote, passphrase="correct horse battery staple")
        assert b.execute("SELECT count(*) FROM notes").fetchone() == (200,)
        b.execute("UPDATE notes SET body = ? WHERE id = 7", (f"{MARKER} from b",))
        b.commit()
        b.sync()

        assert a.pull()  # the pulled pages are installed through the hardened codec (WAL frames too)
        assert a.execute("SELECT body FROM notes WHERE id = 7").fetchone() == (f"{MARKER} from b",)
        a.checkpoint()
        a.close()
        b.close()

        # a reopen needs only the key (the format is in the file) and finds its files whole
        a = turso_sync.connect(tmp_path / "a.db", encryption_key=KEY256)
        assert isinstance(a, turso_sync.SyncConnection)
        assert a.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert a.execute("SELECT count(*) FROM notes").fetchone() == (200,)
        a.close()
        # verify's deep check compares the file's pages with the frame log's copies (WAL frames too)
        assert ReplicaFiles(str(tmp_path / "a.db")).check(KEY256, "hardened", deep=True) == []

        with pytest.raises(turso_sync.EncryptionError):
            turso_sync.connect(tmp_path / "b.db", passphrase="wrong horse battery staple")
        b = turso_sync.connect(tmp_path / "b.db", passphrase="correct horse battery staple")
        assert b.execute("SELECT body FROM notes WHERE id = 7").fetchone() == (f"{MARKER} from b",)
        b.close()

        for name in ("a.db", "b.db"):
            for f in files_of(tmp_path / name):
                assert MARKER.encode() not in Path(f).read_bytes(), f"plaintext in {f}"


@pytest.mark.parametrize(
    "options",
    [
        {"encryption_key": KEY256, "encryption_format": "sealed"},  # no such format
        {"encryption_key": KEY256, "passphrase": "pw"},  # one or the other
        {"encryption_format": "hardened"},  # hardened needs a key or a passphrase
        {"encryption_key": KEY256[:32], "cipher": "aes128gcm", "encryption_format": "hardened"},
    ],
)
def test_encryption_options_that_do_not_fit_fail_at_connect(tmp_path: Path, options: dict[str, str]) -> None:
    with pytest.raises(turso_sync.ProgrammingError) as info:
        turso_sync.connect(tmp_path / "x.db", **options)  # type: ignore[call-overload]
    assert "pw" not in str(info.value).split() and KEY256 not in str(info.value)
    assert files_of(tmp_path / "x.db") == []
