"""The Node-RED example flows (docs/examples/node-red/) in a real Node-RED (npm node-red 4.1.8 with
node-red-contrib-opcua), headless on 127.0.0.1, against the real chain: the simulator's OPC UA server, a real
Mosquitto and the real gateway (also reading Sparkplug B).

- flow (a) reads machine 1 over OPC UA and publishes the contract (JSON telemetry); a second copy of it reads
  machine 2 and sends binary telemetry: the gateway's KPIs equal each machine's ledger;
- flow (c) publishes machine 1 as a Sparkplug B device (sparkplug-client through a function node's libs): the
  gateway's KPIs of that device equal the same ledger, and a clean stop makes it offline;
- flow (b) reads the KPIs back: a line per machine with the KPIs' numbers, and an alert below the threshold.

About 20 s once the npm packages are in .cache/npm-node-red/ (the first run installs them: about 300 MB,
75 s here).
"""
import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from contract import Kind, MachineRef, decode
from fieldlab.broker import free_port
from gateway.config import parse
from gateway.service import Gateway
from simulators.machine import DEMO_MACHINES, Machine
from simulators.opcua import SimClock, Simulation
from tests.helpers import validate_all, wait_until

FLOWS = Path(__file__).resolve().parents[2] / "docs" / "examples" / "node-red"
T0 = 1_800_000_000.0
SPEED = 60.0  # one real second is a simulated minute


def test_each_example_is_one_explained_tab_with_every_wire_connected():
    """What the import needs (and what a reader sees first); milliseconds, no Node-RED."""
    files = sorted(FLOWS.glob("*.json"))
    assert [f.name for f in files] == ["kpi-consumer.json", "opcua-machine-to-contract.json", "sparkplug-device.json"]
    for f in files:
        nodes = json.loads(f.read_text())
        ids = [n["id"] for n in nodes]
        assert len(ids) == len(set(ids)), f.name
        tabs = [n for n in nodes if n["type"] == "tab"]
        assert len(tabs) == 1 and tabs[0]["info"], f.name
        on_tab = [n for n in nodes if "z" in n]
        assert all(n["z"] == tabs[0]["id"] for n in on_tab), f.name
        comments = [n for n in on_tab if n["type"] == "comment"]
        assert len(comments) == 1 and len(comments[0]["info"]) > 300, f.name
        for n in on_tab:
            assert all(target in ids for out in n.get("wires", []) for target in out), (f.name, n["id"])
            for key in ("broker", "endpoint"):  # configuration nodes are in the same file
                assert key not in n or n[key] in ids or n["type"] == "OpcUa-Endpoint", (f.name, n["id"], key)
        assert all(n["qos"] == "1" for n in on_tab if n["type"] in ("mqtt out", "mqtt in")), f.name


def _flows(example: str, prefix: str, **env) -> list[dict]:
    """One example flow, its ids prefixed (so one file can be loaded twice), its tab's variables set."""
    nodes = json.loads((FLOWS / example).read_text())
    ids = {n["id"]: f"{prefix}{n['id']}" for n in nodes}
    text = json.dumps(nodes)
    for old, new in ids.items():
        text = text.replace(f'"{old}"', f'"{new}"')
    nodes = json.loads(text)
    tab = next(n for n in nodes if n["type"] == "tab")
    names = {v["name"] for v in tab["env"]}
    assert set(env) <= names, f"{example} has no variables {set(env) - names}"
    for v in tab["env"]:
        v["value"] = str(env.get(v["name"], v["value"]))
    return nodes


def _set(nodes: list[dict], type_: str, **values) -> None:
    for n in nodes:
        if n["type"] == type_:
            n.update(values)


# node-red-contrib-opcua 0.2.354: OPC UA client nodes that start together before the client certificate exists
# all make it at once, and all but one fail ("Invalid endpoint") without trying again; so it is made first
PKI_JS = """
const [utils, opcua] = [process.argv[1], process.argv[2]].map(require);
(async () => {
  const manager = utils.createClientCertificateManager();   // the nodes' own: $XDG_CONFIG_HOME/node-red-opcua-nodejs
  await manager.initialize();
  await opcua.OPCUAClient.create({clientCertificateManager: manager}).createDefaultCertificate();
  process.exit(0);
})().catch((e) => { console.error(e); process.exit(1); });
"""


def _env(modules: Path) -> dict:
    # node-opcua keeps its client certificate (PKI) in $XDG_CONFIG_HOME: next to the cached packages, made once,
    # instead of in the user's home
    return {**os.environ, "XDG_CONFIG_HOME": str(modules.parent / "config")}


def _opcua_certificate(modules: Path) -> None:
    if not (modules.parent / "config" / "node-red-opcua-nodejs" / "PKI" / "own" / "certs" /
            "client_certificate.pem").exists():
        run = subprocess.run(["node", "-e", PKI_JS, str(modules / "node-red-contrib-opcua" / "opcua" / "utils.js"),
                              str(modules / "node-opcua")], env=_env(modules), capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]


