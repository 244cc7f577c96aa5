"""The GPIO source with gpiozero's MockFactory: gpiozero's real device code, pins simulated.

Mock pins call gpiozero's callbacks synchronously in the test (the loop's thread); the source still
hands every edge to the loop, so these tests run the same path as real pins' threads.
"""
import asyncio
import threading
import time

import numpy as np
import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from contract import Kind, MachineRef, decode
from contract.errors import ServiceError
from contract.payloads import decode_counts, decode_state
from edge.agent import EdgeAgent
from edge.batcher import Batcher
from edge.gpio import CounterPin, GpioSource, StackLight

GOOD, REJECT, GREEN, ORANGE, RED = 17, 18, 22, 27, 23


def drained(b: Batcher) -> dict:
    """The Batcher's batches decoded and joined: {"ts", "good", "reject"} and {"state_ts", "state", "reason"}."""
    out = {k: [] for k in ("ts", "good", "reject", "state_ts", "state", "reason")}
    for kind, payload in b.drain():
        if kind == Kind.COUNTS:
            c = decode_counts(payload)
            out["ts"] += c.ts.tolist()
            out["good"] += c.good.tolist()
            out["reject"] += c.reject.tolist()
        elif kind == Kind.STATE:
            s = decode_state(payload)
            out["state_ts"] += s.ts.tolist()
            out["state"] += s.state.tolist()
            out["reason"] += s.reason.tolist()
    return out


async def pulse(pin, n: int = 1, high_s: float = 0.012, low_s: float = 0.012, active_high: bool = True) -> None:
    on, off = (pin.drive_high, pin.drive_low) if active_high else (pin.drive_low, pin.drive_high)
    for _ in range(n):
        on()
        await asyncio.sleep(high_s)
        off()
        await asyncio.sleep(low_s)


@pytest.mark.parametrize("tag,other", [("good", "reject"), ("reject", "good")])
async def test_pulses_count_up_and_the_missing_counter_is_zero(tag, other):
    src = GpioSource([CounterPin(tag, GOOD)], pin_factory="mock")  # default bounce 5 ms
    b = Batcher()
    await src.start(b)
    await pulse(src.factory.pin(GOOD), 10)
    await src.stop()
    got = drained(b)
    assert got[tag] == list(range(11))  # the start value, then one per pulse
    assert got[other] == [0] * 11  # recorded once at start, so every row is complete
    assert np.all(np.diff(got["ts"]) > 0)
    assert src.stats[tag] == 10 and src.stats["edges"] == 20


@pytest.mark.parametrize("pull_up,active_high,active_level", [(None, True, True), (None, False, False),
                                                              (True, True, False)])
async def test_active_level_follows_gpiozero(pull_up, active_high, active_level):
    f = MockFactory()
    spec = CounterPin("good", GOOD, active_high=active_high, pull_up=pull_up)
    assert spec.active_state is active_level
    if not active_level:
        f.pin(GOOD).drive_high()  # idle: no part in the barrier (a pull-up does this by itself)
    src = GpioSource([spec], pin_factory=f)
    b = Batcher()
    await src.start(b)
    await pulse(f.pin(GOOD), 3, active_high=active_level)
    await src.stop()
    assert drained(b)["good"] == [0, 1, 2, 3]


async def test_chatter_counts_once_and_spikes_not_at_all():
    """MockFactory ignores gpiozero's bounce_time (every edge reaches us), so the source debounces itself."""
    bounce = 0.1
    src = GpioSource([CounterPin("good", GOOD, bounce_s=bounce)], pin_factory="mock")
    b = Batcher()
    await src.start(b)
    pin = src.factory.pin(GOOD)
    for _ in range(3):  # a part arrives: the output chatters, then stays on
        pin.drive_high()
        await asyncio.sleep(0.01)
        pin.drive_low()
        await asyncio.sleep(0.01)
    reached = time.time()
    pin.drive_high()
    await asyncio.sleep(bounce * 1.5)
    assert src.stats["edges"] == 7 and src.stats["good"] == 1
    for _ in range(2):  # the part leaves, chattering again
        pin.drive_low()
        await asyncio.sleep(0.01)
        pin.drive_high()
        await asyncio.sleep(0.01)
    pin.drive_low()
    await asyncio.sleep(bounce * 1.5)
    pin.drive_high()  # a spike shorter than bounce_s
    await asyncio.sleep(0.01)
    pin.drive_low()
    await asyncio.sleep(bounce * 1.5)
    assert src.stats["good"] == 1
    await pulse(pin, 1, bounce * 1.5, bounce * 1.5)  # a real part
    await src.stop()
    got = drained(b)
    assert got["good"] == [0, 1, 2]
    assert reached <= got["ts"][1] < reached + bounce / 2  # the time the level was reached, not settled


