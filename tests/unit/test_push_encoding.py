"""The bytes a push puts on the wire, pinned: building requests from the typed Hrana classes
(``wire/hrana.py``) sends exactly what the hand-made dicts sent before, field for field.

A push sends only the fields that differ from Hrana's defaults (docs/benchmarks.md compares
push bytes with pyturso's); a change here is a change to every push's size and must be
deliberate.  The expected bodies were taken from the client before it used the typed classes
(one is smaller now: the mark query no longer spells out a default).  A push built on the mark
the replica believes the remote holds (one request per push) is pinned beside them.
"""

from __future__ import annotations

from pathlib import Path

import apsw

from turso_sync.primary.hrana import PipelineExecutor
from turso_sync.sync import push, remote, stream
from turso_sync.sync.rebase import OutboxRow
from turso_sync.wire.hrana import BatchRequest, PipelineRequest, StmtResult, encode_pipeline_response

DDL = ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, f REAL, b BLOB)", "ALTER TABLE t ADD COLUMN b BLOB"]


def changeset() -> bytes:
    """An insert (every value type), an update of one column and a delete on ``t``."""
    db = apsw.Connection(":memory:")
    db.execute(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, f REAL, b BLOB);"
        "INSERT INTO t VALUES (1, 'one', 0.5, NULL), (3, 'three', NULL, x'01')"
    )
    session = apsw.Session(db, "main")
    session.attach()
    with db:
        db.execute("INSERT INTO t VALUES (2, 'two', 1.5, x'00ff')")
        db.execute("UPDATE t SET v = 'uno' WHERE id = 1")
        db.execute("DELETE FROM t WHERE id = 3")
    return session.changeset()


def columns(table: str) -> list[tuple[str, int]]:
    assert table == "t"
    return [("id", 1), ("v", 0), ("f", 0), ("b", 0)]


def batch() -> push.PushBatch:
    rows = [OutboxRow(7, 2, DDL, b""), OutboxRow(8, 2, [], changeset())]
    return push.build_batch(rows, columns, "client-1", 2, epoch=4)


def test_a_push_batch_is_encoded_byte_for_byte_as_before() -> None:
    assert push.pipeline_body([batch().request]) == PUSH_BODY


def test_the_fence_and_the_mark_query_are_encoded_as_before() -> None:
    assert push.pipeline_body([push.fence_batch("client-1", 5)]) == FENCE_BODY
    assert next(remote.remote_mark("client-1", 5.0)).body == MARK_BODY


def test_a_push_on_the_believed_mark_is_encoded_as_pinned_and_replaces_the_mark_query() -> None:
    """One request per push (issue 12): the mark's compare-and-set rides in the batch.  Pinned on
    purpose: 149 bytes smaller than the batch built after a mark query (the mark's move replaces
    the bookkeeping CREATE TABLE and the never-backwards upsert), and the 205-byte query is gone."""
    rows = [OutboxRow(7, 2, DDL, b""), OutboxRow(8, 2, [], changeset())]
    folded = push.pipeline_body([push.build_batch(rows, columns, "client-1", 2, epoch=4, mark=(2, 6)).request])
    first = push.pipeline_body([push.build_batch(rows, columns, "client-1", 2, epoch=4, mark=push.NO_MARK).request])
    assert folded == FOLDED_PUSH_BODY
    assert first == FIRST_PUSH_BODY
    assert len(PUSH_BODY) - len(folded) == 149 and len(MARK_BODY) == 205


def test_a_single_statement_batch_carries_no_default_field() -> None:
    """The reserved-bytes check creates the bookkeeping table alone (``pusher.check_reserved_bytes``)."""
    body = push.pipeline_body([BatchRequest((remote.statement(push.LAST_CHANGE_TABLE, []),))])
    sql = push.LAST_CHANGE_TABLE.encode()
    assert body == b'{"baton":null,"requests":[{"type":"batch","batch":{"steps":[{"stmt":{"sql":"' + sql + b'"}}]}}]}'


