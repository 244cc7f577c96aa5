"""The simulated machine: deterministic, and its ledger is the truth the gateway is checked against."""
import dataclasses

import pytest

from simulators.machine import (DEMO_MACHINES, EXECUTE, HELD, REASON_BREAKDOWN, REASON_CHANGEOVER, REASON_JAM,
                                REASON_MATERIAL, SUSPENDED, Machine)
from tests.simulators.test_packml import LEGAL_BY_HAND, N

T0 = 1_000_000.0
DAY = 86400.0


def run(spec, seed, steps, **kw):
    m = Machine(spec, T0, seed, **kw)
    events = []
    for t in steps:
        events += m.advance(t)
    return m, events


def state_changes(events):
    return [e for e in events if e[0] == "state"]


@pytest.mark.parametrize("spec", DEMO_MACHINES, ids=lambda s: s.name)
def test_same_seed_same_production_whatever_the_tick(spec):
    end = T0 + 8 * 3600
    _, one_step = run(spec, 3, [end])
    _, fine = run(spec, 3, [T0 + i * 7.3 for i in range(1, int(8 * 3600 / 7.3))] + [end])
    assert one_step == fine
    _, other_seed = run(spec, 4, [end])
    assert other_seed != one_step


@pytest.mark.parametrize("spec", DEMO_MACHINES, ids=lambda s: s.name)
def test_one_second_ticks_and_one_hour_ticks_give_identical_events(spec):
    """Half a day with changeovers, jams, breakdowns and shortages: the events are bit-identical."""
    hours = 12
    spec = dataclasses.replace(spec, changeover_every_s=3 * 3600)  # at least one changeover in the run
    seconds, s_events = run(spec, 21, [T0 + i for i in range(1, hours * 3600 + 1)])
    hourly, h_events = run(spec, 21, [T0 + 3600 * h for h in range(1, hours + 1)])
    assert s_events == h_events
    assert {e[3] for e in state_changes(h_events)} >= {REASON_CHANGEOVER, REASON_JAM, REASON_MATERIAL}
    assert seconds.ledger_now().to_dict() == hourly.ledger_now().to_dict()
    # the process values follow the machine's history, not the tick: the model temperature agrees
    assert seconds.true_temperature == hourly.true_temperature


@pytest.mark.parametrize("spec", DEMO_MACHINES, ids=lambda s: s.name)
def test_ledger_agrees_with_the_emitted_counters_and_states(spec):
    hours = 10
    end = T0 + hours * 3600
    m, events = run(spec, 11, [T0 + 3600 * h for h in range(1, hours + 1)])
    led = m.ledger_now()
    counts = [e for e in events if e[0] == "count"]
    assert (counts[-1][2], counts[-1][3]) == (led.good, led.reject)
    assert len(counts) == led.good + led.reject  # one event per part
    assert led.ideal_s == pytest.approx(spec.ideal_cycle_s * (led.good + led.reject))
    assert sum(led.state_s.values()) == pytest.approx(end - T0)
    assert led.end - led.start == end - T0
    # time per state rebuilt from the emitted state changes equals the ledger
    rebuilt, state, since = {}, EXECUTE, T0
    for e in state_changes(events):
        rebuilt[state] = rebuilt.get(state, 0.0) + e[1] - since
        state, since = e[2], e[1]
    rebuilt[state] = rebuilt.get(state, 0.0) + end - since
    assert rebuilt == pytest.approx(led.state_s)
    assert led.transitions == len(state_changes(events))
    d = led.to_dict()
    stops = d["stops"]
    assert sum(st["duration_s"] for st in stops) == pytest.approx(end - T0 - led.state_s[EXECUTE])
    assert d["run_s"] == led.state_s[EXECUTE] and d["elapsed_s"] == end - T0
    assert len(stops) == led.breakdowns + led.shortages + led.micro_stops + led.changeovers
    by_reason = {r: sum(1 for st in stops if st["reason_code"] == r)
                 for r in (REASON_BREAKDOWN, REASON_JAM, REASON_MATERIAL, REASON_CHANGEOVER)}
    assert by_reason == {REASON_BREAKDOWN: led.breakdowns, REASON_JAM: led.micro_stops,
                         REASON_MATERIAL: led.shortages, REASON_CHANGEOVER: led.changeovers}
    entered = [e[2] for e in state_changes(events)]
    assert entered.count(HELD) == led.breakdowns + led.micro_stops
    assert entered.count(SUSPENDED) == led.shortages
    assert entered.count(N["Complete"]) == led.changeovers
    assert led.setup_s == pytest.approx(sum(st["duration_s"] for st in stops if st["reason_code"] == REASON_CHANGEOVER))
    # keys the demo, the CLI and the system test read are still there
    assert {"good", "reject", "ideal_s", "run_s", "elapsed_s", "breakdowns", "shortages", "state_s", "stops",
            "micro_stops", "changeovers", "setup_s", "startup_rejects", "transitions"} <= set(d)


