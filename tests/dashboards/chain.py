"""Fill a real InfluxDB from the real chain, as the dashboards will see it in a demo.

Simulated machines (MachineFeed) -> EdgeAgent -> Mosquitto -> Gateway -> InfluxV1Sink -> influxd,
as in tests/system/test_storage.py, with three machines on one line and a second line with one
machine, at high speed. Faults are injected at fixed simulated times so that every downtime
reason of the losses dashboard (breakdown 101, jam 102, material 201, changeover 301) occurs.
"""
from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass

from contract import MachineRef
from edge.agent import EdgeAgent
from gateway.influx import InfluxV1Sink
from gateway.service import Gateway
from simulators.feed import MachineFeed
from simulators.machine import Machine

#: (line, machine): three machines on line-1, one on line-2
MACHINES = (("line-1", "cnc-01"), ("line-1", "filler-01"), ("line-1", "moulder-01"), ("line-2", "assembly-01"))
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
    await gw.start()
    agents, feeds = [], {}
    for i, (line, name) in enumerate(MACHINES):
        feed = MachineFeed(name, seed=7 + i, speed=SPEED)
        # an order change every 40 minutes of run time, so a changeover (reason 301) happens in the run
        feed.machine = Machine(dataclasses.replace(feed.spec, changeover_every_s=2400.0), feed.clock.t0, 7 + i)
        t0 = feed.clock.t0
        feed.machine.inject("breakdown", t0 + 600, minutes=6)  # reason 101
        feed.machine.inject("microstops", t0 + 1500, count=3)  # reason 102
        feed.machine.inject("material", t0 + 2400, minutes=4)  # reason 201
        ref = MachineRef(site, "hall-1", line, name)
        agents.append(EdgeAgent(ref, mosquitto.url, feed, buffer=tmp_path / f"{name}.db", flush_s=0.1))
        feeds[name] = feed
    for a in agents:
        await a.start()
    await asyncio.sleep(run_s)
    for a in agents:
        await a.stop()
    await gw.drain()
    await gw.stop()  # final KPIs stored, the sink drained
    assert (sink.stats["dropped"], sink.stats["rejected"], sink.backlog) == (0, 0, 0), sink.stats
    first = influxdb.query('SELECT first("state") FROM "state"', db)[0]["values"][0][0]
    last = influxdb.query('SELECT last("oee") FROM "kpi"', db)[0]["values"][0][0]
    return Filled(db, site, "hall-1", MACHINES, first, last, {n: f.machine.ledger_now() for n, f in feeds.items()})
