"""Modbus end to end: simulated machine's Modbus view -> mapping file -> agent -> Mosquitto -> KPI engine."""
import asyncio
from pathlib import Path

from contract import Kind, MachineRef, decode
from edge import config as edge_config
from edge.agent import EdgeAgent
from edge.batcher import Batcher
from fieldlab.broker import free_port
from gateway.engine import KpiEngine
from simulators.machine import DEMO_MACHINES, Machine
from simulators.opcua import SimClock, Simulation

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "edge-modbus.yaml"


async def test_the_example_mapping_reads_the_simulator_and_counts_every_part(mosquitto, site, recorder, tmp_path):
    port = free_port()
    clock = SimClock(1_800_000_000.0, speed=60.0)
    sim = Simulation([Machine(DEMO_MACHINES[2], clock.t0, seed=5)], clock, base_port=free_port(), tick_s=0.05,
                     modbus_base_port=port)
    await sim.start()
    text = EXAMPLE.read_text().replace("demo/hall-1/line-1/cnc-01", f"{site}/a/l/filler-01") \
        .replace("url: mqtt://localhost:1883", f"url: mqtt://127.0.0.1:{mosquitto.port}") \
        .replace("port: 5020", f"port: {port}")
    (tmp_path / "edge.yaml").write_text(text)
    cfg = edge_config.load(tmp_path / "edge.yaml", {})
    ref = MachineRef(site, "a", "l", "filler-01")
    rec = recorder(mosquitto.url, f"fieldlab/v1/{site}/#")
    agent = EdgeAgent(cfg.machine, cfg.broker, edge_config.build_source(cfg), buffer=tmp_path / "q.db", flush_s=0.1,
                      batcher=Batcher(cfg.state_model, cfg.state_map))
    try:
        await agent.start()
        sim.run()
        await asyncio.sleep(3.0)  # 3 simulated minutes: ~80 bottles
        await sim.freeze()
        await asyncio.sleep(0.5)  # a few more polls see the final registers
        await agent.stop(settle_s=0.2)
    finally:
        await sim.stop()
    led = sim.ledgers()["filler-01"]
    assert led["good"] > 20
    assert rec.wait_for(lambda r: r.json("/status") and r.json("/status")[-1]["status"] == "offline")
    counts = [decode(Kind.COUNTS, p) for t, p, _ in rec.messages if t == ref.topic(Kind.COUNTS)]
    assert (int(counts[-1].good[-1]), int(counts[-1].reject[-1])) == (led["good"], led["reject"])
    # report by exception: a counter reading only when it changed, so never more than one per part
    assert sum(len(c.ts) for c in counts) <= led["good"] + led["reject"] + 1
    tel = [decode(Kind.TELEMETRY, p) for t, p, _ in rec.messages if t == ref.topic(Kind.TELEMETRY)]
    assert tel and tel[0].units["power"] == "kW"
    temps = [v for b in tel for v in b.signals.get("temperature", []) if v == v]
    assert temps and all(15.0 < v < 40.0 for v in temps)  # int16 in 0.1 degC, scaled
    # the 0.2 degC deadband: each reported temperature differs from the one reported before by more
    assert len(temps) > 2 and all(abs(b - a) > 0.2 for a, b in zip(temps, temps[1:])), temps
    states = [decode(Kind.STATE, p) for t, p, _ in rec.messages if t == ref.topic(Kind.STATE)]
    assert int(states[0].state[0]) == 4  # Execute, read from register 0
    # the gateway's engine counts every part once
    engine = KpiEngine()
    m = engine.add_machine()
    for b in states:
        engine.add_state(m, b)
    for b in counts:
        engine.add_counts(m, b)
    engine.fold()
    k = engine.snapshot()["since_start"]
    assert (int(k["good"][0]), int(k["reject"][0])) == (led["good"], led["reject"])