async def test_stack_light_states_and_priority():
    src = GpioSource(stack_light=StackLight({"green": GREEN, "orange": ORANGE, "red": RED}, settle_s=0.02),
                     pin_factory="mock")
    b = Batcher()
    b.record("reason", time.time() - 1, 7)  # a reason left from elsewhere must not stick to the lamps' states
    await src.start(b)
    pin = src.factory.pin
    for step in (pin(GREEN).drive_high, pin(RED).drive_high, pin(RED).drive_low, pin(ORANGE).drive_high,
                 pin(ORANGE).drive_low, pin(GREEN).drive_low):
        step()
        await asyncio.sleep(0.06)
    await src.stop()
    got = drained(b)
    # off (start) -> green -> red on top of green -> green -> orange over green -> green -> off
    assert got["state"] == [2, 4, 15, 4, 12, 4, 2]
    assert got["reason"] == [0] * 7
    assert got["ts"] == []  # no counters configured: no counts at all


async def test_short_flash_and_lamps_switching_in_turn_record_no_false_state():
    settle = 0.1
    f = MockFactory()
    f.pin(GREEN).drive_high()  # running when the agent starts
    src = GpioSource(stack_light=StackLight({"green": GREEN, "orange": ORANGE, "red": RED}, settle_s=settle),
                     pin_factory=f)
    b = Batcher()
    await src.start(b)
    f.pin(RED).drive_high()  # a red flash shorter than settle_s
    await asyncio.sleep(0.02)
    f.pin(RED).drive_low()
    await asyncio.sleep(settle * 1.5)
    f.pin(GREEN).drive_low()  # green -> orange: for 20 ms no lamp is on, which is not Idle
    await asyncio.sleep(0.02)
    reached = time.time()
    f.pin(ORANGE).drive_high()
    await asyncio.sleep(settle * 1.5)
    await src.stop()
    got = drained(b)
    assert got["state"] == [4, 12]
    assert reached <= got["state_ts"][1] < reached + settle / 2


async def test_custom_states_and_yellow_is_orange():
    light = StackLight({"yellow": ORANGE, "RED": RED}, states={"off": 0, "yellow": 14}, priority=("yellow", "red"),
                       settle_s=0.0)
    assert light.pins == {"orange": ORANGE, "red": RED}
    assert light.states["orange"] == 14 and light.states["red"] == 15  # red keeps its default
    src = GpioSource(stack_light=light, pin_factory="mock")
    b = Batcher()
    await src.start(b)
    src.factory.pin(RED).drive_high()
    await asyncio.sleep(0.01)
    src.factory.pin(ORANGE).drive_high()  # yellow before red in this priority
    await asyncio.sleep(0.01)
    await src.stop()
    assert drained(b)["state"] == [0, 15, 14]  # Stopped when dark, Held, Holding


async def test_edges_from_pin_threads_count_by_their_own_time_while_the_loop_is_busy():
    """Real pins call back from gpiozero's threads. The loop (debug mode: refuses calls from other threads)
    is blocked meanwhile, as by a slow disk write, and gets each level together with the next edge."""
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    try:
        src = GpioSource([CounterPin("good", GOOD, bounce_s=0.005)], StackLight({"green": GREEN}, settle_s=0.02),
                         pin_factory="mock")
        b = Batcher()
        await src.start(b)
        driven, errors = [], []

        def machine():  # a part passes while the machine runs for a moment
            try:
                driven.append(time.time())
                src.factory.pin(GREEN).drive_high()
                src.factory.pin(GOOD).drive_high()
                time.sleep(0.03)
                src.factory.pin(GOOD).drive_low()
                src.factory.pin(GREEN).drive_low()
            except Exception as e:
                errors.append(e)

        worker = threading.Thread(target=machine)
        worker.start()
        time.sleep(0.1)  # the loop is busy
        worker.join()
        await asyncio.sleep(0.05)
        await src.stop()
    finally:
        loop.set_debug(False)
    assert not errors
    got = drained(b)
    assert got["good"] == [0, 1] and got["state"] == [2, 4, 2]
    assert driven[0] <= got["ts"][1] < driven[0] + 0.05  # the time in the pin's thread, not the loop's (busy 0.1 s)
    assert driven[0] <= got["state_ts"][1] < driven[0] + 0.05


