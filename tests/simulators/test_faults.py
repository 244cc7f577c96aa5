"""Faults on cue: the Machine API, OPC UA methods (real asyncua client), MQTT cmd (real Mosquitto), the CLI."""
import asyncio
import dataclasses
import json
import sys

import pytest
from asyncua import Client, ua

from contract import MachineRef, encode_command
from contract.mqtt import connect, wait_published
from fieldlab.broker import free_port
from fieldlab.cli import main
from simulators import packml
from simulators.machine import (DEMO_MACHINES, EXECUTE, HELD, REASON_BREAKDOWN, REASON_JAM, REASON_MATERIAL,
                                SUSPENDED, Machine)
from simulators.opcua import NAMESPACE, SimClock, Simulation
from tests.helpers import wait_until

T0 = 1_800_000_000.0
# the CNC without random stops: every stop in these tests is an injected one
CALM = dataclasses.replace(DEMO_MACHINES[0], mtbf_s=0, mtbs_s=0, mtbms_s=0, changeover_every_s=0, reject_rate=0.0,
                           reject_per_c=0.0, temp_drift_c=0.0)
A = CALM.acting_s


def at(t: float):
    """A simulated time, to the microsecond (pytest.approx's relative tolerance is ~30 min at Unix times)."""
    return pytest.approx(t, abs=1e-6, rel=0)


def run(m: Machine, until: float, step: float = 7.0) -> list[tuple]:
    """Advance in uneven ticks; check that every state change is a legal PackML transition."""
    events, t = [], m.clock
    while t < until:
        t = min(until, t + step)
        events += m.advance(t)
    state = EXECUTE
    for ev in events:
        if ev[0] == "state":
            assert (state, ev[2]) in packml.LEGAL, f"illegal {state} -> {ev[2]} at {ev[1]}"
            state = ev[2]
    assert state == m.state
    return events


def test_breakdown_and_shortage_are_booked_with_their_cause():
    m = Machine(CALM, T0, seed=1)
    bd = m.inject("breakdown", T0 + 600, minutes=5)
    ms = m.inject("material", T0 + 1800, minutes=2)
    events = run(m, T0 + 3600)
    led = m.ledger_now().to_dict()
    assert (led["breakdowns"], led["shortages"], led["micro_stops"]) == (1, 1, 0)
    stops = led["stops"]
    assert [(s["start"], s["state"], s["reason_code"], s["injected"]) for s in stops] == [
        (T0 + 600, "Held", REASON_BREAKDOWN, True), (T0 + 1800, "Suspended", REASON_MATERIAL, True)]
    assert stops[0]["duration_s"] == pytest.approx(300 + 2 * A)
    assert stops[1]["duration_s"] == pytest.approx(120 + 2 * A)
    assert led["state_s"]["Held"] == pytest.approx(300) and led["state_s"]["Suspended"] == pytest.approx(120)
    assert (bd["applied"], bd["until"]) == (T0 + 600, at(T0 + 600 + 300 + 2 * A))
    assert led["faults"][1] == {"fault": "material", "params": {"minutes": 2.0}, "received": T0 + 1800,
                                "applied": T0 + 1800, "until": at(T0 + 1800 + 120 + 2 * A)}
    assert ms is m.ledger.faults[1]
    states = [(e[2], e[3]) for e in events if e[0] == "state"]
    assert states[:4] == [(14, 101), (HELD, 101), (16, 101), (EXECUTE, 0)]


def test_microstop_burst_jams_count_times_a_few_seconds_each():
    m = Machine(CALM, T0, seed=2)
    m.inject("microstops", T0 + 100, count=3, seconds=8, every=20)
    run(m, T0 + 600, step=3.0)
    led = m.ledger_now().to_dict()
    assert led["micro_stops"] == 3 and led["breakdowns"] == 0
    stops = led["stops"]
    assert [s["reason_code"] for s in stops] == [REASON_JAM] * 3 and all(s["injected"] for s in stops)
    assert [s["duration_s"] for s in stops] == pytest.approx([8.0] * 3)
    gaps = [b["start"] - (a["start"] + a["duration_s"]) for a, b in zip(stops, stops[1:])]
    assert gaps == pytest.approx([20.0, 20.0])  # run time between two jams


