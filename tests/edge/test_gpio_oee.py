"""OEE for a machine without a PLC: a light barrier and a stack light on (mock) GPIO pins, an ideal cycle time and
a product table in the mapping file, a product switch over MQTT, through a real Mosquitto to the real gateway."""
import asyncio
import json
import re
import time

import pytest

from contract import Kind, MachineRef, encode_command
from contract.yamlfile import ConfigError
from edge import config as edge_config
from edge.agent import EdgeAgent
from edge.batcher import Batcher
from edge.products import Products, UnknownProduct
from fieldlab.cli import build_parser
from fieldlab.commands.edge import _product
from gateway.config import SiteConfig
from gateway.oee import Conventions
from gateway.service import Gateway
from tests.helpers import wait_until

GOOD, REJECT, GREEN, ORANGE, RED = 17, 18, 22, 27, 23
MAPPING = """\
machine: {site}/a/l/press-01
broker: {{url: "mqtt://127.0.0.1:{port}"}}
source: {{type: gpio, pin_factory: mock}}
products: {{cap: 0.1, lid: 0.3}}
product: cap
tags:
  - {{tag: good, pin: 17}}
  - {{tag: reject, pin: 18}}
  - tag: state
    stack_light: {{green: 22, orange: 27, red: 23}}
    settle: 20ms
"""


def write(tmp_path, text: str, name: str = "edge.yaml"):
    (tmp_path / name).write_text(text)
    return tmp_path / name