def test_bad_specs_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="good or reject"):
        CounterPin("scrap", GOOD)
    with pytest.raises(ValueError, match="'blue' has no state"):
        StackLight({"blue": 5})
    with pytest.raises(ValueError, match="not a PackML state"):
        StackLight({"red": RED}, states={"red": 99})
    with pytest.raises(ValueError, match="two counters"):
        GpioSource([CounterPin("good", 5), CounterPin("good", 6)], pin_factory="mock")
    with pytest.raises(ValueError, match="pin_factory 'nosuch'"):
        GpioSource([CounterPin("good", 5)], pin_factory="nosuch")


async def test_start_counts_continue_counting():
    src = GpioSource([CounterPin("good", GOOD), CounterPin("reject", REJECT)], pin_factory="mock",
                     start_counts={"good": 41, "reject": 3})
    b = Batcher()
    await src.start(b)
    await pulse(src.factory.pin(GOOD), 2)
    await pulse(src.factory.pin(REJECT), 1)
    await src.stop()
    got = drained(b)
    assert got["good"] == [41, 42, 43, 43] and got["reject"] == [3, 3, 3, 4]
    assert (src.stats["good"], src.stats["reject"]) == (43, 4)


async def test_stop_releases_the_pins():
    f = MockFactory()
    spec = ([CounterPin("good", GOOD)], StackLight({"green": GREEN}, settle_s=0.0))
    first, b1 = GpioSource(*spec, pin_factory=f), Batcher()
    await first.start(b1)
    with pytest.raises(ServiceError, match="already used"):  # while it runs, the pins are taken
        await GpioSource(*spec, pin_factory=f).start(Batcher())
    await first.stop()
    drained(b1)
    await pulse(f.pin(GOOD), 1)  # nobody listens to the first source's pins any more
    assert b1.drain() == []
    second, b2 = GpioSource(*spec, pin_factory=f), Batcher()
    await second.start(b2)
    await pulse(f.pin(GOOD), 2)
    f.pin(GREEN).drive_high()
    await asyncio.sleep(0.01)
    await second.stop()
    got = drained(b2)
    assert got["good"] == [0, 1, 2] and got["state"] == [2, 4]
    assert Device.pin_factory is None  # gpiozero's global factory was never touched


async def test_bad_pin_names_the_pin_and_tag_and_frees_the_others():
    f = MockFactory()
    with pytest.raises(ServiceError, match=r"GPIO pin 'GPIO99' for 'reject': not a pin"):
        await GpioSource([CounterPin("good", GOOD), CounterPin("reject", "GPIO99")], pin_factory=f).start(Batcher())
    with pytest.raises(ServiceError, match=r"GPIO pin 'BOARD1' for 'state' \(stack light red\)"):  # 3V3, no GPIO
        await GpioSource(stack_light=StackLight({"red": "BOARD1"}), pin_factory=f).start(Batcher())
    await GpioSource([CounterPin("good", GOOD)], pin_factory=f).start(Batcher())  # GOOD was released


async def test_no_gpio_says_what_to_do(monkeypatch):
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "nosuch")  # what gpiozero's default factory choice reads
    with pytest.raises(ServiceError, match="no GPIO on this computer.*pin_factory: mock.*lgpio"):
        await GpioSource([CounterPin("good", GOOD)]).start(Batcher())
    assert Device.pin_factory is None


async def test_agent_publishes_the_pulses(mosquitto, site, recorder, tmp_path):
    n = 8
    ref = MachineRef(site, "a", "l", "press-01")
    rec = recorder(mosquitto.url, f"fieldlab/v1/{site}/#")
    src = GpioSource([CounterPin("good", GOOD)], StackLight({"green": GREEN}, settle_s=0.02), pin_factory="mock")
    agent = EdgeAgent(ref, mosquitto.url, src, buffer=tmp_path / "q.db", flush_s=0.1)
    await agent.start()
    src.factory.pin(GREEN).drive_high()
    await pulse(src.factory.pin(GOOD), n)
    await agent.stop()
    assert rec.wait_for(lambda r: any(b'"offline"' in p for t, p, _ in r.messages if t.endswith("/status")))
    counts = [decode(Kind.COUNTS, p) for t, p, _ in rec.messages if t == ref.topic(Kind.COUNTS)]
    good = np.concatenate([c.good for c in counts])
    assert good[0] == 0 and int(np.diff(good).sum()) == n and good[-1] == n
    assert not np.concatenate([c.reject for c in counts]).any()
    states = [int(s) for p in (decode(Kind.STATE, p) for t, p, _ in rec.messages if t == ref.topic(Kind.STATE))
              for s in p.state]
    assert states == [2, 4]


