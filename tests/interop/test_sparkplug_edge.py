"""Sparkplug B out of the edge agent (publish.format: sparkplug), read by an independent implementation: a
host written with the npm sparkplug-payload (Eclipse Tahu lineage) decodes what the agent sends, and our
gateway computes the same KPIs from it as from the contract's topics. Real Mosquitto; about 6 s."""
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contract import Kind, MachineRef
from edge.agent import EdgeAgent
from edge.batcher import Batcher
from edge.sparkplug import Settings
from gateway.config import parse
from gateway.service import Gateway

SCRIPT = Path(__file__).with_name("sparkplug_host.js")
T0 = 1_700_092_800.0


class Feed:
    """A source the test drives: values go straight into the agent's Batcher."""
    stats = {}

    async def start(self, batcher):
        self.batcher = batcher

    async def stop(self):
        pass


def _messages(host, kind):
    return [e for e in host.events if e["event"] == "message" and e["topic"].split("/")[2] == kind]


async def _until(host, kind, n=1, timeout=10.0):
    deadline = time.monotonic() + timeout
    while len(_messages(host, kind)) < n:
        assert time.monotonic() < deadline, f"no {n} {kind} in {host.events}"
        await asyncio.sleep(0.02)
    return _messages(host, kind)


async def test_the_agent_speaks_sparkplug_to_a_tahu_host_and_the_gateway_gets_the_same_kpis(
        mosquitto, site, recorder, node_process, tmp_path):
    group, host_id = f"g{site}", f"scada-{site}"
    ref = MachineRef(site, group, "line1", "press9")  # group = area, node = line, device = machine
    kpis = recorder(mosquitto.url, ref.topic(Kind.KPI))
    host = node_process(SCRIPT, {"url": f"mqtt://{mosquitto.url.host}:{mosquitto.url.port}", "group": group,
                                 "hostId": host_id})
    await asyncio.to_thread(host.wait, "subscribed")
    gw = Gateway(mosquitto.url, site=site, publish_s=0.2, client_id=f"gw-{site}",
                 config=parse({"sparkplug": {"groups": [group], "site": site}}))
    await gw.start()
    try:
        feed = Feed()
        agent = EdgeAgent(ref, mosquitto.url, feed, buffer=tmp_path / "q.db", flush_s=0.1, batcher=Batcher("packml"),
                          sparkplug=Settings(group, "line1", "press9", primary_host=host_id))
        await agent.start()
        try:
            b = feed.batcher
            b.record("state", T0, 4)  # Execute
            for role, value in (("good", 0), ("reject", 0), ("ideal_cycle_s", 2.0)):
                b.record(role, T0, value)
            b.value(T0, "speed", 10.5)
            await asyncio.sleep(0.5)
            assert host.events == [{"event": "subscribed"}]  # the primary host is not online: nothing is sent
            assert agent.backlog == 1  # it waits in the outbox

            await asyncio.to_thread(host.send, op="state", online=True)
            ddata, = await _until(host, "DDATA")
            # births on connecting, and again before the DDATA: it has a signal ("speed") they did not have yet
            assert [e["topic"].split("/")[2] for e in host.events if e["event"] == "message"] == \
                ["NBIRTH", "DBIRTH"] * 2 + ["DDATA"]
            nbirth, dbirth = _messages(host, "NBIRTH")[-1], _messages(host, "DBIRTH")[-1]
            assert nbirth["seq"] == 0 and {"name": "bdSeq", "value": 0} in [
                {"name": m["name"], "value": m["value"]} for m in nbirth["metrics"]]
            birth = {m["name"]: m for m in dbirth["metrics"]}
            assert dbirth["seq"] == 1 and {"State", "Good", "Reject", "IdealCycleTime", "StateModel"} <= set(birth)
            assert birth["StateModel"]["value"] == "packml" and birth["Good"]["type"] == "UInt64"
            assert ddata["seq"] == 2 and all(m.get("name") is None for m in ddata["metrics"])  # aliases only
            by_alias = {m["alias"]: m["name"] for m in birth.values()}
            got = {by_alias[m["alias"]]: (m["value"], m["timestamp"]) for m in ddata["metrics"]}
            ms = int(T0 * 1000)
            assert got == {"State": (4, ms), "Reason": (0, ms), "Good": (0, ms), "Reject": (0, ms),
                           "IdealCycleTime": (2.0, ms), "speed": (10.5, ms)}

            b.record("state", T0 + 80, 15)  # Held (a breakdown) at 80 s; 35 good and 5 rejects by 300 s
            b.record("good", T0 + 300, 35)
            b.record("reject", T0 + 300, 5)
            assert await asyncio.to_thread(kpis.wait_for, lambda r: any(k["ts"] == T0 + 300 for k in r.json("/kpi")))
            kpi = [k for k in kpis.json("/kpi") if k["ts"] == T0 + 300][-1]
            assert (kpi["good"], kpi["reject"], kpi["run_s"], kpi["planned_s"]) == (35, 5, 80.0, 300.0)
            assert kpi["availability"] == pytest.approx(80 / 300)
            assert kpi["performance"] == pytest.approx(1.0)  # 40 parts x 2 s in 80 s
            assert kpi["quality"] == pytest.approx(35 / 40)
            assert kpi["state_name"] == "Held" and kpi["status"] == "online"
            seqs = [(e["topic"].split("/")[2], e["seq"]) for e in host.events if e["event"] == "message"]
            assert all(s == (0 if t == "NBIRTH" else (prev + 1) % 256)
                       for (_, prev), (t, s) in zip(seqs, seqs[1:])), seqs

            births = len(_messages(host, "DBIRTH"))
            await asyncio.to_thread(host.send, op="rebirth", node="line1")  # a host's rebirth request (NCMD)
            dbirth = (await _until(host, "DBIRTH", births + 1))[-1]
            current = {m["name"]: m["value"] for m in dbirth["metrics"]}
            assert (current["State"], current["Good"], current["Reject"]) == (15, 35, 5)
            assert _messages(host, "NBIRTH")[-1]["seq"] == 0 and dbirth["seq"] == 1
        finally:
            await agent.stop()
        await _until(host, "DDEATH")
        ndeath, = await _until(host, "NDEATH")
        assert [m["value"] for m in ndeath["metrics"] if m["name"] == "bdSeq"] == [0]
        assert await asyncio.to_thread(kpis.wait_for, lambda r: r.json("/kpi")[-1]["status"] == "offline", 5)
        assert gw.stats["sparkplug_errors"] == 0 and gw.stats["dead_letters"] == 0
    finally:
        await gw.stop()
    await asyncio.to_thread(host.send, op="state", online=False)  # (the retained STATE says offline at the end)



