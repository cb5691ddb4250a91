"""``install_locked`` returns the install's own number, even when a commit lands as the lock is released."""

from __future__ import annotations

from turso_sync.local.engine import LocalDatabase


def test_install_number_is_its_own_when_a_commit_lands_in_the_window(tmp_path):
    db = LocalDatabase(tmp_path / "db")
    app = db.connect()
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    app.execute("INSERT INTO t VALUES (1, 'one')")
    app.commit()
    before = db.current_seq()
    engine = db._conn.apsw_connection
    landed = []

    def commit_in_the_window(_cursor, sql, _bindings):
        # the install has released the write lock (its next statement: the recovery read, or the
        # page cache dropped after a wal-index written in place): another connection commits
        if sql.startswith(("SELECT count(*) FROM sqlite_schema", "PRAGMA shrink_memory")) and not landed:
            landed.append(True)
            app.execute("INSERT INTO t VALUES (2, 'landed in the window')")
            app.commit()
        return True

    with db.write_lock() as conn:
        page1 = db.page_reader()(1)
        engine.exec_trace = commit_in_the_window
        try:
            seq = db.install_locked(conn, {1: page1}, int(conn.execute("PRAGMA page_count").get))
        finally:
            engine.exec_trace = None
    assert landed
    assert seq == before + 1  # the install's own number, not the commit's
    assert db.current_seq() == before + 2
    (install, commit) = list(db.history(before))
    assert (install.seq, commit.seq) == (before + 1, before + 2)
    assert app.execute("SELECT v FROM t WHERE id = 2").fetchone() == ("landed in the window",)
    app.close()
    db.close()