def test_a_stream_push_splits_the_batch_into_the_same_requests_as_before() -> None:
    pushed = batch()
    plan = stream.plan_requests(pushed.request.steps, pushed.commit_index, 1024 + 1400)
    assert plan == [range(0, 6), range(6, 9), range(9, 13)]
    expected = [STREAM_PART_0, STREAM_PART_1, STREAM_PART_2]
    for n, part in enumerate(plan):
        outcome = [stream.StepOutcome(StmtResult()) for _ in range(part.start)]
        baton = None if n == 0 else f"b{n}"
        body = stream.request_body(pushed.request.steps, part, outcome, baton, n == len(plan) - 1)
        assert body == expected[n], f"request {n}"


def test_the_stream_probe_and_close_are_encoded_as_before() -> None:
    assert next(stream.probe_steps(5.0)).body == b'{"baton":null,"requests":[{"type":"get_autocommit"}]}'
    assert next(stream._close("b9", 5.0, stream.PIPELINE_PATH)).body == b'{"baton":"b9","requests":[{"type":"close"}]}'


def test_the_primary_decodes_a_push_into_the_batch_the_client_built_and_the_client_reads_its_answer(
    tmp_path: Path,
) -> None:
    """Both ends on one codec: the primary's executor runs the decoded push on a file database,
    and the client reads the primary's encoded answer back into a committed batch."""
    pushed = batch()
    assert PipelineRequest.from_bytes(push.pipeline_body([pushed.request])).requests == (pushed.request,)
    db = apsw.Connection(str(tmp_path / "remote.db"))
    db.execute(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, f REAL, b BLOB);"
        "INSERT INTO t VALUES (1, 'one', 0.5, NULL), (3, 'three', NULL, x'01');"
        f"{push.LAST_CHANGE_TABLE}; INSERT INTO turso_sync_last_change_id VALUES ('client-1#fence', 4, 0)"
    )  # the push epoch the batch was built under
    executor = PipelineExecutor(db)
    answer = encode_pipeline_response(executor.execute([pushed.request], executor.new_stream(False)))
    result = remote.batch_result(answer)
    assert push.batch_failure(result, pushed) is None, "the duplicate ADD COLUMN is harmless"
    assert result.step_errors[3] is not None and "duplicate column" in result.step_errors[3].message
    assert db.execute(push.LAST_CHANGE_SELECT, ("client-1",)).fetchall() == [(2, 8)]
    assert db.execute("SELECT * FROM t ORDER BY id").fetchall() == [(1, "uno", 0.5, None), (2, "two", 1.5, b"\x00\xff")]


