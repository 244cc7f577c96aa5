"""``fieldlab sim``: simulated machines with OPC UA (and Modbus TCP) servers; ``fieldlab sim inject``: faults on cue."""
from __future__ import annotations

import argparse

from ._common import (
    LINE_HELP, _add_levels, _add_mqtt_login, _broker, _count, _port, _positive, _wait_for_stop, add_command,
)


def add_parser(sub) -> None:
    s = add_command(sub, "sim", "run simulated machines with OPC UA (and Modbus TCP) servers for other tools",
                    "Run simulated machines on their own, each with an OPC UA server (and, if asked,\n"
                    "a Modbus TCP server), so that other tools (UaExpert, Node-RED, a Modbus client,\n"
                    "an edge agent on a Pi) can read them.\n\n"
                    "Faults on cue: every machine has OPC UA methods (InjectBreakdown, SlowDown, ...),\n"
                    "and with --broker it also takes commands from MQTT; 'fieldlab sim inject --help'.\n\n"
                    "examples:\n  fieldlab sim --machines 3 --speed 1     real-time machines on ports 4840-4842\n"
                    "  fieldlab sim --modbus-port 5020         also Modbus TCP on ports 5020-5022\n"
                    "  fieldlab sim --broker mqtt://localhost:1883   also take fault commands over MQTT\n"
                    "  fieldlab sim --opcua-security sign-encrypt --opcua-user agent --opcua-password-file pw\n"
                    "                                          encrypted OPC UA, one user (docs/simulators.md)\n"
                    "  fieldlab sim inject cnc-01 breakdown --minutes 5 --opcua opc.tcp://127.0.0.1:4840/fieldlab/")
    # argparse reads the whole command line for abbreviations of these options: with several --opcua-* here,
    # 'fieldlab sim inject ... --opcua URL' would be refused as ambiguous before inject saw its own --opcua
    s.allow_abbrev = False
    s.add_argument("--machines", type=_count, default=3, metavar="N", help="how many machines (default 3)")
    s.add_argument("--speed", type=_positive, default=1.0, metavar="K", help="time runs K times faster (default 1)")
    s.add_argument("--duration", type=_positive, default=None, metavar="SECONDS", help="stop after this many seconds")
    s.add_argument("--host", default="127.0.0.1", help="address to serve on; 0.0.0.0 for the whole network "
                   "(default 127.0.0.1, this computer only)")
    s.add_argument("--opcua-port", type=_port, default=4840, metavar="PORT", help="port of the first machine (default 4840)")
    s.add_argument("--modbus-port", type=_port, default=None, metavar="PORT",
                   help="also serve each machine over Modbus TCP, the first on PORT, the next on PORT+1 ... "
                        "(register map: docs/simulators.md). Modbus values carry no time stamps: with an edge "
                        "agent reading Modbus, keep --speed 1")
    s.add_argument("--seed", type=int, default=1, help="same seed, same production run (default 1)")
    s.add_argument("--ledger", metavar="FILE", help="write what the machines really did to this JSON file at the end")
    s.add_argument("--scenario", metavar="NAME-or-FILE", help="run a course scenario (YAML): its machines, seed and "
                   "scripted faults instead of --machines and --seed; stops at its end unless --duration")
    s.add_argument("--list-scenarios", action="store_true", help="list the shipped scenarios and stop")
    s.add_argument("--buffers", metavar="CAP[,CAP...]", help=LINE_HELP)
    s.add_argument("--one-server", action="store_true", help="serve every machine from one OPC UA server on "
                   "--opcua-port (each an object below Objects) instead of one server per port: about 40 MiB "
                   "and 1.7 s of start-up less per machine")
    _add_opcua_security(s)
    s.add_argument("--broker", metavar="URL", help="take fault commands from this MQTT broker, e.g. "
                   "mqtt://localhost:1883, on fieldlab/v1/SITE/AREA/LINE/<machine>/cmd")
    _add_mqtt_login(s)
    s.add_argument("--publish", metavar="URL", help="also publish every machine's data straight to this MQTT "
                   "broker in the fieldlab format (docs/contract.md), as an edge agent would, without one: "
                   "fieldlab/v1/SITE/AREA/LINE/<machine>/... (the login options apply to it too)")
    _add_levels(s, "with --broker or --publish: {level} name in the topics")
    ssub = s.add_subparsers(dest="sim_command", metavar="{inject,expected}")
    _add_inject(ssub)
    e = ssub.add_parser("expected", help="compute the expected: block of a scenario file (its KPIs)",
                        description="Run a scenario headless through the gateway's engine (default configuration, "
                        "as fieldlab demo without --config) and print the expected: block to paste at the end of "
                        "the file, so a new scenario needs no hand-computed numbers. The file may leave expected: "
                        "out; an existing block's tolerances are kept. Deterministic: the same file gives the same "
                        "numbers, those fieldlab demo --scenario ends with.")
    e.add_argument("scenario", metavar="NAME-or-FILE", help="a shipped scenario name or a .yaml file")


