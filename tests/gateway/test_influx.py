"""Line protocol and the InfluxDB 1.x sink, against a real influxd: what is written reads back the same."""
import asyncio
import threading
import uuid

import numpy as np
import pytest

from contract import (Kind, MachineRef, decode, encode_counts, encode_state, encode_status, encode_telemetry)
from gateway import storage
from gateway.influx import InfluxV1Sink
from gateway.lineproto import lines, series
from tests.helpers import wait_until


def db_name() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def test_line_protocol_escapes_skips_nan_and_marks_integers():
    prefix = series("state", {"machine": "press 7,a=b", "site": "acme", "empty": ""})
    assert prefix == r"state,machine=press\ 7\,a\=b,site=acme"
    out = lines(prefix, np.array([1.5, 2.0, 3.0]), {"x": np.array([1.0, np.nan, np.nan]), "n": np.array([7, 8, 9]),
                                                     "y": np.array([np.nan, 0.1, np.nan])},
                frozenset({"n"}), {"name": 'say "hi" \\ bye'})
    assert out == [prefix + r' n=7i,x=1.0,name="say \"hi\" \\ bye" 1500',
                   prefix + r' n=8i,y=0.1,name="say \"hi\" \\ bye" 2000',
                   prefix + r' n=9i,name="say \"hi\" \\ bye" 3000']
    assert lines(prefix, np.array([1.0]), {"x": np.array([np.nan])}) == []  # no field: no line
    assert lines(["a", "b"], np.array([1.0, 2.0]), {"v": np.array([1.0, 2.0])}) == ["a v=1.0 1000", "b v=2.0 2000"]


def test_sparse_rows_keep_time_order():
    rng = np.random.default_rng(1)
    n = 500
    cols = {f"s{k}": np.where(rng.random(n) < 0.4, rng.random(n), np.nan) for k in range(6)}
    out = lines("m", np.arange(n, dtype=float), cols)
    stamps = [int(x.rsplit(" ", 1)[1]) for x in out]
    assert stamps == sorted(stamps)
    expected = sum(int(np.isfinite(np.stack(list(cols.values()))[:, i]).any()) for i in range(n))
    assert len(out) == expected
    for line in out[:50]:  # every value is there, exactly
        i = int(line.rsplit(" ", 1)[1]) // 1000
        fields = dict(kv.split("=") for kv in line.split(" ")[1].split(","))
        assert fields == {k: repr(float(v[i])) for k, v in cols.items() if np.isfinite(v[i])}


async def test_written_values_read_back_exactly(influxdb):
    db = db_name()
    sink = InfluxV1Sink(influxdb.url, db, batch_lines=1000)
    await sink.start()
    ref = MachineRef("acme", "hall-1", "line-1", "press-07")
    rng = np.random.default_rng(7)
    ts = 1_800_000_000.0 + np.arange(3000) * 0.1
    temp = rng.normal(60, 5, ts.size)
    batches = [(Kind.TELEMETRY, decode(Kind.TELEMETRY, encode_telemetry(ts, {"temperature": temp}, {"temperature": "degC"}))),
               (Kind.STATE, decode(Kind.STATE, encode_state([ts[0], ts[100]], [4, 15], [0, 101]))),
               (Kind.COUNTS, decode(Kind.COUNTS, encode_counts([ts[0], ts[50]], [10, 11], [0, 1], "cap", 2.5))),
               (Kind.STATUS, decode(Kind.STATUS, encode_status(ts[0], "online", backlog=3, last_error=None)))]
    for kind, batch in batches:
        sink.accept(storage.batch_lines(ref, kind, batch))
    assert await wait_until(lambda: sink.stats["written"] == 3000 + 2 + 2 + 1), sink.stats
    await sink.stop()
    got = influxdb.query('SELECT "temperature" FROM "telemetry" WHERE "machine" = \'press-07\'', db)[0]["values"]
    assert [v for _, v in got] == temp.tolist()  # floats survive text exactly
    assert [t for t, _ in got] == np.round(ts * 1000).astype(np.int64).tolist()
    state = influxdb.query('SELECT "state", "reason", "state_name" FROM "state"', db)[0]["values"]
    assert [row[1:] for row in state] == [[4, 0, "Execute"], [15, 101, "Held"]]
    counts = influxdb.query('SELECT "good", "reject", "ideal_cycle_s" FROM "counts" WHERE "product" = \'cap\'', db)
    assert [row[1:] for row in counts[0]["values"]] == [[10, 0, 2.5], [11, 1, 2.5]]
    agent = influxdb.query('SELECT "online", "backlog" FROM "agent"', db)[0]["values"]
    assert [row[1:] for row in agent] == [[1, 3]]
    tags = influxdb.query('SHOW TAG VALUES FROM "telemetry" WITH KEY IN ("site", "area", "line", "machine")', db)
    assert sorted(v for _, v in tags[0]["values"]) == ["acme", "hall-1", "line-1", "press-07"]


