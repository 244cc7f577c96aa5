"""`fieldlab edge discover`: browse a real asyncua server, write a starter file that loads and works."""
import asyncio
import subprocess
import sys


from contract import Kind, MachineRef, decode
from edge import config as edge_config
from edge import discover
from edge.agent import EdgeAgent
from edge.batcher import Batcher


def test_guesses_from_names_and_types():
    V = discover.Variable
    vs = [V([(2, "Press"), (2, n)], f"ns=2;s={n}", t, None, 0) for n, t in [
        ("MachineState", "Int32"), ("StopReason", "UInt16"), ("Good_Parts", "UInt32"), ("ScrapCount", "UInt32"),
        ("ArticleNumber", "String"), ("OilTemperature", "Double"), ("Operator", "String"), ("State", "String")]]
    assert discover.guess(vs) == {0: "state", 1: "reason", 2: "good", 3: "reject", 4: "product",
                                  5: "oil_temperature"}
    assert discover.snake("SpindleSpeedRPM") == "spindle_speed_rpm" and discover.snake("2ndAxis") == "v_2nd_axis"


def test_starter_file_is_valid_yaml_whatever_the_names_and_units(tmp_path):
    V = discover.Variable
    vs = [V([(2, "Press: #1"), (2, "Good")], "ns=2;i=1", "UInt32", None, 5),
          V([(2, "Press: #1"), (2, "Load")], "ns=2;i=2", "Double", "%", 12.5),
          V([(2, "Press: #1"), (2, "Mode 'A'")], "ns=2;i=3", "String", None, "x\ny")]
    path = tmp_path / "edge.yaml"
    path.write_text(discover.starter_file("opc.tcp://h:4840", vs, ["http://opcfoundation.org/UA/", "", "urn:p"]))
    cfg = edge_config.load(path, {})
    assert cfg.source["root"] == "Press: #1"
    assert [(t.name, t.options["node"], t.unit) for t in cfg.tags] == [("good", "Good", None), ("load", "Load", "%")]


async def test_discovered_file_maps_the_simulated_machine_and_runs(sim, mosquitto, site, recorder, tmp_path):
    endpoint = sim.servers[0].endpoint
    variables, namespaces = await discover.browse(endpoint)
    text = discover.starter_file(endpoint, variables, namespaces)
    assert 'namespace: "urn:fieldlab:sim"' in text and 'root: "filler-01"' in text
    path = tmp_path / "edge.yaml"
    path.write_text(text.replace("my-site/hall-1/line-1/machine-1", f"{site}/a/l/filler-01")
                        .replace("mqtt://localhost:1883", f"mqtt://127.0.0.1:{mosquitto.port}"))
    cfg = edge_config.load(path, {})
    assert {t.name: t.options["node"] for t in cfg.tags} == {
        "state": "State", "reason": "StateReason", "good": "GoodCount", "reject": "RejectCount",
        "product": "Product", "ideal_cycle_s": "IdealCycleTime", "temperature": "Process/Temperature",
        "power": "Process/Power", "vibration": "Process/Vibration", "fill_volume": "FillVolume"}
    # units from the AnalogItems' EngineeringUnits (whose own nodes are not taken for machine data)
    units = {t.name: t.unit for t in cfg.tags}
    assert (units["temperature"], units["power"], units["fill_volume"]) == ("°C", "kW", "ml")

    ref = MachineRef(site, "a", "l", "filler-01")
    rec = recorder(mosquitto.url, ref.topic(Kind.COUNTS))
    agent = EdgeAgent(cfg.machine, cfg.broker, edge_config.build_source(cfg), buffer=tmp_path / "q.db", flush_s=0.1,
                      batcher=Batcher(cfg.state_model, cfg.state_map))
    await agent.start()
    sim.run()
    await asyncio.sleep(1.5)
    await sim.freeze()
    await agent.stop(settle_s=0.3)
    led = sim.ledgers()["filler-01"]
    assert led["good"] > 0
    assert rec.wait_for(lambda r: any(int(c.good[-1]) == led["good"] and c.product == "bottle-1l"
                                      for c in (decode(Kind.COUNTS, p) for _, p, _ in r.messages)))


async def test_cli_writes_the_file_and_refuses_to_overwrite(sim, tmp_path):
    out = tmp_path / "edge.yaml"
    cmd = [sys.executable, "-m", "fieldlab", "edge", "discover", sim.servers[0].endpoint, "-o", str(out)]

    async def run():  # the server lives on this test's event loop: the CLI runs beside it, not blocking it
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output, _ = await proc.communicate()
        return proc.returncode, output.decode()

    rc, output = await run()
    assert rc == 0, output
    assert f"wrote {out}: 10 variables, 10 tags guessed" in output
    assert "tag: good" in out.read_text()
    rc, output = await run()
    assert rc == 2 and "exists" in output and "--force" in output
