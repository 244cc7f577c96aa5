"""Fill a real InfluxDB from the real chain, as the dashboards will see it in a demo.

Simulated machines -> EdgeAgent -> Mosquitto -> Gateway -> InfluxV1Sink -> influxd, as in
tests/system/test_storage.py, at high speed: line-1 is three machines coupled by small buffers
(simulators.line, so a stop upstream starves the next machine and one downstream blocks the previous),
line-2 one machine on its own. Faults are injected at fixed simulated times so that every downtime
reason of the losses dashboard occurs: breakdown 101, jam 102, material 201, starved 202, blocked 203,
changeover 301.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass

from contract import MachineRef
from contract.topics import gateway_status_topic
from edge.agent import EdgeAgent
from fieldlab.broker import free_port
from gateway.influx import InfluxV1Sink
from gateway.service import Gateway
from simulators.feed import MACHINES as SPECS, SimulationTap
from simulators.line import Line
from simulators.machine import Machine
from simulators.opcua import SimClock, Simulation
from tests.conftest import Recorder
from tests.helpers import validate_all

#: (line, machine): three machines on line-1 (a line with buffers), one on line-2
MACHINES = (("line-1", "cnc-01"), ("line-1", "filler-01"), ("line-1", "moulder-01"), ("line-2", "assembly-01"))
BUFFERS = [4, 4]  # parts between line-1's machines: a stop of a few minutes starves and blocks its neighbours
SPEED = 1200.0  # 20 simulated minutes per real second
RUN_S = 5.0  # real seconds: 100 simulated minutes


@dataclass
class Filled:
    db: str
    site: str
    area: str
    machines: tuple
    start_ms: int  # the machines' (simulated) time range, from the data
    end_ms: int
    ledgers: dict


async def fill(mosquitto, influxdb, site: str, db: str, tmp_path, run_s: float = RUN_S) -> Filled:
    sink = InfluxV1Sink(influxdb.url, db)
    gw = Gateway(mosquitto.url, site=site, publish_s=0.2, sinks=[sink], store_kpis_s=0.5)
    everything = Recorder(mosquitto.url, [f"fieldlab/v1/{site}/#", gateway_status_topic(gw.client_id)])
    await gw.start()
    clock = SimClock(time.time(), SPEED)
    t0 = clock.t0
    # an order change every 40 minutes of run time, so a changeover (reason 301) happens in the run
    specs = {name: dataclasses.replace(SPECS[name], changeover_every_s=2400.0) for _, name in MACHINES}
    line = Line([specs[n] for ln, n in MACHINES if ln == "line-1"], t0, [7, 8, 9], BUFFERS, name="line-1")
    machines = line.machines + [Machine(specs[n], t0, 10) for ln, n in MACHINES if ln != "line-1"]
    for i, m in enumerate(machines):  # at different times, so that the neighbours of a stop keep running
        m.inject("breakdown", t0 + 600 + 420 * i, minutes=6)  # reason 101
        m.inject("microstops", t0 + 3000 + 120 * i, count=3)  # reason 102
        m.inject("material", t0 + 4000 + 300 * i, minutes=4)  # reason 201
    sim = Simulation(machines, clock, base_port=free_port(), tick_s=0.05, shared=True)
    await sim.start()
    refs = dict((name, MachineRef(site, "hall-1", ln, name)) for ln, name in MACHINES)
    agents = [EdgeAgent(refs[s.machine.spec.name], mosquitto.url, SimulationTap(s),
                        buffer=tmp_path / f"{s.machine.spec.name}.db", flush_s=0.1) for s in sim.servers]
    try:
        for a in agents:  # before the simulation runs: not one part is made unseen
            await a.start()
        sim.run()
        await asyncio.sleep(run_s)
        await sim.freeze()
        for a in agents:
            await a.stop()
    finally:
        await sim.stop()
    await gw.drain()
    await gw.stop()  # final KPIs stored, the sink drained
    assert (sink.stats["dropped"], sink.stats["rejected"], sink.backlog) == (0, 0, 0), sink.stats
    # every message of this chain (data, agents' and gateway's status, machines' and lines' KPIs) follows its schema
    assert everything.wait_for(lambda r: [m["status"] for m in r.got(gateway_status_topic(gw.client_id))][-1:]
                               == ["offline"])  # the gateway's last message
    everything.close()
    seen = validate_all(everything.messages)
    assert {"state.json", "counts.json", "status.json", "kpi.json", "gateway-status.json"} <= set(seen), seen
    first = influxdb.query('SELECT first("state") FROM "state"', db)[0]["values"][0][0]
    last = influxdb.query('SELECT last("oee") FROM "kpi"', db)[0]["values"][0][0]
    return Filled(db, site, "hall-1", MACHINES, first, last, {m.spec.name: m.ledger_now() for m in machines})
