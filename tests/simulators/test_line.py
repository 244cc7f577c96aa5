"""A line of machines coupled by buffers (simulators/line.py): starved, blocked, parts flow, bottleneck.

Every check uses the simulator's own clock and ledger, never a sleep.
"""
import dataclasses

import pytest

from gateway import oee
from gateway.config import SiteConfig
from gateway.engine import KpiEngine
from simulators import packml
from simulators.line import Line, bottleneck_bound, parse_capacities
from simulators.machine import (DEMO_MACHINES, EXECUTE, REASON_BLOCKED, REASON_CHANGEOVER, REASON_STARVED,
                                SUSPENDED, Machine, MachineSpec)
from tests.helpers import advance_machines, start_machines
from tests.simulators.test_machine_vs_gateway import expected

T0 = 1_800_000_000.0
A = 2.0  # acting_s of every spec here
NO_LOSSES = dict(reject_rate=0.0, mtbf_s=0, mtbs_s=0, mtbms_s=0, changeover_every_s=0, speed_factor=1.0)


def plain(name: str, cycle: float, **kw) -> MachineSpec:
    return MachineSpec(name, "assembly", "part", ideal_cycle_s=cycle, **{**NO_LOSSES, **kw})


def run(line: Line, end: float, step: float = 60.0) -> dict[str, list]:
    """Advance a line to ``end`` in steps (as a live driver ticks); every machine's events."""
    events = {m.spec.name: [] for m in line.machines}
    t = T0
    while t < end:
        t = min(end, t + step)
        for m in line.machines:
            events[m.spec.name] += m.advance(t)
    return events


def stops(m, reason):
    return [s for s in m.ledger_now().stops if s[3] == reason]


def level_at(history, t, initial=0):
    """The buffer level just after every change at or before ``t``."""
    level = initial
    for ts, lv in history:
        if ts > t:
            break
        level = lv
    return level


def test_the_bottleneck_sets_the_line_rate():
    """A slow middle machine between two fast ones with breakdowns: the buffers (50 parts = 25 min of the
    bottleneck's work) cover every upstream / downstream stop, so the bottleneck is never starved or blocked
    after its first part, and the line makes what the bottleneck makes on its own (same seed, same cycle
    draws), less what is still downstream of it: at most the second buffer plus one part in the last
    machine, plus the one cycle the bottleneck waited for its first part at the start."""
    hours, cap = 24, 50
    a = plain("fast-in", 10.0, mtbf_s=1800, mttr_s=120)
    b = plain("slow", 30.0)
    c = plain("fast-out", 10.0, mtbf_s=1800, mttr_s=120)
    line = Line([a, b, c], T0, [1, 2, 3], [cap, cap], keep_history=True)
    run(line, T0 + hours * 3600)
    up, bott, down = line.machines
    assert up.ledger.breakdowns > 10 and down.ledger.breakdowns > 10  # the stops really happened (run time ~8 h)
    assert up.ledger.blocked > 0  # the fast machine upstream waits for the bottleneck: it is not the bottleneck
    assert down.ledger.starved > 0
    first = stops(bott, REASON_STARVED)
    assert len(first) == 1 and first[0][0] == T0  # only at the start: the line was empty
    assert stops(bott, REASON_BLOCKED) == []
    alone = Machine(b, T0, 2)
    alone.advance(T0 + hours * 3600)
    out = line.ledger()["output"]
    assert out == down.good
    tolerance = cap + 1 + 1  # buffer 2 + the part in the last machine + the bottleneck's wait at the start
    assert alone.good - tolerance <= out <= alone.good
    assert out == pytest.approx(hours * 3600 / 30.0, rel=0.01)  # 30 s per part (jitter averages out)
    # the same bound holds for any buffers: nothing can leave the line faster than its slowest machine
    assert out <= min(alone.good, bott.good)
    assert bott.good - out <= bottleneck_bound([cap])