PUSH_BODY = (
    b'{"baton":null,"requests":[{"type":"batch","batch":{"steps":[{"stmt":{"sql":"BEGIN IMMEDIATE"}},{'
    b'"stmt":{"sql":"CREATE TABLE IF NOT EXISTS turso_sync_last_change_id (client_id TEXT PRIMARY KEY,'
    b' pull_gen INTEGER, change_id INTEGER)"},"condition":{"type":"ok","step":0}},{"stmt":{"sql":"CREA'
    b'TE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT, f REAL, b BLOB)"},"condition":{"type":'
    b'"ok","step":1}},{"stmt":{"sql":"ALTER TABLE t ADD COLUMN b BLOB"},"condition":{"type":"ok","step'
    b'":2}},{"stmt":{"sql":"SELECT CASE WHEN EXISTS (SELECT 1 FROM \\"t\\" WHERE \\"id\\" IS ? AND \\"v\\" I'
    b'S ?) THEN 1 ELSE abs(-9223372036854775808) END AS ok","args":[{"type":"integer","value":"1"},{"t'
    b'ype":"text","value":"one"}],"want_rows":false},"condition":{"type":"or","conds":[{"type":"ok","s'
    b'tep":3},{"type":"error","step":3}]}},{"stmt":{"sql":"UPDATE \\"t\\" SET \\"v\\" = ? WHERE \\"id\\" IS '
    b'?","args":[{"type":"text","value":"uno"},{"type":"integer","value":"1"}]},"condition":{"type":"o'
    b'k","step":4}},{"stmt":{"sql":"SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM \\"t\\" WHERE \\"id\\" IS ?'
    b' AND NOT (\\"v\\" IS ? AND \\"f\\" IS ? AND \\"b\\" IS ?)) THEN 1 ELSE abs(-9223372036854775808) END A'
    b'S ok","args":[{"type":"integer","value":"2"},{"type":"text","value":"two"},{"type":"float","valu'
    b'e":1.5},{"type":"blob","base64":"AP8"}],"want_rows":false},"condition":{"type":"ok","step":5}},{'
    b'"stmt":{"sql":"INSERT INTO \\"t\\"(\\"id\\", \\"v\\", \\"f\\", \\"b\\") VALUES (?,?,?,?) ON CONFLICT(\\"id\\'
    b'") DO UPDATE SET \\"id\\" = excluded.\\"id\\",\\"v\\" = excluded.\\"v\\",\\"f\\" = excluded.\\"f\\",\\"b\\" = '
    b'excluded.\\"b\\"","args":[{"type":"integer","value":"2"},{"type":"text","value":"two"},{"type":"fl'
    b'oat","value":1.5},{"type":"blob","base64":"AP8"}]},"condition":{"type":"ok","step":6}},{"stmt":{'
    b'"sql":"SELECT CASE WHEN EXISTS (SELECT 1 FROM \\"t\\" WHERE \\"id\\" IS ? AND \\"v\\" IS ? AND \\"f\\" I'
    b'S ? AND \\"b\\" IS ?) THEN 1 ELSE abs(-9223372036854775808) END AS ok","args":[{"type":"integer","'
    b'value":"3"},{"type":"text","value":"three"},{"type":"null"},{"type":"blob","base64":"AQ"}],"want'
    b'_rows":false},"condition":{"type":"ok","step":7}},{"stmt":{"sql":"DELETE FROM \\"t\\" WHERE \\"id\\"'
    b' IS ?","args":[{"type":"integer","value":"3"}]},"condition":{"type":"ok","step":8}},{"stmt":{"sq'
    b'l":"INSERT INTO turso_sync_last_change_id(client_id, pull_gen, change_id) VALUES (?, ?, CASE WHE'
    b"N (SELECT pull_gen FROM turso_sync_last_change_id WHERE client_id = ?) IS ? THEN ? ELSE abs(-922"
    b"3372036854775808) END) ON CONFLICT(client_id) DO UPDATE SET pull_gen=excluded.pull_gen, change_i"
    b"d=excluded.change_id WHERE excluded.pull_gen > pull_gen OR (excluded.pull_gen = pull_gen AND exc"
    b'luded.change_id > change_id)","args":[{"type":"text","value":"client-1"},{"type":"integer","valu'
    b'e":"2"},{"type":"text","value":"client-1#fence"},{"type":"integer","value":"4"},{"type":"integer'
    b'","value":"8"}],"want_rows":false},"condition":{"type":"ok","step":9}},{"stmt":{"sql":"COMMIT"},'
    b'"condition":{"type":"ok","step":10}},{"stmt":{"sql":"ROLLBACK"},"condition":{"type":"not","cond"'
    b':{"type":"ok","step":11}}}]}}]}'
)