async def run(a) -> int:
    if a.sim_command == "inject":
        return await _inject(a)
    if a.sim_command == "expected":
        from simulators import scenario as scenarios

        from ..demo import expected_block, scenario_kpis

        scen = scenarios.load(a.scenario, need_expected=False)
        print(expected_block(scen, scenario_kpis(scen)[0]), end="", flush=True)
        return 0
    import asyncio
    import json
    import tempfile
    import time

    from contract.errors import ServiceError
    from contract.sim import scenario_topic
    from simulators.opcua import SimClock, Simulation

    from ..memory import steady_malloc

    steady_malloc()  # machines a fieldlab leaves running for days (fieldlab/memory.py)

    from simulators import scenario as scenarios

    from ..demo import demo_machines

    if a.list_scenarios:
        print(scenarios.listing())
        return 0
    scen = scenarios.load(a.scenario) if a.scenario else None
    if scen and a.buffers:
        raise ServiceError("--buffers does not go with --scenario: a scenario file says whether its machines are a line")
    url = publish = None
    if a.broker or a.publish:
        from contract import MachineRef

        url = _broker(a) if a.broker else None
        publish = _broker(a, a.publish) if a.publish else None
        MachineRef(a.site, a.area, a.line, "m")  # check the names before anything starts
    clock = SimClock(time.time(), a.speed)
    machines = scen.machines(clock.t0) if scen else demo_machines(a.machines, clock.t0, a.seed, a.buffers)
    # a scenario stops at exactly its end (unless --duration says otherwise)
    end = clock.t0 + scen.duration_s if scen and a.duration is None else None
    if scen:
        print(scenarios.describe(scen), flush=True)
    security = _opcua_security(a)
    sim = Simulation(machines, clock, host=a.host, base_port=a.opcua_port, modbus_base_port=a.modbus_port,
                     end=end, typed=True, shared=a.one_server, security=security)
    await sim.start()
    agents: list = []
    outbox = tempfile.TemporaryDirectory(prefix="fieldlab-sim-")  # the publishers' outboxes
    announcer, restart, wake = None, [], asyncio.Event()

    def asked(name: str, by: str) -> None:  # presenter mode's start button (simulators.scenario.Announcer)
        restart.append((name, by))
        wake.set()

    try:
        for name, ep in sim.endpoints.items():
            modbus = f"  modbus://{sim.modbus_endpoints[name]}" if a.modbus_port else ""
            print(f"{name}: {ep}{modbus}", flush=True)
        if security:
            print(_describe_security(security), flush=True)
        if url:
            await sim.listen(url, a.site, a.area, a.line)
            print(f"fault commands: fieldlab/v1/{a.site}/{a.area}/{a.line}/<machine>/cmd on {url}", flush=True)
        if publish:
            agents = await _publishers(sim, publish, a, outbox.name)
            print(f"publishing: fieldlab/v1/{a.site}/{a.area}/{a.line}/<machine>/... to {publish}", flush=True)
        sim.run()
        if scen and (url or publish):  # the scenario message, and a scenario started from presenter mode's page
            announcer = scenarios.Announcer(url or publish, a.site, a.area, a.line, a.speed, on_start=asked)
            announcer.show(scen, clock.t0, list(sim.endpoints))
            await announcer.start(lambda: sim.clock.now())
            print(f"scenario message: {scenario_topic(a.site)} on {url or publish}", flush=True)
        deadline = None if a.duration is None else time.monotonic() + a.duration
        while True:
            if not restart:  # (a start asked for while restarting: at once)
                wake.clear()
            watch = asyncio.ensure_future(_set_when(sim.finished, wake)) if sim.end else None
            await _wait_for_stop(None if deadline is None else max(0.0, deadline - time.monotonic()), done=wake)
            if watch:
                watch.cancel()
            if not restart:
                break
            name, by = restart.pop()
            restart.clear()  # the last one asked for wins
            scen, sim, agents = await _restart(name, by, scen, sim, agents, announcer, a, url, publish, outbox.name,
                                               security)
        t_end = await sim.freeze()
        for i, agent in enumerate(agents):  # hand over the last values, then let the outbox drain
            await agent.stop(settle_s=0.3 if i == 0 else 0.0)
        agents = []
        if announcer:
            await announcer.stop(t_end)
            announcer = None
        ledgers = sim.ledgers()
        for name, led in ledgers.items():
            print(f"{name}: good {led['good']}, reject {led['reject']}, run {led['run_s'] / 60:.1f} of "
                  f"{led['elapsed_s'] / 60:.1f} min, {led['breakdowns']} breakdowns")
        if scen:
            print(scenarios.describe_expected(scen, sim.live_injections))
        if a.ledger:
            with open(a.ledger, "w") as f:
                json.dump(ledgers, f, indent=2)
    finally:
        if announcer:
            await announcer.stop()
        for agent in agents:
            await agent.stop()
        await sim.stop()
        outbox.cleanup()
    return 0


