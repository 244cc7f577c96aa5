"""Scenarios for courses (simulators/scenario.py, simulators/scenarios/*.yaml).

The expected KPIs written in each shipped file are what the gateway's engine computes from the
machines' events of the deterministic run, within the file's tolerance: file and code cannot drift
apart. Also: determinism, clear errors for broken files, and a live run applying the events at their
simulated times.
"""
import asyncio

import pytest

from contract.yamlfile import ConfigError
from fieldlab.broker import free_port
from fieldlab.demo import expected_block, scenario_kpis
from simulators import scenario as sc

T0 = 1_800_000_000.0
KPIS = sc.RATIOS + sc.COUNTS


def engine_kpis(s: sc.Scenario, t0: float = T0, step_s: float = 3600.0) -> dict:
    """The scenario run headless through the gateway's engine (default site configuration, as `fieldlab demo`
    without --config): KPIs since the start per machine and for the line; the code behind
    `fieldlab sim expected`, so what it writes into a file is what this test checks."""
    return scenario_kpis(s, t0, step_s)


@pytest.mark.parametrize("name", sc.available())
def test_shipped_scenario_runs_to_its_expected_kpis(name):
    s = sc.load(name)
    assert s.name == name and s.description
    got, machines = engine_kpis(s)
    assert s.check(got) == []
    # every scripted event was applied at its simulated time
    for m in machines:
        want = [T0 + e.at_s for e in s.events if e.machine == m.spec.name]
        assert [f["received"] for f in m.ledger.faults] == want
        assert all(f["applied"] is not None for f in m.ledger.faults)
    # the engine agrees with the machines' own ledgers on the counts
    ledgers = sc.run_headless(s, T0)
    for mname, led in ledgers.items():
        assert (got[mname]["good"], got[mname]["reject"]) == (led.good, led.reject)


def test_at_least_three_scenarios_are_shipped():
    assert {"normal-shift", "bearing-wear", "quality-drift-after-changeover"} <= set(sc.available())


def test_headless_run_is_deterministic_and_independent_of_the_step():
    s = sc.load("bearing-wear")
    a = {k: v.to_dict() for k, v in sc.run_headless(s, T0).items()}
    b = {k: v.to_dict() for k, v in sc.run_headless(s, T0).items()}
    c = {k: v.to_dict() for k, v in sc.run_headless(s, T0, step_s=7.3).items()}
    assert a == b
    for name in a:
        assert (a[name]["good"], a[name]["reject"], a[name]["breakdowns"]) == (
            c[name]["good"], c[name]["reject"], c[name]["breakdowns"])
        assert a[name]["run_s"] == pytest.approx(c[name]["run_s"], abs=1e-6)


@pytest.mark.parametrize("text, where, words", [
    ("name: x\ndescription: d\nseed: 1\nduration: 8h\nmachines: {cnc-01: {}}\nevents:\n"
     "  - {at: 1h, machine: cnc-01, fault: breakdown, minutes: -3}\nexpected: {tolerance: 0.02, machines: {cnc-01: {good: 1}}}\n",
     ":7: events[0].minutes:", "out of range"),
    ("name: x\ndescription: d\nseed: 1\nduration: 8h\nmachines:\n  cnc-01:\n    mtbf_z: 3\n"
     "expected: {tolerance: 0.02, machines: {cnc-01: {good: 1}}}\n", ":7: machines.cnc-01.mtbf_z:", "mtbf_s"),
    ("name: x\ndescription: d\nseed: 1\nduration: 8h\nmachines: {lathe-01: {}}\n"
     "expected: {tolerance: 0.02, machines: {lathe-01: {good: 1}}}\n", ":5: machines.lathe-01:", "cnc-01"),
    ("name: x\ndescription: d\nseed: 1\nduration: 2h\nmachines: {cnc-01: {}}\nevents:\n"
     "  - at: 3h\n    machine: cnc-01\n    fault: breakdown\nexpected: {tolerance: 0.02, machines: {cnc-01: {good: 1}}}\n",
     ":7: events[0].at:", "before the end"),
    ("name: x\ndescription: d\nseed: 1\nduration: 1h30\nmachines: {cnc-01: {}}\n"
     "expected: {tolerance: 0.02, machines: {cnc-01: {good: 1}}}\n", ":4: duration:", "1h30m"),
    ("name: x\ndescription: d\nseed: 1\nduration: 8h\nmachines: {cnc-01: {}}\nevents:\n"
     "  - {at: 1h, machine: cnc-01, fault: explode}\nexpected: {tolerance: 0.02, machines: {cnc-01: {good: 1}}}\n",
     ":7: events[0].fault:", "known faults"),
    ("name: x\ndescription: d\nseed: 1\nduration: 8h\nmachines: {cnc-01: {}}\n"
     "expected:\n  tolerance: 0.02\n  machines:\n    cnc-01: {oee: 1.5}\n", ":9: expected.machines.cnc-01.oee:",
     "between 0 and 1"),
    ("name: x\ndescription: d\nseed: 1\nduration: 8h\nmachines: {cnc-01: {}}\n", ":1: expected:", "missing"),
])
def test_a_broken_scenario_names_file_line_and_key(tmp_path, text, where, words):
    p = tmp_path / "broken.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        sc.load(p)
    assert str(e.value).startswith(str(p) + where), str(e.value)
    assert words in str(e.value)