def test_slow_down_reduces_speed_only_for_its_minutes_and_draws_no_random_numbers():
    normal, slow = (Machine(CALM, T0, seed=3, keep_parts=True) for _ in range(2))
    slow.inject("slow", T0 + 600, factor=0.5, minutes=10)
    run(normal, T0 + 3600)
    run(slow, T0 + 3600)
    a, b = normal.ledger_now(), slow.ledger_now()
    assert a.state_s == b.state_s  # no stop: only the speed changed
    lost = (a.good - b.good) * CALM.ideal_cycle_s / CALM.speed_factor  # time lost at half speed: ~300 s
    assert 240 < lost < 360
    cycles = [p2[0] - p1[0] for p1, p2 in zip(slow.parts, slow.parts[1:])]
    during = [c for (t, *_), c in zip(slow.parts[1:], cycles) if T0 + 700 < t < T0 + 1200]
    after = [c for (t, *_), c in zip(slow.parts[1:], cycles) if t > T0 + 1300]
    ideal = CALM.ideal_cycle_s / CALM.speed_factor
    assert all(1.8 * ideal < c < 2.2 * ideal for c in during) and all(0.9 * ideal < c < 1.1 * ideal for c in after)
    # the same random draws in the same order: the parts are the same ones, shifted in time
    k = len(slow.parts)
    assert [round(c / ideal, 9) for c in cycles[-10:]] == [
        round((p2[0] - p1[0]) / ideal, 9) for p1, p2 in zip(normal.parts[k - 11:k - 1], normal.parts[k - 10:k])]
    assert slow.ledger.faults[0]["until"] == T0 + 1200


def test_quality_problem_by_reject_rate_and_by_temperature_excursion():
    m = Machine(CALM, T0, seed=4, keep_parts=True)
    m.inject("quality", T0 + 600, reject_rate=1.0, minutes=10)
    run(m, T0 + 2400)
    inside = [rej for t, _, _, rej in m.parts if T0 + 600 <= t <= T0 + 1200]
    outside = [rej for t, _, _, rej in m.parts if not T0 + 600 <= t <= T0 + 1200]
    assert inside and all(inside) and not any(outside)
    assert m.reject == len(inside)

    hot = dataclasses.replace(CALM, reject_per_c=0.05, temp_ripple_c=0.0)
    m = Machine(hot, T0, seed=5, keep_parts=True)
    m.inject("quality", T0 + 600, temp_c=20, minutes=30)
    run(m, T0 + 4 * 3600)
    before = [(T, rej) for t, T, _, rej in m.parts if t < T0 + 600]
    during = [(T, rej) for t, T, _, rej in m.parts if T0 + 1800 < t < T0 + 2400]
    assert max(T for T, _ in before) < hot.temp_setpoint_c + 0.5 and not any(r for _, r in before)
    assert min(T for T, _ in during) > hot.temp_setpoint_c + 10  # on its way to +20 (tau 15 min)
    assert sum(r for _, r in during) >= 3  # p >= 0.5 for these parts
    assert m.true_temperature == pytest.approx(hot.temp_setpoint_c, abs=0.5)  # back to normal afterwards


def test_reset_ends_injected_faults_and_a_stop_fault_waits_for_execute():
    m = Machine(CALM, T0, seed=6)
    m.inject("material", T0 + 100, minutes=10)
    m.inject("breakdown", T0 + 200, minutes=60)  # arrives during the shortage: starts when it is over
    m.inject("slow", T0 + 200, factor=0.3, minutes=600)
    m.inject("reset", T0 + 1500)
    run(m, T0 + 3600, step=11.0)
    stops = m.ledger_now().to_dict()["stops"]
    assert [s["reason_code"] for s in stops] == [REASON_MATERIAL, REASON_BREAKDOWN]
    end_shortage = T0 + 100 + 600 + 2 * A
    assert stops[1]["start"] == at(end_shortage)  # the queued breakdown, as soon as back in Execute
    assert stops[1]["start"] + stops[1]["duration_s"] == at(T0 + 1500 + A)  # reset: Unholding now
    assert m.state == EXECUTE and m.active_faults == [] and m._slow == 1.0
    assert m.ledger.faults[2]["until"] == T0 + 1500