def test_an_upstream_breakdown_longer_than_the_buffer_starves_downstream_booked_exactly():
    """Buffer of 5 parts (150 s of the downstream machine's work) and a 20-minute breakdown upstream: the
    downstream machine empties the buffer, is starved (Suspended, reason 202, caused by the upstream
    breakdown) until the upstream machine puts its next part in, and is back in Execute acting_s later."""
    up, down = plain("mould", 10.0), plain("pack", 30.0)
    line = Line([up, down], T0, [5, 6], [5], keep_history=True)
    line.machines[0].inject("breakdown", T0 + 3600, minutes=20)
    events = run(line, T0 + 2 * 3600, step=7.0)
    m_up, m_down = line.machines
    fault = m_up.ledger.faults[0]
    assert fault["applied"] is not None and fault["applied"] >= T0 + 3600
    bd = [s for s in m_up.ledger.stops if s[4] is fault][0]
    assert bd[1] - bd[0] == pytest.approx(1200 + 2 * A)
    starved = [s for s in stops(m_down, REASON_STARVED) if s[0] > T0]
    assert len(starved) == 1, starved  # before: the buffer was never empty; after: the buffer refills
    s0, s1, state, _, _, cause = starved[0]
    assert state == SUSPENDED
    assert cause["machine"] == "mould" and cause["state"] == "Held" and cause["reason"] == "breakdown"
    assert cause["root"] == {"machine": "mould", "state": "Held", "reason": "breakdown"}
    hist = line.buffers[0].history
    # it began when the downstream machine finished a part and found the buffer empty
    assert ("count", s0) in {e[:2] for e in events["pack"]}
    assert level_at(hist, s0) == 0
    # and ended acting_s after the upstream machine's first part after the repair went into the buffer
    puts_after = [t for (t, lv), (_, prev) in zip(hist[1:], hist) if lv > prev and t > bd[1]]
    assert s1 == pytest.approx(puts_after[0] + A, abs=1e-9)
    assert puts_after[0] - bd[1] <= 10.0 * 1.2  # the part in progress finishes (its rest of a cycle)
    # the buffer covered 5 parts (+ the one in the machine) of the breakdown
    assert 1200 - 6 * 30 * 1.15 <= s1 - s0 <= 1200 + 2 * A + 10 * 1.2 + A
    # the ledger books it: time, count, and the machine's Suspended time includes it
    led = m_down.ledger_now().to_dict()
    assert led["starved_s"] == pytest.approx(sum((e or led["end"]) - s for s, e, *_ in stops(m_down, REASON_STARVED)))
    assert led["starved"] == len(stops(m_down, REASON_STARVED))


def test_a_downstream_stop_blocks_upstream_and_the_chain_names_its_root():
    a, b, c = plain("a", 10.0), plain("b", 10.0), plain("c", 10.0)
    line = Line([a, b, c], T0, [1, 2, 3], [4, 4], keep_history=True)
    line.machines[2].inject("breakdown", T0 + 3600, minutes=30)
    run(line, T0 + 2 * 3600)
    ma, mb, mc = line.machines
    bd = [s for s in mc.ledger.stops if s[4] is not None][0]
    blocked_b = [s for s in stops(mb, REASON_BLOCKED) if s[1] is None or s[1] - s[0] > 60]
    assert len(blocked_b) == 1
    s0, s1, state, _, _, cause = blocked_b[0]
    assert state == SUSPENDED and bd[0] < s0 < s1 < bd[1] + 10 * 1.2 + 2 * A
    assert cause["machine"] == "c" and cause["state"] == "Held" and cause["reason"] == "breakdown"
    assert level_at(line.buffers[1].history, s0) == 4  # full when b finished its part
    # a is blocked too, behind b: its neighbour is b (Suspended, blocked), the root is c's breakdown
    long_a = [s for s in stops(ma, REASON_BLOCKED) if s[1] is None or s[1] - s[0] > 60]
    assert len(long_a) == 1
    assert long_a[0][5]["machine"] == "b" and long_a[0][5]["reason"] == "blocked"
    assert long_a[0][5]["root"] == {"machine": "c", "state": "Held", "reason": "breakdown"}
    led = mb.ledger_now().to_dict()
    assert led["blocked_s"] >= 30 * 60 - 4 * 10 * 1.2  # the buffer covered at most 4 parts of c's stop
    assert led["blocked"] == len(stops(mb, REASON_BLOCKED))


def demo_line(seed=5, caps=(3, 1, 8), hours=72.0, step=600.0):
    specs = [dataclasses.replace(s) for s in DEMO_MACHINES]
    line = Line(specs, T0, [seed + i for i in range(4)], list(caps), [1, 0, 4], keep_history=True)
    return line, run(line, T0 + hours * 3600, step=step)


def test_long_random_line_keeps_buffers_in_range_conserves_parts_and_only_legal_transitions():
    line, events = demo_line()
    caps = [b.capacity for b in line.buffers]
    for b, cap in zip(line.buffers, caps):
        levels = [lv for _, lv in b.history]
        assert len(levels) > 100 and min(levels) >= 0 and max(levels) <= cap
        assert 0 <= b.low and b.high <= cap
        assert cap in levels and 0 in levels  # the buffers were used to their limits
    for i, m in enumerate(line.machines):
        led = m.ledger_now()
        # every state change is legal, the chain is unbroken, and the reason is that of the stop
        prev = EXECUTE
        for e in (e for e in events[m.spec.name] if e[0] == "state"):
            assert (prev, e[2]) in packml.LEGAL, (m.spec.name, prev, e[2])
            prev = e[2]
        assert prev == m.state
        assert sum(led.state_s.values()) == pytest.approx(72 * 3600, abs=1e-6)
        assert led.starved == len([s for s in led.stops if s[3] == REASON_STARVED])
        assert led.blocked == len([s for s in led.stops if s[3] == REASON_BLOCKED])
        if i > 0:
            assert led.starved > 0
            # every part a machine finished was taken from its input buffer; at most one is in its cycle
            assert led.consumed - (led.good + led.reject) in (0, 1)
            assert led.consumed == line.buffers[i - 1].takes
        if i < 3:
            b = line.buffers[i]
            held = 1 if m.waiting == "blocked" else 0
            assert b.puts == led.good - held
            assert b.level == [1, 0, 4][i] + b.puts - b.takes
            assert led.blocked > 0
    # every part that left the line went in at the first machine
    out = line.ledger()["output"]
    assert out == line.machines[-1].good
    assert out <= line.machines[0].good + sum([1, 0, 4])