def _node_red(modules: Path, user_dir: Path, flows: list[dict]) -> tuple[subprocess.Popen, Path]:
    """Node-RED on 127.0.0.1 and a free port, with a temp userDir; sparkplug-client known to function nodes."""
    user_dir.mkdir()
    (user_dir / "flows.json").write_text(json.dumps(flows, indent=1))
    (user_dir / "settings.js").write_text(
        "module.exports = {uiHost: '127.0.0.1', uiPort: %d, flowFile: 'flows.json', credentialSecret: false,\n"
        "  functionExternalModules: true, externalModules: {modules: {allowInstall: false}},\n"
        "  logging: {console: {level: 'info'}}, editorTheme: {tours: false}};\n" % free_port())
    # the function node's libs (module sparkplug-client) come from the userDir: Node-RED would install them
    # there; here they are the cached ones, so nothing is downloaded while the test runs
    (user_dir / "package.json").write_text(json.dumps({"name": "t", "version": "1.0.0", "private": True,
                                                       "dependencies": {"sparkplug-client": "3.2.4"}}))
    (user_dir / "node_modules").mkdir()
    (user_dir / "node_modules" / "sparkplug-client").symlink_to(modules / "sparkplug-client")
    log = user_dir / "node-red.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["node", str(modules / "node-red" / "red.js"), "--userDir", str(user_dir),
                                 "--settings", str(user_dir / "settings.js"), "flows.json"],
                                stdout=out, stderr=subprocess.STDOUT, env=_env(modules))
    return proc, log


def _last(rec, topic: str) -> dict | None:
    got = rec.got(topic)
    return got[-1] if got else None


