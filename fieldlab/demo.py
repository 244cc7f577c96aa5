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
from simulators.machine import DEMO_MACHINES, Machine, demo_machine_name
from simulators.opcua import SimClock, Simulation

from . import table
from .broker import check_port_free, start_private_broker, stop_private_broker

SITE, AREA, LINE = "demo", "hall-1", "line-1"


def demo_machines(n: int, t0: float, seed: int, line: str | None = None) -> list[Machine]:
    """The first ``n`` demo machines; with ``line`` (buffer capacities, "20" or "20,10") coupled into a line
    in this order (simulators.line)."""
    specs = [dataclasses.replace(DEMO_MACHINES[i % len(DEMO_MACHINES)], name=demo_machine_name(i)) for i in range(n)]
    if line:
        from simulators.line import Line, parse_capacities

        return Line(specs, t0, [seed + i for i in range(n)], parse_capacities(line, n), name=LINE).machines
    return [Machine(spec, t0, seed + i) for i, spec in enumerate(specs)]


def command_name(argv0: str | None = None, env=None) -> str:
    """How to call fieldlab from here, for the hints a demo prints: ``fieldlab`` only when that is what runs
    on PATH; ``./run`` when started by the run script (which sets FIELDLAB_RUN, or execs .venv/bin/fieldlab
    from the checkout); else the path that was used."""
    import os
    import shutil

    env = os.environ if env is None else env
    argv0 = sys.argv[0] if argv0 is None else argv0
    if env.get("FIELDLAB_RUN"):
        return env["FIELDLAB_RUN"]
    found = shutil.which("fieldlab", path=env.get("PATH"))
    if found and os.path.realpath(found) == os.path.realpath(argv0):
        return "fieldlab"
    if Path(argv0).name == "fieldlab":
        venv = Path(".venv/bin/fieldlab")
        if Path("run").is_file() and venv.exists() and venv.resolve() == Path(argv0).resolve():
            return "./run"
        return argv0
    return f"{sys.executable} -m fieldlab"  # python -m fieldlab


#: the simulated start of a headless scenario run: KPIs do not depend on it (no calendar in the defaults)
SCENARIO_T0 = 1_800_000_000.0


def start_machines(engine, machines, t0: float) -> list[int]:
    """Add simulated machines to a KpiEngine with their state and zero counters at t0; their engine ids."""
    import numpy as np

    from contract import CountsBatch, StateBatch

    ids = [engine.add_machine() for _ in machines]
    for i, m in zip(ids, machines):
        engine.add_state(i, StateBatch(np.array([t0]), np.array([m.state]), np.array([m.reason])))
        engine.add_counts(i, CountsBatch(np.array([t0]), np.array([0]), np.array([0]), m.spec.product,
                                         m.spec.ideal_cycle_s))
    return ids


def advance_machines(engine, ids, machines, t: float) -> None:
    """Run simulated machines to t and hand their state changes and counter readings to the engine
    (with a counter sample at t: an unchanged sample tells the engine the machine's "now")."""
    import numpy as np

    from contract import CountsBatch, StateBatch

    for i, m in zip(ids, machines):
        events = m.advance(t)
        st = [e for e in events if e[0] == "state"]
        if st:
            engine.add_state(i, StateBatch(np.array([e[1] for e in st]), np.array([e[2] for e in st]),
                                           np.array([e[3] for e in st])))
        c = [e for e in events if e[0] == "count"] + [("count", t, m.good, m.reject)]
        engine.add_counts(i, CountsBatch(np.array([e[1] for e in c]), np.array([e[2] for e in c]),
                                         np.array([e[3] for e in c]), m.spec.product, m.spec.ideal_cycle_s))