async def test_a_killed_agent_dies_by_its_will_an_ndeath_with_the_bdseq_of_its_nbirth(
        mosquitto, site, node_process, recorder, tmp_path):
    group = f"g{site}"
    host = node_process(SCRIPT, {"url": f"mqtt://{mosquitto.url.host}:{mosquitto.url.port}", "group": group,
                                 "hostId": f"h{site}"})
    await asyncio.to_thread(host.wait, "subscribed")
    (tmp_path / "q.db.bdseq").write_text("41\n")  # an earlier run's
    config = tmp_path / "edge.yaml"
    config.write_text(f"""\
machine: {site}/{group}/line1/cnc-01
broker:
  url: mqtt://{mosquitto.url.host}:{mosquitto.url.port}
buffer:
  path: {tmp_path / 'q.db'}
publish:
  flush: 100ms
  format: sparkplug
source:
  type: sim
  machine: cnc-01
  speed: 60
""")
    proc = subprocess.Popen([sys.executable, "-m", "fieldlab", "edge", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await _until(host, "DDATA")
        assert not _messages(host, "NDEATH")
        os.kill(proc.pid, signal.SIGKILL)
        ndeath, = await _until(host, "NDEATH")
    finally:
        proc.kill()
        proc.wait(10)
    bdseq = lambda message: [m["value"] for m in message["metrics"] if m["name"] == "bdSeq"]
    assert bdseq(ndeath) == bdseq(_messages(host, "NBIRTH")[-1]) == [42]
    assert _messages(host, "DBIRTH")[-1]["topic"] == f"spBv1.0/{group}/DBIRTH/line1/cnc-01"
    late = recorder(mosquitto.url, f"spBv1.0/{group}/#")  # the will is not retained (Sparkplug says so)
    await asyncio.sleep(0.3)
    assert late.messages == []
