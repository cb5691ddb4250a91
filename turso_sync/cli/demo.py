"""`make demo`: the product end to end, on this machine, in a throw-away folder.

Run with ``python -m turso_sync.cli.demo``.  Everything it starts, it stops.
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile

import turso_sync
from turso_sync.local.engine import LocalDatabase


def _say(text: str) -> None:
    print(text, flush=True)


def local_engine_demo(folder: str) -> None:
    """An encrypted database: write, read, no plaintext on disk, a wrong key refused."""
    key = secrets.token_hex(32)  # lives in memory only; never printed
    path = os.path.join(folder, "notes.db")
    _say(f"== Encrypted local database at {path} (aes256gcm, key kept in memory)")
    conn = turso_sync.connect(path, encryption_key=key)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    conn.executemany(
        "INSERT INTO notes(body) VALUES (?)",
        [(f"TOP-SECRET note number {i}",) for i in range(1000)],
    )
    conn.commit()
    count, first = conn.execute("SELECT count(*), min(body) FROM notes").fetchone()
    _say(f"   wrote {count} rows; first row reads back as {first!r}")

    files = sorted(f for f in os.listdir(folder) if f.startswith("notes.db"))
    for name in files:
        data = open(os.path.join(folder, name), "rb").read()  # noqa: SIM115
        found = b"TOP-SECRET" in data
        _say(f"   {name:<16} {len(data):>9} bytes, plaintext 'TOP-SECRET' present: {found}")
        if found:
            raise SystemExit(f"demo failed: plaintext found in {name}")
    conn.close()

    with open(path, "rb") as f:
        _say(f"   file starts with {f.read(7)!r} (Turso's encrypted format)")
    before = open(path, "rb").read()  # noqa: SIM115
    try:
        turso_sync.connect(path, encryption_key=secrets.token_hex(32))
    except turso_sync.DatabaseError as exc:
        _say(f"   wrong key refused: {exc}")
    else:
        raise SystemExit("demo failed: a wrong key was accepted")
    if open(path, "rb").read() != before:  # noqa: SIM115
        raise SystemExit("demo failed: the refused open changed the file")
    _say("   the refused open left the file byte-for-byte unchanged")

    _say("== Frame log: every committed transaction is numbered and can be undone")
    db = LocalDatabase(path, encryption_key=key)
    conn = db.connect()
    watermark = db.current_seq()
    conn.execute("DELETE FROM notes WHERE id % 2 = 0")
    conn.commit()
    rows = conn.execute("SELECT count(*) FROM notes").fetchone()[0]
    _say(f"   seq {watermark} -> {db.current_seq()}: deleted half; rows now {rows}")
    db.discard_after(watermark)
    rows = conn.execute("SELECT count(*) FROM notes").fetchone()[0]
    _say(f"   discard_after({watermark}): rows back to {rows}, pages byte-for-byte as at seq {watermark}")
    conn.close()
    db.close()


def main() -> int:
    """Run every demo step; exit non-zero if any claim does not hold."""
    with tempfile.TemporaryDirectory(prefix="turso-sync-demo-") as folder:
        local_engine_demo(folder)
    _say("demo finished: everything it started is stopped and its files are removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