def test_bad_faults_are_refused_with_a_clear_message():
    m = Machine(CALM, T0, seed=7)
    for fault, params, message in [
        ("meltdown", {}, "unknown fault 'meltdown'; known faults: breakdown, microstops"),
        ("breakdown", {"count": 3}, "breakdown: unknown parameter 'count' (it takes minutes)"),
        ("breakdown", {"minutes": -1}, "breakdown: minutes = -1 is out of range (greater than 0"),
        ("breakdown", {"minutes": "5"}, "breakdown: minutes must be a number, got '5'"),
        ("microstops", {"count": 2.5}, "microstops: count must be a whole number"),
        ("microstops", {"seconds": 3}, "leaves no room for Holding and Unholding"),
        ("slow", {"factor": 1.5}, "slow: factor = 1.5 is out of range"),
        ("quality", {}, "quality: give either reject_rate"),
        ("quality", {"reject_rate": 0.2, "temp_c": 5}, "quality: give either reject_rate"),
        ("reset", {"minutes": 1}, "reset: unknown parameter 'minutes' (it takes no parameters)"),
    ]:
        with pytest.raises(ValueError) as e:
            m.inject(fault, T0, **params)
        assert message in str(e.value)
    assert m.ledger.faults == []


# --------------------------------------------------------------------------- live: OPC UA, MQTT, CLI

@pytest.fixture
async def sim():
    clock = SimClock(T0, speed=60.0)
    s = Simulation([Machine(dataclasses.replace(CALM, name="cnc-01"), T0, seed=8)], clock, base_port=free_port(),
                   tick_s=0.05)
    await s.start()
    s.run()
    yield s
    await s.stop()


async def test_opcua_method_injects_a_breakdown_seen_in_the_state_variable(sim):
    async with Client(sim.servers[0].endpoint, timeout=5) as c:
        ns = await c.get_namespace_index(NAMESPACE)
        obj = await c.nodes.objects.get_child(f"{ns}:cnc-01")
        state = await obj.get_child(f"{ns}:State")
        method = await obj.get_child(f"{ns}:InjectBreakdown")
        args = await (await method.get_child("0:InputArguments")).read_value()
        assert [a.Name for a in args] == ["minutes"] and "Held" in args[0].Description.Text
        assert await state.read_value() == EXECUTE
        text = await obj.call_method(f"{ns}:InjectBreakdown", ua.Variant(30.0, ua.VariantType.Double))
        assert text.startswith("cnc-01: breakdown (minutes 30)")
        for _ in range(100):
            if await state.read_value() == HELD:
                break
            await asyncio.sleep(0.05)
        assert await state.read_value() == HELD
        assert await (await obj.get_child(f"{ns}:StateReason")).read_value() == REASON_BREAKDOWN
        with pytest.raises(ua.UaStatusCodeError, match="BadInvalidArgument"):
            await obj.call_method(f"{ns}:SlowDown", ua.Variant(2.0, ua.VariantType.Double),
                                  ua.Variant(5.0, ua.VariantType.Double))
    fault = sim.servers[0].machine.ledger.faults[0]
    assert fault["fault"] == "breakdown" and fault["applied"] == fault["received"] >= T0


def publish(url, topic, *payloads):
    client = connect(url)
    try:
        assert wait_published([client.publish(topic, p, qos=1) for p in payloads], 5.0)
    finally:
        client.disconnect()
        client.loop_stop()


async def test_mqtt_cmd_injects_a_fault_into_a_running_simulation(sim, mosquitto, site):
    topics = await sim.listen(mosquitto.url, site, "hall", "line")
    topic = MachineRef(site, "hall", "line", "cnc-01").topic("cmd")
    assert topics == {topic: "cnc-01"}
    machine = sim.servers[0].machine
    await asyncio.to_thread(publish, mosquitto.url, topic, b'{"v":1,"cmd":"material","args":{"minutes":5}}')
    assert await wait_until(lambda: machine.state == SUSPENDED)
    assert machine.reason == REASON_MATERIAL and sim.commands.accepted == 1
    assert machine.ledger.stops[-1][4]["params"] == {"minutes": 5.0}