def test_unknown_scenario_name_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="normal-shift"):
        sc.load("no-such-scenario")


def test_times():
    assert sc.parse_time("1h30m") == 5400 and sc.parse_time("8h") == 28800 and sc.parse_time(90) == 90
    assert sc.parse_time("2h 15m 30s") == 8130 and sc.parse_time("90s") == 90
    for bad in ("1h30", "30m1h", "soon", "-1h", True, None, "1h1h"):
        assert sc.parse_time(bad) is None, bad
    assert sc.format_time(5400) == "1h30m"


async def test_live_simulation_applies_the_events_at_their_simulated_times():
    from simulators.opcua import SimClock, Simulation

    s = min((sc.load(n) for n in sc.available()), key=lambda x: (x.duration_s, len(x.specs)))
    assert s.events
    last = max(e.at_s for e in s.events)
    clock = SimClock(T0, speed=(last + 600) / 1.5)  # past the last event in about 1.5 s of wall time
    machines = s.machines(clock.t0)
    # one port per machine, below the ephemeral range (a port from bind(0) may be a client's a moment later)
    sim = Simulation(machines, clock, base_port=free_port(count=len(machines)), tick_s=0.05)
    await sim.start()
    try:
        sim.run()
        while clock.now() < T0 + last + 300:
            await asyncio.sleep(0.05)
        await sim.freeze()
        assert sim.live_injections == 0 and "no longer applies" not in sc.describe_expected(s, sim.live_injections)
        sim.inject(s.specs[0].name, "reset")  # a trainer's live command (after the freeze: the ledgers stay as run)
    finally:
        await sim.stop()
    # after a live injection the file's expected KPIs are void, and the final table says so
    assert sim.live_injections == 1
    text = sc.describe_expected(s, sim.live_injections)
    assert "no longer applies: 1 live injection changed the run" in text and "geldt niet meer" in text
    assert str(s.expected[s.specs[0].name]["good"]) not in text
    ledgers = sim.ledgers()
    for name, led in ledgers.items():
        want = [(T0 + e.at_s, e.fault) for e in s.events if e.machine == name]
        assert [(f["received"], f["fault"]) for f in led["faults"]] == want
        # a stopping fault waits for Execute; the others apply at once
        for f in led["faults"]:
            assert f["applied"] is not None and f["applied"] >= f["received"]
            if f["fault"] not in ("breakdown", "material", "microstops"):
                assert f["applied"] == f["received"]


