"""``fieldlab demo``: simulated machines -> OPC UA -> edge agents -> MQTT -> gateway -> KPIs.

Everything runs in one process, on one asyncio loop, around a private broker
(or an existing one with --broker). Start order matters: the gateway subscribes
before the edge agents publish, and the simulated clock starts only once every
agent has subscribed, so not one part is made unseen. Stop order matters too:
freeze the machines, let the agents flush, let the gateway drain, publish the
final KPIs, then close.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

from contract import MachineRef
from contract.mqtt import BrokerUrl
from edge.agent import EdgeAgent
from edge.opcua import OpcUaSource
from gateway.http import HttpEndpoint
from gateway.service import Gateway
from simulators.machine import DEMO_MACHINES, Machine
from simulators.opcua import SimClock, Simulation

from . import table
from .broker import check_port_free, start_private_broker, stop_private_broker

SITE, AREA, LINE = "demo", "hall-1", "line-1"


def demo_machines(n: int, t0: float, seed: int, line: str | None = None) -> list[Machine]:
    """The first ``n`` demo machines; with ``line`` (buffer capacities, "20" or "20,10") coupled into a line
    in this order (simulators.line)."""
    specs = []
    for i in range(n):
        spec = DEMO_MACHINES[i % len(DEMO_MACHINES)]
        name = f"{spec.name.rsplit('-', 1)[0]}-{i // len(DEMO_MACHINES) + 1:02d}"
        specs.append(dataclasses.replace(spec, name=name))
    if line:
        from simulators.line import Line, parse_capacities

        return Line(specs, t0, [seed + i for i in range(n)], parse_capacities(line, n), name=LINE).machines
    return [Machine(spec, t0, seed + i) for i, spec in enumerate(specs)]


class Demo:
    def __init__(self, machines: int = 3, speed: float = 60.0, duration: float | None = None,
                 broker: str | None = None, broker_impl: str = "auto", mqtt_port: int = 1883,
                 opcua_port: int = 4840, seed: int = 1, ledger: str | None = None, out=sys.stdout,
                 config=None, http_port: int = 8080, scenario: str | None = None, sinks: list | None = None,
                 line: str | None = None):
        self.sinks = list(sinks or [])  # e.g. an InfluxV1Sink (--influx): the gateway stores everything there
        self.n, self.speed, self.duration, self.seed = machines, speed, duration, seed
        self.line = line
        self.scenario = None
        if scenario:  # a course scenario: its machines, seed and scripted faults; by default stop at its end
            from simulators import scenario as scenarios

            self.scenario = scenarios.load(scenario)
            self.n = len(self.scenario.specs)
            if line:
                raise ValueError("--buffers does not go with --scenario: a scenario file says whether its machines "
                                 "are a line")
        self.to_end = self.scenario is not None and duration is None  # stop at exactly the scenario's end
        self.broker_arg, self.broker_impl, self.mqtt_port, self.opcua_port = broker, broker_impl, mqtt_port, opcua_port
        self.ledger_path = ledger
        self.config = config
        self.http_port = http_port
        self.out = out
        self.tty = out.isatty()
        self._stop = asyncio.Event()
        self._tmp = tempfile.TemporaryDirectory(prefix="fieldlab-demo-")  # the edge agents' outboxes

    async def run(self) -> int:
        if self.n < 1:
            raise ValueError("--machines must be at least 1")
        clock = SimClock(time.time(), self.speed)  # validates the speed before anything starts
        for i in range(self.n):
            check_port_free(self.opcua_port + i, f"OPC UA server of machine {i + 1}", "--opcua-port")
        check_port_free(self.http_port, "gateway's HTTP endpoint", "--http-port")
        broker = None
        if self.broker_arg:
            url = BrokerUrl.parse(self.broker_arg)
        else:
            broker = await start_private_broker(self.broker_impl, self.mqtt_port)
            url = broker.url
        sim = gateway = http = None
        agents: list[EdgeAgent] = []
        try:
            machines = (self.scenario.machines(clock.t0) if self.scenario
                        else demo_machines(self.n, clock.t0, self.seed, self.line))
            sim = Simulation(machines, clock, base_port=self.opcua_port, typed=True,
                             end=clock.t0 + self.scenario.duration_s if self.to_end else None)
            self._sim_done = sim.finished
            await sim.start()
            gateway = Gateway(url, site=SITE, client_id=f"fieldlab-gateway-{self.opcua_port}", config=self.config,
                              sinks=self.sinks)
            await gateway.start()
            http = HttpEndpoint(gateway, "127.0.0.1", self.http_port)
            await http.start()
            for s in sim.servers:
                name = s.machine.spec.name
                agent = EdgeAgent(MachineRef(SITE, AREA, LINE, name), url, OpcUaSource(s.endpoint, name),
                                  buffer=Path(self._tmp.name) / f"edge-{name}.db")
                await agent.start()
                agents.append(agent)
            await sim.listen(url, SITE, AREA, LINE)  # faults on cue: fieldlab sim inject ... --broker URL
            self._print_intro(url, broker, sim, http)
            sim.run()
            await self._show_live(gateway, clock)
            t_end = await sim.freeze()
            for a in agents:
                await a.stop(settle_s=0.3 if a is agents[0] else 0.0)
            agents = []
            await gateway.drain()
            await gateway.stop()
            self._print_table(gateway, clock, final=True, t=t_end)
            if self.scenario:
                from simulators.scenario import describe_expected

                print(describe_expected(self.scenario), file=self.out, flush=True)
            if self.ledger_path:
                Path(self.ledger_path).write_text(json.dumps(
                    {f"{SITE}/{AREA}/{LINE}/{k}": v for k, v in sim.ledgers().items()}, indent=2))
            return 0
        finally:
            for a in agents:
                await a.stop()
            if gateway:
                await gateway.stop()
            if http:
                await http.stop()
            if sim:
                await sim.stop()
            if broker:
                await stop_private_broker(broker)
            self._tmp.cleanup()

    def _print_intro(self, url, broker, sim, http) -> None:
        kind = "" if broker is None else f" (private {type(broker).__name__.replace('Private', '').replace('Embedded', '')})"
        lines = [f"fieldlab demo: {self.n} machines at {self.speed:g}x speed; MQTT broker {url}{kind}"]
        if self.scenario:
            from simulators.scenario import describe

            lines.append(describe(self.scenario))
        lines += [f"  OPC UA {name}: {ep}" for name, ep in sim.endpoints.items()]
        lines.append(f"  KPIs on MQTT: mosquitto_sub -h {url.host} -p {url.port} -t 'fieldlab/v1/{SITE}/+/+/+/kpi' -v")
        lines.append(f"  Live dashboard: {http.url}/   (REST API: {http.url}/api/openapi.json)")
        lines.append(f"  Metrics: {http.url}/metrics")
        for sink in self.sinks:  # the data is stamped with the machines' accelerated time: ahead of the clock
            lines.append(f"  Stored in InfluxDB {sink.url}, database {sink.database} (Grafana: docs/dashboards.md; "
                         "the data runs ahead of the clock, choose a time range up to now+24h)")
        lines.append(f"  Faults on cue: fieldlab sim inject {next(iter(sim.endpoints))} breakdown --minutes 5 "
                     f"--broker {url}   (fieldlab sim inject --help)")
        if self.to_end:
            lines.append(f"  Running to the scenario's end: {self.scenario.duration_s / self.speed:g} s.")
        else:
            lines.append("  Stop with Ctrl-C." if self.duration is None else f"  Running for {self.duration:g} s.")
        self.intro = "\n".join(lines)
        print(self.intro + "\n", file=self.out, flush=True)

    async def _show_live(self, gateway: Gateway, clock: SimClock) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            started = time.monotonic()
            last_plain = 0.0
            while not self._stop.is_set() and not self._sim_done.is_set():
                left = None if self.duration is None else self.duration - (time.monotonic() - started)
                if left is not None and left <= 0:
                    break
                try:
                    wait = min(1.0, left) if left else 1.0
                    await asyncio.wait_for(self._stop.wait(), timeout=min(wait, 0.1) if self.to_end else wait)
                except asyncio.TimeoutError:
                    pass
                now = time.monotonic()
                if now - last_plain >= (1.0 if self.tty else 5.0):  # a terminal: every 1 s, a log file: every 5 s
                    self._print_table(gateway, clock)
                    last_plain = now
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def _print_table(self, gateway: Gateway, clock: SimClock, final: bool = False, t: float | None = None) -> None:
        t = clock.now() if t is None else t
        elapsed_h = (t - clock.t0) / 3600
        title = "final KPIs" if final else "live KPIs"
        header = (f"fieldlab demo - {title} - simulated time {table.sim_time(t)} "
                  f"({elapsed_h:.2f} h simulated at {self.speed:g}x)")
        text = table.render(gateway.rows, header)
        if self.tty and not final:
            self.out.write("\x1b[H\x1b[J" + self.intro + "\n\n" + text + "\n")
        else:
            self.out.write(text + "\n\n")
        self.out.flush()