async def test_bad_cmds_are_ignored_and_the_simulation_keeps_running(sim, mosquitto, site):
    await sim.listen(mosquitto.url, site, "hall", "line")
    topic = MachineRef(site, "hall", "line", "cnc-01").topic("cmd")
    machine = sim.servers[0].machine
    bad = [b"not json", b'{"v":2,"cmd":"breakdown"}', encode_command("meltdown"),
           encode_command("breakdown", minutes=-5), b'{"v":1,"cmd":"breakdown","args":[5]}',
           encode_command("breakdown", hours=1)]
    await asyncio.to_thread(publish, mosquitto.url, topic, *bad, encode_command("breakdown", minutes=1))
    assert await wait_until(lambda: sim.commands.accepted == 1)
    assert sim.commands.ignored == len(bad) and "unknown parameter 'hours'" in sim.commands.last_error
    clock = machine.clock
    assert await wait_until(lambda: machine.clock > clock + 5)  # still ticking
    assert not sim._task.done()
    assert [f["fault"] for f in machine.ledger.faults] == ["breakdown"]


async def cli(*args: str) -> tuple[int, str, str]:
    p = await asyncio.create_subprocess_exec(sys.executable, "-m", "fieldlab", "sim", "inject", *args,
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), 30)
    return p.returncode, out.decode(), err.decode()


async def test_cli_inject_over_opcua_and_over_mqtt(sim, mosquitto, site):
    machine = sim.servers[0].machine
    rc, out, err = await cli("cnc-01", "slow", "--factor", "0.25", "--minutes", "30", "--opcua", sim.servers[0].endpoint)
    assert rc == 0, err
    assert "cnc-01: slow (factor 0.25, minutes 30)" in out
    assert await wait_until(lambda: machine.active_faults == ["slow"])

    await sim.listen(mosquitto.url, site, "hall", "line")
    rc, out, err = await cli("cnc-01", "breakdown", "--minutes", "20", "--broker", str(mosquitto.url),
                             "--site", site, "--area", "hall", "--line", "line")
    assert rc == 0, err
    assert f"fieldlab/v1/{site}/hall/line/cnc-01/cmd" in out
    assert await wait_until(lambda: machine.state == HELD)
    assert [f["fault"] for f in machine.ledger.faults] == ["slow", "breakdown"]
    assert json.loads(json.dumps(sim.ledgers()))["cnc-01"]["stops"][-1]["injected"] is True

    rc, out, err = await cli("nope-01", "reset", "--opcua", sim.servers[0].endpoint)
    assert rc == 1 and "unknown machine nope-01; machines here" in err and "cnc-01" in err


async def test_cli_inject_over_mqtt_refuses_a_machine_the_simulator_does_not_have(sim, mosquitto, site):
    """Issue 14: `sim inject cnc-1 ...` printed "sent" and exited 0 while nothing happened. The listening
    simulator says which machines it has (retained, contract sim_machines_topic); inject checks it."""
    from contract.payloads import decode_sim_machines
    from contract.topics import sim_machines_topic

    where = ("--broker", str(mosquitto.url), "--site", site, "--area", "hall", "--line", "line")
    rc, out, err = await cli("cnc-01", "breakdown", *where)  # nobody listens yet
    assert rc == 1 and "no simulator takes commands for" in err and out == ""
    await sim.listen(mosquitto.url, site, "hall", "line")
    rc, out, err = await cli("cnc-1", "breakdown", *where)
    assert rc == 1 and err.strip() == "fieldlab sim: error: unknown machine cnc-1; machines here: cnc-01", err
    assert out == "" and sim.commands.accepted == sim.commands.ignored == 0  # nothing was sent
    rc, out, err = await cli("cnc-01", "breakdown", *where)
    assert rc == 0, err
    assert await wait_until(lambda: sim.commands.accepted == 1)
    # a stopped simulator clears its list: nothing listens there any more
    await sim.commands.stop()
    sim.commands = None
    rec = await asyncio.to_thread(retained, mosquitto.url, sim_machines_topic(site, "hall", "line"))
    assert json.loads(rec) == {"v": 1, "machines": []} and decode_sim_machines(rec) is None
    rc, out, err = await cli("cnc-01", "breakdown", *where)
    assert rc == 1 and "no simulator takes commands" in err


def retained(url, topic: str):
    """The retained message on a topic, or None."""
    import threading

    got, seen = [], threading.Event()
    client = connect(url, subscriptions=[(topic, 1)], on_message=lambda c, u, m: (got.append(m.payload), seen.set()))
    try:
        seen.wait(1.0)
    finally:
        client.disconnect()
        client.loop_stop()
    return got[-1] if got else None