def scenario_kpis(s, t0: float = SCENARIO_T0, step_s: float = 3600.0) -> tuple[dict, list[Machine]]:
    """Run a scenario headless and feed every machine's events to the gateway's engine with its default
    configuration (as ``fieldlab demo`` without --config): the KPIs since the start per machine and, with
    more than one machine, for them all as one line, as ``expected:`` writes them (ratios to 3 decimals);
    and the machines. The same code checks the shipped files (tests/simulators/test_scenarios.py)."""
    import numpy as np

    from gateway.config import SiteConfig
    from gateway.engine import KpiEngine
    from simulators.scenario import COUNTS, RATIOS

    engine = KpiEngine(SiteConfig())
    machines = s.machines(t0)
    ids = start_machines(engine, machines, t0)
    end, t = t0 + s.duration_s, t0
    while t < end:
        t = min(end, t + step_s)
        advance_machines(engine, ids, machines, t)
        engine.fold()
    k = engine.snapshot()["since_start"]

    def pick(src, j):
        return {kpi: (int(src[kpi][j]) if kpi in COUNTS else round(float(src[kpi][j]), 3)) for kpi in RATIOS + COUNTS}

    out = {m.spec.name: pick(k, i) for i, m in enumerate(machines)}
    if len(machines) > 1:
        out["line"] = pick(engine.line_snapshot(np.zeros(len(machines), np.int64), 1)["since_start"], 0)
    return out, machines


def expected_block(s, kpis: dict) -> str:
    """The ``expected:`` block of a scenario file for these KPIs (``scenario_kpis``), keeping its tolerances."""
    def kv(d):
        return "{" + ", ".join(f"{k}: {v}" for k, v in d.items()) + "}"

    lines = ["expected:  # KPIs since the start, gateway defaults (fieldlab demo without --config); "
             "computed by fieldlab sim expected",
             f"  tolerance: {s.tolerance:g}        # absolute, for oee, availability, performance, quality",
             f"  count_tolerance: {s.count_tolerance}     # good and reject parts (0: exact, the run is deterministic)",
             "  machines:"]
    lines += [f"    {name}: {kv(v)}" for name, v in kpis.items() if name != "line"]
    if "line" in kpis:
        lines.append("  # the machines summed, as the gateway publishes a line (in a coupled line its output is the "
                     "last machine's good)")
        lines.append(f"  line: {kv(kpis['line'])}")
    return "\n".join(lines) + "\n"