FENCE_BODY = (
    b'{"baton":null,"requests":[{"type":"batch","batch":{"steps":[{"stmt":{"sql":"BEGIN IMMEDIATE"}},{'
    b'"stmt":{"sql":"CREATE TABLE IF NOT EXISTS turso_sync_last_change_id (client_id TEXT PRIMARY KEY,'
    b' pull_gen INTEGER, change_id INTEGER)"},"condition":{"type":"ok","step":0}},{"stmt":{"sql":"INSE'
    b"RT INTO turso_sync_last_change_id(client_id, pull_gen, change_id) VALUES (?, ?, 0) ON CONFLICT(c"
    b'lient_id) DO UPDATE SET pull_gen = excluded.pull_gen","args":[{"type":"text","value":"client-1#f'
    b'ence"},{"type":"integer","value":"5"}]},"condition":{"type":"ok","step":1}},{"stmt":{"sql":"COMM'
    b'IT"},"condition":{"type":"ok","step":2}},{"stmt":{"sql":"ROLLBACK"},"condition":{"type":"not","c'
    b'ond":{"type":"ok","step":3}}}]}}]}'
)

MARK_BODY = (
    b'{"baton":null,"requests":[{"type":"batch","batch":{"steps":[{"stmt":{"sql":"SELECT pull_gen, cha'
    b'nge_id FROM turso_sync_last_change_id WHERE client_id = ?","args":[{"type":"text","value":"clien'
    b't-1"}]}}]}}]}'
)  # before: ``"want_rows":true`` too, Hrana's default (our primary and tursodb alike): 16 bytes fewer now

STREAM_PART_0 = (
    b'{"baton":null,"requests":[{"type":"batch","batch":{"steps":[{"stmt":{"sql":"BEGIN IMMEDIATE"}},{'
    b'"stmt":{"sql":"CREATE TABLE IF NOT EXISTS turso_sync_last_change_id (client_id TEXT PRIMARY KEY,'
    b' pull_gen INTEGER, change_id INTEGER)"},"condition":{"type":"ok","step":0}},{"stmt":{"sql":"CREA'
    b'TE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT, f REAL, b BLOB)"},"condition":{"type":'
    b'"ok","step":1}},{"stmt":{"sql":"ALTER TABLE t ADD COLUMN b BLOB"},"condition":{"type":"ok","step'
    b'":2}},{"stmt":{"sql":"SELECT CASE WHEN EXISTS (SELECT 1 FROM \\"t\\" WHERE \\"id\\" IS ? AND \\"v\\" I'
    b'S ?) THEN 1 ELSE abs(-9223372036854775808) END AS ok","args":[{"type":"integer","value":"1"},{"t'
    b'ype":"text","value":"one"}],"want_rows":false},"condition":{"type":"or","conds":[{"type":"ok","s'
    b'tep":3},{"type":"error","step":3}]}},{"stmt":{"sql":"UPDATE \\"t\\" SET \\"v\\" = ? WHERE \\"id\\" IS '
    b'?","args":[{"type":"text","value":"uno"},{"type":"integer","value":"1"}]},"condition":{"type":"o'
    b'k","step":4}}]}},{"type":"get_autocommit"}]}'
)

STREAM_PART_1 = (
    b'{"baton":"b1","requests":[{"type":"batch","batch":{"steps":[{"stmt":{"sql":"SELECT CASE WHEN NOT'
    b' EXISTS (SELECT 1 FROM \\"t\\" WHERE \\"id\\" IS ? AND NOT (\\"v\\" IS ? AND \\"f\\" IS ? AND \\"b\\" IS ?'
    b')) THEN 1 ELSE abs(-9223372036854775808) END AS ok","args":[{"type":"integer","value":"2"},{"typ'
    b'e":"text","value":"two"},{"type":"float","value":1.5},{"type":"blob","base64":"AP8"}],"want_rows'
    b'":false},"condition":{"type":"and","conds":[]}},{"stmt":{"sql":"INSERT INTO \\"t\\"(\\"id\\", \\"v\\",'
    b' \\"f\\", \\"b\\") VALUES (?,?,?,?) ON CONFLICT(\\"id\\") DO UPDATE SET \\"id\\" = excluded.\\"id\\",\\"v\\"'
    b' = excluded.\\"v\\",\\"f\\" = excluded.\\"f\\",\\"b\\" = excluded.\\"b\\"","args":[{"type":"integer","valu'
    b'e":"2"},{"type":"text","value":"two"},{"type":"float","value":1.5},{"type":"blob","base64":"AP8"'
    b'}]},"condition":{"type":"ok","step":0}},{"stmt":{"sql":"SELECT CASE WHEN EXISTS (SELECT 1 FROM \\'
    b'"t\\" WHERE \\"id\\" IS ? AND \\"v\\" IS ? AND \\"f\\" IS ? AND \\"b\\" IS ?) THEN 1 ELSE abs(-9223372036'
    b'854775808) END AS ok","args":[{"type":"integer","value":"3"},{"type":"text","value":"three"},{"t'
    b'ype":"null"},{"type":"blob","base64":"AQ"}],"want_rows":false},"condition":{"type":"ok","step":1'
    b'}}]}},{"type":"get_autocommit"}]}'
)