async def _set_when(done, wake) -> None:
    await done.wait()
    wake.set()


async def _restart(name: str, by: str, scen, sim, agents: list, announcer, a, url, publish, outbox: str, security):
    """Presenter mode started another scenario: stop the machines and their publishers (flushed), have the
    gateway forget them (their time jumps back; docs/contract.md, Simulator scenario), then start the
    scenario's machines afresh with a new clock at the real time now. Returns (scenario, simulation, agents)."""
    import time
    from pathlib import Path

    from contract.errors import ServiceError
    from simulators import scenario as scenarios
    from simulators.opcua import SimClock, Simulation

    from ..broker import check_port_free

    new = scenarios.load(name)
    try:  # more machines than now: their ports must be free, or nothing changes
        for i in range(len(sim.servers), len(new.specs)):
            if not a.one_server:
                check_port_free(a.opcua_port + i, f"OPC UA server of machine {i + 1}", "--opcua-port")
            if a.modbus_port:
                check_port_free(a.modbus_port + i, f"Modbus server of machine {i + 1}", "--modbus-port")
    except ServiceError as e:
        print(f"cannot start scenario {name}: {e}", flush=True)
        return scen, sim, agents
    announcer.show(None)
    await sim.freeze()
    for i, agent in enumerate(agents):
        await agent.stop(settle_s=0.3 if i == 0 else 0.0)
    old = list(sim.endpoints)
    await sim.stop()
    if not await announcer.forget(old, by):
        print("the broker did not take the gateway's forget in 5 s", flush=True)
    clock = SimClock(time.time(), a.speed)
    sim = Simulation(new.machines(clock.t0), clock, host=a.host, base_port=a.opcua_port,
                     modbus_base_port=a.modbus_port, end=clock.t0 + new.duration_s if a.duration is None else None,
                     typed=True, shared=a.one_server, security=security)
    await sim.start()
    print(f"{by} started scenario {name}\n{scenarios.describe(new)}", flush=True)
    for machine, ep in sim.endpoints.items():
        print(f"{machine}: {ep}", flush=True)
    if url:
        await sim.listen(url, a.site, a.area, a.line)
    agents = []
    if publish:
        runs = Path(outbox) / f"run-{time.monotonic_ns()}"  # a fresh outbox: no data of the last run
        runs.mkdir()
        agents = await _publishers(sim, publish, a, str(runs))
    sim.run()
    announcer.show(new, clock.t0, list(sim.endpoints))
    return new, sim, agents


