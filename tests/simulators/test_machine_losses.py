"""Each loss of the machine model appears with its parameter, not without it, and as documented."""
import dataclasses
import math

import pytest

from simulators.machine import (DEMO_MACHINES, EXECUTE, HELD, REASON_BREAKDOWN, REASON_CHANGEOVER, REASON_JAM,
                                REASON_MATERIAL, Machine, MachineSpec)

T0 = 1_000_000.0
DAY = 86400.0
# a moulder with every loss switched off: it only makes good parts at its speed
QUIET = dataclasses.replace(DEMO_MACHINES[1], reject_rate=0.0, mtbf_s=0, mtbs_s=0, mtbms_s=0, changeover_every_s=0,
                            startup_reject_rate=None, temp_drift_c=0.0, reject_per_c=0.0,
                            temp_ripple_c=0.0)


def run(spec, seed, end, **kw):
    m = Machine(spec, T0, seed, **kw)
    return m, m.advance(end)


def reasons(events):
    return {e[3] for e in events if e[0] == "state" and e[3]}


def test_without_losses_only_good_parts_at_the_reduced_speed():
    m, events = run(QUIET, 1, T0 + DAY)
    led = m.ledger_now()
    assert reasons(events) == set() and led.stops == [] and led.transitions == 0
    assert led.reject == 0 and led.state_s == {EXECUTE: DAY}
    assert (led.breakdowns, led.shortages, led.micro_stops, led.changeovers, led.setup_s) == (0, 0, 0, 0, 0.0)
    assert led.ideal_s / DAY == pytest.approx(QUIET.speed_factor, rel=0.01)