async def test_database_restart_loses_nothing_within_the_bound(own_influxdb):
    db = db_name()
    sink = InfluxV1Sink(own_influxdb.url, db, batch_lines=200, max_backoff_s=0.5, timeout_s=2)
    await sink.start()
    sink.accept([f"m v={i} {1_800_000_000_000 + i}" for i in range(500)])
    assert await wait_until(lambda: sink.stats["written"] == 500)
    await asyncio.to_thread(own_influxdb.stop)
    sink.accept([f"m v={i} {1_800_000_000_000 + i}" for i in range(500, 1500)])
    assert await wait_until(lambda: sink.stats["retries"] >= 2)
    assert sink.backlog == 1000 and sink.stats["last_error"].startswith("cannot reach")
    await asyncio.to_thread(own_influxdb.start)
    assert await wait_until(lambda: sink.stats["written"] == 1500), sink.stats
    await sink.stop()
    assert (sink.stats["dropped"], sink.stats["rejected"], sink.stats["last_error"]) == (0, 0, None)
    values = own_influxdb.query('SELECT "v" FROM "m"', db)[0]["values"]
    assert [v for _, v in values] == list(range(1500))


async def test_full_buffer_drops_the_oldest_and_counts_them(own_influxdb):
    db = db_name()
    await asyncio.to_thread(own_influxdb.stop)
    sink = InfluxV1Sink(own_influxdb.url, db, batch_lines=100, max_lines=300, max_backoff_s=0.3, timeout_s=1)
    await sink.start()
    for k in range(10):
        sink.accept([f"m v={k * 100 + i} {1_800_000_000_000 + k * 100 + i}" for i in range(100)])
        await asyncio.sleep(0.01)
    assert sink.stats["dropped"] == 700 and sink.backlog == 300
    await asyncio.to_thread(own_influxdb.start)
    assert await wait_until(lambda: sink.backlog == 0)
    await sink.stop()
    values = own_influxdb.query('SELECT "v" FROM "m"', db)[0]["values"]
    assert [v for _, v in values] == list(range(700, 1000))  # the newest were kept
    assert sink.stats["written"] == 300 and sink.stats["dropped"] == 700


async def test_refused_lines_are_counted_and_do_not_block_the_rest(influxdb):
    db = db_name()
    sink = InfluxV1Sink(influxdb.url, db, batch_lines=1)
    await sink.start()
    sink.accept(["m x=1i 1800000000000", "m x=1.5 1800000001000", "m x=2i 1800000002000"])  # x is an integer
    assert await wait_until(lambda: sink.backlog == 0)
    await sink.stop()
    assert (sink.stats["written"], sink.stats["rejected"]) == (2, 1)
    assert "field type conflict" in sink.stats["last_rejection"] and sink.stats["last_error"] is None


@pytest.mark.parametrize("n_machines", [3])
def test_kpi_lines_per_machine_and_window(n_machines):
    refs = [MachineRef("s", "a", "l", f"m{i}") for i in range(n_machines)]
    snap = {"since_start": {"oee": np.array([0.5, np.nan, 0.25]), "good": np.array([10, 0, 3])},
            "last_1h": {"oee": np.array([0.4, np.nan, 0.2]), "good": np.array([5, 0, 1])}}
    out = storage.kpi_lines(refs, snap, np.array([100.0, np.nan, 200.0]))
    assert out == ["kpi,area=a,line=l,machine=m0,site=s,window=since_start good=10i,oee=0.5 100000",
                   "kpi,area=a,line=l,machine=m2,site=s,window=since_start good=3i,oee=0.25 200000",
                   "kpi,area=a,line=l,machine=m0,site=s,window=last_1h good=5i,oee=0.4 100000",
                   "kpi,area=a,line=l,machine=m2,site=s,window=last_1h good=1i,oee=0.2 200000"]


def test_both_ways_of_building_sparse_lines_agree():
    rng = np.random.default_rng(3)
    n = 400
    cols = {f"s{k}": np.where(rng.random(n) < 0.3, rng.random(n) * 100, np.nan) for k in range(8)}
    cols["n"] = rng.integers(0, 1000, n)
    ts = 1.8e9 + np.arange(n) * 0.1
    row_by_row = lines("m", ts, cols, frozenset({"n"}))  # many patterns: built row by row
    names = sorted(cols)
    grouped = []
    for i in range(n):  # one row at a time: always the grouped path
        grouped += lines("m", ts[i:i + 1], {k: v[i:i + 1] for k, v in cols.items()}, frozenset({"n"}))
    assert np.unique(np.stack([np.isfinite(cols[k]) for k in names if k != "n"]).T, axis=0).shape[0] > 16
    assert row_by_row == grouped