def _add_opcua_security(s) -> None:
    s.add_argument("--opcua-security", metavar="MODES", help="sign, sign-encrypt or sign,sign-encrypt: serve "
                   "OPC UA with Basic256Sha256 (signed, or signed and encrypted) and a certificate made on the "
                   "first start; the unsecured endpoint is then off. Default: security None, anyone in")
    s.add_argument("--opcua-user", metavar="NAME", help="with --opcua-security: the one OPC UA user let in "
                   "(anonymous refused); the password from --opcua-password-file or $FIELDLAB_OPCUA_PASSWORD")
    s.add_argument("--opcua-password-file", metavar="FILE", help="the OPC UA user's password (first line)")
    s.add_argument("--opcua-allow-none", action="store_true", help="with --opcua-security: also keep the "
                   "unsecured endpoint (security None), for clients without a certificate")
    s.add_argument("--opcua-cert-dir", metavar="DIR", help="with --opcua-security: where the server's "
                   "certificate and key are kept and reused (default: ~/.local/state/fieldlab/opcua-sim)")


def _opcua_security(a):
    """UaSecurity from the --opcua-* options; None without --opcua-security (the default: security None)."""
    from contract.errors import ServiceError
    from contract.secrets import read_secret

    if not a.opcua_security:
        for opt in ("opcua_user", "opcua_password_file", "opcua_cert_dir", "opcua_allow_none"):
            if getattr(a, opt):
                raise ServiceError(f"--{opt.replace('_', '-')} needs --opcua-security (sign, sign-encrypt or "
                                   "both): without it the server has security None and lets anyone in")
        return None
    from pathlib import Path

    from simulators.opcua import UaSecurity

    from ._common import _state_dir

    password = read_secret("--opcua-password-file", a.opcua_password_file, "FIELDLAB_OPCUA_PASSWORD")
    if a.opcua_password_file and not a.opcua_user:
        raise ServiceError("--opcua-password-file needs --opcua-user NAME (the user it belongs to)")
    modes = tuple(m.strip().lower() for m in a.opcua_security.split(",") if m.strip())
    cert_dir = Path(a.opcua_cert_dir).expanduser() if a.opcua_cert_dir else _state_dir(None) / "opcua-sim"
    return UaSecurity(modes, cert_dir, a.opcua_user, password if a.opcua_user else None, a.opcua_allow_none)


def _describe_security(sec) -> str:
    modes = " and ".join({"sign": "Sign", "sign-encrypt": "SignAndEncrypt"}[m] for m in sec.modes)
    who = f"user {sec.user} only" if sec.user else "anonymous"
    return (f"OPC UA security: Basic256Sha256 {modes}{', and None' if sec.allow_none else ''}; {who}; "
            f"any client certificate accepted; server certificate {sec.certificate}")


async def _publishers(sim, url, a, outbox: str) -> list:
    """One edge agent per machine, fed straight from the simulation (simulators.feed.SimulationTap)."""
    from pathlib import Path

    from contract import MachineRef
    from edge.agent import EdgeAgent
    from simulators.feed import SimulationTap

    agents = []
    for s in sim.servers:
        name = s.machine.spec.name
        agent = EdgeAgent(MachineRef(a.site, a.area, a.line, name), url, SimulationTap(s),
                          buffer=Path(outbox) / f"edge-{name}.db")
        await agent.start()
        agents.append(agent)
    return agents


