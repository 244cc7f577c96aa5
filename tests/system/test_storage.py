"""Machine -> edge agent -> Mosquitto -> gateway -> InfluxDB: what is stored equals what happened."""
import asyncio
import re
import uuid
from pathlib import Path

import pytest

from contract import BINARY_MAGIC, Kind, MachineRef
from edge.agent import EdgeAgent
from edge.batcher import Batcher
from gateway.influx import InfluxV1Sink
from gateway.service import Gateway
from simulators.feed import MachineFeed


@pytest.mark.parametrize("encoding", ["json", "binary"])  # of the telemetry the edge agent sends
async def test_influxdb_holds_the_machine_history_and_kpis(mosquitto, influxdb, site, tmp_path, recorder, encoding):
    db = f"t{uuid.uuid4().hex[:10]}"
    ref = MachineRef(site, "a", "l", "filler-01")
    sink = InfluxV1Sink(influxdb.url, db)
    gw = Gateway(mosquitto.url, site=site, publish_s=0.2, sinks=[sink], store_kpis_s=0.5)
    await gw.start()
    feed = MachineFeed("filler-01", seed=3, speed=120)
    agent = EdgeAgent(ref, mosquitto.url, feed, buffer=tmp_path / "q.db", flush_s=0.1,
                      batcher=Batcher(encoding=encoding))
    rec = recorder(mosquitto.url, ref.topic(Kind.KPI))
    sent = recorder(mosquitto.url, ref.topic(Kind.TELEMETRY))
    await agent.start()
    await asyncio.sleep(3.0)  # 6 simulated minutes
    await agent.stop()
    await gw.drain()
    await gw.stop()  # final KPIs stored, the sink drained
    assert (sink.stats["dropped"], sink.stats["rejected"], sink.backlog) == (0, 0, 0)
    assert gw.stats["dead_letters"] == 0
    assert sent.messages and all((p[:4] == BINARY_MAGIC) is (encoding == "binary") for _, p, _ in sent.messages)
    led = feed.machine.ledger_now()

    q = lambda text: influxdb.query(text, db)  # noqa: E731
    where = f"WHERE \"site\" = '{site}' AND \"machine\" = 'filler-01'"
    last = q(f'SELECT last("good"), last("reject") FROM "counts" {where}')[0]["values"][0]
    assert last[1:] == [led.good, led.reject]
    n_tel = q(f'SELECT count("power") FROM "telemetry" {where}')[0]["values"][0][1]
    assert n_tel == agent.batcher.samples[Kind.TELEMETRY]
    states = q(f'SELECT "state" FROM "state" {where}')[0]["values"]
    assert len(states) == agent.batcher.samples[Kind.STATE]
    # the stored KPIs are the gateway's: the last since_start row equals the last retained KPI message
    kpi = q(f'SELECT last("good"), last("run_s"), last("oee") FROM "kpi" {where} AND "window" = \'since_start\'')
    assert rec.wait_for(lambda r: r.json("/kpi"))
    final = rec.json("/kpi")[-1]
    assert kpi[0]["values"][0][1:] == [final["good"], final["run_s"], final["oee"]]
    assert final["good"] == led.good
    windows = q(f'SHOW TAG VALUES FROM "kpi" WITH KEY = "window" {where}')[0]["values"]
    assert {w for _, w in windows} == {"since_start", "last_15min", "last_1h", "shift", "today"}

    # every example query of docs/storage.md returns data for this machine
    doc = (Path(__file__).resolve().parents[2] / "docs" / "storage.md").read_text()
    block = re.search(r"## Example queries.*?```sql\n(.*?)```", doc, re.S).group(1)
    queries = [" ".join(x.split()) for x in re.split(r"\n\n", block)]
    queries = [re.sub(r"^--[^\n]*?(?=SELECT)", "", re.sub(r"--.*?(?=SELECT)", "", q)).strip() for q in queries]
    assert len(queries) == 7
    end = f"{round(led.end * 1000) + 1}ms"  # "now" of this accelerated run is the machine's time, ahead of ours
    for text in queries:
        text = text.replace("press-07", "filler-01").replace("now()", end)
        if "GROUP BY time" in text:  # InfluxQL ends such queries at the wall clock's now() unless told
            text = text.replace(" GROUP BY time", f" AND time <= {end} GROUP BY time")
        series = q(text)
        assert series and any(row[1] is not None for s in series for row in s["values"]), text