async def test_light_barrier_and_stack_light_give_oee_and_a_product_switch_changes_performance(
        mosquitto, site, recorder, tmp_path):
    """Product cap (ideal 0.1 s per part), then lid (0.3 s). Seconds after the agent starts (t = 0, green lamp on):

    ====  ==========================================================
    0.2   good part, and at 0.4, 0.6, 0.8            (cap)
    1.0   reject                                     (cap)
    1.2   red lamp on: Held, a breakdown (this site's micro-stop threshold is 0.1 s)
    1.8   red lamp off: Execute again
    2.0   good part                                  (cap)
          -> KPI 1, window 0 .. 2.0 (the machine's latest data)
    2.1   set_product lid over MQTT (fieldlab edge product), waits until the agent's status confirms it
    2.5   good part, and at 2.7, 2.9, 3.1            (lid)
          -> KPI 2, window 0 .. 3.1
    ====  ==========================================================

    The lid parts follow the confirmation: when it comes later than 2.4 s (a slow machine), they come as much
    later (``late``), and KPI 2's window with them.

    KPI 1: planned 2.0 s, run 2.0 - 0.6 = 1.4 s; availability 1.4 / 2.0 = 0.7; parts 6 (5 good);
    performance 0.1 x 6 / 1.4 = 0.4286; quality 5 / 6 = 0.8333; OEE 0.7 x 0.4286 x 0.8333 = 0.25
    (= 0.1 x 5 good / 2.0 planned).

    KPI 2: planned 3.1 s, run 2.5 s; availability 2.5 / 3.1 = 0.8065; Σ ideal × parts = 0.1 x 6 + 0.3 x 4 = 1.8 s;
    performance 1.8 / 2.5 = 0.72 (with cap's 0.1 s still stamped it would be 1.0 / 2.5 = 0.4);
    quality Σ ideal × good / Σ ideal × parts = (0.5 + 1.2) / 1.8 = 0.9444; OEE 1.7 / 3.1 = 0.5484.

    The asyncio timing drifts by milliseconds: the values are checked exactly against the KPI message's own
    window and the red lamp's times as the agent stamped them (each between the test's clock readings just before
    and after it switched the lamp), and against the numbers above (with ``late``) within 0.05."""
    from contract import decode

    cfg = edge_config.load(write(tmp_path, MAPPING.format(site=site, port=mosquitto.port)), {})
    ref = MachineRef(site, "a", "l", "press-01")
    rec = recorder(mosquitto.url, ref.topic(Kind.KPI), ref.topic(Kind.STATE))
    gw = Gateway(mosquitto.url, site=site, publish_s=0.2, client_id=f"gw-{site}", state_dir=None,
                 config=SiteConfig(conventions=Conventions(micro_stop_s=0.1)))
    source = edge_config.build_source(cfg)
    buffer = tmp_path / "q.db"
    agent = EdgeAgent(cfg.machine, cfg.broker, source, buffer=buffer, flush_s=0.1,
                      batcher=Batcher(cfg.state_model, cfg.state_map), products=Products.from_config(cfg, buffer))
    pin = source.factory.pin
    await gw.start()
    try:
        pin(GREEN).drive_high()
        await agent.start()
        t0 = time.time()

        async def at(t: float) -> float:
            await asyncio.sleep(max(0.0, t0 + t - time.time()))
            return time.time()

        async def part(t: float, p: int = GOOD) -> None:
            await at(t)
            pin(p).drive_high()
            await asyncio.sleep(0.05)
            pin(p).drive_low()

        for t in (0.2, 0.4, 0.6, 0.8):
            await part(t)
        await part(1.0, REJECT)
        red = []  # (before, after) each switch of the red lamp: the agent stamps it in between
        for t, switch in ((1.2, pin(RED).drive_high), (1.8, pin(RED).drive_low)):
            before = await at(t)
            switch()
            red.append((before, time.time()))
        await part(2.0)
        await at(2.1)
        args = build_parser().parse_args(["edge", "product", str(cfg.path), "lid", "--timeout", "3"])
        assert await _product(args) == 0  # waits (at most 3 s) until the agent's status confirms the switch
        late = max(0.0, time.time() - (t0 + 2.4))
        for t in (2.5, 2.7, 2.9, 3.1):
            await part(t + late)

        def kpi(total):
            return next((k for k in reversed(rec.got(ref.topic(Kind.KPI))) if k["total"] == total), None)

        assert await wait_until(lambda: kpi(10) is not None, timeout=10), str(
            [(k["total"], k["good"], round(k["performance"] or 0, 3)) for k in rec.got(ref.topic(Kind.KPI))])
    finally:
        await agent.stop()
        await gw.stop()

    states = [(t, s) for topic, payload, _ in rec.messages if topic == ref.topic(Kind.STATE)
              for b in [decode(Kind.STATE, payload)] for t, s in zip(b.ts.tolist(), b.state.tolist())]
    assert [s for _, s in states] == [4, 15, 4], states  # Execute, Held (red lamp), Execute
    (_, (held_at, _), (back_at, _)) = states
    assert red[0][0] <= held_at <= red[0][1] and red[1][0] <= back_at <= red[1][1], (states, red)
    held = back_at - held_at
    k1, k2 = kpi(6), kpi(10)
    for k, ideal_parts, ideal_good, nominal in (
            (k1, 0.1 * 6, 0.1 * 5, (0.7, 0.1 * 6 / 1.4, 5 / 6, 0.25)),
            (k2, 0.1 * 6 + 0.3 * 4, 0.1 * 5 + 0.3 * 4,
             ((2.5 + late) / (3.1 + late), 1.8 / (2.5 + late), 1.7 / 1.8, 1.7 / (3.1 + late)))):
        planned = k["window"]["end"] - k["window"]["start"]
        run = planned - held
        exact = (run / planned, ideal_parts / run, ideal_good / ideal_parts, ideal_good / planned)
        got = tuple(k[x] for x in ("availability", "performance", "quality", "oee"))
        assert got == pytest.approx(exact, rel=2e-3), (got, exact)
        assert got == pytest.approx(nominal, abs=0.05), (got, nominal)
        assert k["breakdown_s"] == pytest.approx(held, rel=1e-3) and k["failures"] == 1
        assert k["parts_without_ideal"] == 0
    assert k1["good"] == 5 and k1["reject"] == 1 and k2["good"] == 9
    assert k2["performance"] > 1.5 * (0.1 * 10) / (k2["window"]["end"] - k2["window"]["start"] - held)
    # the agent restarts with the product it was switched to
    assert Products.from_config(cfg, buffer).current == "lid"


