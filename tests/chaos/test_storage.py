"""InfluxDB is killed (kill -9) mid-run and started again, more than once, while the gateway stores everything in
it: afterwards every point the machines sent is in the database exactly once, with its value, and the newest
counter reading equals the ledger.

Why no point may go missing: the gateway's sink removes a batch from its buffer only after InfluxDB answered 204
(gateway/influx.py), and InfluxDB 1.x answers 204 only after the batch is in its write-ahead log and fsynced
(``[data] wal-fsync-delay = "0s"``, the default: tsm1's WAL makes each write wait for its fsync). A kill -9 cannot
take back what the kernel has (even a power cut cannot take an fsynced write); a batch cut off mid-write was
never acknowledged, so the sink sends it again. Why none may be there twice: a point is its series (measurement
and tags) and its time; a batch written twice (its answer lost in the kill) overwrites the same points.
"""
import functools
import json
import time
import uuid

import numpy as np

from contract import Kind, decode
from fieldlab.broker import free_port
from tests.chaos.conftest import FULL, compare, gateway_cmd, poll, settled_kpis, sim_cmd, sink_metrics

#: what is checked point by point: (measurement, kind of message, field)
STORED = (("counts", Kind.COUNTS, "good"), ("state", Kind.STATE, "state"), ("telemetry", Kind.TELEMETRY, "power"))


def stored(influx, db: str, site: str, measurement: str, field: str) -> dict:
    """{(machine, time in ms): value} of one field, as InfluxDB has it."""
    q = f'SELECT "{field}" FROM "{measurement}" WHERE "site" = \'{site}\' GROUP BY "machine"'
    return {(s["tags"]["machine"], t): v for s in influx.query(q, db) for t, v in s["values"]}


def sent(messages: list, kind: Kind, field: str) -> dict:
    """The same, from the messages the machines published (InfluxDB keeps one point per series and ms)."""
    out = {}
    for topic, payload in messages:
        if topic.endswith("/" + kind.value):
            b = decode(kind, payload)
            values = b.signals[field] if kind is Kind.TELEMETRY else getattr(b, field)
            for t, v in zip(np.round(b.ts * 1000.0).astype(np.int64).tolist(), values.tolist()):
                out[(topic.split("/")[-2], t)] = v
    return out


def test_influxdb_killed_mid_run_loses_no_row(durable_broker, own_influxdb, durable_sub, procs, report, tmp_path,
                                              seed):
    kills = 5 if FULL else 2
    run_s = 8.0 + kills * 5.0
    site = f"c{uuid.uuid4().hex[:8]}"
    db, http = f"db{site}", free_port()
    ledger_file = tmp_path / "ledger.json"
    sub = durable_sub(durable_broker.port, f"fieldlab/v1/{site}/#")
    gw = procs("gateway", gateway_cmd(durable_broker.port, http, tmp_path / "state", site,
                                      "--influx", own_influxdb.url, "--influx-db", db))
    gw.wait_for("gateway reading")
    sim = procs("sim", sim_cmd(durable_broker.port, site, ledger_file, run_s, seed=seed))
    sim.wait_for("publishing:")
    sink = functools.partial(sink_metrics, http)
    recoveries = []
    for i in range(kills):
        # an observable point: rows written since the database (re)started
        written = sink().get("written_total", 0)
        assert poll(lambda: sink().get("written_total", 0) > written + 20, 20), (sink(), gw.tail())
        retries = sink()["retries_total"]
        own_influxdb.kill()
        # the gateway noticed: a write failed and its lines are kept for the next try
        assert poll(lambda: sink().get("retries_total", 0) > retries, 15), (sink(), gw.tail())
        own_influxdb.start()
        back, written = time.monotonic(), sink()["written_total"]
        assert poll(lambda: (lambda s: s["written_total"] > written and s["backlog_lines"] == 0)(sink()), 30), \
            f"the sink did not write again after restart {i + 1}: {sink()}\n{gw.tail()}"
        recoveries.append(time.monotonic() - back)
    assert sim.popen.wait(run_s + 60) == 0, sim.tail()
    ledger = json.loads(ledger_file.read_text())
    result = compare(settled_kpis(durable_broker.port, site, ledger), ledger)

    def rows():  # (expected, stored) per measurement, once everything the gateway took is written
        return {m: (sent(list(sub.messages), kind, f), stored(own_influxdb, db, site, m, f)) for m, kind, f in STORED}

    got = poll(lambda: (lambda r: r if all(e == s for e, s in r.values()) and sink()["backlog_lines"] == 0 else None)(
        rows()), 20) or rows()
    lost = {m: sum(1 for k, v in e.items() if s.get(k) != v) for m, (e, s) in got.items()}
    extra = {m: len(s.keys() - e.keys()) for m, (e, s) in got.items()}
    q = f'SELECT last("good"), last("reject") FROM "counts" WHERE "site" = \'{site}\' GROUP BY "machine"'
    last = {s["tags"]["machine"]: s["values"][0][1:] for s in own_influxdb.query(q, db)}
    metrics = sink()
    report(scenario="InfluxDB killed (kill -9) and restarted", injected="kill -9", times=kills,
           recovery_s=round(max(recoveries), 2), **result, rows=sum(len(e) for e, _ in got.values()),
           rows_lost=sum(lost.values()), rows_duplicated=sum(extra.values()),
           **{f"sink_{k}": v for k, v in metrics.items()})
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["run_s_error"] < 1e-3, (result, gw.tail())
    assert all(len(e) > 0 for e, _ in got.values()), {m: len(e) for m, (e, _) in got.items()}
    assert sum(lost.values()) == 0 and sum(extra.values()) == 0, (lost, extra)
    assert last == {m: [v["good"], v["reject"]] for m, v in ledger.items()}, (last, ledger)
    assert (metrics["dropped_total"], metrics["rejected_total"], metrics["backlog_lines"]) == (0, 0, 0), metrics
    assert metrics["retries_total"] >= kills, metrics