async def test_node_red_flows_against_the_real_chain(own_mosquitto, node_red_modules, recorder, site, tmp_path):
    started = time.monotonic()
    group = f"g{site}"
    url = own_mosquitto.url
    clock = SimClock(T0, speed=SPEED)
    machines = [Machine(DEMO_MACHINES[2], clock.t0, seed=5), Machine(DEMO_MACHINES[1], clock.t0, seed=6)]
    names = [m.spec.name for m in machines]  # filler-01 (2 s a part), moulder-01 (12 s)
    opcua_port = free_port()
    endpoint = f"opc.tcp://127.0.0.1:{opcua_port}/fieldlab/"
    json_ref, binary_ref = (MachineRef(site, "a", "l", n) for n in names)
    spb_ref = MachineRef(site, group, "nr1", names[0])

    flows = []
    for prefix, name, ref, binary in (("j-", names[0], json_ref, "false"), ("b-", names[1], binary_ref, "true")):
        a = _flows("opcua-machine-to-contract.json", prefix, FIELDLAB_TOPIC=ref.topic(Kind.STATUS)[:-len("/status")],
                   OPCUA_OBJECT=name, TELEMETRY_BINARY=binary)
        _set(a, "OpcUa-Endpoint", endpoint=endpoint)
        for n in a:
            if n["type"] == "mqtt-broker":
                n.update(broker=url.host, port=str(url.port))
                for key in ("birthTopic", "closeTopic", "willTopic"):
                    n[key] = ref.topic(Kind.STATUS)
        flows += a
    b = _flows("kpi-consumer.json", "k-", OEE_ALERT_BELOW=0.99, LINE_EVERY_S=0)
    _set(b, "mqtt-broker", broker=url.host, port=str(url.port))
    _set(b, "file", filename=str(tmp_path / "oee.log"))
    c = _flows("sparkplug-device.json", "s-", MQTT_URL=f"mqtt://{url.host}:{url.port}", SPARKPLUG_GROUP=group,
               SPARKPLUG_NODE="nr1", SPARKPLUG_DEVICE=names[0], OPCUA_OBJECT=names[0])
    _set(c, "OpcUa-Endpoint", endpoint=endpoint)
    flows += b + c

    # Node-RED first: it loads its nodes for several seconds, meanwhile the simulator and the gateway start
    # (its flows start after that, and only then connect to OPC UA and MQTT; its OPC UA nodes try again after 5 s)
    _opcua_certificate(node_red_modules)
    proc, log = _node_red(node_red_modules, tmp_path / "node-red", flows)
    sim = gw = None
    try:
        sim = Simulation(machines, clock, base_port=opcua_port, tick_s=0.1, shared=True)
        await sim.start()
        assert sim.servers[0].endpoint == endpoint
        gw = Gateway(url, site=site, publish_s=0.2, client_id=f"gw-{site}",
                     config=parse({"sparkplug": {"groups": [group], "site": site}}))
        await gw.start()
        rec = recorder(url, f"fieldlab/v1/{site}/#", f"spBv1.0/{group}/#")
        # before the clock starts: each producer's first counts (0 parts) reach the gateway, the baseline
        born = await wait_until(lambda: all(rec.got(r.topic(Kind.COUNTS)) for r in (json_ref, binary_ref))
                                and any(t.startswith(f"spBv1.0/{group}/DBIRTH/") for t, _, _ in rec.messages)
                                or proc.poll() is not None, timeout=30)
        assert born and proc.poll() is None, log.read_text()[-3000:]
        ready_s = time.monotonic() - started
        sim.run()
        await asyncio.sleep(2.0)
        sim.inject(names[0], "breakdown", minutes=1.0)  # Holding, Held, Unholding: state changes with a reason
        sim.inject(names[1], "quality", reject_rate=0.8, minutes=2.0)
        await asyncio.sleep(3.0)
        await sim.freeze()
        led = sim.ledgers()

        def exact(ref, name):
            k = _last(rec, ref.topic(Kind.KPI))
            return k is not None and (k["good"], k["reject"]) == (led[name]["good"], led[name]["reject"])

        done = await wait_until(lambda: exact(json_ref, names[0]) and exact(binary_ref, names[1])
                                and exact(spb_ref, names[0]), timeout=10)
        kpis = {r: _last(rec, r.topic(Kind.KPI)) for r in (json_ref, binary_ref, spb_ref)}
        assert done, ({r.machine: (k and (k["good"], k["reject"])) for r, k in kpis.items()},
                      {n: (led[n]["good"], led[n]["reject"]) for n in names}, gw.stats, log.read_text()[-2000:])
        assert led[names[0]]["good"] > 50 and led[names[1]]["reject"] > 0
        for ref, name in ((json_ref, names[0]), (binary_ref, names[1]), (spb_ref, names[0])):
            k = kpis[ref]
            # every state change with its SourceTimestamp (JavaScript keeps milliseconds)
            assert k["run_s"] == pytest.approx(led[name]["state_s"].get("Execute", 0.0), abs=0.05), (ref, k)
            assert k["performance"] is not None and k["status"] == "online"
        rows = {(int(st), int(r)) for t, p, _ in rec.messages if t == json_ref.topic(Kind.STATE)
                for st, r in zip(decode(Kind.STATE, p).state, decode(Kind.STATE, p).reason)}
        assert {(14, 101), (15, 101), (16, 101)} <= rows  # the breakdown, its reason with each state
        assert kpis[spb_ref]["oee"] == pytest.approx(kpis[json_ref]["oee"], abs=1e-3)
        assert gw.stats["dead_letters"] == 0 and gw.stats["sparkplug_errors"] == 0, gw.stats

        # what flow (a) published: every message valid, telemetry in both forms with the machine's signals
        validate_all([m for m in rec.messages if m[0].startswith("fieldlab/v1/") and not m[0].endswith("/kpi")])
        for ref, binary in ((json_ref, False), (binary_ref, True)):
            raw = [p for t, p, _ in rec.messages if t == ref.topic(Kind.TELEMETRY)]
            assert raw and all((p[:4] == b"FLT1") == binary for p in raw)
            assert set(decode(Kind.TELEMETRY, raw[-1]).signals) == {"temperature", "power", "vibration"}

        # flow (b): one line per machine with the KPIs' numbers, and an alert below 99 %
        def line_of(ref):
            lines = [s for s in (tmp_path / "oee.log").read_text().splitlines()
                     if s.split(" ")[1:2] == [f"{ref.site}/{ref.area}/{ref.line}/{ref.machine}"]]
            return lines[-1] if lines else ""

        for ref, name in ((json_ref, names[0]), (binary_ref, names[1]), (spb_ref, names[0])):
            want = f"good/goed {led[name]['good']} reject/afkeur {led[name]['reject']}"
            assert await wait_until(lambda: want in line_of(ref), timeout=5), (want, line_of(ref))
            assert f"OEE {100 * kpis[ref]['oee']:.1f} %" in line_of(ref)
        alerts = [s for s in (tmp_path / "oee.log").read_text().splitlines() if s.startswith("ALERT/ALARM")]
        assert any(f"/{json_ref.machine}: OEE" in s and "below/onder 99.0 %" in s for s in alerts), alerts
        checked_s = time.monotonic() - started

        # a clean stop: flow (a) says offline (its broker node's close message), flow (c) sends DDEATH
        proc.send_signal(signal.SIGTERM)
        assert await wait_until(lambda: (_last(rec, json_ref.topic(Kind.STATUS)) or {}).get("status") == "offline"
                                and (_last(rec, spb_ref.topic(Kind.KPI)) or {}).get("status") == "offline")
        info = _last(rec, json_ref.topic(Kind.STATUS))["info"]
        assert info == {"agent": "node-red", "reason": "stopped"}  # the close message, not the will
    finally:
        # (Node-RED then waits 15 s, its close timeout, for a node that does not finish closing: not waited for)
        proc.kill()
        proc.wait(5)
        if gw:
            await gw.stop()
        if sim:
            await sim.stop()
    print(f"node-red ready after {ready_s:.1f} s, checked after {checked_s:.1f} s")
