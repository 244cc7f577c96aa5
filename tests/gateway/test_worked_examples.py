"""Worked examples from public OEE references, run through the whole pure path
(timeline.build -> Timeline.totals -> oee.derive), checked to the published precision."""
import numpy as np
import pytest

from gateway import oee, timeline

H, MIN = 3600.0, 60.0
EXECUTE, STOPPED_PACKML, HELD = 4, 0, 15
SIMPLE_RUNNING, SIMPLE_SETUP, SIMPLE_DOWN = 1, 4, 3


def kpis(changes, counts, end, calendar=(), conv=oee.DEFAULT, model=0, window=None):
    """One machine: changes [(ts, code)], counts [(ts, good, reject, ideal_cycle_s)]."""
    ts = np.array([c[0] for c in changes], float)
    states = (np.zeros(ts.size, np.int64), ts, np.full(ts.size, model), np.array([c[1] for c in changes]),
              np.zeros(ts.size, np.int64))
    c = np.array(counts, float).reshape(-1, 4)
    cnt = (np.zeros(len(c), np.int64), c[:, 0], c[:, 1].astype(np.int64), c[:, 2].astype(np.int64), c[:, 3])
    cal = timeline.merge_calendar([p[0] for p in calendar], [p[1] for p in calendar])
    tl = timeline.build(1, states, cnt, [end], cal, conv)
    a, b = window or (ts[0], end)
    k = oee.derive(tl.totals(a, b), conv)
    return {name: v[0] for name, v in k.items()}


def pct(x, digits=1):
    return round(100 * x, digits)


def test_oee_com_calculate_oee():
    """Vorne Industries, "Calculate OEE", oee.com/calculating-oee: shift 8 h (480 min), two 15 min
    breaks and a 30 min meal (planned, from the shift calendar), 47 min down, ideal cycle 1.0 s,
    19,271 parts of which 423 rejects -> A 88.81 %, P 86.11 %, Q 97.80 %, OEE 74.79 %."""
    breaks = [(120 * MIN, 135 * MIN), (240 * MIN, 270 * MIN), (420 * MIN, 435 * MIN)]
    k = kpis([(0, EXECUTE), (300 * MIN, HELD), (347 * MIN, EXECUTE)],
             [(0, 0, 0, 1.0), (480 * MIN, 18848, 423, 1.0)], 480 * MIN, calendar=breaks)
    assert (k["planned_s"], k["run_s"]) == (420 * MIN, 373 * MIN)
    assert (pct(k["availability"], 2), pct(k["performance"], 2), pct(k["quality"], 2), pct(k["oee"], 2)) == \
        (88.81, 86.11, 97.80, 74.79)
    assert k["oee"] == pytest.approx(k["oee_simple"], rel=1e-12)
    # the six big losses add up to what OEE misses, in minutes and in percentage points
    losses = ["unplanned_stops", "planned_stops", "small_stops", "slow_cycles", "production_rejects",
              "startup_rejects"]
    assert sum(k[f"loss_{n}_s"] for n in losses) == pytest.approx(k["planned_s"] - k["ideal_good_s"])
    assert sum(k[f"loss_{n}_pp"] for n in losses) == pytest.approx(100 * (1 - k["oee"]))
    assert k["loss_unplanned_stops_s"] == 47 * MIN


def test_hertzler_setup_counts_against_availability():
    """Hertzler Systems, "OEE Defined: Performance" (hertzler.com/oee-defined-performance): 480 min
    shift, 30 min lunch, 95 min machine setup and 17 min other down time -> 338 min available;
    1,187 pieces at an ideal 0.25 min -> performance 87.8 %. Setup is an availability loss there;
    with the other convention (setup outside planned time) availability rises, performance stays."""
    changes = [(0, SIMPLE_SETUP), (95 * MIN, SIMPLE_RUNNING), (200 * MIN, SIMPLE_DOWN), (217 * MIN, SIMPLE_RUNNING)]
    counts = [(0, 0, 0, 15.0), (480 * MIN, 1187, 0, 15.0)]
    lunch = [(240 * MIN, 270 * MIN)]
    k = kpis(changes, counts, 480 * MIN, lunch, model=1)
    assert (k["planned_s"], k["run_s"]) == (450 * MIN, 338 * MIN)
    assert pct(k["performance"]) == 87.8
    assert pct(k["availability"], 2) == round(100 * 338 / 450, 2)
    assert k["loss_planned_stops_s"] == 95 * MIN
    excluded = kpis(changes, counts, 480 * MIN, lunch, conv=oee.Conventions(setup_as="excluded"), model=1)
    assert excluded["planned_s"] == 355 * MIN and pct(excluded["performance"]) == 87.8
    assert excluded["availability"] == pytest.approx(338 / 355)


