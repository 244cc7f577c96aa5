"""KpiEngine: folding batches for many machines, incrementally, replay-safe."""
import numpy as np
import pytest

from contract import CountsBatch, StateBatch, TelemetryBatch
from gateway.engine import KpiEngine

EXECUTE, STOPPED, HELD = 4, 0, 15


def states(ts, codes):
    return StateBatch(np.array(ts, float), np.array(codes, np.int64), np.zeros(len(ts), np.int64))


def counts(ts, good, reject, ideal=1.0):
    return CountsBatch(np.array(ts, float), np.array(good, np.int64), np.array(reject, np.int64), "p", ideal)


def test_vorne_shift_through_the_engine():
    """The oee.com example as a timeline: 480 min, 60 min planned breaks, 47 min breakdown."""
    e = KpiEngine()
    m = e.add_machine()
    minute = 60.0
    e.add_state(m, states([0, 120 * minute, 135 * minute, 240 * minute, 270 * minute, 300 * minute, 347 * minute,
                           420 * minute, 435 * minute],
                          [EXECUTE, STOPPED, EXECUTE, STOPPED, EXECUTE, HELD, EXECUTE, STOPPED, EXECUTE]))
    e.add_counts(m, counts([0, 480 * minute], [0, 18848], [0, 423]))
    e.fold()
    k = e.snapshot()["since_start"]
    assert k["planned_s"][0] == 420 * minute and k["run_s"][0] == 373 * minute
    assert (k["good"][0], k["reject"][0]) == (18848, 423)
    assert round(100 * k["oee"][0], 2) == 74.79


def stream(rng, machines=3, n=400):
    """Random state changes and counter samples per machine, in time order."""
    out = []
    for m in range(machines):
        ts = np.cumsum(rng.exponential(10.0, n))
        codes = rng.choice([EXECUTE, EXECUTE, HELD, STOPPED, 12], n)
        good = np.cumsum(rng.integers(0, 3, n))
        reject = np.cumsum(rng.integers(0, 2, n))
        out.append((m, ts, codes, good, reject))
    return out


def reference(ts, codes, good, reject, ideal=1.0):
    """Slow and obvious: walk the events one by one."""
    run = planned = 0.0
    for i in range(1, len(ts)):
        dur = ts[i] - ts[i - 1]
        if codes[i - 1] == EXECUTE:
            run += dur
        if codes[i - 1] != STOPPED:
            planned += dur
    g = int(good[-1] - good[0])
    r = int(reject[-1] - reject[0])
    return run, planned, g, r, (g + r) * ideal


def test_chunked_folding_equals_reference_for_every_machine():
    rng = np.random.default_rng(7)
    data = stream(rng)
    e = KpiEngine(capacity=1)  # forces the arrays to grow
    for _ in data:
        e.add_machine()
    # feed in random chunk sizes, interleaving machines, folding now and then
    cursors = [0] * len(data)
    while any(c < len(d[1]) for c, d in zip(cursors, data)):
        for m, ts, codes, good, reject in data:
            c = cursors[m]
            if c >= len(ts):
                continue
            k = int(rng.integers(1, 40))
            sl = slice(c, c + k)
            e.add_state(m, states(ts[sl], codes[sl]))
            e.add_counts(m, counts(ts[sl], good[sl], reject[sl]))
            cursors[m] = c + k
        if rng.random() < 0.5:
            e.fold()
    e.fold()
    k = e.snapshot()["since_start"]
    for m, ts, codes, good, reject in data:
        run, planned, g, r, ideal = reference(ts, codes, good, reject)
        assert k["run_s"][m] == pytest.approx(run)
        assert k["planned_s"][m] == pytest.approx(planned)
        assert (k["good"][m], k["reject"][m]) == (g, r)
        assert k["ideal_s"][m] == pytest.approx(ideal)


def test_replayed_batches_change_nothing():
    e = KpiEngine()
    m = e.add_machine()
    s1, c1 = states([0, 100], [EXECUTE, HELD]), counts([0, 50, 100], [0, 40, 80], [0, 1, 2])
    s2, c2 = states([150], [EXECUTE]), counts([200], [120], [2])
    for b in (s1, s2):
        e.add_state(m, b)
    for b in (c1, c2):
        e.add_counts(m, b)
    e.fold()
    before = e.snapshot()["since_start"]
    # a store-and-forward replay sends the same batches again, old ones first
    e.add_state(m, s1)
    e.add_counts(m, c1)
    e.add_state(m, s2)
    e.add_counts(m, c2)
    e.fold()
    after = e.snapshot()["since_start"]
    for key in ("run_s", "planned_s", "good", "reject", "ideal_s"):
        assert after[key][0] == before[key][0], key
    assert (after["good"][0], after["run_s"][0]) == (120, 150.0)


def test_counter_reset_after_machine_restart_is_not_negative_production():
    e = KpiEngine()
    m = e.add_machine()
    e.add_counts(m, counts([0, 10, 20, 30], [100, 110, 3, 5], [0, 0, 0, 0]))
    e.fold()
    assert e.snapshot()["since_start"]["good"][0] == 10 + 3 + 2