def test_a_pi_installs_lgpio_with_the_edge_extra():
    """gpiozero's pin library on a Pi 5 is lgpio (RPi.GPIO does not work there). PyPI has lgpio 0.2.2.0 wheels for
    aarch64, cp39-cp312, manylinux_2_34 (64-bit Pi OS Bookworm: Python 3.11, glibc 2.36); none for 32-bit Arm or
    Python 3.13, where pip would have to build it (swig, liblgpio-dev): there the docs say apt install python3-lgpio."""
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    (lg,) = [Requirement(r) for r in project["optional-dependencies"]["edge"] if r.startswith("lgpio")]
    assert lg.specifier.contains("0.2.2.0")
    for machine, python, wanted in (("aarch64", "3.11", True), ("aarch64", "3.12", True), ("x86_64", "3.11", False),
                                    ("armv7l", "3.11", False), ("aarch64", "3.13", False)):
        assert lg.marker.evaluate({"platform_machine": machine, "python_version": python}) is wanted, (machine, python)


def test_keys_drive_the_pins_of_the_mapping():
    from edge.gpio import key_action

    counters, lamps = {"good": 17, "reject": 18}, {"green": 22, "orange": 27, "red": 23}
    assert key_action("p", counters, lamps) == ("pulse", 17)
    assert key_action("X", counters, lamps) == ("pulse", 18)
    assert [key_action(k, counters, lamps) for k in "gory"] == [("toggle", 22), ("toggle", 27), ("toggle", 23),
                                                                ("toggle", 27)]
    assert [key_action(k, counters, lamps) for k in ("q", "\x03", "\x04")] == [("quit", None)] * 3
    assert key_action("x", {"good": 17}, {"green": 22}) is None  # no reject barrier in this mapping
    assert key_action("r", {"good": 17}, {"green": 22}) is None
    assert key_action("z", counters, lamps) is None


async def test_keys_from_a_terminal_count_parts_and_switch_lamps_and_the_terminal_is_restored():
    """A pty stands in for the trainee's terminal: cbreak mode while the keys run, the old mode afterwards."""
    import io
    import os
    import pty
    import termios

    from edge.gpio import drive_from_keys, pins_line

    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    src = GpioSource([CounterPin("good", GOOD), CounterPin("reject", REJECT)],
                     StackLight({"green": GREEN, "orange": ORANGE, "red": RED}, settle_s=0.02), pin_factory="mock")
    b = Batcher()
    out = io.StringIO()
    await src.start(b)
    try:
        task = asyncio.create_task(drive_from_keys(src, slave, out))
        await asyncio.sleep(0.05)
        during = termios.tcgetattr(slave)
        assert not during[3] & (termios.ICANON | termios.ECHO) and during[3] & termios.ISIG  # Ctrl-C still works
        os.write(master, b"gppxz")
        await asyncio.sleep(0.6)
        assert src.counts == {"good": 2, "reject": 1} and src.stats["state"] == 4
        assert pins_line(src) == "good 2  reject 1  green ON  orange off  red off  state Execute"
        os.write(master, b"rq")
        await asyncio.wait_for(task, 2)
        assert termios.tcgetattr(slave) == before
        task = asyncio.create_task(drive_from_keys(src, slave, out))  # again, and cancelled as on Ctrl-C
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert termios.tcgetattr(slave) == before
    finally:
        await src.stop()
        os.close(master)
        os.close(slave)
    text = out.getvalue()
    assert text.startswith("keys: p = a part") and "toetsen:" in text
    assert "green ON  orange off  red ON  state Held" in text
    got = drained(b)
    assert got["good"][-1] == 2 and got["reject"][-1] == 1 and got["state"] == [2, 4, 15]


def test_the_wiring_sketch_shows_the_pins_of_the_example_mapping():
    """docs/img/gpio-wiring(.nl).svg: well-formed, linked from docs/edge-on-a-pi.md, and wired to the pins that
    docs/examples/edge-gpio.yaml reads (a changed example must change the sketch)."""
    import re
    import xml.etree.ElementTree as ET
    from pathlib import Path

    import yaml

    docs = Path(__file__).resolve().parents[2] / "docs"
    example = yaml.safe_load((docs / "examples" / "edge-gpio.yaml").read_text())
    pins = {t["tag"]: t["pin"] for t in example["tags"] if "pin" in t}
    pins.update(next(t["stack_light"] for t in example["tags"] if t["tag"] == "state"))
    guide = (docs / "edge-on-a-pi.md").read_text()
    for name in ("gpio-wiring.svg", "gpio-wiring.nl.svg"):
        text = " ".join(ET.parse(docs / "img" / name).getroot().itertext())
        shown = {int(n) for n in re.findall(r"GPIO(\d+) \(pin \d+\)", text)}
        assert set(pins.values()) <= shown, (name, pins, shown)
        assert f"(img/{name})" in guide