EXPECTED_PATH = {  # reason -> the states a stop walks through, from Execute back to Execute
    REASON_BREAKDOWN: ["Holding", "Held", "Unholding", "Execute"],
    REASON_JAM: ["Holding", "Held", "Unholding", "Execute"],
    REASON_MATERIAL: ["Suspending", "Suspended", "Unsuspending", "Execute"],
    REASON_CHANGEOVER: ["Completing", "Complete", "Resetting", "Idle", "Starting", "Execute"],
}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_thirty_days_without_an_illegal_transition(seed):
    """Checked against the standard's transitions written out by hand, not the machine's own table."""
    from contract import PACKML

    for spec in DEMO_MACHINES:
        # slow parts keep the run short; the stops, their paths and their timing are as in the demo
        spec = dataclasses.replace(spec, ideal_cycle_s=max(spec.ideal_cycle_s, 120.0))
        m, events = run(spec, seed, [T0 + d * DAY for d in range(1, 31)])
        changes = state_changes(events)
        assert len(changes) > 300
        prev, path, reason, seen = EXECUTE, [], None, set()
        for _, ts, state, r in changes:
            assert (prev, state) in LEGAL_BY_HAND, (spec.name, PACKML[prev], PACKML[state], ts)
            if prev == EXECUTE:
                reason, path = r, []
            else:
                assert r == (reason if state != EXECUTE else 0)  # one reason for the whole stop
            path.append(PACKML[state])
            if state == EXECUTE:
                assert path == EXPECTED_PATH[reason], (spec.name, reason, path)
                seen.add(reason)
            prev = state
        assert seen == set(EXPECTED_PATH), spec.name
        # acting states last acting_s
        acting = {N[s] for s in ("Holding", "Unholding", "Suspending", "Unsuspending", "Completing", "Resetting",
                                 "Starting")}
        for (_, t1, s1, _), (_, t2, _, _) in zip(changes, changes[1:]):
            if s1 in acting:
                assert t2 - t1 == pytest.approx(spec.acting_s)


def test_losses_show_up_in_a_shift():
    spec = DEMO_MACHINES[2]  # the filler: short cycles, frequent stops
    m, _ = run(spec, 5, [T0 + 8 * 3600])
    led = m.ledger_now()
    assert led.breakdowns > 0 and led.shortages > 0 and led.reject > 0 and led.micro_stops > 0
    assert led.changeovers > 0 and led.setup_s > 0
    run_s = led.state_s[EXECUTE]
    # reduced speed: performance near the machine's speed factor
    assert led.ideal_s / run_s == pytest.approx(spec.speed_factor, rel=0.02)


def test_demo_machines_keep_their_names_and_add_an_assembly_station():
    assert [(s.name, s.kind) for s in DEMO_MACHINES] == [
        ("cnc-01", "cnc"), ("moulder-01", "injection_moulding"), ("filler-01", "filling"),
        ("assembly-01", "assembly")]
    from fieldlab.demo import demo_machines

    names = [m.spec.name for m in demo_machines(6, T0, 1)]
    assert names == ["cnc-01", "moulder-01", "filler-01", "assembly-01", "cnc-02", "moulder-02"]
