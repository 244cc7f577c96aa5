"""Sparkplug B into the gateway, from an independent implementation: the Eclipse Tahu lineage npm client
(sparkplug-client 3.2.4) as edge node with one device, through a real Mosquitto, to the real gateway, and
on into a real InfluxDB. About 3 s (the first run also installs the npm packages: about 20 s more)."""
import asyncio
from pathlib import Path

import pytest

from contract import Kind, MachineRef
from gateway.config import parse
from gateway.influx import InfluxV1Sink
from gateway.http import HttpEndpoint
from gateway.service import Gateway
from tests.gateway.test_dashboard import Cards, chromium_args, pct, run_chromium
from tests.helpers import wait_until

SCRIPT = Path(__file__).with_name("sparkplug_node.js")
T0 = 1_700_092_800.0  # the tests' usual midnight
MS = 1000


def _node(node_process, mosquitto, group, node, metrics, birth_ts=T0):
    return node_process(SCRIPT, {"url": f"mqtt://{mosquitto.url.host}:{mosquitto.url.port}", "group": group,
                                 "node": node, "device": "press1", "clientId": f"{group}-{node}",
                                 "birthTs": int(birth_ts * MS), "metrics": metrics})


async def _gateway(mosquitto, site, group, sinks=()):
    config = parse({"sparkplug": {"groups": [group], "site": site}})
    gw = Gateway(mosquitto.url, site=site, publish_s=0.2, client_id=f"gw-{site}", config=config, sinks=list(sinks))
    await gw.start()
    return gw


def _status(gw, ref):
    i = gw._index.get(ref)
    return None if i is None else gw.status.get(i)


async def test_a_tahu_device_gets_exact_kpis_and_goes_offline_on_ddeath_within_one_tick(
        mosquitto, influxdb, site, recorder, node_process, tmp_path):
    group = f"g{site}"
    ref = MachineRef(site, group, "edge1", "press1")
    kpis = recorder(mosquitto.url, ref.topic(Kind.KPI))
    gw = await _gateway(mosquitto, site, group, [InfluxV1Sink(influxdb.url, site)])
    try:
        node = _node(node_process, mosquitto, group, "edge1", {
            "State": [1, "Int32", 1],  # simple model: running
            "Good": [2, "UInt64", 0], "Reject": [3, "UInt64", 0],
            "IdealCycleTime": [4, "Double", 1.0], "Temperature": [5, "Double", 20.5]})
        await asyncio.to_thread(node.wait, "birth")
        assert await wait_until(lambda: _status(gw, ref) == "online")
        # DDATA with aliases only: down at 60 s (50 good, 5 rejects), running again at 260 s, 70 good at 300 s
        for t, values in ((60, {"State": 3, "Good": 50, "Reject": 5}), (260, {"State": 1}),
                          (300, {"Good": 70, "Temperature": 21.0})):
            await asyncio.to_thread(node.send, op="ddata", ts=int((T0 + t) * MS), values=values)
        ok = await asyncio.to_thread(kpis.wait_for, lambda r: any(k["ts"] == T0 + 300 for k in r.json("/kpi")))
        assert ok, (kpis.json("/kpi")[-1:], gw.stats, gw.last_error)
        kpi = [k for k in kpis.json("/kpi") if k["ts"] == T0 + 300][-1]
        # 300 s planned; running 0-60 and 260-300 = 100 s; 75 parts x 1 s ideal; 70 of 75 good
        assert (kpi["good"], kpi["reject"], kpi["run_s"], kpi["planned_s"]) == (70, 5, 100.0, 300.0)
        assert kpi["availability"] == pytest.approx(1 / 3)
        assert kpi["performance"] == pytest.approx(0.75)
        assert kpi["quality"] == pytest.approx(70 / 75)
        assert kpi["oee"] == pytest.approx(70 / 300)
        assert kpi["status"] == "online" and kpi["state_name"] == "running"
        assert gw.stats["sparkplug_errors"] == 0 and gw.stats["dead_letters"] == 0
        assert gw.stats["sparkplug_rebirths"] == 0  # the seq numbers were all in order
        # on the built-in dashboard like any machine: the card shows the API's figures (headless Chromium)
        http = HttpEndpoint(gw, "127.0.0.1", 0)
        await http.start()
        try:
            dom = await run_chromium(chromium_args(tmp_path, "--virtual-time-budget=4000", "--dump-dom",
                                                   http.url + "/?lang=en&poll"))
            row = next(r for r in gw.rows if r["machine"] == ref)
        finally:
            await http.stop()
        cards = Cards()
        cards.feed(dom)
        shift = row["windows"]["shift"]
        assert cards.cards[ref.path]["oee"] == pct(shift["oee"]) and shift["oee"] == pytest.approx(70 / 300)
        assert (cards.cards[ref.path]["good"], cards.cards[ref.path]["reject"]) == ("70", "5")

        ticks = gw.ticks
        await asyncio.to_thread(node.send, op="ddeath", ts=int((T0 + 301) * MS))
        assert await asyncio.to_thread(kpis.wait_for, lambda r: r.json("/kpi")[-1]["status"] == "offline", timeout=5)
        assert gw.ticks - ticks <= 2  # the tick that was running when it came in, at most, then the next one
    finally:
        await gw.stop()  # (hands the last KPIs to the sink, and waits for it)
    # in InfluxDB as any machine (docs/storage.md): the same KPIs, the counters and the telemetry
    where = f"WHERE \"machine\" = 'press1' AND \"line\" = 'edge1' AND \"area\" = '{group}'"
    stored = influxdb.query(f'SELECT last("oee"), last("good") FROM "kpi" {where} AND "window" = \'since_start\'',
                            site)[0]["values"]
    assert stored[0][1:] == [pytest.approx(70 / 300), 70]
    counts = influxdb.query(f'SELECT "good", "reject" FROM "counts" {where}', site)[0]["values"]
    assert [row[1:] for row in counts] == [[0, 0], [50, 5], [70, 5]]
    temps = influxdb.query(f'SELECT "Temperature" FROM "telemetry" {where}', site)[0]["values"]
    assert [row[1] for row in temps] == [20.5, 21.0]


