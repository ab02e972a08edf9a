"""The audit log on both back ends: the chain, group commit, tampering of every kind, retention."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa

from lockgate.plugins.audit import (
    AuditLog,
    CheckpointSink,
    PruneRefused,
    Sequencer,
    SequencerStopped,
    load_or_create_key,
    record_hash,
)
from lockgate.plugins.audit import _schema as t
from lockgate.plugins.audit._payloads import PayloadSealer
from lockgate.plugins.audit._sequencer import digest_bodies
from lockgate.plugins.errors import AuditError


@pytest.fixture
def make_log(db_url, tmp_path):
    made = []

    def make(checkpoint_every: int = 1000, key_file: str = "audit.key") -> AuditLog:
        sink = CheckpointSink(tmp_path / "checkpoints.jsonl", load_or_create_key(tmp_path / key_file))
        log = AuditLog(db_url, sink, checkpoint_every=checkpoint_every)
        made.append(log)
        return log

    yield make
    for log in made:
        log.close()


def entry(i: int, **extra) -> dict:
    return {
        "at": time.time(),
        "kind": "infer",
        "actor": "tester",
        "model": "iris",
        "version": 1,
        "request_id": f"r{i}",
        "detail": {"i": i},
        **extra,
    }


def fill(log: AuditLog, n: int, group: int = 5) -> None:
    for start in range(0, n, group):
        log.append([entry(i) for i in range(start, min(n, start + group))])


def sql(log: AuditLog, statement: str, **params) -> None:
    with log.engine.begin() as c:
        c.execute(sa.text(statement), params)


def problems(log: AuditLog) -> str:
    report = log.verify()
    assert not report.ok
    return "\n".join(report.problems)


def test_records_chain_with_domain_separated_hashes_and_verify(make_log):
    log = make_log(checkpoint_every=10)
    fill(log, 35)
    report = log.verify()
    assert report.ok, report.problems
    assert (report.records, report.first, report.last, report.checkpoints) == (35, 1, 35, 3)
    rows = list(log.records())
    assert [r["seq"] for r in rows] == list(range(1, 36))
    with log.engine.connect() as c:
        first = c.execute(sa.select(t.records).where(t.records.c.seq == 1)).one()
    assert first.prev_hash == "0" * 64 and first.hash == record_hash("0" * 64, first.body)
    assert json.loads(first.body)["seq"] == 1 and ":" in first.body and " " not in first.body  # canonical JSON


def test_group_commit_from_many_threads_gives_one_gapless_sequence(make_log):
    log = make_log()
    sequencer = Sequencer(log, max_group=64)
    seqs: list[int] = []
    lock = threading.Lock()

    def producer(k: int) -> None:
        for i in range(50):
            s = sequencer.record_blocking(entry(k * 1000 + i))
            with lock:
                seqs.append(s)

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    sequencer.stop()
    assert sorted(seqs) == list(range(1, 401))
    assert sequencer.groups < 400  # records shared commits
    assert log.verify().ok and log.count() == 400


def test_two_writers_on_one_database_append_to_one_chain(make_log):
    a, b = make_log(), make_log()
    threads = [threading.Thread(target=fill, args=(log, 60, 3)) for log in (a, b)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert a.verify().ok and a.count() == 120 and a.head()[0] == 120


def test_an_edited_record_is_detected(make_log):
    log = make_log()
    fill(log, 10)
    with log.engine.connect() as c:
        body = c.execute(sa.select(t.records.c.body).where(t.records.c.seq == 4)).scalar()
    sql(log, "UPDATE lockgate_audit SET body = :b WHERE seq = 4", b=body.replace('{"i":', '{"i":1'))
    assert "record 4 was edited" in problems(log)


def test_an_edited_column_is_detected(make_log):
    log = make_log()
    fill(log, 5)
    sql(log, "UPDATE lockgate_audit SET actor = 'mallory' WHERE seq = 2")
    assert "record 2: column(s) actor differ" in problems(log)


def test_a_deleted_record_is_detected(make_log):
    log = make_log()
    fill(log, 10)
    sql(log, "DELETE FROM lockgate_audit WHERE seq = 6")
    found = problems(log)
    assert "records 6..6 are missing" in found and "record 7 does not link" in found


def test_reordered_records_are_detected(make_log):
    log = make_log()
    fill(log, 10)
    sql(log, "UPDATE lockgate_audit SET seq = -1 WHERE seq = 3")
    sql(log, "UPDATE lockgate_audit SET seq = 3 WHERE seq = 4")
    sql(log, "UPDATE lockgate_audit SET seq = 4 WHERE seq = -1")
    found = problems(log)
    assert "record at seq 3 carries seq 4" in found and "record 3 does not link" in found


def test_a_chain_rewritten_without_the_checkpoint_key_is_detected(make_log):
    log = make_log(checkpoint_every=10)
    fill(log, 30)
    # The attacker edits record 5 and recomputes every hash after it, head included: the chain
    # is consistent again, but the signed checkpoints (10, 20, 30) no longer match it.
    with log.engine.connect() as c:
        rows = c.execute(sa.select(t.records).order_by(t.records.c.seq)).all()
    prev = rows[3].hash
    for row in rows[4:]:
        body = row.body.replace('"i":4', '"i":400') if row.seq == 5 else row.body
        digest = record_hash(prev, body)
        sql(
            log,
            "UPDATE lockgate_audit SET body = :b, prev_hash = :p, hash = :h WHERE seq = :s",
            b=body,
            p=prev,
            h=digest,
            s=row.seq,
        )
        prev = digest
    sql(log, "UPDATE lockgate_audit_head SET hash = :h", h=prev)
    found = problems(log)
    assert "differs from the signed checkpoint of seq 10: the chain was rewritten" in found
    assert "was edited" not in found and "does not link" not in found  # only the checkpoints catch it


def test_a_cut_tail_is_detected(make_log):
    log = make_log(checkpoint_every=10)
    fill(log, 25)
    with log.engine.connect() as c:
        hash15 = c.execute(sa.select(t.records.c.hash).where(t.records.c.seq == 15)).scalar()
    sql(log, "DELETE FROM lockgate_audit WHERE seq > 15")
    sql(log, "UPDATE lockgate_audit_head SET seq = 15, hash = :h", h=hash15)  # head rewritten too
    assert "the log ends at seq 15 but a signed checkpoint names seq 20: its tail was cut" in problems(log)


def test_a_forged_checkpoint_is_detected(make_log, tmp_path):
    log = make_log(checkpoint_every=5)
    fill(log, 10)
    forged = CheckpointSink(tmp_path / "checkpoints.jsonl", b"not the key, 16+ bytes")
    forged.append(10, "f" * 64, time.time())
    assert "has a bad signature" in problems(log)


def test_retention_prunes_to_a_checkpoint_and_the_rest_still_verifies(make_log):
    log = make_log(checkpoint_every=10)
    old = time.time() - 200 * 86400
    for start in range(0, 30, 5):
        log.append([entry(i, at=old + i) for i in range(start, start + 5)])
    fill(log, 12)  # recent records
    with pytest.raises(PruneRefused, match="younger than the retention period"):
        log.prune(time.time() - 30 * 86400, retention_days=183)
    deleted, anchor = log.prune(time.time() - 190 * 86400, retention_days=183)
    assert (deleted, anchor) == (30, 30)
    report = log.verify()
    assert report.ok, report.problems
    assert (report.first, report.anchored_at, report.records) == (31, 30, 12)
    sql(log, "DELETE FROM lockgate_audit WHERE seq = 31")  # deleting at the new start is still caught
    assert "records before seq 32 are missing and no signed prune marker says they were pruned" in problems(log)


def test_a_prefix_deleted_up_to_a_checkpoint_outside_prune_is_caught(make_log):
    """A signed checkpoint is no licence to delete what precedes it: only a prune marker is
    (before, verify took any checkpoint as the start of the chain)."""
    log = make_log(checkpoint_every=10)
    fill(log, 25)
    assert 10 in log.sink.read()[0]
    sql(log, "DELETE FROM lockgate_audit WHERE seq <= 10")
    assert "records before seq 11 are missing and no signed prune marker says they were pruned" in problems(log)


def test_a_prune_that_cut_into_the_retention_period_is_caught(make_log):
    """The marker records the cut-off and the retention period of its prune: verify, told the
    retention in force, refuses a chain pruned short of it."""
    log = make_log(checkpoint_every=10)
    old = time.time() - 60 * 86400
    log.append([entry(i, at=old + i) for i in range(12)])
    fill(log, 3)
    assert log.prune(time.time() - 40 * 86400, retention_days=30) == (12, 12)  # a 30-day retention then
    assert log.verify(retention_days=30).ok
    report = log.verify(retention_days=183)
    assert report.problems == ["the prune of records up to seq 12 cut records younger than the retention period (183 days)"]


def test_export_filters_and_formats(make_log):
    log = make_log()
    log.append([entry(1), entry(2, model="digits"), entry(3, kind="approve", actor="bob")])
    out = io.StringIO()
    assert log.export(out, "jsonl", model="iris") == 2
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [r["kind"] for r in lines] == ["infer", "approve"] and all(len(r["hash"]) == 64 for r in lines)
    out = io.StringIO()
    assert log.export(out, "csv", kind="approve") == 1
    header, row = out.getvalue().splitlines()
    assert header.startswith("seq,time,kind,actor") and ",approve,bob,iris," in row


def test_payload_digests_and_full_payloads():
    e = {"detail": {"input_bytes": b"abc", "output_bytes": b"xyz"}}
    d = digest_bodies(json.loads(json.dumps({"detail": {}})) | e)["detail"]
    assert d == {
        "input_sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "input_size": 3,
        "output_sha256": "3608bca1e44ea6c4d268eb6db02260269892c0b42b86bbf1e77a6fa16c3c9282",
        "output_size": 3,
    }
    sealer = PayloadSealer(bytes(range(32)))
    full = digest_bodies({"request_id": "r1", "detail": {"input_bytes": b"abc"}}, sealer)["detail"]
    assert "abc" not in json.dumps(full) and "YWJj" not in json.dumps(full)  # sealed, not base64 of the body
    assert full["payload_key"] == sealer.key_id and sealer.open(full["input_sealed"], "r1", "input") == b"abc"
    with pytest.raises(ValueError, match="moved from another record"):
        sealer.open(full["input_sealed"], "r2", "input")  # bound to its record's request id
    with pytest.raises(ValueError, match="altered"):
        sealer.open(full["input_sealed"], "r1", "output")  # and to which body it is
    with pytest.raises(ValueError, match="sealed with key"):
        PayloadSealer(bytes(32)).open(full["input_sealed"], "r1", "input", full["payload_key"])


def test_sync_waiters_fail_when_the_store_fails_and_async_drops_are_counted(make_log):
    log = make_log()
    sequencer = Sequencer(log, mode="sync")
    assert asyncio.run(_record(sequencer, entry(1))) is None
    sql(log, "DROP TABLE lockgate_audit")
    with pytest.raises(AuditError, match="audit write failed"):
        asyncio.run(_record(sequencer, entry(2)))
    sequencer.stop()
    with pytest.raises(SequencerStopped):
        sequencer.submit(entry(3))


async def _record(sequencer: Sequencer, e: dict) -> None:
    await sequencer.record(e)


def test_async_mode_counts_what_a_full_buffer_drops(make_log):
    sequencer = Sequencer(make_log(), mode="async", buffer=3)
    sequencer._thread = threading.current_thread()  # a writer that is alive but never drains
    assert [sequencer.submit(entry(i)) for i in range(5)] == [True, True, True, False, False]
    assert sequencer.dropped == 2
    assert sequencer.submit(entry(9), droppable=False)  # control events are never dropped


CRASH_SCRIPT = r"""
import sys, time, os
from lockgate.plugins.audit import AuditLog, CheckpointSink, Sequencer, load_or_create_key
url, home, buffer = sys.argv[1], sys.argv[2], int(sys.argv[3])
log = AuditLog(url, CheckpointSink(home + "/c.jsonl", load_or_create_key(home + "/k")), durable=False)
seq = Sequencer(log, mode="async", buffer=buffer, max_group=256)
accepted = 0
while True:
    if seq.submit({"at": time.time(), "kind": "infer", "actor": "x", "detail": {"n": accepted}}):
        accepted += 1
        if accepted % 500 == 0:
            print(accepted, flush=True)
