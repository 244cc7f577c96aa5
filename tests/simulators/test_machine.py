"""The simulated machine: deterministic, and its ledger is the truth the gateway is checked against."""
import pytest

from simulators.machine import DEMO_MACHINES, EXECUTE, HELD, SUSPENDED, Machine

T0 = 1_000_000.0


def run(spec, seed, steps):
    m = Machine(spec, T0, seed)
    events = []
    for t in steps:
        events += m.advance(t)
    return m, events


@pytest.mark.parametrize("spec", DEMO_MACHINES, ids=lambda s: s.name)
def test_same_seed_same_production_whatever_the_tick(spec):
    end = T0 + 8 * 3600
    _, one_step = run(spec, 3, [end])
    _, fine = run(spec, 3, [T0 + i * 7.3 for i in range(1, int(8 * 3600 / 7.3))] + [end])
    assert one_step == fine
    _, other_seed = run(spec, 4, [end])
    assert other_seed != one_step


@pytest.mark.parametrize("spec", DEMO_MACHINES, ids=lambda s: s.name)
def test_ledger_agrees_with_the_emitted_counters_and_states(spec):
    end = T0 + 8 * 3600
    m, events = run(spec, 11, [T0 + 3600 * h for h in range(1, 9)])
    led = m.ledger_now()
    counts = [e for e in events if e[0] == "count"]
    assert (counts[-1][2], counts[-1][3]) == (led.good, led.reject)
    assert len(counts) == led.good + led.reject  # one event per part
    assert led.ideal_s == pytest.approx(spec.ideal_cycle_s * (led.good + led.reject))
    assert sum(led.state_s.values()) == pytest.approx(end - T0)
    # time per state rebuilt from the emitted state changes equals the ledger
    rebuilt, state, since = {}, EXECUTE, T0
    for e in events:
        if e[0] == "state":
            rebuilt[state] = rebuilt.get(state, 0.0) + e[1] - since
            state, since = e[2], e[1]
    rebuilt[state] = rebuilt.get(state, 0.0) + end - since
    assert rebuilt == pytest.approx(led.state_s)
    stops = led.to_dict()["stops"]
    assert sum(st["duration_s"] for st in stops) == pytest.approx(end - T0 - led.state_s[EXECUTE])
    assert len(stops) == led.breakdowns + led.shortages
    assert led.breakdowns == sum(1 for e in events if e[0] == "state" and e[2] == HELD)
    assert led.shortages == sum(1 for e in events if e[0] == "state" and e[2] == SUSPENDED)


def test_losses_show_up_in_a_shift():
    spec = DEMO_MACHINES[2]  # the filler: short cycles, frequent stops
    m, _ = run(spec, 5, [T0 + 8 * 3600])
    led = m.ledger_now()
    assert led.breakdowns > 0 and led.shortages > 0 and led.reject > 0
    run_s = led.state_s[EXECUTE]
    # reduced speed: performance near the machine's speed factor
    assert led.ideal_s / run_s == pytest.approx(spec.speed_factor, rel=0.02)