async def test_fixed_ideal_cycle_time_is_stamped_and_the_machines_own_wins(mosquitto, site, recorder, tmp_path):
    from contract import decode

    text = MAPPING.format(site=site, port=mosquitto.port).replace("products: {cap: 0.1, lid: 0.3}\nproduct: cap\n",
                                                                   "ideal_cycle_s: 2.5\n")
    cfg = edge_config.load(write(tmp_path, text), {})
    assert cfg.ideal_cycle_s == 2.5 and not cfg.products
    products = Products.from_config(cfg, tmp_path / "q.db")
    assert not products.switchable and products.ideal_cycle_s == 2.5
    b = Batcher()
    products.start(b)
    b.record("good", 1.8e9, 1)
    b.record("reject", 1.8e9, 0)
    b.record("ideal_cycle_s", 1.8e9 + 1, 4.0)  # a source that reports its own
    b.record("good", 1.8e9 + 2, 2)
    got = [decode(Kind.COUNTS, p) for k, p in b.drain() if k == Kind.COUNTS]
    assert [(c.ideal_cycle_s, c.product, c.good.tolist()) for c in got] == [(2.5, None, [1]), (4.0, None, [2])]


async def test_unknown_or_malformed_set_product_is_refused_and_changes_nothing(mosquitto, site, recorder, tmp_path):
    cfg = edge_config.load(write(tmp_path, MAPPING.format(site=site, port=mosquitto.port)), {})
    ref = cfg.machine
    rec = recorder(mosquitto.url, ref.topic(Kind.STATUS))
    agent = EdgeAgent(cfg.machine, cfg.broker, edge_config.build_source(cfg), buffer=tmp_path / "q.db", flush_s=0.1,
                      products=Products.from_config(cfg, tmp_path / "q.db"))
    await agent.start()
    try:
        for payload in (encode_command("set_product", product="bottle"), encode_command("set_product", name="lid"),
                        encode_command("breakdown", minutes=1), b"not json"):  # the last two: not for the agent
            rec.publish(ref.topic(Kind.CMD), payload)
        assert await wait_until(lambda: agent.products.refused == 2)
        args = build_parser().parse_args(["edge", "product", str(cfg.path), "bottle"])
        with pytest.raises(ConfigError, match="'bottle' is not in products; use one of cap, lid"):
            await _product(args)
        rec.publish(ref.topic(Kind.CMD), encode_command("set_product", product="lid"))
        assert await wait_until(lambda: any(s["info"].get("product") == "lid" for s in rec.got(ref.topic(Kind.STATUS))
                                            if "info" in s))
    finally:
        await agent.stop()
    statuses = [s["info"] for s in rec.got(ref.topic(Kind.STATUS)) if s["status"] == "online"]
    assert [s["product"] for s in statuses][0] == "cap" and statuses[-1]["commands_refused"] == 2
    assert json.loads((tmp_path / "q.db.product").read_text()) == {"product": "lid", "configured": "cap"}


async def test_product_cli_says_when_no_agent_confirms(mosquitto, site, tmp_path):
    cfg = write(tmp_path, MAPPING.format(site=site, port=mosquitto.port))
    args = build_parser().parse_args(["edge", "product", str(cfg), "lid", "--timeout", "0.3"])
    assert await _product(args) == 69


def test_the_kept_product_survives_a_restart_unless_the_file_names_another(tmp_path, caplog):
    path = tmp_path / "q.db.product"
    p = Products({"cap": 0.1, "lid": 0.3}, "cap", path=path)
    assert p.current == "cap" and p.ideal_cycle_s == 0.1
    p.switch("lid", 1.8e9)
    assert Products({"cap": 0.1, "lid": 0.3}, "cap", path=path).current == "lid"
    assert Products({"cap": 0.1, "lid": 0.3, "box": 1}, "box", path=path).current == "box"  # the file chose again
    assert Products({"cap": 0.1}, "cap", path=path).current == "cap"  # lid is gone from the table
    path.write_text("{broken")
    assert Products({"cap": 0.1, "lid": 0.3}, "cap", path=path).current == "cap"
    assert "not readable" in caplog.text
    with pytest.raises(UnknownProduct, match="'box' is not in the mapping file's products; use one of cap, lid"):
        p.switch("box", 1.8e9)
    assert p.current == "lid"