async def test_a_seq_gap_asks_for_a_rebirth_and_a_killed_node_goes_offline_by_its_will(
        mosquitto, site, recorder, node_process):
    group = f"g{site}"
    ref = MachineRef(site, group, "edge2", "press1")
    kpis = recorder(mosquitto.url, ref.topic(Kind.KPI))
    gw = await _gateway(mosquitto, site, group)
    try:
        node = _node(node_process, mosquitto, group, "edge2", {
            "State": [1, "Int32", 1], "Good": [2, "UInt64", 0], "Reject": [3, "UInt64", 0],
            "IdealCycleTime": [4, "Double", 2.0]})
        await asyncio.to_thread(node.wait, "birth")
        assert await wait_until(lambda: _status(gw, ref) == "online")
        # three messages "lost": the gateway sees the gap, still reads the message, and asks for a rebirth
        await asyncio.to_thread(node.send, op="skip", n=3)
        await asyncio.to_thread(node.send, op="ddata", ts=int((T0 + 10) * MS), values={"Good": 4})
        assert await asyncio.to_thread(node.wait, "ncmd", rebirth=True)
        await asyncio.to_thread(node.wait, "rebirth")  # NBIRTH + DBIRTH again, the DBIRTH with Good 4 (current)
        await asyncio.to_thread(node.send, op="ddata", ts=int((T0 + 20) * MS), values={"Good": 9})
        assert await asyncio.to_thread(kpis.wait_for, lambda r: any(k["ts"] == T0 + 20 for k in r.json("/kpi")))
        kpi = [k for k in kpis.json("/kpi") if k["ts"] == T0 + 20][-1]
        assert (kpi["good"], kpi["reject"], kpi["run_s"]) == (9, 0, 20.0)  # the rebirth counted nothing twice
        assert kpi["performance"] == pytest.approx(9 * 2.0 / 20)
        assert kpi["status"] == "online"
        assert gw.stats["sparkplug_rebirths"] == 1

        ticks = gw.ticks
        # killed: no DDEATH, no NDEATH of its own; Mosquitto publishes its will (NDEATH, bdSeq 0)
        await asyncio.to_thread(node.kill)
        assert await asyncio.to_thread(kpis.wait_for, lambda r: r.json("/kpi")[-1]["status"] == "offline", timeout=5)
        assert gw.ticks - ticks <= 2
        assert gw.stats["sparkplug_errors"] == 0
    finally:
        await gw.stop()
