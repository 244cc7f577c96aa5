"""Scenarios for courses (simulators/scenario.py, simulators/scenarios/*.yaml).

The expected KPIs written in each shipped file are what the gateway's engine computes from the
machines' events of the deterministic run, within the file's tolerance: file and code cannot drift
apart. Also: determinism, clear errors for broken files, and a live run applying the events at their
simulated times.
"""
import asyncio

import numpy as np
import pytest

from contract.yamlfile import ConfigError
from fieldlab.broker import free_port
from tests.helpers import advance_machines, start_machines
from gateway.config import SiteConfig
from gateway.engine import KpiEngine
from simulators import scenario as sc

T0 = 1_800_000_000.0
KPIS = sc.RATIOS + sc.COUNTS


def engine_kpis(s: sc.Scenario, t0: float = T0, step_s: float = 3600.0) -> dict:
    """Run the scenario headless, feeding every machine's events into the gateway's engine (default site
    configuration, as `fieldlab demo` without --config); KPIs since the start per machine and for the line."""
    engine = KpiEngine(SiteConfig())
    machines = s.machines(t0)
    ids = start_machines(engine, machines, t0)
    end, t = t0 + s.duration_s, t0
    while t < end:
        t = min(end, t + step_s)
        advance_machines(engine, ids, machines, t)
        engine.fold()
    k = engine.snapshot()["since_start"]
    line = engine.line_snapshot(np.zeros(len(machines), np.int64), 1)["since_start"]

    def pick(src, j):
        return {kpi: (int(src[kpi][j]) if kpi in sc.COUNTS else round(float(src[kpi][j]), 3)) for kpi in KPIS}

    out = {m.spec.name: pick(k, i) for i, m in enumerate(machines)}
    out["line"] = pick(line, 0)
    return out, machines


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
    finally:
        await sim.stop()
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