def test_unknown_ideal_cycle_time_leaves_performance_undefined():
    e = KpiEngine()
    m = e.add_machine()
    e.add_state(m, states([0], [EXECUTE]))
    e.add_counts(m, CountsBatch(np.array([0.0, 60.0]), np.array([0, 10]), np.array([0, 0])))
    e.fold()
    k = e.snapshot()["since_start"]
    assert k["availability"][0] == 1.0 and np.isnan(k["performance"][0]) and k["quality"][0] == 1.0


def test_open_state_runs_until_the_latest_timestamp_seen():
    e = KpiEngine()
    m = e.add_machine()
    e.add_state(m, states([0, 30], [EXECUTE, HELD]))
    e.add_telemetry(m, TelemetryBatch(np.array([90.0]), {"t": np.array([1.0])}))
    e.fold()
    k = e.snapshot()["since_start"]
    assert (k["run_s"][0], k["planned_s"][0], k["state"][0]) == (30.0, 90.0, HELD)


def test_snapshot_without_any_machine_is_empty_not_an_error():
    """A gateway that stops before the first machine spoke (it used to crash in Timeline.set_now)."""
    snap = KpiEngine().snapshot()
    assert snap and all(len(v) == 0 for kpis in snap.values() for v in kpis.values())


DAY0 = 1_711_605_600.0  # 2024-03-28 06:00 UTC


def test_an_open_breakdown_from_exactly_the_window_start_is_a_failure():
    """Held from 06:00:00, the start of the early shift, and still held: one failure in the shift."""
    e = KpiEngine()
    m = e.add_machine()
    e.add_state(m, states([DAY0 - 3600, DAY0], [EXECUTE, HELD]))
    e.add_telemetry(m, TelemetryBatch(np.array([DAY0 + 1800]), {}))
    e.fold()
    snap = e.snapshot()
    assert snap["shift"]["start"][0] == DAY0
    assert [snap[w]["failures"][0] for w in ("since_start", "last_1h", "shift", "last_15min")] == [1, 1, 1, 0]


def test_a_new_state_at_the_time_of_the_last_fold_is_not_a_replay():
    """Held and Execute in the same second, in two ticks: the second one is a change, not a replay."""
    e = KpiEngine()
    m = e.add_machine()
    e.add_state(m, states([0, 100], [EXECUTE, HELD]))
    e.fold()
    e.add_state(m, states([100], [EXECUTE]))
    e.add_telemetry(m, TelemetryBatch(np.array([1000.0]), {}))
    e.fold()
    k = e.snapshot()["since_start"]
    assert (k["run_s"][0], k["breakdown_s"][0], k["state"][0]) == (1000.0, 0.0, EXECUTE)


def test_a_state_kept_for_days_keeps_the_earlier_calendar():
    """Execute from Thursday 06:00 to Monday 18:00 (UTC), never a change, in a plant with shifts 06-22 and
    hourly ticks: the four nights in between are not scheduled, however long ago they were."""
    from gateway import config

    site = config.parse({"shifts": [{"name": "early", "start": "06:00", "end": "14:00"},
                                    {"name": "late", "start": "14:00", "end": "22:00"}]})
    e = KpiEngine(site)
    m = e.add_machine()
    e.add_state(m, states([DAY0], [EXECUTE]))
    for hour in range(1, 4 * 24 + 13):
        e.add_telemetry(m, TelemetryBatch(np.array([DAY0 + hour * 3600.0]), {}))
        e.fold()
    k = e.snapshot()["since_start"]
    assert (k["known_s"][0], k["not_scheduled_s"][0], k["run_s"][0]) == (108 * 3600, 4 * 8 * 3600, 76 * 3600)


def test_a_forgotten_machine_starts_afresh_and_the_others_are_untouched():
    """``fieldlab gateway forget``: machine 0's history goes (pending data too); its next counter reading is a new
    baseline; machine 1 is the same as in an engine that never had machine 0's data."""
    e, alone = KpiEngine(), KpiEngine()
    for eng in (e, alone):
        eng.add_machine(), eng.add_machine()
    for eng in (e, alone):
        eng.add_state(1, states([0, 500], [EXECUTE, HELD]))
        eng.add_counts(1, counts([0, 400], [0, 40], [0, 1]))
    e.add_state(0, states([0, 100], [EXECUTE, HELD]))
    e.add_counts(0, counts([0, 50], [0, 50], [0, 5]))
    e.fold()
    e.add_counts(0, counts([60], [60], [5]))  # pending: dropped with the rest
    e.forget(0)
    e.fold()
    alone.fold()
    k, a = e.snapshot()["since_start"], alone.snapshot()["since_start"]
    assert np.isnan(k["planned_s"][0]) or k["planned_s"][0] == 0
    assert k["good"][0] == 0 and e.timeline.p.fill[0] == 0 and e.timeline.c.fill[0] == 0
    for kpi in ("planned_s", "run_s", "good", "reject", "oee"):
        np.testing.assert_array_equal(k[kpi][1], a[kpi][1], err_msg=kpi)
    # it sends again: counters from their new first reading, state from its new first change
    e.add_state(0, states([1000, 1100], [EXECUTE, HELD]))
    e.add_counts(0, counts([1000, 1090], [70, 79], [5, 5]))
    e.fold()
    k = e.snapshot()["since_start"]
    assert (k["good"][0], k["reject"][0]) == (9, 0) and k["run_s"][0] == 100.0