def test_a_scripted_reset_clears_what_is_active_at_its_time_and_nothing_scripted_after_it(tmp_path):
    """The intended semantics (docs/simulators.md, "Faults on cue"): reset ends every injected fault that is in
    effect or waiting at its time, like a trainer's reset at that moment. Faults scripted later (also at the same
    time but after it in the file) have not happened yet: they run in full."""
    p = tmp_path / "reset.yaml"
    p.write_text(
        "name: reset\ndescription: d\nseed: 1\nduration: 3h\n"
        "machines: {cnc-01: {mtbf_s: 0, mtbs_s: 0, mtbms_s: 0, changeover_every_s: 0}}\nevents:\n"
        "  - {at: 1h, machine: cnc-01, fault: breakdown, minutes: 60}\n"
        "  - {at: 1h10m, machine: cnc-01, fault: slow, factor: 0.5, minutes: 60}\n"
        "  - {at: 1h15m, machine: cnc-01, fault: material, minutes: 5}\n"  # waits for Execute: dropped by reset
        "  - {at: 1h20m, machine: cnc-01, fault: reset}\n"
        "  - {at: 1h20m, machine: cnc-01, fault: quality, reject_rate: 0.5, minutes: 30}\n"
        "  - {at: 1h30m, machine: cnc-01, fault: breakdown, minutes: 10}\n"
        "expected: {tolerance: 0.02, machines: {cnc-01: {good: 1}}}\n")
    s = sc.load(p)
    (m,) = s.machines(T0)
    m.advance(T0 + s.duration_s)
    f = {(e["fault"], e["received"] - T0): e for e in m.ledger.faults}
    assert f[("breakdown", 3600)]["until"] == T0 + 4800 + 2.0  # left Held at the reset, then Unholding
    assert f[("slow", 4200)]["until"] == T0 + 4800
    assert f[("material", 4500)]["applied"] is None and f[("material", 4500)]["until"] == T0 + 4800
    assert f[("reset", 4800)]["applied"] == T0 + 4800
    assert f[("quality", 4800)]["applied"] == T0 + 4800 and f[("quality", 4800)]["until"] == T0 + 4800 + 1800
    second = f[("breakdown", 5400)]
    assert second["applied"] == T0 + 5400 and second["until"] == T0 + 5400 + 600 + 2 * 2.0
    stops = m.ledger_now().to_dict()["stops"]
    assert [round(st["duration_s"], 6) for st in stops] == [1200 + 2.0, 600 + 4.0]  # Holding, Held to the reset, Unholding


def test_sim_expected_computes_the_block_of_a_new_scenario(tmp_path, capsys):
    """`fieldlab sim expected FILE`: a trainer's own scenario without expected: gets its block printed; pasted in,
    the file passes the same check as the shipped ones (and a shipped file reproduces its own numbers)."""
    from fieldlab.cli import main

    p = tmp_path / "mine.yaml"
    p.write_text("name: mine\ndescription: my own\nseed: 5\nduration: 2h\n"
                 "machines: {filler-01: {}, cnc-01: {mtbf_s: 1800}}\n"
                 "events:\n  - {at: 30m, machine: cnc-01, fault: breakdown, minutes: 20}\n")
    with pytest.raises(ConfigError, match="expected: missing"):
        sc.load(p)  # a run still needs the answers
    assert main(["sim", "expected", str(p)]) == 0
    block = capsys.readouterr().out
    assert block.startswith("expected:") and "cnc-01: {oee: " in block and "line: {" in block
    p.write_text(p.read_text() + block)
    s = sc.load(p)
    assert set(s.expected) == {"filler-01", "cnc-01", "line"} and s.count_tolerance == 0
    got, _ = engine_kpis(s)
    assert s.check(got) == [] and s.expected == {k: v for k, v in got.items()}
    # a shipped file: its own numbers, its own tolerances
    assert main(["sim", "expected", "bottleneck-line"]) == 0
    shipped = sc.load("bottleneck-line")
    q = tmp_path / "copy.yaml"
    q.write_text(sc.resolve("bottleneck-line").read_text().split("\nexpected:")[0] + "\n" + capsys.readouterr().out)
    assert sc.load(q).expected == shipped.expected and sc.load(q).tolerance == shipped.tolerance


@pytest.mark.parametrize("command", ["sim", "demo"])
def test_list_scenarios_shows_every_description_whole(command, capsys):
    from fieldlab.cli import main

    assert main([command, "--list-scenarios"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 100
    words = " ".join(out.split())
    for name in sc.available():
        s = sc.load(name)
        assert name in out and " ".join(s.description.split()) in words  # wrapped, never cut off