def test_cli_refuses_options_that_do_not_fit_the_fault(capsys):
    assert main(["sim", "inject", "cnc-01", "breakdown", "--count", "3", "--opcua", "opc.tcp://127.0.0.1:1/"]) == 2
    assert "--count does not apply to breakdown" in capsys.readouterr().err
    assert main(["sim", "inject", "cnc-01", "quality", "--minutes", "5", "--opcua", "opc.tcp://127.0.0.1:1/"]) == 2
    assert "give either reject_rate" in capsys.readouterr().err


def test_a_second_slow_down_ends_the_first_in_the_ledger():
    m = Machine(DEMO_MACHINES[0], T0, seed=1)
    first = m.inject("slow", T0 + 60, factor=0.5, minutes=30)
    m.advance(T0 + 120)
    second = m.inject("slow", T0 + 600, factor=0.8, minutes=10)
    m.advance(T0 + 3600)
    assert first["until"] == pytest.approx(T0 + 600, abs=1e-6)  # replaced, not running on for 30 minutes
    assert second["until"] == pytest.approx(T0 + 1200, abs=1e-6)


async def test_fieldlab_sim_listens_for_commands_on_its_line_topic(mosquitto, site, tmp_path):
    """`fieldlab sim --broker URL --site --area --line` as a process: a cmd on .../<line>/<machine>/cmd reaches
    the machine (a regression test: --line here is the MQTT level, --buffers the coupled line)."""
    ledger = tmp_path / "ledger.json"
    p = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fieldlab", "sim", "--machines", "1", "--speed", "60", "--duration", "8",
        "--opcua-port", str(free_port()), "--broker", str(mosquitto.url), "--site", site, "--area", "hall",
        "--line", "line-7", "--ledger", str(ledger), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    want = f"fault commands: fieldlab/v1/{site}/hall/line-7/<machine>/cmd"
    seen = b""
    while want.encode() not in seen:
        line = await asyncio.wait_for(p.stdout.readline(), 30)
        assert line, (seen + await p.stderr.read()).decode()
        seen += line
    topic = MachineRef(site, "hall", "line-7", "cnc-01").topic("cmd")
    await asyncio.to_thread(publish, mosquitto.url, topic, encode_command("breakdown", minutes=3))
    out, err = await asyncio.wait_for(p.communicate(), 60)
    assert p.returncode == 0, err.decode()
    faults = json.loads(ledger.read_text())["cnc-01"]["faults"]
    assert [(f["fault"], f["params"]) for f in faults] == [("breakdown", {"minutes": 3.0})]


def test_fieldlab_sim_publish_sends_every_part_straight_to_mqtt(mosquitto, site, recorder, tmp_path):
    """`fieldlab sim --publish URL`: the machines' data in the contract's format on the broker, no OPC UA client
    in between; the last counts on MQTT are the ledger's (QoS 1 outbox, drained at the end)."""
    import subprocess

    from contract import Kind, decode

    ledger = tmp_path / "ledger.json"
    rec = recorder(mosquitto.url, f"fieldlab/v1/{site}/+/+/+/counts", f"fieldlab/v1/{site}/+/+/+/state")
    r = subprocess.run([sys.executable, "-m", "fieldlab", "sim", "--machines", "2", "--speed", "600", "--duration", "4",
                        "--seed", "2", "--opcua-port", str(free_port(count=2)), "--publish", str(mosquitto.url), "--site", site,
                        "--ledger", str(ledger)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"publishing: fieldlab/v1/{site}/hall-1/line-1/<machine>/..." in r.stdout
    led = json.loads(ledger.read_text())

    def last(machine, kind):
        msgs = [decode(kind, p) for t, p, _ in rec.messages if f"/{machine}/{kind.value}" in t]
        return msgs[-1] if msgs else None

    for name, truth in led.items():
        assert truth["good"] > 10 and truth["transitions"] > 0  # seed 2: 40 simulated minutes with stops
        assert rec.wait_for(lambda r: (c := last(name, Kind.COUNTS)) is not None
                            and (int(c.good[-1]), int(c.reject[-1])) == (truth["good"], truth["reject"]), 15), name
        # every state change, each once (plus the state at the start)
        states = [decode(Kind.STATE, p) for t, p, _ in rec.messages if f"/{name}/state" in t]
        assert sum(len(s.state) for s in states) == truth["transitions"] + 1, name