def test_mixed_output_weighted_by_ideal_cycle_time():
    """Arno Koch, "OEE with mixed output", oee.academy (OEE Academy calculation FAQ): a moulding press
    makes a large part at 2 per minute and a small part at 8 per minute. Day 1: 120 min large
    (180 parts), 360 min small (the rest of the published 2,340 parts: 2,160) -> performance 75 %."""
    changes = [(0, EXECUTE)]
    counts = [(0, 0, 0, 30.0), (120 * MIN, 180, 0, 30.0),  # large part: ideal 30 s
              (120 * MIN + 1e-9, 180, 0, 7.5), (480 * MIN, 2340, 0, 7.5)]  # small part: ideal 7.5 s
    k = kpis(changes, counts, 480 * MIN)
    assert k["good"] == 2340
    assert pct(k["performance"]) == 75.0


def test_versalytics_teep_of_a_stamping_press():
    """Versalytics, "OEE, Down Time and TEEP" (versalytics.org, 2008): a press with an ideal of
    30 strokes (parts) per minute is scheduled 16 of 24 hours and makes 18,000 good parts:
    10 ideal hours -> OEE 62.5 %, TEEP 10/24 = 41.7 %."""
    k = kpis([(0, EXECUTE)], [(0, 0, 0, 2.0), (16 * H, 18000, 0, 2.0)], 24 * H, calendar=[(16 * H, 24 * H)])
    assert pct(k["oee"]) == 62.5
    assert pct(k["utilisation"]) == 66.7
    assert pct(k["teep"]) == 41.7


def test_leanworx_teep_over_a_week():
    """LeanWorx, "TEEP definition, TEEP calculation, OEE vs. TEEP" (leanworxcloud.com), example 2: OEE
    60 %, 12 hours a day with 1 hour of breaks, 6 days a week -> utilisation 66/168 = 39.3 %,
    TEEP 23.6 %."""
    calendar = []
    for day in range(7):
        d = day * 24 * H
        if day == 6:
            calendar.append((d, d + 24 * H))  # no shift on the seventh day
        else:
            calendar += [(d, d + 6 * H), (d + 12 * H, d + 13 * H), (d + 18 * H, d + 24 * H)]
    scheduled = 6 * 11 * H
    parts = int(0.6 * scheduled)  # ideal 1 s: 60 % performance while always running
    k = kpis([(0, EXECUTE)], [(0, 0, 0, 1.0), (7 * 24 * H, parts, 0, 1.0)], 7 * 24 * H, calendar)
    assert k["planned_s"] == scheduled
    assert pct(k["oee"]) == 60.0
    assert pct(k["utilisation"]) == 39.3
    assert pct(k["teep"]) == 23.6


def test_ibm_mtbf():
    """IBM, "What is asset reliability?" (ibm.com/think/topics/asset-reliability): equipment used
    20,000 hours that fails 5 times -> MTBF 4,000 hours."""
    changes, t = [], 0.0
    for _ in range(5):
        changes += [(t, EXECUTE), (t + 4000 * H, HELD)]
        t += 4000 * H + 3 * H
    k = kpis(changes, [(0, 0, 0, 1.0)], t)
    assert k["failures"] == 5 and k["operating_s"] == 20000 * H
    assert k["mtbf_s"] / H == 4000