async def test_writes_share_one_kept_alive_connection(influxdb):
    """One TCP connection for all batches (a new one per POST cost the sink time a bare writer does not spend)."""
    db = db_name()
    sink = InfluxV1Sink(influxdb.url, db, batch_lines=100)
    socks, request = [], sink._request

    def watched(body):  # the socket each write went out on
        out = request(body)
        socks.append(sink._conn.sock if sink._conn else None)
        return out

    sink._request = watched
    await sink.start()
    for k in range(3):
        sink.accept([f"m v={i} {1_800_000_000_000 + i}" for i in range(k * 100, (k + 1) * 100)])
        assert await wait_until(lambda: sink.stats["written"] == (k + 1) * 100), sink.stats
    await sink.stop()
    assert len(socks) == 3 and socks[0] is not None and all(s is socks[0] for s in socks)
    assert [v for _, v in influxdb.query('SELECT "v" FROM "m"', db)[0]["values"]] == list(range(300))


async def test_the_body_made_ahead_is_sent_only_if_its_lines_are_still_next(influxdb):
    """While a batch is posted, the sink builds the next body; if the buffer overflowed meanwhile (the oldest
    lines dropped), that body is stale and is made anew: what is written is exactly what was not dropped."""
    import threading

    db = db_name()
    sink = InfluxV1Sink(influxdb.url, db, batch_lines=100, max_lines=250)
    gate, post = threading.Event(), sink._post

    def held(batch, body=None):  # the database answers only when the test says so
        assert gate.wait(10)
        return post(batch, body)

    sink._post = held
    line = "m v={0} {1}".format
    await sink.start()
    try:
        sink.accept([line(i, 1_800_000_000_000 + i) for i in range(200)])  # 0..99 posted, 100..199 made ahead
        assert await wait_until(lambda: sink._inflight is not None)
        sink.accept([line(i, 1_800_000_000_000 + i) for i in range(200, 500)])  # 250 dropped: 0..249
    finally:
        gate.set()
    assert await wait_until(lambda: sink.backlog == 0), sink.stats
    await sink.stop()
    values = [v for _, v in influxdb.query('SELECT "v" FROM "m"', db)[0]["values"]]
    assert values == list(range(100)) + list(range(250, 500))  # 0..99 were on their way already
    assert (sink.stats["written"], sink.stats["dropped"]) == (350, 150)


async def test_an_overflow_while_a_batch_is_encoded_skips_no_line_and_writes_none_twice(influxdb):
    """The lines after a batch are taken at the same moment as the batch: an overflow while the batch's
    body is still being built (the first write after start or after a retry) must not shift them."""
    import threading

    db = db_name()
    sink = InfluxV1Sink(influxdb.url, db, batch_lines=3, max_lines=10)
    gate, encoding, encode = threading.Event(), threading.Event(), sink._encode

    def slow(batch):  # the first body is still being built when the tick comes
        encoding.set()
        assert gate.wait(10)
        return encode(batch)

    sink._encode = slow
    line = "m v={0} {1}".format
    sink.accept([line(i, 1_800_000_000_000 + i) for i in range(10)])  # full
    await sink.start()
    try:
        assert await wait_until(encoding.is_set)
        sink.accept([line(i, 1_800_000_000_000 + i) for i in (10, 11)])  # 0 and 1 dropped (already in the batch)
    finally:
        gate.set()
    assert await wait_until(lambda: sink.backlog == 0), sink.stats
    await sink.stop()
    values = [v for _, v in influxdb.query('SELECT "v" FROM "m"', db)[0]["values"]]
    assert values == list(range(12))  # 0..2 were the batch on its way; nothing skipped, nothing twice


class NotesThreads(InfluxV1Sink):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.threads = set()

    def _accept(self, new_lines):
        self.threads.add(threading.get_ident())
        super()._accept(new_lines)


async def test_lines_accepted_from_another_thread_are_queued_on_the_loop(influxdb):
    """Review: the sink's buffer and wake-up event belong to the loop's thread; lines handed over from the
    computation's thread are queued there, and written."""
    db = db_name()
    sink = NotesThreads(influxdb.url, db, batch_lines=1000)
    await sink.start()
    try:
        lines_ = [f"m,site=s v={i} {1_800_000_000_000 + i}" for i in range(500)]
        await asyncio.to_thread(lambda: [sink.accept(lines_[i:i + 50]) for i in range(0, 500, 50)])
        assert await wait_until(lambda: sink.stats["written"] == 500), sink.stats
        assert sink.threads == {threading.get_ident()}
        assert len(influxdb.query('SELECT "v" FROM "m"', db)[0]["values"]) == 500
    finally:
        await sink.stop()