def test_parts_in_the_line_never_exceed_a_machines_parts_on_its_own():
    """A machine's timers count run time, so in a line (more stops: starved, blocked) it makes the same parts
    in the same order, only later: never more than alone with the same seed."""
    line, _ = demo_line(hours=24.0)
    for i, m in enumerate(line.machines):
        alone = Machine(m.spec, T0, 5 + i)
        alone.advance(T0 + 24 * 3600)
        assert m.good + m.reject <= alone.good + alone.reject
        assert m.ledger.breakdowns <= alone.ledger.breakdowns


def test_line_is_deterministic_and_does_not_depend_on_the_tick():
    _, coarse = demo_line(hours=12.0, step=3600.0)
    _, fine = demo_line(hours=12.0, step=1.0)
    assert coarse == fine
    _, other = demo_line(seed=6, hours=12.0, step=3600.0)
    assert other != coarse


def test_gateway_books_starved_and_blocked_time_as_the_ledger_says():
    """The engine, fed a line's events, agrees with the ledgers to the millisecond: starved and blocked are
    Suspended with reason 202 or 203: external time, whatever its length, never a small stop (docs/oee.md)."""
    conv = oee.Conventions(reasons={**oee.DEFAULT_REASONS, REASON_CHANGEOVER: oee.SETUP})
    engine = KpiEngine(SiteConfig(conventions=conv))
    specs = list(DEMO_MACHINES)
    line = Line(specs, T0, [40, 41, 42, 43], [2, 2, 5])
    ids = start_machines(engine, line.machines, T0)
    for h in range(1, 25):
        advance_machines(engine, ids, line.machines, T0 + 3600.0 * h)
        engine.fold()
    k = engine.snapshot()["since_start"]
    for i, m in enumerate(line.machines):
        truth = m.ledger_now().to_dict()
        want = expected(truth, conv)
        if i > 0:
            assert truth["starved_s"] > 600, m.spec.name
        for key in ("good", "reject", "failures"):
            assert int(k[key][i]) == want[key], (m.spec.name, key)
        for key in ("run_s", "small_stop_s", "breakdown_s", "stopped_s", "setup_s", "external_s"):
            assert k[key][i] == pytest.approx(want[key], abs=1e-3), (m.spec.name, key)
        if i > 0:
            assert k["external_s"][i] >= truth["starved_s"] > 0, m.spec.name


@pytest.mark.parametrize("text, n, want", [("20", 3, [20, 20]), ("20,5", 3, [20, 5]), ("1", 2, [1])])
def test_parse_capacities(text, n, want):
    assert parse_capacities(text, n) == want


@pytest.mark.parametrize("text, n", [("0", 3), ("20,5,1", 3), ("x", 3), ("5", 1)])
def test_parse_capacities_refuses(text, n):
    with pytest.raises(ValueError, match="--buffers"):
        parse_capacities(text, n)


def test_line_refuses_bad_buffers():
    specs = [plain("a", 1.0), plain("b", 1.0)]
    with pytest.raises(ValueError, match="1 buffer capacities"):
        Line(specs, T0, [1, 2], [3, 3])
    with pytest.raises(ValueError, match="initial level"):
        Line(specs, T0, [1, 2], [3], [4])


def test_fieldlab_sim_buffers_runs_the_demo_machines_as_a_line(tmp_path):
    from fieldlab.broker import free_port
    from tests.system.test_demo import fieldlab

    ledger = tmp_path / "ledger.json"
    r = fieldlab("sim", "--machines", "3", "--buffers", "4,2", "--speed", "600", "--duration", "2",
                 "--opcua-port", str(free_port(count=3)), "--ledger", str(ledger), timeout=60)
    assert r.returncode == 0, r.stderr
    import json

    led = json.loads(ledger.read_text())
    assert [v["line"]["position"] for v in led.values()] == [0, 1, 2]
    assert [v["line"]["output"] and v["line"]["output"]["capacity"] for v in led.values()] == [4, 2, None]
    # cnc-01 (40 s) feeds moulder-01 (12 s): it waits for parts again and again, not only at the start (when
    # every machine after the first finds its input empty)
    assert led["moulder-01"]["starved"] > 5
    assert led["moulder-01"]["line"]["input"]["takes"] == led["moulder-01"]["consumed"]
    r = fieldlab("sim", "--scenario", "normal-shift", "--buffers", "4", timeout=60)
    assert r.returncode == 2 and "--buffers does not go with --scenario" in r.stderr