@pytest.mark.parametrize("old,new,message", [
    ("product: cap\n", "", "product: name the product running now: product: cap"),
    ("product: cap", "product: bottle", "product: 'bottle' is not in products; use one of cap, lid"),
    ("lid: 0.3", "lid: -1", "products.lid: -1: write the seconds per part at nameplate speed, more than 0"),
    ("{cap: 0.1, lid: 0.3}", "[cap, lid]", "products: write product -> seconds per part"),
    ("products: {cap: 0.1, lid: 0.3}\n", "", "product: name the products with their ideal cycle times"),
    ("products: {cap: 0.1, lid: 0.3}\nproduct: cap", "ideal_cycle_s: fast",
     "ideal_cycle_s: 'fast': write the seconds per part"),
    ("product: cap", "product: cap\nideal_cycle_s: 2", "ideal_cycle_s: use one"),
    ("lid: 0.3", "lid: 2d", "products.lid: 172800.0: must be more than 0 and at most a day"),
    ("source: {type: gpio, pin_factory: mock}", "source: {type: opcua, endpoint: 'opc.tcp://h:4840', namespace: x}",
     "products: the machine reports its product itself"),
    ("source: {type: gpio, pin_factory: mock}", "source: {type: sim, machine: cnc-01}",
     "products: a simulated machine brings its own"),
])
def test_mapping_mistakes_name_the_key_and_the_fix(tmp_path, old, new, message):
    text = MAPPING.format(site="s", port=1883).replace(old, new)
    if "opcua" in new:
        text = text.split("tags:")[0] + "tags:\n  - {tag: good, node: Good}\n  - {tag: product, node: Product}\n"
    if "sim" in new:
        text = text.split("tags:")[0]
    assert text != MAPPING.format(site="s", port=1883)
    with pytest.raises(ConfigError, match=re.escape(message)):
        edge_config.load(write(tmp_path, text), {})


def test_mock_keys_in_a_terminal_publish_parts_and_ctrl_c_restores_the_terminal(mosquitto, site, recorder, tmp_path):
    """fieldlab edge --config FILE --mock-keys as a trainee runs it: a process on a terminal (a pty here)."""
    import os
    import pty
    import signal
    import subprocess
    import sys
    import termios

    from contract import decode

    # the Pi's mapping file (no pin_factory): --mock-keys simulates the pins
    cfg = write(tmp_path, MAPPING.format(site=site, port=mosquitto.port).replace(", pin_factory: mock", ""))
    ref = MachineRef(site, "a", "l", "press-01")
    rec = recorder(mosquitto.url, ref.topic(Kind.COUNTS), ref.topic(Kind.STATE))
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen([sys.executable, "-m", "fieldlab", "edge", "--config", str(cfg), "--mock-keys",
                             "--buffer", str(tmp_path / "q.db")], stdin=slave, stdout=slave, stderr=subprocess.PIPE)
    out = b""
    try:
        deadline = time.monotonic() + 10
        while b"toetsen:" not in out and time.monotonic() < deadline and proc.poll() is None:
            out += os.read(master, 4096)
        assert b"keys: p = a part" in out, out
        os.write(master, b"gpp")

        def counted(r):
            return any(decode(Kind.COUNTS, p).good[-1] == 2 for t, p, _ in r.messages if t == ref.topic(Kind.COUNTS))

        assert rec.wait_for(counted, timeout=5)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(10) == 0, proc.stderr.read().decode()
        after = termios.tcgetattr(slave)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(master)
        os.close(slave)
    assert after == before  # cbreak mode undone
    states = [int(x) for t, p, _ in rec.messages if t == ref.topic(Kind.STATE) for x in decode(Kind.STATE, p).state]
    assert states == [2, 4]  # all lamps off, then g: green


@pytest.mark.parametrize("mapping,message", [
    (None, "--mock-keys drives the pins of a mapping file with source.type gpio"),
    ("modbus", "--mock-keys drives digital inputs; .* has source.type modbus"),
    ("gpio", "--mock-keys reads keys from a terminal"),  # pytest's stdin is not one
])
async def test_mock_keys_says_what_it_needs(tmp_path, mapping, message):
    from contract.errors import ServiceError
    from fieldlab.commands.edge import run

    argv = ["edge", "--mock-keys", "--buffer", str(tmp_path / "q.db")]
    if mapping:
        text = MAPPING.format(site="s", port=1883)
        if mapping == "modbus":
            text = text.replace("type: gpio, pin_factory: mock", "type: modbus, host: 127.0.0.1").split("tags:")[0] + \
                "tags:\n  - {tag: good, address: 0, table: holding, type: uint16}\n"
            text = text.replace("products: {cap: 0.1, lid: 0.3}\nproduct: cap\n", "")
        argv += ["--config", str(write(tmp_path, text))]
    with pytest.raises(ServiceError, match=message):
        await run(build_parser().parse_args(argv))
    assert not (tmp_path / "q.db").exists()  # refused before the agent started