"""


@pytest.mark.slow
def test_async_mode_loses_at_most_its_buffer_in_a_crash(make_log, db_url, tmp_path):
    log = make_log()
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_SCRIPT, db_url, str(tmp_path), "2000"], stdout=subprocess.PIPE, text=True
    )
    last = 0
    while last < 20000:
        line = proc.stdout.readline()
        assert line, "the writer died early"
        last = int(line)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    accepted = last + sum(500 for _ in proc.stdout)  # lines printed after we read the last one
    written = log.count()
    assert 0 < written <= accepted
    lost = accepted - written
    assert lost <= 2000 + 256 + 500, (accepted, written)  # buffer + one group in flight + our read lag
    report = log.verify()
    assert report.ok, report.problems  # what was written is a whole chain


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_one_record_that_cannot_be_stored_never_stalls_or_poisons_the_chain(make_log, mode):
    """A lone surrogate in a record's text cannot be encoded for the hash (nor stored by
    PostgreSQL): the group it shares is written record by record, and the bad record is replaced
    by one saying so. Before, the whole group failed (sync: every waiter got 503) or was retried
    forever (async: nothing more was written)."""
    log = make_log()
    sequencer = Sequencer(log, mode=mode, max_group=64, linger_s=0.05 if mode == "async" else 0.0)
    bad = entry(3, client_id="\ud800", detail={"error": "unknown input '\ud800'", "status": 400})
    entries = [entry(1), entry(2), bad, entry(4), entry(5)]
    if mode == "sync":

        async def together() -> list:
            return await asyncio.gather(*(sequencer.record(e) for e in entries))

        seqs = asyncio.run(together())
        assert sorted(seqs) == seqs and len(set(seqs)) == 5  # every waiter answered, the bad one too
    else:
        for e in entries:
            sequencer.submit(e)
        assert sequencer.flush(10)
        sequencer.submit(entry(6))  # and the writer goes on
        assert sequencer.flush(10)
    sequencer.stop()
    records = list(log.records())
    kinds = [r["kind"] for r in records]
    assert kinds.count("infer") == (4 if mode == "sync" else 5) and kinds.count("unrecordable") == 1, kinds
    stand_in = next(r for r in records if r["kind"] == "unrecordable")
    assert stand_in["detail"] == {
        "reason": "the record could not be stored: UnicodeEncodeError",
        "kind": "infer",
        "status": 400,
        "request_id_sha256": hashlib.sha256(b"r3").hexdigest(),
    }
    assert stand_in["model"] == "iris" and stand_in["version"] == 1
    assert sequencer.replaced == 1
    assert log.verify().ok, log.verify().problems


def test_a_failing_store_is_not_taken_for_a_bad_record(make_log):
    """When the store itself fails, no record is replaced: the waiters fail (sync) as before."""
    log = make_log()
    sequencer = Sequencer(log, mode="sync")
    assert asyncio.run(_record(sequencer, entry(1))) is None
    sql(log, "DROP TABLE lockgate_audit")
    with pytest.raises(AuditError, match="audit write failed"):
        asyncio.run(_record(sequencer, entry(2)))
    assert sequencer.replaced == 0
    sequencer.stop()


@pytest.mark.parametrize("durable", [True, False])
def test_an_sqlite_file_is_appended_through_the_group_writer_synced_as_the_mode_promises(tmp_path, durable):
    """A plain SQLite file's groups go through lockgate.fastpath's GroupWriter (compiled in CI),
    with synchronous=FULL in sync mode (a committed record survives a power cut); the writer
    thread waits for another process's lock, the event loop's lone commit does not."""
    from lockgate.fastpath.sqlite_group import GroupWriter

    sink = CheckpointSink(tmp_path / "checkpoints.jsonl", load_or_create_key(tmp_path / "audit.key"))
    log = AuditLog(f"sqlite:///{tmp_path}/audit.db", sink, durable=durable)
    try:
        assert log.append([entry(1)]) == [1] and log.append_now([entry(2)]) == [2]
        for connection in (log._raw, log._raw_now):
            assert isinstance(connection, GroupWriter)
            assert connection.pragma("synchronous") == (2 if durable else 1)
        assert log._raw.pragma("busy_timeout") == 30_000 and log._raw_now.pragma("busy_timeout") == 0
        assert log.verify().ok
    finally:
        log.close()
    assert log._raw is None and log._raw_now is None


def test_other_databases_are_appended_through_the_engines_connections(db_url, tmp_path):
    from lockgate.fastpath.sqlite_group import GroupWriter

    url = db_url if not db_url.startswith("sqlite") else f"sqlite:///{tmp_path}/audit.db?timeout=30"
    sink = CheckpointSink(tmp_path / "checkpoints.jsonl", load_or_create_key(tmp_path / "audit.key"))
    log = AuditLog(url, sink)
    try:
        assert log.append([entry(1)]) == [1] and log.append([entry(2)]) == [2]
        assert log._raw is not None and not isinstance(log._raw, GroupWriter)
        assert log.verify().ok
    finally:
        log.close()


def test_a_record_says_the_answer_was_withheld_when_its_future_is_cancelled(make_log):
    """The recorder's timeout cancels a sync waiter's future and the server withholds the answer.
    A record not written yet when the store is locked for it is written withheld; one whose
    future is cancelled while it is being written is followed by a record of its own (on the
    waiter's loop); one written before is left as it is."""
    log = make_log()
    if not log.url.startswith("sqlite"):
        pytest.skip("holding the store locked is shown on SQLite")
    follow_ups: list[dict] = []
    sequencer = Sequencer(log, mode="sync", withhold=lambda e: e["detail"].update(status=503), follow_up=follow_ups.append)
    locker = sa.create_engine(log.url, connect_args={"timeout": 0})

    async def run() -> None:
        loop = asyncio.get_running_loop()
        assert await sequencer.record(entry(1)) == 1
        with locker.connect() as c:
            c.exec_driver_sql("BEGIN EXCLUSIVE")  # the writer waits for the store with r2 in hand
            waiting = sequencer.record(entry(2))
            await asyncio.sleep(0.3)
            waiting.cancel()
            c.exec_driver_sql("ROLLBACK")
        for _ in range(100):  # r2 is written
            await asyncio.sleep(0.02)
            if log.count() == 2:
                break
        seal = sequencer._seal

        def seal_then_cancel() -> None:  # r3's answer is withheld after its store was locked
            seal()
            loop.call_soon_threadsafe(late.cancel)
            time.sleep(0.2)

        sequencer._seal = seal_then_cancel  # type: ignore[method-assign]
        late = sequencer.record(entry(3))
        for _ in range(100):  # r3 is written and the loop resolves its (cancelled) future
            await asyncio.sleep(0.02)
            if follow_ups:
                break
        sequencer._seal = seal  # type: ignore[method-assign]

    try:  # stopped on every path: a writer left running outlives the tables a later test drops
        asyncio.run(run())
        assert sequencer.flush(30)
    finally:
        sequencer.stop()
    statuses = {r["request_id"]: r["detail"].get("status") for r in log.records()}
    assert statuses == {"r1": None, "r2": 503, "r3": None}
    assert [e["request_id"] for e in follow_ups] == ["r3"]


# The layout of the records table before the request-path measurements (docs/decisions.md): a
# BIGINT key (on SQLite an index of its own beside the rowid) and an index per filter column.
EARLIER_LAYOUT = [
    "CREATE TABLE lockgate_audit (seq BIGINT NOT NULL, at FLOAT NOT NULL, kind VARCHAR(64) NOT NULL, "
    "actor VARCHAR(256) NOT NULL, model VARCHAR(128), version INTEGER, request_id VARCHAR(64), "
    "client_id VARCHAR(256), body TEXT NOT NULL, prev_hash VARCHAR(64) NOT NULL, hash VARCHAR(64) NOT NULL, "
    "PRIMARY KEY (seq))",
    *(f"CREATE INDEX ix_lockgate_audit_{c} ON lockgate_audit ({c})" for c in ("at", "kind", "model", "request_id", "client_id")),
]


def _earlier_database(url: str) -> None:
    """A database whose records table has the earlier layout (``EARLIER_LAYOUT``)."""
    engine = sa.create_engine(url)
    with engine.begin() as c:
        for statement in EARLIER_LAYOUT:
            c.exec_driver_sql(statement)
    engine.dispose()


def _wal_frames_of_lone_records(log: AuditLog, path: str, first: int, n: int = 20) -> float:
    """The pages ``n`` one-record commits add to SQLite's write-ahead log, on average (each frame is
    a page and 24 bytes). One emptied log first, then commits that all append to it (far fewer pages
    than SQLite's automatic checkpoint waits for). An average, because a commit that splits a page
    writes one or two more."""
    with log.engine.connect() as c:
        page = c.exec_driver_sql("PRAGMA page_size").scalar()
        busy, _, _ = c.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
    assert busy == 0
    before = os.path.getsize(path + "-wal")
    for i in range(first, first + n):
        log.append([entry(i, request_id=f"{i:032x}")])
    return (os.path.getsize(path + "-wal") - max(before, 32)) / (page + 24) / n


def test_lookups_use_an_index_and_a_lone_record_writes_fewer_pages_than_the_earlier_layout(tmp_path):
    def make(name: str, earlier: bool) -> tuple[AuditLog, str]:
        path = str(tmp_path / f"{name}.db")
        if earlier:
            _earlier_database(f"sqlite:///{path}")
        sink = CheckpointSink(tmp_path / f"{name}.jsonl", load_or_create_key(tmp_path / "audit.key"))
        return AuditLog(f"sqlite:///{path}", sink), path

    log, path = make("now", earlier=False)
    old, old_path = make("earlier", earlier=True)
    try:
        for each in (log, old):  # request ids in the order they were made, as the server's are
            for start in range(0, 3000, 100):
                each.append([entry(i, request_id=f"{i:032x}") for i in range(start, start + 100)])
        r = t.records.c
        queries = [
            sa.select(r.body).where(sa.or_(r.request_id == "x", r.client_id == "x")),  # trace, replay, explain
            sa.select(r.body).where(r.at >= 1.0, r.at < 2.0, r.kind == "infer"),  # report, export
            sa.select(r.body).where(r.model == "iris", r.kind == "explain", r.at >= 1.0),
        ]
        with log.engine.connect() as c:
            indexes = {row[1] for row in c.exec_driver_sql("PRAGMA index_list(lockgate_audit)")}
            assert not any(name.startswith("sqlite_autoindex") for name in indexes)  # seq is the rowid
            for q in queries:
                text = str(q.compile(log.engine, compile_kwargs={"literal_binds": True}))
                plan = " ".join(str(row[3]) for row in c.exec_driver_sql("EXPLAIN QUERY PLAN " + text))
                assert "USING INDEX" in plan and "SCAN lockgate_audit" not in plan, (text, plan)
        now, earlier = _wal_frames_of_lone_records(log, path, 3000), _wal_frames_of_lone_records(old, old_path, 3000)
        assert 0 < now < earlier - 1, (now, earlier)
    finally:
        log.close()
        old.close()


def test_a_database_made_with_the_earlier_layout_still_appends_finds_and_verifies(tmp_path):
    path = tmp_path / "earlier.db"
    _earlier_database(f"sqlite:///{path}")
    sink = CheckpointSink(tmp_path / "checkpoints.jsonl", load_or_create_key(tmp_path / "audit.key"))
    log = AuditLog(f"sqlite:///{path}", sink, checkpoint_every=10)
    try:
        fill(log, 25)
        assert log.append_now([entry(99, client_id="client-9")]) == [26]
        assert [x["seq"] for x in log.records(request_id="r7")] == [8]
        assert [x["seq"] for x in log.records(request_id="client-9")] == [26]
        report = log.verify()
        assert report.ok and report.records == 26, report.problems
    finally:
        log.close()


def test_migrate_gives_an_earlier_table_the_current_indexes_and_keeps_its_chain(db_url, tmp_path):
    _earlier_database(db_url)
    sink = CheckpointSink(tmp_path / "checkpoints.jsonl", load_or_create_key(tmp_path / "audit.key"))
    log = AuditLog(db_url, sink, checkpoint_every=10)
    sqlite = db_url.startswith("sqlite")
    try:
        fill(log, 25)
        current = sorted(str(ix.name) for ix in t.records.indexes)
        earlier = ["ix_lockgate_audit_client_id", "ix_lockgate_audit_kind", "ix_lockgate_audit_model"]
        changes = (earlier, ["ix_lockgate_audit_client_id_given", "ix_lockgate_audit_model_at"])
        assert log.layout_changes() == changes
        path = sa.make_url(db_url).database if sqlite else None
        before = _wal_frames_of_lone_records(log, path, 100) if path else None
        assert log.migrate_indexes() == changes
        with log.engine.connect() as c:
            assert sorted(ix["name"] for ix in sa.inspect(c).get_indexes(t.records.name)) == current
        assert log.layout_changes() == ([], [])
        assert log.migrate_indexes() == ([], [])  # a second run, or a second process: nothing left to do
        if path:  # what the migration is for: fewer pages per record written
            after = _wal_frames_of_lone_records(log, path, 200)
            assert 0 < after < before - 1, (before, after)
        log.append([entry(300, client_id="client-300")])
        assert [x["seq"] for x in log.records(request_id="r7")] == [8]
        assert [x["detail"]["i"] for x in log.records(request_id="client-300")] == [300]
        report = log.verify()
        assert report.ok and report.records == log.head()[0], report.problems
    finally:
        log.close()


def test_audit_migrate_says_what_it_changes_and_is_recorded(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from lockgate.server.cli import main

    home = tmp_path / "home"
    home.mkdir()
    for name in ("LOCKGATE_API_KEY", "LOCKGATE_REGISTRY_URL", "LOCKGATE_ARTIFACTS", "LOCKGATE_AUDIT_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOCKGATE_HOME", str(home))
    _earlier_database(f"sqlite:///{home / 'audit.db'}")
    assert any("`lockgate audit migrate`" in line for line in _startup_notes())  # what `lockgate serve` prints
    runner = CliRunner()
    dry = runner.invoke(main, ["audit", "migrate", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would drop ix_lockgate_audit_client_id, ix_lockgate_audit_kind, ix_lockgate_audit_model" in dry.output
    assert "would create ix_lockgate_audit_client_id_given, ix_lockgate_audit_model_at" in dry.output
    done = runner.invoke(main, ["audit", "migrate"])
    assert done.exit_code == 0, done.output
    assert "dropped ix_lockgate_audit_client_id, ix_lockgate_audit_kind, ix_lockgate_audit_model" in done.output
    again = runner.invoke(main, ["audit", "migrate"])
    assert again.exit_code == 0 and "has the current layout: nothing to do" in again.output, again.output
    assert not any("audit" in line for line in _startup_notes())
    log = AuditLog(
        f"sqlite:///{home / 'audit.db'}", CheckpointSink(home / "audit-checkpoints.jsonl", load_or_create_key(home / "audit.key"))
    )
    try:
        migrated = list(log.records(kind="audit_migrated"))
        assert len(migrated) == 1 and migrated[0]["detail"]["created"] == [
            "ix_lockgate_audit_client_id_given",
            "ix_lockgate_audit_model_at",
        ]
        assert log.verify().ok
    finally:
        log.close()


def _startup_notes() -> list[str]:
    from lockgate.server.serving.settings import LockgateSettings

    manager = LockgateSettings.from_env().manager()
    return [line for lines in manager.observe("lockgate_startup_notes", host="127.0.0.1") for line in lines]