INJECT_HELP = """\
Inject a fault into a running simulated machine, live, for a demonstration.
The fault starts at the simulated time it arrives, walks the machine's normal
PackML path and is booked in the simulator's ledger, so the OEE the gateway
shows can be checked against what really happened.

faults:
  breakdown    the machine breaks down: Held for --minutes (default 5), reason 101
  microstops   a burst of --count short jams (default 5) of 10 s, 30 s apart, reason 102
  slow         it runs at --factor of its speed (default 0.5) for --minutes (default 10)
  quality      for --minutes (default 10): --reject-rate P of the parts are rejected,
               or --temp C: the temperature runs C degC above its setpoint and the
               rejects follow it (give one of the two)
  material     material runs out: Suspended for --minutes (default 5), reason 201
  reset        clear every injected fault now; the machine returns to normal

A breakdown, jams or a shortage that finds the machine already stopped starts
when the machine is back in Execute.

Send it one of two ways:
  --opcua URL   call the machine's OPC UA method (fieldlab sim prints each
                machine's URL); the simulator answers with what it did
  --broker URL  publish an MQTT command to fieldlab/v1/SITE/AREA/LINE/MACHINE/cmd
                (fieldlab sim --broker URL, or fieldlab demo, listens); it is
                sent only to a machine the listening simulator has (it says
                which, retained); MQTT gives no answer: check the machine's state

examples:
  fieldlab sim inject cnc-01 breakdown --minutes 5 --opcua opc.tcp://127.0.0.1:4840/fieldlab/
  fieldlab sim inject moulder-01 quality --reject-rate 0.3 --minutes 20 --broker mqtt://localhost:1883
  fieldlab sim inject cnc-01 reset --broker mqtt://localhost:1883"""

#: inject option -> fault parameter
INJECT_OPTIONS = {"minutes": "minutes", "count": "count", "factor": "factor", "reject_rate": "reject_rate",
                  "temp": "temp_c"}