def test_ibm_mttr():
    """IBM, same page: a system that failed 10 times with 20 hours of downtime in all -> MTTR 2 hours."""
    repairs = [1, 1, 1, 1, 2, 2, 3, 3, 3, 3]  # hours, 20 in all
    changes, t = [], 0.0
    for r in repairs:
        changes += [(t, EXECUTE), (t + 100 * H, HELD)]
        t += 100 * H + r * H
    k = kpis(changes, [(0, 0, 0, 1.0)], t)
    assert k["failures"] == 10 and k["breakdown_s"] == 20 * H
    assert k["mttr_s"] / H == 2


def test_small_stops_follow_the_convention():
    """Stops under the threshold (oee.com "Six Big Losses": e.g. two minutes, the point from which
    a stop gets a reason) are small stops: performance loss by default, availability if chosen."""
    changes = [(0, EXECUTE), (1000, HELD), (1060, EXECUTE), (2000, HELD), (2600, EXECUTE)]
    counts = [(0, 0, 0, 1.0), (3000, 2000, 0, 1.0)]
    perf = kpis(changes, counts, 3000)
    assert (perf["small_stop_s"], perf["breakdown_s"], perf["failures"]) == (60, 600, 1)
    assert perf["availability"] == pytest.approx(2400 / 3000) and perf["performance"] == pytest.approx(2000 / 2400)
    avail = kpis(changes, counts, 3000, conv=oee.Conventions(micro_stops_as="availability"))
    assert avail["availability"] == pytest.approx(2340 / 3000) and avail["performance"] == pytest.approx(2000 / 2340)
    assert perf["oee"] == pytest.approx(avail["oee"])  # where a loss is booked does not change OEE


def test_startup_rejects_after_a_setup():
    changes = [(0, SIMPLE_SETUP), (600, SIMPLE_RUNNING)]
    counts = [(0, 0, 0, 1.0), (700, 50, 5, 1.0), (2000, 900, 6, 1.0)]
    k = kpis(changes, counts, 2000, model=1, conv=oee.Conventions(startup_s=300))
    assert (k["reject"], k["startup_reject"]) == (6, 5)
    assert (k["loss_startup_rejects_s"], k["loss_production_rejects_s"]) == (5.0, 1.0)


def test_a_window_inside_the_history():
    changes = [(0, EXECUTE), (1000, HELD), (1500, EXECUTE)]
    counts = [(0, 0, 0, 1.0), (900, 800, 0, 1.0), (1800, 1000, 0, 1.0)]
    k = kpis(changes, counts, 2000, window=(800, 1600))
    assert (k["run_s"], k["breakdown_s"], k["planned_s"]) == (300, 500, 800)
    assert k["good"] == 800 and k["failures"] == 1  # the sample at 900 (all parts up to then) is in (800, 1600]


def test_a_stop_of_exactly_the_threshold_is_a_failure_closed_or_still_open():
    closed = kpis([(0, EXECUTE), (100, HELD), (220, EXECUTE)], [(0, 0, 0, 1.0)], 300)
    assert (closed["failures"], closed["small_stop_s"], closed["breakdown_s"]) == (1, 0, 120)
    still_open = kpis([(0, EXECUTE), (100, HELD)], [(0, 0, 0, 1.0)], 220)
    assert (still_open["failures"], still_open["small_stop_s"], still_open["breakdown_s"]) == (1, 0, 120)
    short = kpis([(0, EXECUTE), (100, HELD)], [(0, 0, 0, 1.0)], 219)
    assert (short["failures"], short["small_stop_s"]) == (0, 119)


def test_back_to_back_startup_periods_count_a_reject_once():
    conv = oee.Conventions(startup_s=3)
    changes = [(0, SIMPLE_SETUP), (100, SIMPLE_RUNNING), (101, SIMPLE_SETUP), (103, SIMPLE_RUNNING)]
    # setups end at 100 and 103: start-up periods [100, 103] and [103, 106] touch at 103
    counts = [(0, 0, 0, 1.0), (103, 0, 1, 1.0), (105, 0, 2, 1.0), (107, 0, 3, 1.0)]
    k = kpis(changes, counts, 110, model=1, conv=conv)
    assert (k["reject"], k["startup_reject"]) == (3, 2)