class Demo:
    def __init__(self, machines: int = 3, speed: float = 60.0, duration: float | None = None,
                 broker: str | None = None, broker_impl: str = "auto", mqtt_port: int = 1883,
                 opcua_port: int = 4840, seed: int = 1, ledger: str | None = None, out=sys.stdout,
                 config=None, http_port: int = 8080, scenario: str | None = None, sinks: list | None = None,
                 line: str | None = None, presenter: bool = False):
        self.presenter = presenter  # /presenter: clock, scenario, fault buttons (docs/web.md)
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
        sim = gateway = http = announcer = None
        agents: list[EdgeAgent] = []
        try:
            machines = (self.scenario.machines(clock.t0) if self.scenario
                        else demo_machines(self.n, clock.t0, self.seed, self.line))
            sim = self._simulation(machines, clock)
            await sim.start()
            gateway = Gateway(url, site=SITE, client_id=f"fieldlab-gateway-{self.opcua_port}", config=self.config,
                              sinks=self.sinks)
            await gateway.start()
            http = HttpEndpoint(gateway, "127.0.0.1", self.http_port, presenter=self.presenter)
            await http.start()
            agents += await self._agents(sim, url)
            await sim.listen(url, SITE, AREA, LINE)  # faults on cue: fieldlab sim inject ... --broker URL
            self._print_intro(url, broker, sim, http)
            sim.run()
            if self.presenter:  # the scenario message once a second, and a scenario started from the page
                from simulators.scenario import Announcer

                announcer = Announcer(url, SITE, AREA, LINE, self.speed, on_start=self._start_asked)
                announcer.show(self.scenario, clock.t0, list(sim.endpoints))
                await announcer.start(lambda: clock.now())
            self._started = time.monotonic()
            await self._show_live(gateway, clock)
            while self._restart_to:  # presenter mode: another scenario, its machines afresh (docs/web.md)
                sim, clock = await self._restart(url, sim, agents, announcer)
                await self._show_live(gateway, clock)
            t_end = await sim.freeze()
            if announcer:
                await announcer.stop(t_end)
                announcer = None
            for a in agents:
                await a.stop(settle_s=0.3 if a is agents[0] else 0.0)
            agents = []
            await gateway.drain()
            await gateway.stop()
            self._print_table(gateway, clock, final=True, t=t_end)
            if self.scenario:
                from simulators.scenario import describe_expected

                print(describe_expected(self.scenario, sim.live_injections), file=self.out, flush=True)
            if self.ledger_path:
                Path(self.ledger_path).write_text(json.dumps(
                    {f"{SITE}/{AREA}/{LINE}/{k}": v for k, v in sim.ledgers().items()}, indent=2))
            return 0
        finally:
            if announcer:
                await announcer.stop()
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
        if self.presenter:
            lines.append(f"  Presenter: {http.url}/presenter   log in: {http.login_url}")
        for sink in self.sinks:  # the data is stamped with the machines' accelerated time: ahead of the clock
            lines.append(f"  Stored in InfluxDB {sink.url}, database {sink.database} (Grafana: docs/dashboards.md; "
                         "the data runs ahead of the clock, choose a time range up to now+24h)")
        me = command_name()
        lines.append(f"  Faults on cue: {me} sim inject {next(iter(sim.endpoints))} breakdown --minutes 5 "
                     f"--broker {url}   ({me} sim inject --help)")
        if self.to_end:
            lines.append(f"  Running to the scenario's end: {self.scenario.duration_s / self.speed:g} s.")
        else:
            lines.append("  Stop with Ctrl-C." if self.duration is None else f"  Running for {self.duration:g} s.")
        self.intro = "\n".join(lines)
        print(self.intro + "\n", file=self.out, flush=True)

    def _simulation(self, machines: list[Machine], clock: SimClock) -> Simulation:
        sim = Simulation(machines, clock, base_port=self.opcua_port, typed=True,
                         end=clock.t0 + self.scenario.duration_s if self.to_end else None)
        self._sim_done = sim.finished
        return sim

    async def _agents(self, sim, url) -> list[EdgeAgent]:
        """One edge agent per machine, reading its OPC UA server; a fresh outbox per run (a restarted
        simulation's machines must not get the last run's unsent data)."""
        self._runs = getattr(self, "_runs", 0) + 1
        agents = []
        for s in sim.servers:
            name = s.machine.spec.name
            agent = EdgeAgent(MachineRef(SITE, AREA, LINE, name), url, OpcUaSource(s.endpoint, name),
                              buffer=Path(self._tmp.name) / f"edge-{name}-{self._runs}.db")
            await agent.start()
            agents.append(agent)
        return agents

    _restart_to: tuple[str, str] | None = None

    def _start_asked(self, name: str, by: str) -> None:
        """Presenter mode's start button (simulators.scenario.Announcer): restart with that scenario."""
        self._restart_to = (name, by)

    async def _restart(self, url, sim, agents: list, announcer):
        """Stop the machines and their agents (the data flushed), have the gateway forget them (their time
        jumps back), and start the scenario's machines afresh: a new simulated clock at the real time now, at
        the demo's speed. Returns the new (simulation, clock); ``agents`` is refilled."""
        from simulators import scenario as scenarios

        name, by = self._restart_to
        self._restart_to = None
        new = scenarios.load(name)
        try:  # more machines than now: their ports must be free, or nothing changes
            for i in range(len(sim.servers), len(new.specs)):
                check_port_free(self.opcua_port + i, f"OPC UA server of machine {i + 1}", "--opcua-port")
        except Exception as e:
            print(f"presenter: cannot start scenario {name}: {e}", file=self.out, flush=True)
            return sim, sim.clock
        announcer.show(None)
        await sim.freeze()
        for a in agents:
            await a.stop(settle_s=0.3 if a is agents[0] else 0.0)
        agents.clear()
        old = list(sim.endpoints)
        await sim.stop()
        if not await announcer.forget(old, by):
            print("presenter: the broker did not take the gateway's forget in 5 s", file=self.out, flush=True)
        was, self.scenario, self.n = self.scenario, new, len(new.specs)
        clock = SimClock(time.time(), self.speed)
        sim = self._simulation(new.machines(clock.t0), clock)
        await sim.start()
        agents += await self._agents(sim, url)
        await sim.listen(url, SITE, AREA, LINE)
        sim.run()
        announcer.show(new, clock.t0, list(sim.endpoints))
        print(f"presenter: {by} started scenario {name}", file=self.out, flush=True)
        self.intro = (self.intro.replace(scenarios.describe(was), scenarios.describe(new)) if was
                      else f"{self.intro}\n{scenarios.describe(new)}")  # what the live table shows above it
        return sim, clock

    async def _show_live(self, gateway: Gateway, clock: SimClock) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            started = getattr(self, "_started", time.monotonic())  # --duration counts from the first start
            last_plain = 0.0
            while not self._stop.is_set() and not self._sim_done.is_set() and not self._restart_to:
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