def _add_inject(sub) -> None:
    from simulators.faults import FAULTS

    i = sub.add_parser("inject", help="inject a fault into a running simulated machine (OPC UA or MQTT)",
                       description=INJECT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("-v", "--verbose", action="store_true", help="show what every part is doing (log lines)")
    i.add_argument("machine", metavar="MACHINE", help="the machine's name, e.g. cnc-01")
    i.add_argument("fault", metavar="FAULT", choices=list(FAULTS), help=f"one of: {', '.join(FAULTS)}")
    i.add_argument("--minutes", type=_positive, metavar="N", help="how long the fault lasts, in simulated minutes")
    i.add_argument("--count", type=int, metavar="K", help="microstops: how many jams (1-100, default 5)")
    i.add_argument("--factor", type=_positive, metavar="F",
                   help="slow: fraction of the normal speed, e.g. 0.6 = 60 %% (default 0.5)")
    i.add_argument("--reject-rate", type=float, metavar="P",
                   help="quality: probability that a part is rejected, 0-1, e.g. 0.3")
    i.add_argument("--temp", type=float, metavar="C",
                   help="quality: degC the temperature runs above its setpoint (rejects follow it)")
    how = i.add_mutually_exclusive_group(required=True)
    how.add_argument("--opcua", metavar="URL", help="the machine's OPC UA endpoint, e.g. opc.tcp://127.0.0.1:4840/fieldlab/")
    how.add_argument("--broker", metavar="URL", help="MQTT broker, e.g. mqtt://localhost:1883 or, with a user, "
                     "mqtt://trainer@broker.local:1883")
    _add_mqtt_login(i)
    _add_levels(i, "with --broker: {level} name in the topic")


class UnknownMachine(Exception):
    pass


async def _inject(a) -> int:
    import sys

    from contract import MachineRef, encode_command
    from contract.errors import ContractError, ServiceError
    from simulators import faults

    given = {param: getattr(a, opt) for opt, param in INJECT_OPTIONS.items() if getattr(a, opt) is not None}
    takes = {p.name for p in faults.FAULTS[a.fault].params}
    for opt, param in INJECT_OPTIONS.items():
        if param in given and param not in takes:
            raise ServiceError(f"--{opt.replace('_', '-')} does not apply to {a.fault} (see fieldlab sim inject --help)")
    fault, params = faults.check(a.fault, given)
    if a.opcua:
        try:
            print(await _inject_opcua(a.opcua, a.machine, fault, params), flush=True)
        except UnknownMachine as e:
            print(f"fieldlab sim: error: {e}", file=sys.stderr)
            return 1
        return 0
    import threading

    from contract.mqtt import connect, wait_published
    from contract.payloads import decode_sim_machines
    from contract.topics import sim_machines_topic

    topic = MachineRef(a.site, a.area, a.line, a.machine).topic("cmd")
    here = sim_machines_topic(a.site, a.area, a.line)
    got: list = []
    seen = threading.Event()

    def on_message(client, userdata, msg):  # the simulator's retained list of its machines
        got.append(bytes(msg.payload))
        seen.set()

    client = connect(_broker(a), subscriptions=[(here, 1)], on_message=on_message)
    try:
        seen.wait(1.5)  # a retained message comes right after the subscription
        try:
            machines = decode_sim_machines(got[-1]) if got else None
        except ContractError:
            machines = None
        if machines is None:
            print(f"fieldlab sim: error: no simulator takes commands for {a.site}/{a.area}/{a.line} on {a.broker}; "
                  f"start one (fieldlab sim --broker {a.broker}, or fieldlab demo), or check --site, --area "
                  "and --line", file=sys.stderr)
            return 1
        if a.machine not in machines:
            print(f"fieldlab sim: error: unknown machine {a.machine}; machines here: {', '.join(machines)}",
                  file=sys.stderr)
            return 1
        if not wait_published([client.publish(topic, encode_command(fault, **params), qos=1)], 5.0):
            raise ServiceError(f"the MQTT broker at {a.broker} did not acknowledge the command")
    finally:
        client.disconnect()
        client.loop_stop()
    what = ", ".join(f"{k} {v:g}" for k, v in params.items())
    print(f"sent {fault}{' (' + what + ')' if what else ''} to {topic}; a listening simulator applies it now "
          f"(MQTT gives no answer: watch the machine's state)", flush=True)
    return 0


async def _inject_opcua(url: str, machine: str, fault: str, params: dict) -> str:
    import asyncio

    from asyncua import Client, ua

    from contract.errors import ServiceError
    from simulators import faults
    from simulators.opcua import NAMESPACE

    method, args = faults.method_for(fault, params)
    client = Client(url, timeout=5)
    try:
        await client.connect()
    except (OSError, asyncio.TimeoutError) as e:
        raise ServiceError(f"cannot reach the OPC UA server {url}: {e or type(e).__name__} "
                           "(is fieldlab sim running? it prints each machine's URL)") from None
    except ua.UaError as e:
        raise ServiceError(f"the OPC UA server {url} refused an unsecured, anonymous session ({e}): a simulator "
                           "started with --opcua-security takes faults over MQTT (--broker), or over OPC UA "
                           "with --opcua-allow-none and no --opcua-user") from None
    try:
        try:
            ns = await client.get_namespace_index(NAMESPACE)
        except ValueError:
            raise ServiceError(f"{url} is not a fieldlab simulator (no namespace {NAMESPACE})") from None
        try:
            obj = await client.nodes.objects.get_child(f"{ns}:{machine}")
        except ua.UaStatusCodeError:
            names = [(await n.read_browse_name()) for n in await client.nodes.objects.get_children()]
            here = ", ".join(q.Name for q in names if q.NamespaceIndex == ns)
            raise UnknownMachine(f"unknown machine {machine}; machines here ({url}): {here or 'none'}") from None
        variants = [ua.Variant(float(v) if vt == "Double" else int(v), getattr(ua.VariantType, vt)) for vt, v in args]
        try:
            return await obj.call_method(f"{ns}:{method}", *variants)
        except ua.UaStatusCodeError as e:
            raise ServiceError(f"the simulator refused {method}: {e} (its log says why)") from None
    finally:
        await client.disconnect()