STREAM_PART_2 = (
    b'{"baton":"b2","requests":[{"type":"batch","batch":{"steps":[{"stmt":{"sql":"DELETE FROM \\"t\\" WH'
    b'ERE \\"id\\" IS ?","args":[{"type":"integer","value":"3"}]},"condition":{"type":"and","conds":[]}}'
    b',{"stmt":{"sql":"INSERT INTO turso_sync_last_change_id(client_id, pull_gen, change_id) VALUES (?'
    b", ?, CASE WHEN (SELECT pull_gen FROM turso_sync_last_change_id WHERE client_id = ?) IS ? THEN ? "
    b"ELSE abs(-9223372036854775808) END) ON CONFLICT(client_id) DO UPDATE SET pull_gen=excluded.pull_"
    b"gen, change_id=excluded.change_id WHERE excluded.pull_gen > pull_gen OR (excluded.pull_gen = pul"
    b'l_gen AND excluded.change_id > change_id)","args":[{"type":"text","value":"client-1"},{"type":"i'
    b'nteger","value":"2"},{"type":"text","value":"client-1#fence"},{"type":"integer","value":"4"},{"t'
    b'ype":"integer","value":"8"}],"want_rows":false},"condition":{"type":"ok","step":0}},{"stmt":{"sq'
    b'l":"COMMIT"},"condition":{"type":"ok","step":1}},{"stmt":{"sql":"ROLLBACK"},"condition":{"type":'
    b'"not","cond":{"type":"ok","step":2}}}]}}]}'
)

