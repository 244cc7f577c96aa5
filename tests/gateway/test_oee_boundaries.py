"""Boundary cases of the OEE ratios and of the engine's windows and lines, each pinning a mutant the other
tests let through (bench/mutants.py; docs/RELIABILITY.md, "Mutation testing")."""
import numpy as np
import pytest

from contract import StateBatch
from gateway import oee
from gateway.engine import KpiEngine, group_snapshot

EXECUTE = 4
DAY0 = 1_711_605_600.0  # 2024-03-28 06:00 UTC


def derive(**seconds_and_parts):
    """oee.derive of one row of totals given by name (run=..., good=..., ideal=...)."""
    t = np.zeros((1, oee.N_TOT))
    for name, v in seconds_and_parts.items():
        t[0, getattr(oee, name.upper())] = v
    return {k: v[0] for k, v in oee.derive(t).items()}


def test_parts_made_without_operating_time_leave_performance_undefined_not_infinite():
    """Pins gateway/oee.py:167 (``operating > 0`` -> ``>= 0``): 10 parts counted while the machine was stopped
    all the time (counts and states disagree): performance is undefined, OEE the simple formula."""
    k = derive(stopped=100, good=10, ideal=10, ideal_good=10)
    assert np.isnan(k["performance"]) and k["availability"] == 0
    assert k["oee"] == pytest.approx(0.1)


@pytest.mark.parametrize("planned", [0.8, 1.0, 1.5])
def test_losses_in_points_are_defined_for_any_planned_time_above_0(planned):
    """Pins gateway/oee.py:196 (``planned > 0`` -> ``planned > 1``): a window of under a second of planned time
    has its losses in percentage points; none at all has them undefined."""
    k = derive(run=planned / 2, breakdown=planned / 2)
    assert k["loss_unplanned_stops_pp"] == pytest.approx(50.0)
    assert np.isnan(derive(not_scheduled=5)["loss_unplanned_stops_pp"])


def states(ts, codes):
    return StateBatch(np.array(ts, float), np.array(codes, np.int64), np.zeros(len(ts), np.int64))


def test_a_line_window_starts_no_earlier_than_its_machines_first_message():
    """Pins gateway/engine.py:202 (``np.fmax`` -> ``np.fmin`` of the window starts and the first messages): a
    line whose only machine spoke for 10 minutes has a last hour that starts at that machine's first message."""
    e = KpiEngine()
    m = e.add_machine()
    e.add_state(m, states([DAY0, DAY0 + 600], [EXECUTE, EXECUTE]))
    e.fold()
    e.snapshot()
    lines = e.line_snapshot(np.array([0]), 1)
    assert (lines["last_1h"]["start"][0], lines["last_1h"]["end"][0]) == (DAY0, DAY0 + 600)
    assert lines["last_1h"]["run_s"][0] == 600


def test_a_group_spans_from_its_earliest_machine_start_to_its_latest_end():
    """Pins gateway/engine.py:223 (``np.fmin`` -> ``np.fmax`` of the machines' starts) and :224 (``np.fmax`` ->
    ``np.fmin`` of their ends): two machines of one line, one from 0 to 600 s, the other from 300 to 900 s."""
    e = KpiEngine()
    for t0 in (DAY0, DAY0 + 300):
        e.add_state(e.add_machine(), states([t0, t0 + 600], [EXECUTE, EXECUTE]))
    e.fold()
    line = group_snapshot(e.snapshot(), np.array([0, 0]), 1)["since_start"]
    assert (line["start"][0], line["end"][0]) == (DAY0, DAY0 + 900)
    assert (line["run_s"][0], line["machines"][0]) == (1200, 2)