@pytest.mark.parametrize("param, value, reason, counter", [
    ("mtbf_s", 3600.0, REASON_BREAKDOWN, "breakdowns"),
    ("mtbs_s", 1800.0, REASON_MATERIAL, "shortages"),
    ("mtbms_s", 600.0, REASON_JAM, "micro_stops"),
    ("changeover_every_s", 4 * 3600.0, REASON_CHANGEOVER, "changeovers"),
])
def test_each_stop_needs_its_parameter(param, value, reason, counter):
    m, events = run(dataclasses.replace(QUIET, **{param: value}), 2, T0 + 2 * DAY)
    led = m.ledger_now()
    assert reasons(events) == {reason}
    assert getattr(led, counter) > 3
    assert len(led.stops) == getattr(led, counter)
    # the mean interval is honoured (run time between stops), within the statistics of a few dozen stops
    if reason != REASON_CHANGEOVER:
        assert led.state_s[EXECUTE] / getattr(led, counter) == pytest.approx(value, rel=0.5)
    else:  # an order is exactly changeover_every_s of run time (it ends with the part in progress)
        assert led.changeovers == int(led.state_s[EXECUTE] // value)
        assert led.setup_s / led.changeovers == pytest.approx(sum(QUIET.setup_s) / 2, rel=0.15)


def test_micro_stops_are_short_held_episodes_with_their_own_reason():
    from gateway.oee import DEFAULT

    spec = dataclasses.replace(QUIET, mtbms_s=300.0)
    m, _ = run(spec, 3, T0 + DAY)
    stops = m.ledger_now().to_dict()["stops"]
    assert len(stops) > 100
    durations = [st["duration_s"] for st in stops]
    assert all(st["state"] == "Held" and st["reason"] == "jam" for st in stops)
    assert spec.micro_stop_s[0] <= min(durations) and max(durations) <= spec.micro_stop_s[1]
    assert max(durations) < DEFAULT.micro_stop_s  # so the gateway books them as small stops, not failures
    assert sum(durations) / len(durations) == pytest.approx(sum(spec.micro_stop_s) / 2, rel=0.1)


def test_start_up_rejects_after_a_changeover():
    """Base 2 %, 20 % in the 10 minutes after each changeover: both rates come out, and the ledger
    counts exactly the rejects in [end of changeover, + startup_s], as the gateway does."""
    spec = dataclasses.replace(QUIET, reject_rate=0.02, changeover_every_s=3600.0, setup_s=(600.0, 600.0),
                               startup_s=600.0, startup_reject_rate=0.2, mtbf_s=3600.0)
    m, events = run(spec, 4, T0 + 20 * DAY, keep_parts=True)
    led = m.ledger_now()
    start = [p for p in m.parts if p[2]]
    rest = [p for p in m.parts if not p[2]]
    rate = lambda parts: sum(p[3] for p in parts) / len(parts)  # noqa: E731
    assert len(start) > 10_000 and len(rest) > 80_000
    assert rate(start) == pytest.approx(0.2, abs=0.015)
    assert rate(rest) == pytest.approx(0.02, abs=0.003)
    # the ledger's count, rebuilt from the events alone: ends of changeovers, then counter increments
    ends, prev, last_reject = [], EXECUTE, 0
    in_window = 0
    for e in events:
        if e[0] == "state":
            if e[2] == EXECUTE and prev == 3:  # Starting -> Execute: a changeover ended
                ends.append(e[1])
            prev = e[2]
        else:
            if e[3] > last_reject and ends and e[1] <= ends[-1] + spec.startup_s:
                in_window += 1
            last_reject = e[3]
    assert len(ends) == led.changeovers
    assert led.startup_rejects == in_window == sum(p[3] for p in start)
    # without a higher start-up rate the same periods reject at the base rate
    m2, _ = run(dataclasses.replace(spec, startup_reject_rate=None), 4, T0 + 6 * DAY, keep_parts=True)
    assert rate([p for p in m2.parts if p[2]]) == pytest.approx(0.02, abs=0.005)


def test_reject_probability_rises_with_the_temperature_above_the_setpoint():
    """p = reject_rate + reject_per_c * max(0, T - setpoint): parts made hot are rejected more often."""
    spec = dataclasses.replace(QUIET, reject_rate=0.02, temp_drift_c=5.0, reject_per_c=0.02, mtbf_s=3600.0)
    m, _ = run(spec, 5, T0 + 12 * DAY, keep_parts=True)
    sp = spec.temp_setpoint_c
    cool = [p for p in m.parts if p[1] <= sp]
    hot = [p for p in m.parts if p[1] > sp + 5.0]
    assert len(cool) > 15_000 and len(hot) > 5_000
    rate = lambda parts: sum(p[3] for p in parts) / len(parts)  # noqa: E731
    assert rate(cool) == pytest.approx(0.02, abs=0.004)
    expected_hot = sum(0.02 + 0.02 * (p[1] - sp) for p in hot) / len(hot)
    assert expected_hot > 0.12
    assert rate(hot) == pytest.approx(expected_hot, abs=4 * math.sqrt(expected_hot / len(hot)))
    # Pearson correlation between excess temperature and the reject flag
    xs = [max(0.0, p[1] - sp) for p in m.parts]
    ys = [float(p[3]) for p in m.parts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    corr = cov / math.sqrt(sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys))
    assert corr > 0.1
    # switched off, the temperature still drifts but rejects do not follow it
    m2, _ = run(dataclasses.replace(spec, reject_per_c=0.0), 5, T0 + 8 * DAY, keep_parts=True)
    assert rate([p for p in m2.parts if p[1] > sp + 5.0]) == pytest.approx(0.02, abs=0.006)


@pytest.mark.parametrize("spec", DEMO_MACHINES, ids=lambda s: s.name)
def test_process_values_behave_physically(spec):
    """Long stops: the temperature settles at the idle temperature (a moulder's heaters keep it hot, a CNC
    cools to the hall), power drops to the idle share; producing, it returns to the setpoint."""
    spec = dataclasses.replace(spec, mtbf_s=4 * 3600, mttr_s=4 * 3600, mtbs_s=0, mtbms_s=0, changeover_every_s=0,
                               temp_drift_c=0.0)
    m = Machine(spec, T0, 6)
    samples = []
    for i in range(1, 4 * 24 * 60):
        m.advance(T0 + 60.0 * i)
        samples.append((m.state, m.clock - m.state_since, m.process_values(60.0)))
    settled = 6 * spec.thermal_tau_s
    held = [pv for st, since, pv in samples if st == HELD and since > settled]
    running = [pv for st, since, pv in samples if st == EXECUTE and since > settled]
    assert held and running
    for pv in held:
        assert pv["temperature"] == pytest.approx(spec.idle_temp_c, abs=spec.temp_ripple_c + 0.3)
        assert pv["power"] == pytest.approx(spec.idle_power * spec.power_kw, rel=0.1)
        assert pv["vibration"] < 0.2 * spec.vibration_mm_s
    for pv in running:
        assert pv["temperature"] == pytest.approx(spec.temp_setpoint_c, abs=spec.temp_ripple_c + 0.3)
        assert pv["power"] == pytest.approx(spec.power_kw, rel=0.1)
        assert pv["vibration"] >= spec.vibration_mm_s
    assert set(samples[0][2]) == {"temperature", "power", "vibration"}  # the names OPC UA and Modbus serve
    # the controller's limit cycle: the temperature swings by its amplitude around where it settles
    temps = [pv["temperature"] for pv in running]
    assert spec.temp_ripple_c < max(temps) - min(temps) < 2 * spec.temp_ripple_c + 0.3


def test_cnc_vibration_grows_with_tool_wear_and_drops_after_the_tool_change():
    spec = dataclasses.replace(DEMO_MACHINES[0], mtbf_s=0, mtbs_s=0, mtbms_s=0, changeover_every_s=6 * 3600)
    m = Machine(spec, T0, 7)
    m.advance(T0 + 60)
    fresh = m.process_values(60)["vibration"]
    m.advance(T0 + 5.5 * 3600)
    worn = m.process_values(60)["vibration"]
    assert worn > fresh + 4 * spec.wear_mm_s_per_h  # 5.5 h of wear
    while m.ledger.changeovers == 0 or m.state != EXECUTE:
        m.advance(m.clock + 60)
    assert m.process_values(60)["vibration"] < fresh * 1.3


def test_spec_refuses_parameters_that_do_not_fit_the_paths():
    with pytest.raises(ValueError, match="micro_stop_s"):
        MachineSpec("x", "cnc", "p", 10.0, mtbms_s=60.0, micro_stop_s=(1.0, 5.0), acting_s=2.0)
    with pytest.raises(ValueError, match="setup_s"):
        MachineSpec("x", "cnc", "p", 10.0, changeover_every_s=600.0, setup_s=(5.0, 8.0))
    with pytest.raises(ValueError, match="probabilities"):
        MachineSpec("x", "cnc", "p", 10.0, startup_reject_rate=1.5)