FOLDED_PUSH_BODY = (
    b'{"baton":null,"requests":[{"type":"batch","batch":{"steps":[{"stmt":{"sql":"BEGIN IMMEDIATE"}},{"s'
    b'tmt":{"sql":"INSERT INTO turso_sync_last_change_id(client_id, pull_gen, change_id) VALUES (?, ?, C'
    b"ASE WHEN (SELECT pull_gen FROM turso_sync_last_change_id WHERE client_id = ?) IS ? THEN ? ELSE abs"
    b"(-9223372036854775808) END) ON CONFLICT(client_id) DO UPDATE SET change_id = CASE WHEN pull_gen = "
    b"? AND change_id = ? THEN excluded.change_id ELSE abs(-9223372036854775808) END, pull_gen = exclude"
    b'd.pull_gen","args":[{"type":"text","value":"client-1"},{"type":"integer","value":"2"},{"type":"tex'
    b't","value":"client-1#fence"},{"type":"integer","value":"4"},{"type":"integer","value":"8"},{"type"'
    b':"integer","value":"2"},{"type":"integer","value":"6"}]},"condition":{"type":"ok","step":0}},{"stm'
    b't":{"sql":"CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT, f REAL, b BLOB)"},"condit'
    b'ion":{"type":"ok","step":1}},{"stmt":{"sql":"ALTER TABLE t ADD COLUMN b BLOB"},"condition":{"type"'
    b':"ok","step":2}},{"stmt":{"sql":"SELECT CASE WHEN EXISTS (SELECT 1 FROM \\"t\\" WHERE \\"id\\" IS ? AN'
    b'D \\"v\\" IS ?) THEN 1 ELSE abs(-9223372036854775808) END AS ok","args":[{"type":"integer","value":"'
    b'1"},{"type":"text","value":"one"}],"want_rows":false},"condition":{"type":"or","conds":[{"type":"o'
    b'k","step":3},{"type":"error","step":3}]}},{"stmt":{"sql":"UPDATE \\"t\\" SET \\"v\\" = ? WHERE \\"id\\" '
    b'IS ?","args":[{"type":"text","value":"uno"},{"type":"integer","value":"1"}]},"condition":{"type":"'
    b'ok","step":4}},{"stmt":{"sql":"SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM \\"t\\" WHERE \\"id\\" IS ? '
    b'AND NOT (\\"v\\" IS ? AND \\"f\\" IS ? AND \\"b\\" IS ?)) THEN 1 ELSE abs(-9223372036854775808) END AS o'
    b'k","args":[{"type":"integer","value":"2"},{"type":"text","value":"two"},{"type":"float","value":1.'
    b'5},{"type":"blob","base64":"AP8"}],"want_rows":false},"condition":{"type":"ok","step":5}},{"stmt":'
    b'{"sql":"INSERT INTO \\"t\\"(\\"id\\", \\"v\\", \\"f\\", \\"b\\") VALUES (?,?,?,?) ON CONFLICT(\\"id\\") DO UPD'
    b'ATE SET \\"id\\" = excluded.\\"id\\",\\"v\\" = excluded.\\"v\\",\\"f\\" = excluded.\\"f\\",\\"b\\" = excluded.\\"'
    b'b\\"","args":[{"type":"integer","value":"2"},{"type":"text","value":"two"},{"type":"float","value":'
    b'1.5},{"type":"blob","base64":"AP8"}]},"condition":{"type":"ok","step":6}},{"stmt":{"sql":"SELECT C'
    b'ASE WHEN EXISTS (SELECT 1 FROM \\"t\\" WHERE \\"id\\" IS ? AND \\"v\\" IS ? AND \\"f\\" IS ? AND \\"b\\" IS '
    b'?) THEN 1 ELSE abs(-9223372036854775808) END AS ok","args":[{"type":"integer","value":"3"},{"type"'
    b':"text","value":"three"},{"type":"null"},{"type":"blob","base64":"AQ"}],"want_rows":false},"condit'
    b'ion":{"type":"ok","step":7}},{"stmt":{"sql":"DELETE FROM \\"t\\" WHERE \\"id\\" IS ?","args":[{"type":'
    b'"integer","value":"3"}]},"condition":{"type":"ok","step":8}},{"stmt":{"sql":"COMMIT"},"condition":'
    b'{"type":"ok","step":9}},{"stmt":{"sql":"ROLLBACK"},"condition":{"type":"not","cond":{"type":"ok","'
    b'step":10}}}]}}]}'
)

