"""The edge agent between a real asyncua server and a real Mosquitto."""
import os
import signal
import subprocess
import sys

import pytest

from contract import Kind, MachineRef, decode
from edge.agent import EdgeAgent
from edge.opcua import OpcUaSource
from tests.helpers import terminate
from fieldlab.broker import free_port


async def test_agent_publishes_the_machine_per_contract(sim, mosquitto, site, recorder, tmp_path):
    ref = MachineRef(site, "a", "l", "filler-01")
    rec = recorder(mosquitto.url, f"fieldlab/v1/{site}/#")
    agent = EdgeAgent(ref, mosquitto.url, OpcUaSource(sim.servers[0].endpoint, "filler-01"), buffer=tmp_path / "q.db",
                      flush_s=0.1)
    await agent.start()
    sim.run()
    import asyncio
    await asyncio.sleep(2.0)  # 20 simulated minutes
    await sim.freeze()
    await agent.stop(settle_s=0.3)
    assert rec.wait_for(lambda r: any(b'"offline"' in p for t, p, _ in r.messages if t.endswith("/status")))

    by_kind = {k: [decode(k, p) for t, p, _ in rec.messages if t == ref.topic(k)] for k in Kind}
    assert [s.status for s in by_kind[Kind.STATUS]] == ["online", "offline"]
    led = sim.ledgers()["filler-01"]
    last = by_kind[Kind.COUNTS][-1]
    # every part the machine made is in the last counter sample, with its product and ideal cycle time
    assert (int(last.good[-1]), int(last.reject[-1])) == (led["good"], led["reject"])
    assert (last.product, last.ideal_cycle_s) == ("bottle-1l", 2.0)
    # every state change arrived, with machine time
    changes = [(float(t), int(s)) for b in by_kind[Kind.STATE] for t, s in zip(b.ts, b.state)]
    assert changes[0] == (sim.clock.t0, 4)
    assert len(changes) == 1 + led["transitions"]
    # telemetry is columnar: one ts array, one array per signal, units given
    tel = by_kind[Kind.TELEMETRY]
    assert tel and all(set(b.signals) == {"temperature", "power", "vibration"} for b in tel)
    assert all(len(v) == len(b.ts) for b in tel for v in b.signals.values())
    assert tel[0].units["power"] == "kW"


def test_last_will_marks_a_killed_agent_offline(mosquitto, site, recorder, tmp_path):
    """Run the agent as its own process against a simulator process, then SIGKILL it."""
    opc_port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sim = subprocess.Popen([sys.executable, "-m", "fieldlab", "sim", "--machines", "1", "--opcua-port", str(opc_port)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    edge = None
    try:
        assert b"opc.tcp://" in sim.stdout.readline()
        status = MachineRef(site, "a", "l", "cnc-01").topic(Kind.STATUS)
        rec = recorder(mosquitto.url, status)
        edge = subprocess.Popen([sys.executable, "-m", "fieldlab", "edge", "--opcua",
                                 f"opc.tcp://127.0.0.1:{opc_port}/fieldlab/", "--object", "cnc-01",
                                 "--broker", f"mqtt://127.0.0.1:{mosquitto.port}", "--site", site,
                                 "--area", "a", "--line", "l", "--buffer", str(tmp_path / "q.db")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        assert rec.wait_for(lambda r: [m["status"] for m in r.json("/status")] == ["online"], 20), rec.messages
        edge.send_signal(signal.SIGKILL)
        edge.wait(5)
        assert rec.wait_for(lambda r: [m["status"] for m in r.json("/status")] == ["online", "offline"], 10)
        assert rec.json("/status")[-1]["info"]["reason"] == "connection lost"
    finally:
        terminate(edge, sim)


async def test_agent_resubscribes_after_the_opcua_server_restarts(sim, mosquitto, site, recorder, tmp_path):
    """A PLC reboot: the agent reconnects and re-subscribes by itself; the counters catch up exactly."""
    import asyncio

    ref = MachineRef(site, "a", "l", "filler-01")
    rec = recorder(mosquitto.url, ref.topic(Kind.TELEMETRY), ref.topic(Kind.COUNTS))
    agent = EdgeAgent(ref, mosquitto.url, OpcUaSource(sim.servers[0].endpoint, "filler-01"), buffer=tmp_path / "q.db",
                      flush_s=0.1)
    await agent.start()
    sim.run()
    await asyncio.sleep(1.0)
    await sim.servers[0].restart(down_s=1.0)
    restarted = sim.clock.now()
    deadline = asyncio.get_running_loop().time() + 15
    while asyncio.get_running_loop().time() < deadline:
        tel = [decode(Kind.TELEMETRY, p) for t, p, _ in rec.messages if t.endswith("/telemetry")]
        if any(b.ts[-1] > restarted for b in tel):
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("no data from the machine within 15 s after its OPC UA server restarted")
    await asyncio.sleep(0.5)
    await sim.freeze()
    await agent.stop(settle_s=0.5)
    led = sim.ledgers()["filler-01"]
    assert rec.wait_for(lambda r: any(
        int(c.good[-1]) == led["good"] and int(c.reject[-1]) == led["reject"]
        for c in (decode(Kind.COUNTS, p) for t, p, _ in r.messages if t.endswith("/counts"))), 10)