FIRST_PUSH_BODY = (
    b'{"baton":null,"requests":[{"type":"batch","batch":{"steps":[{"stmt":{"sql":"BEGIN IMMEDIATE"}},{"s'
    b'tmt":{"sql":"CREATE TABLE IF NOT EXISTS turso_sync_last_change_id (client_id TEXT PRIMARY KEY, pul'
    b'l_gen INTEGER, change_id INTEGER)"},"condition":{"type":"ok","step":0}},{"stmt":{"sql":"INSERT INT'
    b"O turso_sync_last_change_id(client_id, pull_gen, change_id) VALUES (?, ?, CASE WHEN (SELECT pull_g"
    b"en FROM turso_sync_last_change_id WHERE client_id = ?) IS ? THEN ? ELSE abs(-9223372036854775808) "
    b"END) ON CONFLICT(client_id) DO UPDATE SET change_id = CASE WHEN pull_gen = ? AND change_id = ? THE"
    b'N excluded.change_id ELSE abs(-9223372036854775808) END, pull_gen = excluded.pull_gen","args":[{"t'
    b'ype":"text","value":"client-1"},{"type":"integer","value":"2"},{"type":"text","value":"client-1#fe'
    b'nce"},{"type":"integer","value":"4"},{"type":"integer","value":"8"},{"type":"null"},{"type":"null"'
    b'}]},"condition":{"type":"ok","step":1}},{"stmt":{"sql":"CREATE TABLE IF NOT EXISTS t (id INTEGER P'
    b'RIMARY KEY, v TEXT, f REAL, b BLOB)"},"condition":{"type":"ok","step":2}},{"stmt":{"sql":"ALTER TA'
    b'BLE t ADD COLUMN b BLOB"},"condition":{"type":"ok","step":3}},{"stmt":{"sql":"SELECT CASE WHEN EXI'
    b'STS (SELECT 1 FROM \\"t\\" WHERE \\"id\\" IS ? AND \\"v\\" IS ?) THEN 1 ELSE abs(-9223372036854775808) E'
    b'ND AS ok","args":[{"type":"integer","value":"1"},{"type":"text","value":"one"}],"want_rows":false}'
    b',"condition":{"type":"or","conds":[{"type":"ok","step":4},{"type":"error","step":4}]}},{"stmt":{"s'
    b'ql":"UPDATE \\"t\\" SET \\"v\\" = ? WHERE \\"id\\" IS ?","args":[{"type":"text","value":"uno"},{"type":"'
    b'integer","value":"1"}]},"condition":{"type":"ok","step":5}},{"stmt":{"sql":"SELECT CASE WHEN NOT E'
    b'XISTS (SELECT 1 FROM \\"t\\" WHERE \\"id\\" IS ? AND NOT (\\"v\\" IS ? AND \\"f\\" IS ? AND \\"b\\" IS ?)) T'
    b'HEN 1 ELSE abs(-9223372036854775808) END AS ok","args":[{"type":"integer","value":"2"},{"type":"te'
    b'xt","value":"two"},{"type":"float","value":1.5},{"type":"blob","base64":"AP8"}],"want_rows":false}'
    b',"condition":{"type":"ok","step":6}},{"stmt":{"sql":"INSERT INTO \\"t\\"(\\"id\\", \\"v\\", \\"f\\", \\"b\\"'
    b') VALUES (?,?,?,?) ON CONFLICT(\\"id\\") DO UPDATE SET \\"id\\" = excluded.\\"id\\",\\"v\\" = excluded.\\"v'
    b'\\",\\"f\\" = excluded.\\"f\\",\\"b\\" = excluded.\\"b\\"","args":[{"type":"integer","value":"2"},{"type":"'
    b'text","value":"two"},{"type":"float","value":1.5},{"type":"blob","base64":"AP8"}]},"condition":{"t'
    b'ype":"ok","step":7}},{"stmt":{"sql":"SELECT CASE WHEN EXISTS (SELECT 1 FROM \\"t\\" WHERE \\"id\\" IS '
    b'? AND \\"v\\" IS ? AND \\"f\\" IS ? AND \\"b\\" IS ?) THEN 1 ELSE abs(-9223372036854775808) END AS ok","'
    b'args":[{"type":"integer","value":"3"},{"type":"text","value":"three"},{"type":"null"},{"type":"blo'
    b'b","base64":"AQ"}],"want_rows":false},"condition":{"type":"ok","step":8}},{"stmt":{"sql":"DELETE F'
    b'ROM \\"t\\" WHERE \\"id\\" IS ?","args":[{"type":"integer","value":"3"}]},"condition":{"type":"ok","st'
    b'ep":9}},{"stmt":{"sql":"COMMIT"},"condition":{"type":"ok","step":10}},{"stmt":{"sql":"ROLLBACK"},"'
    b'condition":{"type":"not","cond":{"type":"ok","step":11}}}]}}]}'
)
